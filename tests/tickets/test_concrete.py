"""The concrete relaxation, GradBalance and the reverse-KL objective on tiny inputs, exactly."""
import math

import pytest
import torch

from sparsity_core import Target
from sparsity_core.criteria.base import ScoreContext
from sparsity_core.registry import CRITERIA
from sparsity_core.tickets import (
    ConcreteScores,
    GradBalance,
    binary_concrete,
    expected_density,
    reverse_kl,
)


def test_binary_concrete_is_the_logistic_of_logits_plus_logistic_noise_over_temperature():
    logits = torch.tensor([0.0, 2.0, -1.0])
    u = torch.rand(3, generator=torch.Generator().manual_seed(3))
    expected = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / 0.5)
    got = binary_concrete(logits, 0.5, torch.Generator().manual_seed(3))
    assert torch.allclose(got, expected, atol=1e-7)
    hard = binary_concrete(torch.tensor([-50.0, 50.0]), 0.5, torch.Generator().manual_seed(0), stretch=(-0.1, 1.1))
    assert hard.tolist() == [0.0, 1.0]  # stretched and clipped: exact zeros and ones
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([binary_concrete(torch.full((1000,), math.log(0.25 / 0.75)), 0.05, g) for _ in range(4)])
    assert float((draws > 0.5).float().mean()) == pytest.approx(0.25, abs=0.03)  # ≈ Bernoulli(σ(s)) at low τ


def test_expected_density_counts_units_or_their_weights():
    logits = {"a": torch.zeros(2), "b": torch.full((2,), 50.0)}
    assert float(expected_density(logits)) == pytest.approx(0.75)
    assert float(expected_density(logits, {"a": 3.0, "b": 1.0})) == pytest.approx((3 * 1 + 1 * 2) / 8)


def test_gradbalance_coefficient_and_combination_by_hand():
    gb = GradBalance(gain=2.0, tolerance=0.1)
    assert gb.coefficient(0.5, 0.1) == 2.0          # far above the target: full push down
    assert gb.coefficient(0.105, 0.1) == pytest.approx(1.0)  # half the band: half the gain
    assert gb.coefficient(0.05, 0.1) == -2.0        # far below: push up
    # g_R = (3, 4) (norm 5), g_C = (1, 0) (norm 1), β = 2: g = g_R + 2·5·g_C
    out = gb.combine([torch.tensor([3.0, 4.0])], [torch.tensor([1.0, 0.0])], 0.5, 0.1)
    assert out[0].tolist() == [13.0, 4.0]
    at_target = gb.combine([torch.tensor([3.0, 4.0])], [torch.tensor([1.0, 0.0])], 0.1, 0.1)
    assert at_target[0].tolist() == [3.0, 4.0]
    for kwargs in (dict(gain=0.0), dict(tolerance=0.0), dict(tolerance=2.0)):
        with pytest.raises(ValueError):
            GradBalance(**kwargs)


def test_reverse_kl_by_hand():
    student, teacher = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(reverse_kl(student, teacher)) == pytest.approx(expected)
    assert float(reverse_kl(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)


def test_concrete_scores_are_the_logits_registered_by_name_with_plain_state():
    target = Target("w", shape=(2, 2), param=torch.nn.Parameter(torch.ones(2, 2)))
    crit = CRITERIA.build("concrete", logits={"w": torch.tensor([[1.0, -1.0], [0.5, 2.0]])})
    assert isinstance(crit, ConcreteScores)
    assert crit.score(target, ScoreContext()).tolist() == [1.0, -1.0, 0.5, 2.0]
    crit.reset()  # the learned logits are kept across mask updates
    restored = ConcreteScores()
    restored.load_state_dict(crit.state_dict())
    assert torch.equal(restored.logits["w"], crit.logits["w"])
    with pytest.raises(ValueError, match="no learned logits"):
        ConcreteScores().score(target, ScoreContext())
    with pytest.raises(ValueError, match="not a ConcreteScores state"):
        restored.load_state_dict({"other": 1})
