"""Pruning as a game: exact participation updates, dominated groups collapse, useful ones
stay, removal keeps the function, state and bad input."""
import io

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="the vision extra (torch-pruning) is not installed")

from sparsity_core import SparsityCallback  # noqa: E402
from sparsity_core.program import Host  # noqa: E402
from sparsity_core.registry import PROGRAMS  # noqa: E402
from sparsity_plugins.vision import EquilibriumPruning, discover_channel_groups  # noqa: E402
from sparsity_plugins.vision.participation import marginal_utility, participation_step, redundancy  # noqa: E402

from ...lightning.helpers import TinyModule, loader, trainer  # noqa: E402


def test_marginal_utility_and_step_exact_values():
    f64 = dict(dtype=torch.float64)
    s, grad = torch.tensor([1.0, 0.5], **f64), torch.tensor([-0.2, 0.0], **f64)
    rho = torch.tensor([[0.0, 0.5], [0.5, 0.0]], **f64)
    g = marginal_utility(s, grad, rho, cost=0.1, alpha=0.2, gamma=0.4)
    # g_0 = 0.2 - 0.1 - 0.2·1 - 0.4·(0.5·0.5); g_1 = 0 - 0.1 - 0.2·0.5 - 0.4·(0.5·1)
    assert g.tolist() == pytest.approx([-0.2, -0.4], abs=1e-12)
    assert participation_step(s, g, lr=0.5).tolist() == pytest.approx([0.9, 0.3], abs=1e-12)
    assert participation_step(torch.tensor([0.1, 0.9]), torch.tensor([-1.0, 1.0]), 0.5).tolist() == [0.0, 1.0]


def test_redundancy_exact_values():
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False), nn.ReLU(),
                          nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    group = {t.name: t for t in discover_channel_groups(model, torch.randn(2, 2)).targets}["0:out"]
    rho = redundancy(group)  # unit vectors (a row | b column): (1,0|1,0), (2,0|1,0), (0,1|0,0)
    c = 3 / 10 ** 0.5
    expected = torch.tensor([[0, c, 0], [c, 0, 0], [0, 0, 0]], dtype=torch.float64)
    assert rho.dtype == torch.float64 and torch.allclose(rho, expected, rtol=0, atol=1e-12)


def two_unit_model():
    """y = b·(s ⊙ a·x): unit 0 is read with weight 2 (useful), unit 1 with weight 0 (dominated)."""
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.copy_(torch.tensor([[2.0, 0.0]]))
    return model


def play(program, model, steps):
    for _ in range(steps):
        loss = 0.5 * (model(torch.ones(1, 1)) - 10.0).square().sum()
        loss.backward()
        program.before_optimizer_step(None)
        model.zero_grad()


def test_dominated_unit_collapses_to_zero_and_the_useful_one_stays():
    model = two_unit_model()
    game = EquilibriumPruning(lr=0.5, cost=0.25, gamma=0.0)
    game.attach(Host(model, example_input=torch.ones(1, 1)))
    (name,) = game.participation
    play(game, model, 7)  # ∂L/∂s_1 = 0: s_1 falls by η·λ = 0.125 per step; ∂L/∂s_0 = -16 < -λ
    assert game.participation[name].tolist() == [1.0, 0.125]
    play(game, model, 1)
    assert game.participation[name].tolist() == [1.0, 0.0]
    model[1].weight.data[0, 1] = 5.0  # now useful, but a collapsed player stays out (absorbing)
    play(game, model, 2)
    assert game.participation[name].tolist() == [1.0, 0.0]
    assert game.report()["collapsed_units"] == 0.5 and game.steps == 10
    resumed = EquilibriumPruning(lr=0.5, cost=0.25, gamma=0.0)
    resumed.attach(Host(two_unit_model(), example_input=torch.ones(1, 1)))
    resumed.load_state_dict(game.state_dict())
    assert resumed.participation[name].tolist() == [1.0, 0.0] and resumed.out[name].tolist() == [False, True]
    x = torch.randn(4, 1)
    with torch.no_grad():
        gated = model(x)
    game.finalize()  # participations folded, the collapsed unit removed: same function
    assert model[0].out_features == 1 and game.finalized
    with torch.no_grad():
        assert torch.allclose(model(x), gated, atol=1e-6)


def test_a_group_whose_units_all_collapse_keeps_min_keep_units():
    model = two_unit_model()
    model[1].weight.data.zero_()
    game = EquilibriumPruning(lr=1.0, cost=1.0, gamma=0.0, absorbing=False)
    game.attach(Host(model, example_input=torch.ones(1, 1)))
    play(game, model, 1)
    (mask,) = game.masks().values()
    assert mask.tolist() == [True, False]  # all at 0: the first unit is kept (it contributes 0)


def test_game_program_in_a_fit_by_name_with_plain_state(tmp_path):
    assert "game" in PROGRAMS.names()
    module = TinyModule()
    cb = SparsityCallback(programs=[{"program": "game", "lr": 1.0, "cost": 0.5, "gamma": 0.1}])
    trainer(max_steps=6, callbacks=[cb]).fit(module, loader())
    (game,) = cb.programs
    assert game.finalized and game.steps == 6
    assert module.conv.out_channels < 4 or module.fc.out_features < 8  # something collapsed and was removed
    buf = io.BytesIO()
    torch.save(game.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state["participation"]) == set(game.participation)


def test_bad_input_raises_before_any_change():
    for kwargs in ({"lr": 0}, {"cost": -1}, {"alpha": -1}, {"gamma": float("nan")}, {"init": 0},
                   {"init": 1.5}, {"min_keep": 0}, {"exclude": "("}):
        with pytest.raises(ValueError):
            EquilibriumPruning(**kwargs)
    model = two_unit_model()
    with pytest.raises(ValueError, match="example_input"):
        EquilibriumPruning().attach(Host(model))
    game = EquilibriumPruning()
    game.attach(Host(model, example_input=torch.ones(1, 1)))
    (name,) = game.participation
    good = game.state_dict()
    for bad in ({"participation": {}, "out": {}},
                {"participation": {name: torch.ones(3)}, "out": {name: torch.zeros(3, dtype=torch.bool)}},
                {"participation": {name: torch.tensor([2.0, 0.0])}, "out": good["out"]}):
        with pytest.raises(ValueError):
            game.load_state_dict(bad)
        assert game.participation[name].tolist() == [1.0, 1.0]
