"""Coverage of one-shot channel/head pruning over timm architectures: prune, or fail cleanly.

For every architecture (random init, 10 classes, 2x3x64x64 inputs unless the table says
otherwise; fixed-size models are built for that size) the benchmark runs
``prune_channels(model, x, 0.5, measure="units", graph_time_limit=...)`` (50 % of the units of
every prunable group, uniform allocation, group L2, channel counts rounded to 8; groups the
plugin cannot remove are skipped with their reason and the rest is pruned), then checks on
the pruned model: fewer parameters, MACs really reduced (after/before < 0.95, the suite's
counter, batch 1), a training-mode forward on a batch of 2 with outputs shaped (2, 10) and
finite, ``loss.backward()`` filling finite gradients, and an eval-mode forward.

A model that does not pass must fail *cleanly*: ``prune_channels`` raises a ``ValueError``
(``GroupTraceError``, ``GraphTimeLimitError``, ``RemovalError``, or "no prunable group")
whose message is one line, names no module repr and is at least 40 characters (a
``GraphTimeLimitError`` within the graph time limit plus 50 % and 5 s: the limit bounds
tracing and group enumeration; the removal probe after it is bounded by the number of
groups), and the model is afterwards bitwise and structurally
unchanged: the same module objects under the same names, the same parameter and buffer
objects with identical values, dtypes and ``requires_grad``, the same hooks, train/eval
modes and plain module attributes (``in_features``, ``num_heads``, ...). Anything else (an
exception elsewhere, a changed model, a run past the time limit per model) is an unclean
failure. Every model runs under a time limit (SIGALRM; 120 s, ``--quick``: 60 s).

Per model: status, parameters before/after, MACs after/before, seconds, and the reason
(for a pass: how many groups were skipped; for a failure: the stage and the error). The
failure list repeats each error in full with the deepest frame in the plugin (and the
deepest overall where the error arose in Torch-Pruning, timm or torch).

``--quick`` runs a representative subset of 16 models (one per family, one of them a known
clean failure) in under 2 minutes; its targets judge the pass rate and the clean failures on
that subset (the counts of models and families apply to the full run only).

Targets (issue 12, coverage): >= 85 % of >= 40 architectures across >= 25 families pass, and
100 % of the rest fail cleanly; resnet, resnext, regnet, efficientnet, mobilenetv3,
convnext, vit and deit are among the successes.
"""
from __future__ import annotations

import contextlib
import signal
import time
import traceback
from typing import Dict, List, Optional, Tuple

import timm
import torch
import torch.nn.functional as F

from _common import parser, progress, result, start, table, target
from sparsity_plugins.vision import GraphTimeLimitError, prune_channels
from sparsity_plugins.vision.report import count_macs_params

SPARSITY = 0.5
SIZE = 64
CLASSES = 10
LIMIT_S = 120.0  # per model, everything included (--quick: 60 s)
GRAPH_LIMIT_S = 30.0  # prune_channels(graph_time_limit=...) (--quick: 20 s)
MACS_REDUCED = 0.95  # MACs after/before below this counts as really reduced
PASS_RATE, MIN_MODELS, MIN_FAMILIES = 0.85, 40, 25
REQUIRED = ("resnet", "resnext", "regnet", "efficientnet", "mobilenetv3", "convnext", "vit", "deit")
FIX = {"img_size": SIZE}

