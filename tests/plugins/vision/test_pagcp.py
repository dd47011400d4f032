"""PAGCP: the joint saliency, the performance-aware oracle, the FLOPs target, bad input."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("torch_pruning", reason="the vision extra (torch-pruning) is not installed")

from sparsity_core.allocators.budget import Budget  # noqa: E402
from sparsity_core.criteria.base import ScoreContext  # noqa: E402
from sparsity_core.registry import ALLOCATORS, CRITERIA  # noqa: E402
from sparsity_plugins.vision import PAGCP, JointSaliency, discover_channel_groups, pagcp_prune  # noqa: E402
from sparsity_plugins.vision.report import count_macs_params  # noqa: E402
from sparsity_plugins.vision.task_probe import group_task_evaluator, task_loss_probe  # noqa: E402


def chain(widths=(3, 4, 4, 2)):
    """Linear a -> ReLU -> Linear b -> ReLU -> head: groups '0:out' (a's outputs), '2:out' (b's)."""
    torch.manual_seed(0)
    w = widths
    return nn.Sequential(nn.Linear(w[0], w[1]), nn.ReLU(), nn.Linear(w[1], w[2]), nn.ReLU(), nn.Linear(w[2], w[3]))


def zero_rows(weight):
    return float((weight.detach() == 0).all(1).float().mean())


def constructed_probe(model):
    """Task 'seg' needs every channel of layer b (+1 loss per pruned fraction); 'cls' barely notices."""
    def probe():
        za, zb = zero_rows(model[0].weight), zero_rows(model[2].weight)
        return {"cls": 1.0 + 0.01 * (za + zb), "seg": 1.0 + zb}
    return probe


def setup(budget_keep_units):
    model = chain()
    groups = discover_channel_groups(model, torch.randn(2, 3))
    targets = {t.name: t for t in groups.targets}
    order = [targets["2:out"], targets["0:out"]]  # b first: the layer that hurts 'seg'
    scores = {t.name: torch.arange(t.num_units, dtype=torch.float32) for t in order}
    budget = Budget(sparsity=1 - budget_keep_units / 8, measure="units")
    return model, order, scores, budget


def test_a_layer_whose_pruning_breaks_one_tasks_threshold_is_not_pruned():
    model, order, scores, budget = setup(6)
    before = copy.deepcopy(model.state_dict())
    alloc = PAGCP(probe=constructed_probe(model), threshold=0.05, order="given")
    keep = alloc.allocate(order, scores, budget)
    assert keep == {"2:out": 4, "0:out": 2}  # b untouched, the budget met from a alone
    assert alloc.last_capped == {"2:out": "seg"}
    assert alloc.last_threshold == 1.0 and alloc.last_rounds == 1
    assert alloc.last_losses == pytest.approx({"cls": 1.005, "seg": 1.0})
    for k, v in model.state_dict().items():  # every probe restored the weights bit-exactly
        assert torch.equal(v, before[k]), k


def test_thresholds_relax_until_the_budget_is_met():
    model, order, scores, budget = setup(4)  # a alone can give 3 units: b must lose one (+25 % 'seg')
    alloc = PAGCP(probe=constructed_probe(model), threshold=0.05, relax=2.0, refine=0, order="given")
    keep = alloc.allocate(order, scores, budget)
    assert keep == {"2:out": 3, "0:out": 1}
    # the refused ratio needs scale 0.25 / 0.05 = 5 > 2: the second sweep jumps there
    assert alloc.last_threshold == pytest.approx(5.0) and alloc.last_rounds == 2
    assert alloc.last_capped == {"2:out": "seg"}  # the second unit of b would cost 'seg' 50 %
    alloc = PAGCP(probe=constructed_probe(model), threshold=0.05, relax=8.0, refine=0, order="given")
    assert alloc.allocate(order, scores, budget) == {"2:out": 3, "0:out": 1}
    assert alloc.last_threshold == 8.0 and alloc.last_rounds == 2  # ×8 is more than the jump
    alloc = PAGCP(probe=constructed_probe(model), threshold=0.05, relax=8.0, refine=3, order="given")
    assert alloc.allocate(order, scores, budget) == {"2:out": 3, "0:out": 1}
    # bisection on log2 τ-scale between 0 and 3: 1.5 misses, 2.25 misses (τ 0.24), 2.625 meets (τ 0.31)
    assert alloc.last_threshold == pytest.approx(2 ** 2.625) and alloc.last_rounds == 5


def test_without_thresholds_the_last_sweep_meets_any_feasible_budget():
    model, order, scores, budget = setup(2)
    alloc = PAGCP(probe=constructed_probe(model), threshold=0.01, max_rounds=1, order="given")
    assert alloc.allocate(order, scores, budget) == {"2:out": 1, "0:out": 1}
    assert alloc.last_threshold == float("inf") and alloc.last_rounds == 3


def test_only_the_capping_tasks_thresholds_relax():
    model, order, scores, budget = setup(4)  # as above: only 'seg' caps a group
    alloc = PAGCP(probe=constructed_probe(model), threshold=0.05, relax=2.0, refine=0, order="given")
    alloc.allocate(order, scores, budget)
    assert alloc.last_scales == pytest.approx({"cls": 1.0, "seg": 5.0})  # 'cls' keeps τ = 0.05 (its loss moves 1 %)
    everyone = PAGCP(probe=constructed_probe(model), threshold=0.05, relax=2.0, refine=0, order="given",
                     relax_tasks="all")
    assert everyone.allocate(order, scores, budget) == {"2:out": 3, "0:out": 1}
    assert everyone.last_scales == pytest.approx({"cls": 2.0, "seg": 5.0}) and everyone.last_rounds == 2


def test_a_sweep_no_task_capped_goes_straight_to_the_sweep_without_thresholds(caplog):
    model, order, scores, budget = setup(2)  # the grid's one ratio (0.25) leaves 6 of 8 units: above 2
    alloc = PAGCP(probe=constructed_probe(model), threshold=100.0, ratios=(0.25,), order="given")
    with caplog.at_level("WARNING"):
        assert alloc.allocate(order, scores, budget) == {"2:out": 1, "0:out": 1}  # the floors
    assert alloc.last_rounds == 2 and alloc.last_threshold == float("inf")
    assert "no task capped a group" in caplog.text
    everyone = PAGCP(probe=constructed_probe(model), threshold=100.0, ratios=(0.25,), order="given", relax_tasks="all")
    assert everyone.allocate(order, scores, budget) == {"2:out": 1, "0:out": 1} and everyone.last_rounds == 2


def test_per_task_thresholds_and_the_macs_order():
    model, order, scores, budget = setup(6)
    alloc = PAGCP(probe=constructed_probe(model), threshold={"cls": 0.05}, order="macs")  # 'seg' unchecked
    keep = alloc.allocate(order, scores, budget)
    assert sum(keep.values()) == 6 and alloc.last_capped == {}
    assert alloc.tau("seg", 0, 1.0) is None and alloc.tau("cls", 2, 1.0) == pytest.approx(0.05)
    assert PAGCP(threshold=0.1, threshold_decay=0.5).tau("x", 2, 2.0) == pytest.approx(0.05)


def test_joint_saliency_exact_values():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False), nn.ReLU(),
                          nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        model[4].weight.copy_(torch.tensor([[0.5, 3.0]]))
    groups = {t.name: t for t in discover_channel_groups(model, torch.randn(2, 2)).targets}
    crit = CRITERIA.build("joint_saliency")
    assert isinstance(crit, JointSaliency)
    assert crit.score(groups["0:out"], ScoreContext()).tolist() == [5.0, 2.0]  # ‖a row‖·‖b column‖
    assert crit.score(groups["2:out"], ScoreContext()).tolist() == [0.5, 6.0]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({"a": nn.Linear(16, 3), "b": nn.Linear(16, 2)})

    def get_classifier(self):
        return self.heads

    def forward(self, x):
        z = self.backbone(x)
        return {t: h(z) for t, h in self.heads.items()}


def task_losses(model, batch):
    x, y = batch
    out = model(x)
    return {t: F.cross_entropy(out[t], y[t]) for t in out}


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 8, 8, generator=g)
    return [(x, {"a": torch.randint(0, 3, (16,), generator=g), "b": torch.randint(0, 2, (16,), generator=g)})]


def test_pagcp_prune_meets_the_macs_target_and_removes_channels():
    model, batches, example = TwoHeads(), data(), torch.randn(1, 1, 8, 8)
    dense = count_macs_params(model, example)["macs"]
    record, alloc = pagcp_prune(model, example, batches, task_losses, sparsity=0.5, threshold=0.02)
    assert count_macs_params(model, example)["macs"] <= 0.5 * dense + 1e-6
    assert set(alloc.last_losses) == {"a", "b"} and alloc.evaluations >= 2
    assert sum(len(v) for v in record.kept.values()) < 24
    assert set(model(example)) == {"a", "b"}
    assert "pagcp" in ALLOCATORS.names()


def test_built_by_name_the_core_one_shot_driver_gives_it_a_single_loss_probe():
    from sparsity_core.oneshot import one_shot_prune

    model, batches = TwoHeads(), data()
    groups = discover_channel_groups(model, torch.randn(1, 1, 8, 8))
    loss = lambda m, b: sum(task_losses(m, b).values())  # noqa: E731
    before = copy.deepcopy(model.state_dict())
    result = one_shot_prune(model, groups.targets, batches, 0.5, criterion="joint_saliency", allocator="pagcp",
                            loss_fn=loss, apply=False)
    assert 0.45 <= result.report["global"] <= 0.55  # first-order units here (no channel cost model given)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bad_input_raises_before_any_change():
    for kwargs in ({"threshold": 0}, {"threshold": {}}, {"ratios": [0.5, 0.2]}, {"ratios": [1.0]},
                   {"order": "flops"}, {"relax": 1.0}, {"relax_tasks": "some"}, {"max_rounds": -1}, {"refine": 1.5},
                   {"probe": 3}, {"threshold_decay": 0}):
        with pytest.raises(ValueError):
            PAGCP(**kwargs)
    model, order, scores, budget = setup(6)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="needs probe"):
        PAGCP(order="given").allocate(order, scores, budget)
    with pytest.raises(ValueError, match="infeasible"):
        PAGCP(probe=constructed_probe(model), min_keep_units=3).allocate(order, scores, Budget(sparsity=0.5))
    with pytest.raises(ValueError, match="losses must be finite"):
        PAGCP(probe=lambda: {"cls": float("nan")}).allocate(order, scores, budget)
    with pytest.raises(ValueError, match="channel groups"):
        group_task_evaluator([object()], lambda: 1.0)
    calls = iter([{"cls": 1.0}, {"cls": -1.0}])  # the second probe (a layer zeroed) fails
    with pytest.raises(ValueError, match=">= 0"):
        PAGCP(probe=lambda: next(calls), order="given").allocate(order, scores, budget)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    tiny, batches = TwoHeads(), data()
    state = copy.deepcopy(tiny.state_dict())
    with pytest.raises(ValueError, match="re-iterable"):
        pagcp_prune(tiny, torch.randn(1, 1, 8, 8), iter(batches), task_losses)
    with pytest.raises(ValueError, match="sparsity"):
        pagcp_prune(tiny, torch.randn(1, 1, 8, 8), batches, task_losses, sparsity=1.0)
    with pytest.raises(ValueError, match="not both"):
        pagcp_prune(tiny, torch.randn(1, 1, 8, 8), batches, task_losses, allocator=PAGCP(), threshold=0.1)
    assert all(torch.equal(v, state[k]) for k, v in tiny.state_dict().items())
    with pytest.raises(ValueError, match="re-iterable"):
        task_loss_probe(tiny, iter(batches), task_losses)
