"""Lottery tickets at 90/95/98% sparsity: IMP with rewinding vs Concrete Ticket Search (CTS).

MNIST (../shared/data), the CNN of bench/_sparse_cnn.py (two conv + BN layers, fc 512→128,
dense classifier), SGD with momentum and the UBA learning rate over each training budget.

- IMP-rewind (Frankle et al., 2020): the core's controller with the ``Iterative`` schedule
  and ``rewind_step``: train a round, prune by global magnitude, rewind the kept weights to
  step ``k``, train again. Rounds prune 20% of the remaining weights (50% with ``--quick``)
  until each requested level, which is reached exactly. The ticket at a level is evaluated at
  the end of the round that trains it; its time is the cumulative training time up to then
  (every round before it is part of the cost of finding it).
- CTS (Arora & Teuscher, 2025) near initialization: the dense model trained to IMP's rewind
  step ``k`` (the very weights IMP rewinds to), then the ``"cts"`` program: reverse-KL search
  of concrete mask logits with GradBalance, one-shot pruning to exactly the level, one
  training budget from there. Its time is the ``k`` dense steps + search + training.

Both start from the same initialization (per seed) and train every ticket for the same
number of steps from the same rewind point. Times exclude evaluation; the target uses the
process's CPU time (with ``--threads 1`` the wall time of an idle machine; unlike wall time it
does not depend on what else runs on a shared machine while one method runs); wall time is
reported beside it.

Target (issue 18): CTS within 1 pt of IMP-rewind in <= 1/3 of IMP's time, at every level.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from _common import mean_std, parser, progress, result, start, table, target
from _data import mnist_tensors
from _sparse_cnn import accuracy, cnn, train
from sparsity_core import Host, Iterative, SparsityController, discover_targets
from sparsity_core.tickets import ConcreteTicketSearch

LEVELS = (0.9, 0.95, 0.98)


@dataclass(kw_only=True)
class LevelRounds(Iterative):
    """The core's IMP schedule with an explicit sparsity after each round (``levels``)."""

    levels: Tuple[float, ...] = (0.5, 0.75)

    def __post_init__(self) -> None:
        self.rounds = len(self.levels)
        self.final_sparsity = self.levels[-1]
        super().__post_init__()

    def value(self, step: int) -> float:
        r = self.round_at(step)
        return self.levels[r - 1] if r else 0.0


def imp_levels(rate: float) -> List[float]:
    """Rounds pruning ``rate`` of the remaining weights, clipped to land on every level."""
    out, s = [], 0.0
    for level in LEVELS:
        while True:
            s = 1 - (1 - s) * (1 - rate)
            if s >= level - 1e-9:
                out.append(level)
                s = level
                break
            out.append(round(s, 6))
    return out


