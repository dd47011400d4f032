import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.calibration import CATS, calibrate_cats, measure_activation_sparsity, remove_cats


class MLP(nn.Module):
    def __init__(self, act_fn=False):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 64)
        self.act = F.gelu if act_fn else nn.GELU()  # a function attribute, as BERT's intermediate_act_fn can be
        self.fc2 = nn.Linear(64, 8)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def data(n=4, rows=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("act_fn", [False, True])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_measured_activation_sparsity_is_the_target_on_the_calibration_data(target, act_fn):
    model = MLP(act_fn)
    dense = MLP(act_fn)
    batches = data()
    result = calibrate_cats(model, ["act"], batches, target)
    assert isinstance(model.act, CATS) and result.thresholds["act"] > 0
    measured = measure_activation_sparsity(model, ["act"], batches)
    assert measured["act"] == pytest.approx(target, abs=0.01) and measured["mean"] == measured["act"]
    x = data(1, seed=5)[0]
    assert model(x).shape == dense(x).shape
    # entries above the threshold pass unchanged: the output equals the dense MLP on the kept activations
    a = dense.act(dense.fc1(x))
    kept = torch.where(a.abs() > result.thresholds["act"], a, torch.zeros(()))
    assert torch.allclose(model(x), dense.fc2(kept), atol=1e-6)
    remove_cats(model, ["act"])
    assert not isinstance(model.act, CATS) and torch.allclose(model(x), dense(x))


def test_subsampled_quantile_and_zero_target():
    model = MLP()
    batches = data(n=4, rows=256)
    result = calibrate_cats(model, ["act"], batches, 0.5, max_samples=4000, seed=3)
    assert result.samples["act"] == 4000
    assert measure_activation_sparsity(model, ["act"], batches)["act"] == pytest.approx(0.5, abs=0.03)
    calibrate_cats(model, ["act"], batches, 0.0)  # re-calibrates the wrapper in place
    assert isinstance(model.act.act, nn.GELU)
    assert measure_activation_sparsity(model, ["act"], batches)["act"] < 0.01  # GELU is rarely exactly 0


def test_bad_input_leaves_the_activation_in_place():
    model = MLP()
    act = model.act
    with pytest.raises(ValueError, match="'nope' does not exist"):
        calibrate_cats(model, ["nope"], data(), 0.5)
    with pytest.raises(ValueError, match="'fc1.bias' is not a callable activation"):
        calibrate_cats(model, ["fc1.bias"], data(), 0.5)
    with pytest.raises(ValueError, match="at least 8 are needed"):
        calibrate_cats(model, ["act"], [torch.randn(4, 16)], 0.5)
    with pytest.raises(ValueError, match=r"shapes \(64, 3\)\) does not fit the model"):
        calibrate_cats(model, ["act"], [torch.randn(64, 3)], 0.5)
    with pytest.raises(ValueError, match="produced NaN/Inf"):
        calibrate_cats(model, ["act"], [torch.full((64, 16), float("nan"))], 0.5)
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        calibrate_cats(model, ["act"], data(), 1.5)
    assert model.act is act
    with pytest.raises(ValueError, match="not a CATS wrapper"):
        measure_activation_sparsity(model, ["act"], data())
