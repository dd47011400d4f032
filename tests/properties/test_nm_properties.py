"""Properties of the core's N:M masks (``sparsity_core.layouts.NM``): in every group of ``m``
consecutive weights along the input dimension (dim 1) exactly ``n`` are kept, for random
shapes (Linear and Conv weights) whose input dimension is a multiple of ``m``:

- ``NM.select`` keeps exactly ``n`` per group, the ``n`` best-scored ones (ties included),
  whatever count it is asked for, and deterministically;
- one-shot pruning of N:M targets (``one_shot_prune`` with any core allocator) gives N:M masks
  and zeroes exactly the pruned weights;
- Wanda's N:M pruning refined by DSnoT keeps the pattern.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from sparsity_core.calibration import DSnoT, wanda_prune
from sparsity_core.discovery import discover_targets
from sparsity_core.layouts import NM, parse_layout
from sparsity_core.oneshot import one_shot_prune

from . import prop_settings

PATTERNS = [(1, 4), (2, 4), (2, 8), (4, 8)]


def groups_of(mask: torch.Tensor, m: int) -> torch.Tensor:
    """``mask`` (any shape, dim 1 the input) as ``[..., groups, m]`` along dim 1."""
    grid = mask.movedim(1, -1)
    return grid.reshape(*grid.shape[:-1], grid.shape[-1] // m, m)


@st.composite
def nm_shapes(draw):
    n, m = draw(st.sampled_from(PATTERNS))
    rows, groups = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    kernel = draw(st.sampled_from([(), (1, 1), (3, 3), (2, 1)]))
    return n, m, (rows, groups * m) + kernel


@prop_settings(120)
@given(spec=nm_shapes(), seed=st.integers(0, 2 ** 16), ties=st.booleans(), asked=st.integers(0, 10_000))
def test_select_keeps_exactly_n_of_every_m_and_the_best_ones(spec, seed, ties, asked):
    n, m, shape = spec
    layout = NM(n, m)
    gen = torch.Generator().manual_seed(seed)
    numel = torch.Size(shape).numel()
    scores = (torch.randint(0, 3, (numel,), generator=gen).float() if ties else torch.randn(numel, generator=gen))
    mask = layout.select(scores, asked % (numel + 1), shape)  # the count asked for does not matter
    assert mask.dtype == torch.bool and tuple(mask.shape) == shape
    g = groups_of(mask, m)
    assert (g.sum(dim=-1) == n).all()
    assert int(mask.sum()) == layout.fixed_keep(shape) == numel // m * n
    # the kept ones are the best of their group: no dropped score above a kept one
    s = groups_of(scores.reshape(shape), m)
    worst_kept = torch.where(g, s, torch.full_like(s, float("inf"))).min(dim=-1).values
    best_dropped = torch.where(~g, s, torch.full_like(s, float("-inf"))).max(dim=-1).values
    assert (worst_kept >= best_dropped).all()
    assert torch.equal(layout.select(scores, 0, shape), mask)  # deterministic, ties included
    assert parse_layout(f"{n}:{m}") == layout


class Net(nn.Module):
    def __init__(self, c_in: int, c_mid: int, hidden: int, out: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_mid, kernel, padding=kernel // 2)
        self.fc = nn.Linear(c_mid, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc(h)))


@prop_settings(25)
@given(pattern=st.sampled_from(PATTERNS), sizes=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
       kernel=st.sampled_from([1, 3]), seed=st.integers(0, 2 ** 16),
       allocator=st.sampled_from(["global", "uniform", "erk", "lamp", "softmax", "owl", "knapsack",
                                  "mirror_descent", "greedy_knapsack"]),
       criterion=st.sampled_from(["magnitude", "wanda", "random"]), below=st.floats(0.0, 1.0))
def test_one_shot_pruning_of_nm_targets_gives_nm_masks(pattern, sizes, kernel, seed, allocator, criterion, below):
    n, m = pattern
    torch.manual_seed(seed)
    c_in, c_mid, hidden = (k * m for k in sizes)
    model = Net(c_in, c_mid, hidden, 3, kernel)
    targets = discover_targets(model, layout=f"{n}:{m}", skip_head=False)
    assert {t.name for t in targets} == {"conv.weight", "fc.weight", "fc2.weight"}
    dense = {t.name: t.param.detach().clone() for t in targets}
    batches = [torch.randn(4, c_in, 5, 5) for _ in range(2)]
    sparsity = below * (1.0 - n / m)  # any budget the fixed pattern can meet
    result = one_shot_prune(model, targets, batches, sparsity, criterion=criterion, allocator=allocator)
    for t in targets:
        mask = result.masks[t.name]
        assert (groups_of(mask, m).sum(dim=-1) == n).all(), t.name
        assert torch.equal(t.param.detach(), dense[t.name] * mask), t.name


@prop_settings(15)
@given(pattern=st.sampled_from(PATTERNS), rows=st.integers(1, 16), groups=st.integers(1, 6), seed=st.integers(0, 999))
def test_wanda_nm_refined_by_dsnot_keeps_the_pattern(pattern, rows, groups, seed):
    n, m = pattern
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(groups * m, rows, bias=False))
    x = [torch.randn(32, groups * m) + torch.linspace(-1.0, 2.0, groups * m) for _ in range(2)]
    result = wanda_prune(model, x, 0.0, pattern=f"{n}:{m}", skip_head=False, refine=DSnoT(update_threshold=0.0),
                         min_samples=1)
    mask = result.masks["0.weight"]
    assert (groups_of(mask, m).sum(dim=-1) == n).all()


def test_patterns_are_valid():
    for n, m in PATTERNS:
        NM(n, m)
    with pytest.raises(ValueError):
        NM(4, 4)