# name -> (family, extra create_model kwargs, input size, in --quick)
MODELS: Dict[str, Tuple[str, dict, int, bool]] = {
    # CNNs
    "resnet18": ("resnet", {}, SIZE, True),
    "resnet50": ("resnet", {}, SIZE, False),
    "resnet26d": ("resnet", {}, SIZE, False),
    "seresnet18": ("resnet", {}, SIZE, False),
    "ecaresnet26t": ("resnet", {}, SIZE, False),
    "resnetv2_50": ("resnetv2", {}, SIZE, False),
    "resnext26ts": ("resnext", {}, SIZE, True),
    "res2net50_14w_8s": ("res2net", {}, SIZE, False),
    "resnest14d": ("resnest", {}, SIZE, False),
    "skresnet18": ("sknet", {}, SIZE, False),
    "regnetx_002": ("regnet", {}, SIZE, True),
    "regnety_002": ("regnet", {}, SIZE, False),
    "regnetz_b16": ("regnet", {}, SIZE, False),
    "efficientnet_b0": ("efficientnet", {}, SIZE, True),
    "efficientnet_lite0": ("efficientnet", {}, SIZE, False),
    "tinynet_a": ("efficientnet", {}, SIZE, False),
    "mixnet_s": ("mixnet", {}, SIZE, False),
    "mnasnet_050": ("mnasnet", {}, SIZE, False),
    "fbnetc_100": ("fbnet", {}, SIZE, False),
    "hardcorenas_a": ("hardcorenas", {}, SIZE, False),
    "mobilenetv2_050": ("mobilenetv2", {}, SIZE, False),
    "mobilenetv3_large_100": ("mobilenetv3", {}, SIZE, False),
    "mobilenetv3_small_050": ("mobilenetv3", {}, SIZE, True),
    "mobilenetv4_conv_small": ("mobilenetv4", {}, SIZE, False),
    "lcnet_050": ("lcnet", {}, SIZE, False),
    "ghostnet_100": ("ghostnet", {}, SIZE, True),
    "repghostnet_050": ("ghostnet", {}, SIZE, False),
    "convnext_atto": ("convnext", {}, SIZE, True),
    "convnextv2_atto": ("convnext", {}, SIZE, False),
    "densenet121": ("densenet", {}, SIZE, False),
    "rdnet_tiny": ("densenet", {}, SIZE, False),
    "dla34": ("dla", {}, SIZE, True),
    "dpn68": ("dpn", {}, SIZE, True),
    "repvgg_a0": ("repvgg", {}, SIZE, True),
    "mobileone_s0": ("mobileone", {}, SIZE, False),
    "rexnet_100": ("rexnet", {}, SIZE, False),
    "hrnet_w18_small": ("hrnet", {}, SIZE, False),
    "cspresnet50": ("cspnet", {}, SIZE, False),
    "cspdarknet53": ("cspnet", {}, SIZE, False),
    "darknet17": ("darknet", {}, SIZE, False),
    "selecsls42b": ("selecsls", {}, SIZE, False),
    "xception41": ("xception", {}, SIZE, False),
    "gernet_s": ("byobnet", {}, SIZE, False),
    "ese_vovnet19b_dw": ("vovnet", {}, SIZE, False),
    "nf_resnet26": ("nfnet", {}, SIZE, False),
    "fasternet_t0": ("fasternet", {}, SIZE, False),
    "starnet_s1": ("starnet", {}, SIZE, False),
    "mambaout_femto": ("mambaout", {}, SIZE, False),
    "botnet26t_256": ("botnet", FIX, SIZE, False),
    "lambda_resnet26t": ("lambdanet", {}, SIZE, False),
    # MLPs and metaformers
    "mixer_s16_224": ("mlp-mixer", FIX, SIZE, False),
    "resmlp_12_224": ("resmlp", FIX, SIZE, False),
    "gmlp_s16_224": ("gmlp", FIX, SIZE, False),
    "poolformer_s12": ("poolformer", {}, SIZE, False),
    "sequencer2d_s": ("sequencer", {}, SIZE, False),
    # transformers and hybrids
    "vit_tiny_patch16_224": ("vit", FIX, SIZE, True),
    "vit_relpos_small_patch16_224": ("vit", FIX, SIZE, False),
    "deit_tiny_patch16_224": ("deit", FIX, SIZE, True),
    "deit3_small_patch16_224": ("deit", FIX, SIZE, False),
    "eva02_tiny_patch14_224": ("eva", {"img_size": 56}, 56, False),
    "cait_xxs24_224": ("cait", FIX, SIZE, False),
    "crossvit_tiny_240": ("crossvit", {"img_size": 120}, 120, False),
    "pvt_v2_b0": ("pvt-v2", {}, SIZE, True),
    "twins_svt_small": ("twins", {}, SIZE, False),
    "twins_pcpvt_small": ("twins", {}, SIZE, False),
    "coat_lite_tiny": ("coat", FIX, SIZE, False),
    "convit_tiny": ("convit", FIX, SIZE, False),
    "pit_ti_224": ("pit", FIX, SIZE, False),
    "swin_tiny_patch4_window7_224": ("swin", {"img_size": SIZE, "window_size": 4}, SIZE, False),
    "levit_128s": ("levit", FIX, SIZE, True),
    "mobilevit_xs": ("mobilevit", {}, SIZE, True),
    "mobilevitv2_050": ("mobilevit", {}, SIZE, False),
    "edgenext_xx_small": ("edgenext", {}, SIZE, True),
    "mvitv2_tiny": ("mvit", {}, SIZE, False),
    "hiera_tiny_224": ("hiera", FIX, SIZE, False),
    "maxvit_rmlp_pico_rw_256": ("maxvit", FIX, SIZE, False),
    "tiny_vit_5m_224": ("tiny-vit", {}, SIZE, False),
    "fastvit_t8": ("fastvit", {}, SIZE, False),
    "repvit_m1": ("repvit", {}, SIZE, False),
    "efficientvit_b0": ("efficientvit", {}, SIZE, False),
    "nextvit_small": ("nextvit", {}, SIZE, False),
    "shvit_s1": ("shvit", {}, SIZE, False),
}


