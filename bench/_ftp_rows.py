"""FTP rows for ``bench/calibration.py``: MiniLM with learned token routers (Li et al., 2024,
"FTP: A Fine-grained Token-wise Pruner for Large Language Models via Token Routing").

Per token sparsity (25%, 50%): routers trained on the WikiText-2 calibration windows with the
model frozen (``train_token_router``: block allocation searched, cubic ramp over the first
half of the steps, distillation to the dense last hidden state), thresholds set on the
windows; then SST-2 embedding fidelity and probe accuracy as for the other rows, and the
fraction of block-token computations skipped (Σ skipped valid tokens / Σ valid tokens over
the 6 encoder layers; padding not counted) on the calibration windows and on the SST-2 dev
sentences. The routers are uninstalled afterwards: the model is dense again.

Standalone: ``python bench/_ftp_rows.py --quick --threads 1`` (from the repository root).
"""
from __future__ import annotations

import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from _text import embed, probe_accuracy

from sparsity_core.calibration.ftp import train_token_router


def _hf(model, batch):
    return model(**batch)


def ftp_rows(model, tok, calib, dev_x, dev_y, train_x, train_y, dense_dev: torch.Tensor,
             levels: Sequence[float] = (0.25, 0.5), steps: int = 60, probe: bool = True,
             progress: Optional[Callable[[str], None]] = None) -> Tuple[List[list], dict]:
    """Rows ``[method, sparsity, alloc, fidelity, probe acc, ms/layer, notes]`` (the columns of
    ``bench/calibration.py``) and a dict of values for its RESULT line. ``ms/layer``: the whole
    router training (search, steps, thresholds) per encoder layer."""
    rows, values = [], {}
    for level in levels:
        began = time.perf_counter()
        routing = train_token_router(model, calib, level, steps=steps, forward=_hf, allocation="search")
        seconds = time.perf_counter() - began
        try:
            calib_rep = routing.report()
            routing.reset_counts()
            dev = embed(model, tok, dev_x, batch=128)
            dev_rep = routing.report()
            fid = float((dev * dense_dev).sum(dim=1).mean())
            acc = probe_accuracy(embed(model, tok, train_x, batch=128), train_y, dev, dev_y) if probe else "-"
        finally:
            routing.uninstall()
        per_block = "/".join(f"{v:.2f}" for v in dev_rep["blocks"].values())
        alloc = "/".join(f"{v:.2f}" for v in calib_rep["targets"].values())
        search = routing.search or {}
        note = (f"block-token comp. skipped: calib {calib_rep['skipped']:.3f}, SST-2 dev {dev_rep['skipped']:.3f} "
                f"(per layer {per_block}); allocation {alloc}; search distill {search.get('uniform_fitness', 0):.4f}"
                f"->{search.get('fitness', 0):.4f}; {steps} steps, {calib_rep['router_params']} router params")
        label = f"{int(round(level * 100))}% tok."
        rows.append(["ftp", label, "search", fid, acc, 1e3 * seconds / len(routing.wrappers), note])
        key = int(round(level * 100))
        values.update({f"fid_ftp{key}": fid, f"ftp{key}_skipped_dev": dev_rep["skipped"],
                       f"ftp{key}_skipped_calib": calib_rep["skipped"]})
        if probe:
            values[f"probe_ftp{key}"] = acc
        if progress:
            progress(f"ftp {label}: fidelity {fid:.4f}, probe {acc}, skipped dev {dev_rep['skipped']:.3f}, "
                     f"{seconds:.1f} s")
    return rows, values


def main() -> None:
    from _common import parser, result, start, table
    from _common import progress
    from _text import minilm, sst2, wikitext_windows

    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="router training steps (default 60; quick 30)")
    args = p.parse_args()
    start(args)
    quick = args.quick
    n_calib, n_dev, n_train = (16, 96, 128) if quick else (256, 872, 1000)
    steps = args.steps or (30 if quick else 60)
    began = time.perf_counter()
    model, tok = minilm()
    calib = wikitext_windows(tok, n_calib, batch=8 if quick else 16)
    dev_x, dev_y = sst2("dev", n_dev if quick else 0)
    train_x, train_y = sst2("train", n_train)
    dense_dev = embed(model, tok, dev_x, batch=128)
    dense_acc = probe_accuracy(embed(model, tok, train_x, batch=128), train_y, dense_dev, dev_y)
    rows, values = ftp_rows(model, tok, calib, dev_x, dev_y, train_x, train_y, dense_dev, steps=steps,
                            progress=progress)
    after = embed(model, tok, dev_x, batch=128)
    print(f"MiniLM-L6 FTP token routing ({'quick' if quick else 'full'}): {n_calib} WikiText-2 windows x 128 tokens; "
          f"SST-2 dev {len(dev_x)} sentences, probe train {len(train_x)}; torch threads {args.threads}")
    table(["method", "sparsity", "alloc", "fidelity", "probe acc", "ms/layer", "notes"],
          [["dense", "-", "-", 1.0, dense_acc, 0.0, "-"]] + rows)
    print(f"after uninstall: max |embedding - dense| = {float((after - dense_dev).abs().max()):.3g}")
    values.update({"dense_probe": dense_acc, "threads": args.threads, "quick": int(quick),
                   "seconds": time.perf_counter() - began})
    result("calibration_ftp", values)


if __name__ == "__main__":
    main()
