"""Bad-input sweep over the continual plugin's entry points (issue 19, item 5)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_lightning")

from sparsity_plugins.continual import (
    WSN,
    ContinualModule,
    PackNet,
    ReservoirBuffer,
    TaskAwareDynamicMasks,
    TaskStream,
    split_classes,
)

from sparsity_core import Host

from ._sweep import Case, params, run

X = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(20) % 4
TRAIN, TEST = (X, Y), (X[:8], Y[:8])


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))


def stream(tasks, scenario="class", train=TRAIN, test=TEST, **kw):
    return lambda _: TaskStream(train, test, tasks, scenario=scenario, **kw)


CASES = [
    # -- TaskStream / split_classes
    Case("stream-overlapping-classes", stream([[0, 1], [1, 2]]), ValueError,
         r"class 1 is in task 0 and task 1: a class-incremental split needs disjoint tasks"),
    Case("stream-empty-task", stream([[0, 1], []]), ValueError,
         r"task 1 is empty: every task needs at least one class, got \[\]"),
    Case("stream-no-tasks", stream([]), ValueError, r"tasks must be a non-empty list of class lists, got \[\]"),
    Case("stream-class-without-examples", stream([[0, 1], [7]]), ValueError,
         r"task 1 has no training example of class\(es\) \[7\]"),
    Case("stream-class-twice", stream([[0, 0]]), ValueError, r"task 0 lists a class twice: \[0, 0\]"),
    Case("stream-negative-class", stream([[-1]]), ValueError, r"class of task 0 must be an int >= 0, got -1"),
    Case("stream-unknown-scenario", stream([[0]], scenario="domain"), ValueError,
         r"scenario must be one of class, task; got 'domain'"),
    Case("stream-labels-shorter-than-inputs", stream([[0]], train=(X, Y[:5])), ValueError,
         r"train: 20 inputs but 5 labels"),
    Case("stream-batch-size-zero", stream([[0]], batch_size=0), ValueError, r"batch_size must be an int >= 1, got 0"),
    Case("stream-task-without-test-examples", stream([[0], [1]], test=(X[:8], torch.zeros(8, dtype=torch.long))),
         ValueError, r"test: task\(s\) \[1\] have no test example of their classes"),
    Case("split-classes-uneven", lambda _: split_classes(10, 3), ValueError,
         r"10 classes do not split into 3 equal tasks"),
    Case("split-classes-more-tasks-than-classes", lambda _: split_classes(3, 5), ValueError,
         r"num_tasks must be an int >= 1 <= 3, got 5"),
    Case("split-classes-zero", lambda _: split_classes(0, 1), ValueError, r"num_classes must be an int >= 1, got 0"),
    # -- replay: ContinualModule / ReservoirBuffer
    Case("module-replay-buffer-zero", lambda m: ContinualModule(m, 4, (4,), method="er", buffer_size=0), ValueError,
         r"er replays examples: buffer_size must be an int >= 1, got 0", build=net),
    Case("module-derpp-buffer-zero", lambda m: ContinualModule(m, 4, (4,), method="derpp", buffer_size=0),
         ValueError, r"derpp replays examples: buffer_size must be an int >= 1, got 0", build=net),
    Case("module-method-unknown", lambda m: ContinualModule(m, 4, (4,), method="ewc"), ValueError,
         r"method must be one of none, er, derpp; got 'ewc'", build=net),
    Case("module-alpha-negative", lambda m: ContinualModule(m, 4, (4,), alpha=-1), ValueError,
         r"alpha must be a number >= 0, got -1", build=net),
    Case("module-lr-zero", lambda m: ContinualModule(m, 4, (4,), lr=0), ValueError, r"lr must be a number > 0, got 0",
         build=net),
    Case("module-replay-batch-zero", lambda m: ContinualModule(m, 4, (4,), replay_batch_size=0), ValueError,
         r"replay_batch_size must be an int >= 1, got 0", build=net),
    Case("buffer-size-zero", lambda _: ReservoirBuffer(0, (4,), 4), ValueError,
         r"buffer size must be an int >= 1, got 0"),
    # -- SparCL TDM, PackNet, WSN
    Case("tdm-inverted-sparsity-bounds", lambda _: TaskAwareDynamicMasks(sparsity=0.8, prune_sparsity=0.5),
         ValueError, r"sparsity bounds inverted: prune_sparsity \(0.5\) must be greater than sparsity \(0.8\)"),
    Case("tdm-equal-sparsity-bounds", lambda _: TaskAwareDynamicMasks(sparsity=0.8, prune_sparsity=0.8),
         ValueError, r"sparsity bounds inverted"),
    Case("tdm-every-zero", lambda _: TaskAwareDynamicMasks(every=0), ValueError, r"every must be an int >= 1, got 0"),
    Case("tdm-gradient-keep-above-one", lambda _: TaskAwareDynamicMasks(gradient_keep=1.5), ValueError,
         r"gradient keep fraction must be a number in \(0, 1\], got 1.5"),
    Case("tdm-lambda-negative", lambda _: TaskAwareDynamicMasks(lam=-1), ValueError,
         r"importance weight λ must be a number >= 0, got -1"),
    Case("packnet-keep-zero", lambda _: PackNet(keep=0), ValueError, r"keep must be a number in \(0, 1\], got 0"),
    Case("wsn-keep-above-one", lambda _: WSN(keep=1.5), ValueError, r"keep must be a number in \(0, 1\], got 1.5"),
    Case("packnet-include-matches-nothing", lambda m: PackNet(include=["nomatch"]).attach(Host(m)), ValueError,
         r"include pattern 'nomatch' matches no prunable module", build=net),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case) -> None:
    run(case)