class Clock:
    """Wall-clock and CPU seconds of a method, with evaluation left out (``stop`` / ``start``)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._since = (0.0, 0.0)

    def start(self) -> None:
        self._since = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        self.wall += time.perf_counter() - self._since[0]
        self.cpu += time.process_time() - self._since[1]


def run_imp(seed: int, data, test, steps: int, rate: float, rewind: int) -> Dict[float, Tuple[float, float, float]]:
    """IMP-rewind through every level; ``{level: (test acc, wall s, CPU s)}`` of its ticket."""
    torch.manual_seed(seed)
    model = cnn()
    levels = imp_levels(rate)
    sched = LevelRounds(levels=tuple(levels), steps_per_round=steps, rewind_step=rewind)
    ctrl = SparsityController(discover_targets(model), sched, criterion="magnitude", allocator="global",
                              model=model)
    out, clock = {}, Clock()
    for r in range(len(levels) + 1):  # round r trains the ticket pruned at the end of round r - 1
        first = 1 + r * steps

        def evaluate_ticket(step: int, r=r, first=first) -> None:
            if step == first + steps - 1 and r >= 1 and levels[r - 1] in LEVELS:
                clock.stop()
                out[levels[r - 1]] = (accuracy(model, *test), clock.wall, clock.cpu)
                clock.start()

        clock.start()
        train(model, ctrl, data, steps, seed=seed * 100 + r, start=first, on_step=evaluate_ticket)
        clock.stop()
    return out


def run_cts(seed: int, level: float, data, test, steps: int, rewind: int,
            search_steps: int) -> Tuple[float, float, float]:
    """CTS near initialization: the dense model trained to the rewind step (the very weights
    IMP rewinds to: same seed, batches and learning rates), the mask searched there, the
    ticket trained for one budget from there. Returns (test acc, wall s, CPU s)."""
    torch.manual_seed(seed)
    model = cnn()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data[1]), generator=g)[: 128 * search_steps]
    batches = [(data[0][order[i:i + 128]], data[1][order[i:i + 128]]) for i in range(0, len(order), 128)]
    clock = Clock()
    clock.start()
    train(model, None, data, rewind, seed=seed * 100, budget=steps)
    program = ConcreteTicketSearch(sparsity=level, steps=search_steps, batches=batches, seed=seed)
    program.attach(Host(model))
    program.start(0)  # search the mask on the weights of the rewind step, prune once
    train(model, program.controller, data, steps, seed=seed * 100 + 1)
    clock.stop()
    return accuracy(model, *test), clock.wall, clock.cpu


def main():
    args = parser(__doc__, seeds=True).parse_args()
    start(args)
    n_train, n_test, epochs, rate, search, seeds = (
        (6000, 4000, 2, 0.5, 60, args.seeds or 1) if args.quick else (20000, 10000, 3, 0.2, 200, args.seeds or 2))
    x, y = mnist_tensors(train=True)
    xt, yt = mnist_tensors(train=False)
    data, test = (x[:n_train], y[:n_train]), (xt[:n_test], yt[:n_test])
    steps = epochs * ((n_train + 127) // 128)
    rewind = max(1, steps // 10)
    began = time.perf_counter()
    acc, wall, cpu = {}, {}, {}

    def record(key, a, w, c):
        acc.setdefault(key, []).append(a)
        wall.setdefault(key, []).append(w)
        cpu.setdefault(key, []).append(c)
        progress(f"seed {seed} {key[0]} {key[1]:.0%}: {a:.2f}% in {w:.1f} s wall, {c:.1f} s CPU")

    for seed in range(seeds):
        for level, (a, w, c) in run_imp(seed, data, test, steps, rate, rewind).items():
            record(("IMP-rewind", level), a, w, c)
        for level in LEVELS:
            record(("CTS", level), *run_cts(seed, level, data, test, steps, rewind, search))
    mean, std = mean_std(acc)
    wmean, cmean = mean_std(wall)[0], mean_std(cpu)[0]
    print(f"\nMNIST CNN, {n_train} training images, {steps} steps per ticket training, IMP rounds of {rate:.0%} "
          f"(rewind to step {rewind}), CTS search {search} steps, {seeds} seed(s), {args.threads} thread(s), "
          f"{time.perf_counter() - began:.0f} s; test accuracy on {n_test} images\n")
    rows = []
    for level in LEVELS:
        for method in ("IMP-rewind", "CTS"):
            k = (method, level)
            rows.append([method, f"{level:.0%}", f"{mean[k]:.2f} ± {std[k]:.2f}", f"{wmean[k]:.1f}",
                         f"{cmean[k]:.1f}"])
    table(["method", "sparsity", "test acc %", "wall time s", "CPU time s"], rows)
    print()
    values = {"seeds": seeds, "steps": steps}
    for level in LEVELS:
        imp, cts = ("IMP-rewind", level), ("CTS", level)
        gap, ratio, wall_ratio = mean[imp] - mean[cts], cmean[cts] / cmean[imp], wmean[cts] / wmean[imp]
        target(f"CTS within 1 pt of IMP-rewind in <= 1/3 of its time at {level:.0%}", gap <= 1.0 and ratio <= 1 / 3,
               f"gap {gap:.2f} pt, CPU time ratio {ratio:.2f} (wall {wall_ratio:.2f})", "<= 1.00 pt, <= 0.33")
        tag = round(level * 100)
        values.update({f"imp_{tag}": mean[imp], f"cts_{tag}": mean[cts], f"time_ratio_{tag}": ratio,
                       f"wall_ratio_{tag}": wall_ratio})
    result("tickets", values)


if __name__ == "__main__":
    main()
