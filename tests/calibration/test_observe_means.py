"""The observer's opt-in per-feature sums (``means=True``): DSnoT's E[X_j] and Var(X_j)."""
import io

import pytest
import torch
from torch import nn

from sparsity_core.observe import ActivationObserver, InputStats, observe
from sparsity_core.targets import Target

BATCHES = [torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0]]), torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]]])]


def linear():
    model = nn.Sequential(nn.Linear(3, 2))
    return model, [Target("0.weight", param=model[0].weight, module_name="0")]


def test_means_and_variances():
    model, targets = linear()
    stats = observe(model, targets, BATCHES, means=True)["0.weight"]
    assert stats.sum.tolist() == [5.0, 2.0, 2.0]
    assert stats.means().tolist() == [1.25, 0.5, 0.5]
    assert stats.variances().tolist() == pytest.approx([11 / 4 - 1.25 ** 2, 6 / 4 - 0.25, 6 / 4 - 0.25])
    assert observe(model, targets, BATCHES)["0.weight"].sum is None  # off by default
    with pytest.raises(ValueError, match="observe with means=True"):
        observe(model, targets, BATCHES)["0.weight"].means()
    layered = observe(model, targets, BATCHES, means=True, layer_by_layer=True)["0.weight"]
    assert torch.equal(layered.sum, stats.sum)


def test_state_round_trip_and_old_states_load():
    model, targets = linear()
    obs = observe(model, targets, BATCHES, means=True)
    buf = io.BytesIO()
    torch.save(obs.state_dict(), buf)
    buf.seek(0)
    other = ActivationObserver(model, targets)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.means and other["0.weight"].sum.tolist() == [5.0, 2.0, 2.0]
    old = {"stats": {"0": {"sq_sum": torch.ones(3, dtype=torch.float64), "rows": 2}}}  # written before sums existed
    other.load_state_dict(old)
    assert not other.means and other["0.weight"].sum is None
    assert InputStats.from_state(old["stats"]["0"]).rows == 2


def test_reduce_sums_the_per_feature_sums_too():
    model, targets = linear()
    obs = observe(model, targets, BATCHES, means=True, gram=True)
    sizes = []

    def two_ranks(flat):
        sizes.append(flat.numel())
        return flat * 2

    obs.reduce(two_ranks)
    stats = obs["0.weight"]
    assert sizes == [3 + 1 + 9 + 3]
    assert stats.sum.tolist() == [10.0, 4.0, 4.0] and stats.rows == 8 and stats.gram[0, 0] == 22.0
