"""Ablation of gradual magnitude pruning: what each setting of the recipe is worth.

Same task as bench/accuracy_vs_sparsity.py (CIFAR-10 subset, narrow ResNet, AdamW, cosine
learning rate, paired seeds), at 90% sparsity of the conv weights (``--levels`` for
others). Starting from the issue-2 recipe (``issue2``: Zhu & Gupta cubic ramp from 1/6 to
2/3 of training, 40 mask updates, hard masks, global ranking without a floor), each row
changes one thing:

- ``opt:keep``: pruned weights' optimizer moments are left as they are at a mask update
  (the core zeroes them). Hard masks zero the gradient and the weight of a pruned entry at
  every step and magnitude never revives a zero, so this changes nothing (bit-identical;
  tests/enforcement pins it).
- ``opt:reset``: every moment of every masked tensor (kept entries too) is zeroed at each
  mask update, as if the optimizer were rebuilt. With Adam's bias correction keyed to the
  global step this makes the next steps several times larger: a learning-rate bump.
- ``start=0``: the ramp starts at step 0 instead of 1/6 of training.
- ``end=1/2``, ``end=1/3``, ``end=5/6``: the ramp ends earlier (more steps to recover at the
  final mask) or later (denser for longer).
- ``updates=10``, ``every step``: masks recomputed 10 times along the ramp, or at every
  optimizer step (issue 2: 40 times).
- ``floor=5%``: every layer keeps at least 5% of its weights (global MP with a minimum).
- ``ste``: pruned weights keep their values and get gradients and weight decay (straight-
  through masks) and may return at the next update.
- ``lr constant``, ``MP lr constant``, ``dense lr constant``: the constant learning rate of
  the issue-2 bench instead of the cosine decay; ``lr constant + <row>``: a row's change
  at the constant rate.
- ``recipe: end=5/6, every step``: both changes that helped, the recipe
  bench/accuracy_vs_sparsity.py uses.
- ``dense 8 epochs``, ``MP 8 epochs``, ``recipe 8 epochs``: twice the epochs (the same
  fractions of the run), to tell the cost of pruning from a run too short to recover in.

Reference rows: ``dense``, ``ModelPruning`` (global L1 at the end of each of the first E-1
epochs, as in the main bench). Every row of a seed starts from the same initialisation and
sees the same batches and augmentations, so differences are paired: the table gives mean ±
standard error over seeds of the accuracy and of the paired differences to ``issue2``, to
``ModelPruning`` and to ``dense`` (each under the row's training change).

Runs are stored in bench/out/accuracy_vs_sparsity.jsonl, shared with the main bench and
keyed by what decides them, so ``--rows`` / ``--seed`` split the work over processes and
``--stored`` prints the table of the runs found there (each row over the seeds it has)
without training. All rows, 3 seeds: 72 runs of ~30 s CPU (~40 min on one thread);
``--quick``: 4 rows on the quick task, 1 seed, nothing stored, under 2 minutes.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, List, Optional, Tuple

import torch

from _common import progress, parser, result, start, table
from accuracy_vs_sparsity import STORE, Gradual, Runs, Setup, fmt, mean_se
from sparsity_core.enforcement.base import weight_targets
from sparsity_core.enforcement.hard import HardMask
from sparsity_core.masks import mask_optimizer_state_


class KeepState(HardMask):
    """Hard masks that leave the optimizer state alone when masks change."""

    reset_moments = False

    @torch.no_grad()
    def apply_masks(self, ctrl, previous) -> None:
        for t in weight_targets(ctrl):
            t.param.data.mul_(self.factor(ctrl, t))
            if self.reset_moments:
                for opt in ctrl.optimizers:
                    mask_optimizer_state_(opt, t.param, t, torch.zeros_like(ctrl.masks[t.name]))


class ResetState(KeepState):
    """Hard masks that zero every moment of a masked tensor at each mask update."""

    reset_moments = True


ISSUE2 = Gradual(start=1 / 6, end=2 / 3, update_every=None, updates=40)
CONSTANT = {"lr_schedule": "constant"}
ROWS: Dict[str, Tuple[str, Optional[Gradual], dict]] = {
    "dense": ("dense", None, {}),
    "ModelPruning": ("ModelPruning", None, {}),
    "issue2": ("ours", ISSUE2, {}),
    "opt:keep": ("ours", dataclasses.replace(ISSUE2, enforcement=KeepState), {}),
    "opt:reset": ("ours", dataclasses.replace(ISSUE2, enforcement=ResetState), {}),
    "start=0": ("ours", dataclasses.replace(ISSUE2, start=0.0), {}),
    "end=1/2": ("ours", dataclasses.replace(ISSUE2, end=0.5), {}),
    "end=1/3": ("ours", dataclasses.replace(ISSUE2, end=1 / 3), {}),
    "end=5/6": ("ours", dataclasses.replace(ISSUE2, end=5 / 6), {}),
    "updates=10": ("ours", dataclasses.replace(ISSUE2, updates=10), {}),
    "every step": ("ours", dataclasses.replace(ISSUE2, updates=None, update_every=1), {}),
    "floor=5%": ("ours", dataclasses.replace(ISSUE2, floor=0.05), {}),
    "ste": ("ours", dataclasses.replace(ISSUE2, enforcement="ste"), {}),
    "lr constant": ("ours", ISSUE2, CONSTANT),
    "MP lr constant": ("ModelPruning", None, CONSTANT),
    "dense lr constant": ("dense", None, CONSTANT),
    "recipe: end=5/6, every step": ("ours", Gradual(), {}),
}
# the issue-2 bench trained at a constant learning rate: the recipe's settings again there
for _row in ("every step", "end=1/2", "end=5/6", "recipe: end=5/6, every step"):
    ROWS[f"lr constant + {_row}"] = (ROWS[_row][0], ROWS[_row][1], CONSTANT)
# twice the epochs: is the gap to dense the pruning, or a run too short to recover in?
LONGER = {"epochs": 8}
ROWS.update({"dense 8 epochs": ("dense", None, LONGER), "MP 8 epochs": ("ModelPruning", None, LONGER),
             "recipe 8 epochs": ("ours", Gradual(), LONGER)})


def reference(row: str, base: str) -> str:
    """The row with ``row``'s training change and ``base``'s method and recipe (``base`` itself
    for a row without a change)."""
    change = ROWS[row][2]
    method, recipe, _ = ROWS[base]
    return next(name for name, (m, r, c) in ROWS.items() if m == method and r == recipe and c == change)


def main():
    p = parser(__doc__, seeds=True)
    p.add_argument("--levels", type=float, nargs="+", default=[0.9])
    p.add_argument("--rows", default=";".join(ROWS), help="semicolon-separated rows to run (default: all)")
    p.add_argument("--seed", type=int, default=None, help="run only this seed (to split work over processes)")
    p.add_argument("--stored", action="store_true", help="print the stored runs only; train nothing")
    args = p.parse_args()
    start(args)
    rows = [r.strip() for r in args.rows.split(";") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    base = Setup()
    if args.quick:
        base = dataclasses.replace(base, n_train=2000, n_test=2000, epochs=2)
        rows = [r for r in rows if r in ("dense", "ModelPruning", "issue2", "recipe: end=5/6, every step")]
    seeds = [args.seed] if args.seed is not None else list(range(args.seeds or (1 if args.quick else 3)))
    runs = Runs(None if args.quick else STORE, base)
    stored = runs.stored()
    began = time.perf_counter()
    acc: Dict[Tuple[str, float], Dict[int, float]] = {}
    cpu: Dict[str, List[float]] = {}
    for seed in seeds:
        for level in args.levels:
            for row in rows:
                method, recipe, change = ROWS[row]
                setup, recipe = dataclasses.replace(base, **change), recipe or Gradual()
                if args.stored:
                    r = stored.get(Runs.key(method, level, seed, setup, recipe, 32))
                    if r is None:
                        continue
                else:
                    r, new = runs.get(method, level, seed, setup, recipe)
                    if new:
                        progress(f"seed {seed} {level:.0%} {row}: {r['acc']:.2f}% (sparsity {r['sparsity']:.3f}, "
                                 f"{r['wall']:.0f} s wall, {r['cpu']:.0f} s CPU)")
                acc.setdefault((row, level), {})[seed] = r["acc"]
                cpu.setdefault(row, []).append(r["cpu"])
    print(f"\nGradual magnitude pruning ablation: CIFAR-10 ResNet, {base.n_train} train / {base.n_test} test, "
          f"{base.epochs} epochs, {args.threads} thread(s), {time.perf_counter() - began:.0f} s wall this call"
          f"{' (stored runs only)' if args.stored else ''}\n")
    header = ["row", "level", "seeds", "acc %", "- issue2 (paired)", "- ModelPruning (paired)", "- dense (paired)",
              "CPU s/run"]
    out_rows, values = [], {}
    for level in args.levels:
        for row in rows:
            a = acc.get((row, level))
            if not a:
                continue
            cells = [row, f"{level:.0%}", str(len(a)), fmt(list(a.values()))]
            for base in ("issue2", "ModelPruning", "dense"):
                skip = ROWS[row][0] == "dense" and base == "issue2"
                try:  # a row with a training change compares with the references under that change
                    ref = reference(row, base)
                except StopIteration:
                    ref = None
                b = acc.get((ref, level))
                if b is None or row == ref or skip:
                    cells.append("-")
                else:
                    cells.append(fmt([a[s] - b[s] for s in a if s in b], signed=True))
            cells.append(f"{sum(cpu[row]) / len(cpu[row]):.0f}")
            out_rows.append(cells)
            name = "".join(c if c.isalnum() else "_" for c in row)
            values[f"{name}_{int(level * 100)}"] = mean_se(list(a.values()))[0]
    table(header, out_rows)
    print("\n(mean ± standard error over seeds; paired differences over the seeds both rows have; a row with a "
          "training change (constant learning rate, 8 epochs) is compared with the references under that change)\n")
    result("gradual_ablation", values)


if __name__ == "__main__":
    main()
