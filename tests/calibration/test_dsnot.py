import pytest
import torch
from torch import nn

from sparsity_core.calibration import DSnoT, expected_error, wanda_prune
from sparsity_core.layouts import NM
from sparsity_core.observe import InputStats, observe
from sparsity_core.targets import Target


def correlated_inputs(n_batches=4, rows=256, features=64, seed=1):
    """Inputs driven by 8 shared factors plus a per-feature mean: strongly correlated, not centred."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, 8, generator=g)
    mean = torch.linspace(-1.0, 2.0, features)
    return [torch.randn(rows, 8, generator=g) @ mix.T * 0.3 + mean + 0.2 * torch.randn(rows, features, generator=g)
            for _ in range(n_batches)]


def layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32, bias=False))


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_dsnot_lowers_the_error_of_its_starting_mask_and_keeps_the_sparsity(pattern):
    batches = correlated_inputs()
    x = torch.cat(batches)
    start, refined = layer(), layer()
    dense = start[0].weight.detach().clone()
    m0 = wanda_prune(start, batches, 0.6, pattern=pattern, skip_head=False).masks["0.weight"]
    result = wanda_prune(refined, batches, 0.6, pattern=pattern, skip_head=False, refine=DSnoT(update_threshold=0.0))
    m1 = result.masks["0.weight"]
    info = result.refinement["0.weight"]
    assert info["swaps"] > 0 and info["error_after"] < info["error_before"]
    # the expected error of every row never increases
    e0, e1 = expected_error(dense, m0, x.mean(0)), expected_error(dense, m1, x.mean(0))
    assert (e1.abs() <= e0.abs() + 1e-9).all() and float(e1.abs().mean()) < 0.5 * float(e0.abs().mean())
    # the same count in every row (and the N:M pattern) as the starting mask
    assert m1.sum(dim=1).tolist() == m0.sum(dim=1).tolist()
    if pattern:
        assert (m1.reshape(32, -1, 4).sum(dim=-1) == 2).all()
    # the layer's output on the calibration data is reconstructed better
    out = x @ dense.T
    mse0 = float(((out - x @ (dense * m0).T) ** 2).mean())
    mse1 = float(((out - x @ (dense * m1).T) ** 2).mean())
    assert mse1 < 0.9 * mse0
    assert torch.equal(refined[0].weight, dense * m1)  # weights are masked, never changed otherwise


def test_one_row_by_hand():
    # c = W·μ = [1, 2, -3, 0.5]; kept {0, 1}: ε = -3 + 0.5 = -2.5. Grow 2 (c < 0), prune the
    # lowest-Wanda kept weight with c > 0 (0): ε = 1.5. Then ε > 0 and no kept weight has c ≤ 0: stop.
    w = nn.Parameter(torch.tensor([[1.0, 2.0, -3.0, 0.5]]))
    target = Target("w", param=w)
    stats = InputStats(torch.full((4,), 2.0, dtype=torch.float64), rows=2, sum=torch.full((4,), 2.0, dtype=torch.float64))
    mask, info = DSnoT(update_threshold=0.0).refine(target, torch.tensor([[True, True, False, False]]), stats)
    assert mask.tolist() == [[False, True, True, False]]
    assert info["error_before"] == pytest.approx(2.5) and info["error_after"] == pytest.approx(1.5)
    assert info["swaps"] == 1
    # above the threshold nothing moves
    same, info = DSnoT(update_threshold=3.0).refine(target, torch.tensor([[True, True, False, False]]), stats)
    assert same.tolist() == [[True, True, False, False]] and info["swaps"] == 0


def test_nm_swaps_stay_inside_the_group():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(16, 32))
    target = Target("w", layout=NM(2, 4), param=w)
    x = torch.randn(200, 32) + torch.linspace(-2, 2, 32)
    stats = InputStats(x.double().pow(2).sum(0), 200, sum=x.double().sum(0))
    mask = target.layout.select((w.detach().abs() * stats.sq_sum.sqrt()).reshape(-1), 0, w.shape)
    new, info = DSnoT(update_threshold=0.0).refine(target, mask, stats)
    assert info["swaps"] > 0 and (new.reshape(16, 8, 4).sum(-1) == 2).all()


def test_bad_input():
    w = nn.Parameter(torch.ones(2, 3))
    target = Target("w", param=w)
    mask = torch.ones(2, 3, dtype=torch.bool)
    good = InputStats(torch.ones(3, dtype=torch.float64), 1, sum=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="observe with means=True"):
        DSnoT().refine(target, mask, InputStats(torch.ones(3, dtype=torch.float64), 1))
    with pytest.raises(ValueError, match="NaN/Inf"):
        DSnoT().refine(target, mask, InputStats(torch.ones(3, dtype=torch.float64), 1,
                                                sum=torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="4 features"):
        DSnoT().refine(target, mask, InputStats(torch.ones(4, dtype=torch.float64), 1, sum=torch.ones(4, dtype=torch.float64)))
    with pytest.raises(ValueError, match="layout 'channel'"):
        from sparsity_core.layouts import Channels
        DSnoT().refine(Target("w", layout=Channels(), param=w), torch.ones(2, dtype=torch.bool), good)
    for kwargs, match in ((dict(max_cycles=0), "max_cycles"), (dict(update_threshold=-1.0), "update_threshold"),
                          (dict(var_power=True), "var_power")):
        with pytest.raises(ValueError, match=match):
            DSnoT(**kwargs)


def test_nan_calibration_leaves_the_model_untouched():
    model = layer()
    batches = correlated_inputs(n_batches=1, rows=32)
    targets = [Target("0.weight", param=model[0].weight, module_name="0")]
    stats = observe(model, targets, batches, means=True)
    stats["0.weight"].sum[3] = float("nan")
    before = model[0].weight.detach().clone()
    from sparsity_core.calibration import calibrate_prune
    with pytest.raises(ValueError, match="expected reconstruction error of '0.weight' has NaN"):
        calibrate_prune(model, targets, None, 0.5, refine=DSnoT(), activations=stats)
    assert torch.equal(model[0].weight, before)