def _frame(f: traceback.FrameSummary) -> str:
    """``file:line in function``, the file relative to the repository or to site-packages."""
    path = f.filename.replace("\\", "/")
    if "/plugins/" in path:
        path = path[path.rfind("/plugins/") + 1:]
    elif "/site-packages/" in path:
        path = path[path.rfind("/site-packages/") + len("/site-packages/"):]
    return f"{path}:{f.lineno} in {f.name}"


def _where(err: BaseException) -> str:
    """The deepest traceback frame inside the plugin package, then the deepest frame overall
    if that one lies elsewhere (Torch-Pruning, timm, torch)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename != __file__]  # not ours
    ours = [f for f in frames if "/plugins/" in f.filename.replace("\\", "/")]
    parts = [_frame(ours[-1])] if ours else []
    if frames and (not ours or frames[-1] is not ours[-1]):
        parts.append(_frame(frames[-1]))
    return " -> ".join(parts)


class ModelTimeout(BaseException):
    """One model ran past its time limit (a BaseException, so no library wraps it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`ModelTimeout` inside the block after ``seconds`` (where SIGALRM exists)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def fire(signum, frame):
        raise ModelTimeout(f"ran past the {seconds:.0f} s limit per model")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fingerprint(model: torch.nn.Module) -> Dict[str, object]:
    """Everything a clean failure must leave as it was (objects, values, hooks, modes)."""
    plain = (bool, int, float, str, tuple, type(None))
    return {
        "modules": [(n, id(m), type(m).__name__) for n, m in model.named_modules()],
        "params": [(n, id(p), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
        "buffers": [(n, id(b), b.detach().clone()) for n, b in model.named_buffers()],
        "hooks": [(n, k, tuple(v.keys())) for n, m in model.named_modules() for k, v in vars(m).items()
                  if k.endswith("hooks") and isinstance(v, dict)],
        "modes": [m.training for m in model.modules()],
        "attrs": [(n, sorted((k, repr(v)) for k, v in vars(m).items() if isinstance(v, plain) and not k.startswith("_")))
                  for n, m in model.named_modules()],
    }


def changes(model: torch.nn.Module, before: Dict[str, object]) -> List[str]:
    """What differs from ``before`` (empty: bitwise and structurally unchanged)."""
    now = fingerprint(model)
    out = []
    if now["modules"] != before["modules"]:
        out.append("module objects or names")
    if [(n, i, rg) for n, i, _, rg in now["params"]] != [(n, i, rg) for n, i, _, rg in before["params"]]:
        out.append("parameter objects")
    elif any(a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b)
             for (_, _, a, _), (_, _, b, _) in zip(now["params"], before["params"])):
        out.append("parameter values")
    if [(n, i) for n, i, _ in now["buffers"]] != [(n, i) for n, i, _ in before["buffers"]] or any(
            a.shape != b.shape or not torch.equal(a, b) for (_, _, a), (_, _, b) in zip(now["buffers"], before["buffers"])):
        out.append("buffers")
    for key in ("hooks", "modes", "attrs"):
        if now[key] != before[key]:
            out.append(key)
    return out


def clean_message(err: BaseException) -> Optional[str]:
    """Why an error message is not clean (``None`` when it is)."""
    msg = str(err)
    if not isinstance(err, ValueError):
        return f"{type(err).__name__} is not a ValueError"
    if "\n" in msg:
        return "multi-line message"
    if len(msg) < 40:
        return "message too short to name the cause"
    if any(f"{cls}(" in msg for cls in ("Conv2d", "Linear", "Sequential", "BatchNorm2d", "LayerNorm")):
        return "message pastes a module repr"
    return None


def check_model(name: str, kwargs: dict, size: int, limit: float, graph_limit: float) -> Dict[str, object]:
    """Prune one architecture and exercise it, or check that it failed cleanly; never raises."""
    out: Dict[str, object] = {"status": "failed", "before": None, "after": None, "macs": None, "reason": "",
                              "full": "", "where": "", "clean": False}
    stage = "create"
    t0 = time.perf_counter()
    model = before = None
    try:
        with time_limit(limit):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)
            model.train()
            x = torch.randn(2, 3, size, size)
            labels = torch.tensor([1, 7])
            out["before"] = _params(model)
            stage = "macs"
            macs_before = count_macs_params(model, x)["macs"]
            stage = "prune"
            before = fingerprint(model)
            t_prune = time.perf_counter()
            record = prune_channels(model, x, SPARSITY, measure="units", graph_time_limit=graph_limit)
            out["skipped"] = len(record.skipped)
            out["after"] = _params(model)
            if not out["after"] < out["before"]:
                raise AssertionError(f"parameter count did not decrease ({out['before']} -> {out['after']})")
            stage = "forward"
            model.train()
            model.zero_grad(set_to_none=True)
            y = model(x)
            if tuple(y.shape) != (2, CLASSES):
                raise AssertionError(f"output shape {tuple(y.shape)}, expected (2, {CLASSES})")
            if not bool(torch.isfinite(y).all()):
                raise AssertionError("non-finite outputs")
            stage = "backward"
            F.cross_entropy(y, labels).backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
            if not grads:
                raise AssertionError("backward produced no gradient")
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                raise AssertionError("non-finite gradients")
            stage = "eval forward"
            model.eval()
            with torch.no_grad():
                ye = model(x)
            if tuple(ye.shape) != (2, CLASSES):
                raise AssertionError(f"eval output shape {tuple(ye.shape)}, expected (2, {CLASSES})")
            stage = "macs after"
            out["macs"] = count_macs_params(model, x)["macs"] / macs_before
            if not out["macs"] < MACS_REDUCED:
                raise AssertionError(f"MACs not really reduced (after/before {out['macs']:.3f})")
            out["status"] = "ok"
            out["reason"] = f"{out['skipped']} groups skipped" if out["skipped"] else ""
    except (Exception, ModelTimeout) as err:  # noqa: BLE001 - every failure is recorded, none stops the run
        msg = " ".join(str(err).split())
        out["reason"] = f"{stage}: {type(err).__name__}: {msg[:110]}"
        out["full"] = f"{stage}: {type(err).__name__}: {msg}"
        out["where"] = _where(err)
        if stage == "prune" and not isinstance(err, ModelTimeout):
            seconds = time.perf_counter() - t_prune
            why = clean_message(err)
            changed = changes(model, before)
            late = isinstance(err, GraphTimeLimitError) and seconds > 1.5 * graph_limit + 5
            problems = ([why] if why else []) + ([f"model changed: {', '.join(changed)}"] if changed else []) + (
                [f"the time limit fired after {seconds:.0f} s"] if late else [])
            out["clean"] = not problems
            if problems:
                out["full"] += f" [UNCLEAN: {'; '.join(problems)}]"
    out["seconds"] = time.perf_counter() - t0
    if out["status"] != "ok":
        out["status"] = "clean fail" if out["clean"] else "UNCLEAN"
    return out


def _m(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def main() -> None:
    args = parser(__doc__).parse_args()
    start(args)
    names = [n for n, (_, _, _, quick) in MODELS.items() if quick or not args.quick]
    limit, graph_limit = (LIMIT_S / 2, 20.0) if args.quick else (LIMIT_S, GRAPH_LIMIT_S)
    rows: List[List[object]] = []
    runs: Dict[str, Dict[str, object]] = {}
    t_all = time.perf_counter()
    for name in names:
        family, kwargs, size, _ = MODELS[name]
        r = runs[name] = check_model(name, kwargs, size, limit, graph_limit)
        progress(f"{name}: {r['status']} in {r['seconds']:.1f}s" + (f" ({r['reason']})" if r["reason"] else ""))
        rows.append([name, family, r["status"], f"{_m(r['before'])} -> {_m(r['after'])}",
                     "-" if r["macs"] is None else f"{r['macs']:.3f}", f"{r['seconds']:.1f}", r["reason"] or "-"])
    total = time.perf_counter() - t_all

    ok = [n for n in names if runs[n]["status"] == "ok"]
    failed = [n for n in names if runs[n]["status"] != "ok"]
    clean = [n for n in failed if runs[n]["clean"]]
    families = sorted({MODELS[n][0] for n in names})
    ok_families = sorted({MODELS[n][0] for n in ok})
    missing = [f for f in REQUIRED if f not in ok_families and any(MODELS[n][0] == f for n in names)]
    rate = len(ok) / len(names)

    print(f"\nprune_channels({SPARSITY}, measure='units', graph_time_limit={graph_limit:g}) + forward + backward, "
          f"timm random init, {CLASSES} classes, batch 2 at {SIZE}px unless noted, CPU, {args.threads} threads, "
          f"{len(names)} models, {len(families)} families, {total:.0f}s\n")
    table(["model", "family", "status", "params M (before -> after)", "MACs after/before", "seconds", "reason"], rows)
    print(f"\npassed ({len(ok)}/{len(names)} = {rate:.0%}, {len(ok_families)} families): {', '.join(ok) or '-'}")
    print(f"failed ({len(failed)}, {len(clean)} cleanly):" + ("" if failed else " -"))
    for n in failed:
        r = runs[n]
        print(f"  {n} ({r['status']}, {r['seconds']:.1f}s): {r['full']}" + (f" [at {r['where']}]" if r["where"] else ""))
    print()
    if args.quick:
        met = rate >= PASS_RATE
        target("one-shot 50% pruning coverage", met,
               f"quick subset: {len(ok)}/{len(names)} = {rate:.0%} pass across {len(families)} families",
               f">= {PASS_RATE:.0%} pass (the full run also needs >= {MIN_MODELS} models, >= {MIN_FAMILIES} families)")
    else:
        met = rate >= PASS_RATE and len(names) >= MIN_MODELS and len(families) >= MIN_FAMILIES
        target("one-shot 50% pruning coverage", met,
               f"{len(ok)}/{len(names)} = {rate:.0%} pass across {len(families)} families",
               f">= {PASS_RATE:.0%} of >= {MIN_MODELS} models across >= {MIN_FAMILIES} families")
    target("failures are clean", len(clean) == len(failed),
           f"{len(clean)}/{len(failed)} failed cleanly (one-line ValueError naming the cause, model bitwise and "
           "structurally unchanged, within the time limit)", "100%")
    target("required families pass", not missing,
           "all pass" if not missing else f"missing: {', '.join(missing)}", ", ".join(REQUIRED))
    result("channel_coverage", {"ok": len(ok), "failed": len(failed), "clean": len(clean),
                                "unclean": len(failed) - len(clean), "models": len(names), "families": len(families),
                                "pass_rate": rate, "seconds": total, "threads": args.threads})


if __name__ == "__main__":
    main()
