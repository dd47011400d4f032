"""Coverage of one-shot channel/head pruning over timm architectures.

For every architecture (random init, 10 classes, 2x3x64x64 inputs; fixed-size models such
as ViT, DeiT, Swin and LeViT are built with ``img_size=64``) the benchmark runs
``prune_channels(model, x, 0.5, measure="units")`` (50 % of the channels and attention heads
of every group, uniform allocation, group L2, channel counts rounded to 8), then checks on
the pruned model: fewer parameters than before, a training-mode forward on a batch of 2
with outputs shaped (2, 10) and finite, ``loss.backward()`` filling finite gradients, and
an eval-mode forward. Every exception is caught per model and recorded as one line (the
stage, the exception type and the first 120 characters of its message; a
``GroupTraceError`` keeps its whole message in the failure list), with the deepest frame in
the plugin and, where the error arose deeper, the deepest frame overall. A model that runs
past 60 s (``--quick``: 30 s; everything included) is stopped and recorded as failed
(needs SIGALRM).

MACs before and after are counted with Torch-Pruning's counter (batch 1). ``--quick`` runs
a representative subset of 14 models (one per family) that still covers every required
family.

Target (issue: coverage): successes >= 12 across >= 10 families, with resnet, resnext,
regnet, efficientnet, mobilenetv3, convnext, vit and deit all among the successes.
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
from sparsity_plugins.vision import GroupTraceError, prune_channels
from sparsity_plugins.vision.report import count_macs_params

SPARSITY = 0.5
SIZE = 64
CLASSES = 10
LIMIT_S = 60.0  # per model, everything included (--quick: 30 s)
REQUIRED = ("resnet", "resnext", "regnet", "efficientnet", "mobilenetv3", "convnext", "vit", "deit")

# name -> (family, extra create_model kwargs, in --quick)
MODELS: Dict[str, Tuple[str, dict, bool]] = {
    "resnet18": ("resnet", {}, True),
    "resnet50": ("resnet", {}, False),
    "resnext26ts": ("resnext", {}, True),
    "regnetx_002": ("regnet", {}, True),
    "regnety_002": ("regnet", {}, False),
    "efficientnet_b0": ("efficientnet", {}, True),
    "mobilenetv3_large_100": ("mobilenetv3", {}, False),
    "mobilenetv3_small_050": ("mobilenetv3", {}, True),
    "convnext_atto": ("convnext", {}, True),
    "vit_tiny_patch16_224": ("vit", {"img_size": SIZE}, True),
    "deit_tiny_patch16_224": ("deit", {"img_size": SIZE}, True),
    "densenet121": ("densenet", {}, False),
    "ghostnet_100": ("ghostnet", {}, True),
    "mobilevit_xs": ("mobilevit", {}, True),
    "swin_tiny_patch4_window7_224": ("swin", {"img_size": SIZE, "window_size": 4}, False),
    "levit_128s": ("levit", {"img_size": SIZE}, True),
    "repvgg_a0": ("repvgg", {}, True),
    "rexnet_100": ("rexnet", {}, False),
    "dla34": ("dla", {}, True),
    "edgenext_xx_small": ("edgenext", {}, True),
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


def check_model(name: str, kwargs: dict, limit: float) -> Dict[str, object]:
    """Prune one architecture and exercise it; never raises."""
    out: Dict[str, object] = {"status": "failed", "before": None, "after": None, "macs": None, "reason": "",
                              "full": "", "where": ""}
    stage = "create"
    t0 = time.perf_counter()
    try:
        with time_limit(limit):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)
            model.train()
            x = torch.randn(2, 3, SIZE, SIZE)
            labels = torch.tensor([1, 7])
            out["before"] = _params(model)
            stage = "macs"
            macs_before = count_macs_params(model, x)["macs"]
            stage = "prune"
            prune_channels(model, x, SPARSITY, measure="units")
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
            loss = F.cross_entropy(y, labels)
            loss.backward()
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
            out["status"] = "ok"
    except (Exception, ModelTimeout) as err:  # noqa: BLE001 - every failure is recorded, none stops the run
        msg = " ".join(str(err).split())
        out["reason"] = f"{stage}: {type(err).__name__}: {msg[:120]}"
        out["full"] = f"{stage}: {type(err).__name__}: {msg if isinstance(err, GroupTraceError) else msg[:120]}"
        out["where"] = _where(err)
    out["seconds"] = time.perf_counter() - t0
    return out


def _m(n: Optional[int]) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def main() -> None:
    args = parser(__doc__).parse_args()
    start(args)
    names = [n for n, (_, _, quick) in MODELS.items() if quick or not args.quick]
    rows: List[List[object]] = []
    runs: Dict[str, Dict[str, object]] = {}
    t_all = time.perf_counter()
    for name in names:
        family, kwargs, _ = MODELS[name]
        r = runs[name] = check_model(name, kwargs, LIMIT_S / 2 if args.quick else LIMIT_S)
        progress(f"{name}: {r['status']} in {r['seconds']:.1f}s" + (f" ({r['reason']})" if r["reason"] else ""))
        rows.append([name, family, r["status"], f"{_m(r['before'])} -> {_m(r['after'])}",
                     "-" if r["macs"] is None else f"{r['macs']:.3f}", f"{r['seconds']:.1f}", r["reason"] or "-"])
    total = time.perf_counter() - t_all

    ok = [n for n in names if runs[n]["status"] == "ok"]
    failed = [n for n in names if runs[n]["status"] != "ok"]
    families = sorted({MODELS[n][0] for n in ok})
    missing = [f for f in REQUIRED if f not in families]

    print(f"\nprune_channels({SPARSITY}, measure='units') + forward + backward, timm random init, "
          f"{CLASSES} classes, 2x3x{SIZE}x{SIZE}, CPU, {args.threads} threads, {len(names)} models, {total:.0f}s\n")
    table(["model", "family", "status", "params M (before -> after)", "MACs after/before", "seconds", "reason"], rows)
    print(f"\nsuccesses ({len(ok)}, {len(families)} families): {', '.join(ok) or '-'}")
    print(f"failures ({len(failed)}):" + ("" if failed else " -"))
    for n in failed:
        r = runs[n]
        print(f"  {n}: {r['full']}" + (f" [at {r['where']}]" if r["where"] else ""))
    print()
    met = len(ok) >= 12 and len(families) >= 10 and not missing
    measured = f"{len(ok)} successes across {len(families)} families"
    if missing:
        measured += f"; required families missing: {', '.join(missing)}"
    target("one-shot 50% pruning + forward + backward coverage", met, measured,
           ">= 12 successes across >= 10 families incl. " + ", ".join(REQUIRED))
    result("channel_coverage", {"ok": len(ok), "failed": len(failed), "families": len(families),
                                "models": len(names), "seconds": total, "threads": args.threads})


if __name__ == "__main__":
    main()
