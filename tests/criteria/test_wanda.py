import pytest
import torch
from torch import nn

from sparsity_core.criteria import ScoreContext, Wanda
from sparsity_core.layouts import Channels, Elements
from sparsity_core.observe import InputStats, observe
from sparsity_core.registry import CRITERIA
from sparsity_core.targets import Target

W = [[1.0, -2.0, 3.0], [-0.5, 1.0, -4.0]]  # Linear(3 → 2)
# Input rows (2, 0, 1) and (0, 3, 0): Σx² = [4, 9, 1], so ‖X_j‖₂ = [2, 3, 1].
X = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
SCORES = [[2.0, 6.0, 3.0], [1.0, 3.0, 4.0]]  # |W_ij|·‖X_j‖₂


def linear(layout=None):
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W))
    return model, Target("0.weight", layout=layout or Elements(), param=model[0].weight, module_name="0")


def test_registered_and_observes_calibration():
    crit = CRITERIA.build("wanda")
    assert isinstance(crit, Wanda) and crit.observes == "calibration" and not crit.needs_gradients
    assert CRITERIA.build("wanda", normalize=True).normalize


def test_element_scores_are_weight_times_input_norm():
    model, t = linear()
    obs = observe(model, [t], [X])
    scores = Wanda().score(t, ScoreContext(activations=obs))
    assert scores.dtype == torch.float32
    assert scores.tolist() == [v for row in SCORES for v in row]


def test_structured_layout_sums_scores_per_unit():
    model, t = linear(Channels())
    obs = observe(model, [t], [X])
    assert Wanda().score(t, ScoreContext(activations=obs)).tolist() == [11.0, 8.0]


def test_plain_mapping_of_stats_and_normalize():
    _, t = linear()
    stats = {"0.weight": InputStats(torch.tensor([4.0, 9.0, 1.0], dtype=torch.float64), rows=2)}
    scores = Wanda(normalize=True).score(t, ScoreContext(activations=stats))  # RMS = norm / √2
    assert scores.tolist() == pytest.approx([v / 2 ** 0.5 for row in SCORES for v in row])


def test_conv_norm_broadcast_over_kernel():
    conv = nn.Sequential(nn.Conv2d(2, 1, kernel_size=2, bias=False))
    with torch.no_grad():
        conv[0].weight.copy_(torch.tensor([[[[1.0, -1.0], [0.5, 0.0]], [[1.0, 2.0], [-3.0, 0.0]]]]))
    # channel 0: Σx² = 1+4+4+16 = 25 (norm 5); channel 1: Σx² = 4 (norm 2)
    x = torch.tensor([[[[1.0, 2.0], [2.0, 4.0]], [[2.0, 0.0], [0.0, 0.0]]]])
    t = Target("0.weight", param=conv[0].weight, module_name="0")
    scores = Wanda().score(t, ScoreContext(activations=observe(conv, [t], [x])))
    assert scores.tolist() == [5.0, 5.0, 2.5, 0.0, 2.0, 4.0, 6.0, 0.0]


def test_grouped_conv_uses_the_channels_of_each_group():
    conv = nn.Sequential(nn.Conv2d(2, 2, kernel_size=1, groups=2, bias=False))
    with torch.no_grad():
        conv[0].weight.copy_(torch.tensor([3.0, -1.0]).reshape(2, 1, 1, 1))
    x = torch.tensor([[[[5.0]], [[2.0]]]])  # norms [5, 2]
    t = Target("0.weight", param=conv[0].weight, module_name="0")
    assert Wanda().score(t, ScoreContext(activations=observe(conv, [t], [x]))).tolist() == [15.0, 2.0]


def test_missing_statistics_name_the_target():
    _, t = linear()
    for ctx in (ScoreContext(), ScoreContext(activations={}),
                ScoreContext(activations={"0.weight": InputStats(torch.zeros(3, dtype=torch.float64))})):
        with pytest.raises(ValueError, match="calibration input statistics for target '0.weight'"):
            Wanda().score(t, ctx)


def test_statistics_of_another_width_are_rejected():
    _, t = linear()
    stats = {"0.weight": InputStats(torch.ones(4, dtype=torch.float64), rows=1)}
    with pytest.raises(ValueError, match="'0.weight' have 4 features"):
        Wanda().score(t, ScoreContext(activations=stats))


def test_bad_option():
    with pytest.raises(ValueError, match="True or False"):
        Wanda(normalize="yes")
