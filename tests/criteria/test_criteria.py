import pytest
import torch
from torch import nn

from sparsity_core.criteria import Magnitude, Movement, RandomScores, ScoreContext, Taylor
from sparsity_core.layouts import Channels
from sparsity_core.registry import CRITERIA
from sparsity_core.targets import Target


def make(w, layout=None, grad=None):
    p = nn.Parameter(torch.tensor(w))
    if grad is not None:
        p.grad = torch.tensor(grad)
    return Target("w", layout=layout or Channels(), param=p)


def test_magnitude_l1_l2_per_channel():
    t = make([[3.0, -4.0], [1.0, 1.0]])
    assert Magnitude(1).score(t, ScoreContext()).tolist() == [7.0, 2.0]
    assert Magnitude(2).score(t, ScoreContext()).tolist() == pytest.approx([5.0, 2 ** 0.5])
    assert CRITERIA.build("l2").p == 2


def test_magnitude_rejects_bad_norm():
    with pytest.raises(ValueError, match="1 or 2"):
        Magnitude(3)


def test_magnitude_scores_the_context_weights():
    t = make([[1.0, 1.0]])
    dense = torch.tensor([[2.0, -2.0]])
    assert Magnitude(1).score(t, ScoreContext(weight=lambda _: dense)).tolist() == [4.0]


def test_random_is_seeded_and_resumable():
    t = make([[0.0] * 3] * 5)
    a, b = RandomScores(seed=3), RandomScores(seed=3)
    assert torch.equal(a.score(t, ScoreContext()), b.score(t, ScoreContext()))
    state = a.state_dict()
    nxt = a.score(t, ScoreContext())
    c = RandomScores(seed=99)
    c.load_state_dict(state)
    assert torch.equal(c.score(t, ScoreContext()), nxt)


def test_taylor_accumulates_squared_first_order_term():
    t = make([[1.0, 2.0], [3.0, 0.5]], grad=[[1.0, 1.0], [-1.0, 2.0]])
    crit = Taylor()
    assert crit.needs_gradients
    crit.observe(t, ScoreContext())  # channel sums of g*w: [3, -2] -> squared [9, 4]
    t.param.grad = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    crit.observe(t, ScoreContext())  # [0, 3] -> [0, 9]
    assert crit.score(t, ScoreContext()).tolist() == [4.5, 6.5]
    crit.reset()
    with pytest.raises(ValueError, match="must observe at least one optimizer step"):
        crit.score(t, ScoreContext())


def test_movement_sums_negative_weight_times_grad():
    t = make([[1.0, -1.0], [2.0, 0.0]], grad=[[-1.0, -1.0], [0.5, 3.0]])
    crit = Movement()
    crit.observe(t, ScoreContext())  # -(g*w) summed: row0 -(-1 + 1) = 0, row1 -(1) = -1
    crit.observe(t, ScoreContext())
    assert crit.score(t, ScoreContext()).tolist() == [0.0, -2.0]


def test_accumulating_state_round_trip():
    t = make([[1.0, 2.0]], grad=[[1.0, 1.0]])
    a = Taylor()
    a.observe(t, ScoreContext())
    b = Taylor()
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.score(t, ScoreContext()), b.score(t, ScoreContext()))


def test_stateless_criterion_rejects_foreign_state():
    with pytest.raises(ValueError, match="keeps no state"):
        Magnitude().load_state_dict({"sums": {}})


def test_sensitivity_is_the_mean_squared_gradient_per_unit():
    from sparsity_core.criteria import ScoreContext, Sensitivity

    w = nn.Parameter(torch.zeros(2, 2))
    t = Target("w", param=w)
    crit = Sensitivity()
    for g in (torch.tensor([[1.0, -2.0], [0.0, 3.0]]), torch.tensor([[3.0, 0.0], [1.0, -1.0]])):
        w.grad = g
        crit.observe(t, ScoreContext())
    assert crit.score(t, ScoreContext()).tolist() == [5.0, 2.0, 0.5, 5.0]  # (1+9)/2, (4+0)/2, (0+1)/2, (9+1)/2


def test_change_scores_distance_to_the_reference_and_checks_it():
    from sparsity_core.criteria import Change, ScoreContext

    w = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    t = Target("w", param=w)
    assert Change({"w": torch.tensor([[1.0, 0.0], [4.0, 4.5]])}).score(t, ScoreContext()).tolist() == [0.0, 2.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="no tensor for target 'w'"):
        Change({"v": torch.zeros(2, 2)}).score(t, ScoreContext())
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        Change({"w": torch.zeros(3)}).score(t, ScoreContext())


def test_given_scores_are_returned_and_checked():
    from sparsity_core.criteria import GivenScores, ScoreContext

    t = Target("w", shape=(3,))
    assert GivenScores({"w": torch.tensor([3.0, 1.0, 2.0])}).score(t, ScoreContext()).tolist() == [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="2 entries, the target 3 units"):
        GivenScores({"w": torch.ones(2)}).score(t, ScoreContext())
    with pytest.raises(ValueError, match="no given scores"):
        GivenScores().score(t, ScoreContext())
