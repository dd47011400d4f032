"""Sparse Model Soups: exact averages, masks never averaged, greedy soups that never lose
held-out accuracy, BatchNorm recalibration touching running statistics only, and IMP phases
that start from the soup."""
import io

import pytest
import torch
from torch import nn

from sparsity_core import discover_targets
from sparsity_core.soups import (
    Ingredient,
    SparseModelSoups,
    average_states,
    greedy_soup,
    recalibrate_batchnorm,
    uniform_soup,
)

from .loops import train_steps


def ing(w, mask=None, **config):
    mask = torch.ones(2, 2, dtype=torch.bool) if mask is None else mask
    state = {"weight": torch.tensor(w, dtype=torch.float32), "count": torch.tensor(3)}
    return Ingredient(state=state, masks={"weight": mask}, config=config)


def test_uniform_soup_averages_weights_exactly_and_keeps_the_shared_mask():
    mask = torch.tensor([[True, False], [True, True]])
    soup = uniform_soup([ing([[1.0, 0.0], [2.0, 3.0]], mask), ing([[3.0, 0.0], [4.0, -3.0]], mask)])
    assert torch.equal(soup["weight"], torch.tensor([[2.0, 0.0], [3.0, 0.0]]))
    assert soup["count"].dtype == torch.int64 and int(soup["count"]) == 3  # integer buffers: the first one's
    weighted = average_states([ing([[1.0, 0.0], [0.0, 0.0]], mask), ing([[4.0, 0.0], [0.0, 0.0]], mask)], [2, 1])
    assert weighted["weight"][0, 0] == 2.0


def test_soups_never_average_masks():
    a = ing([[1.0, 0.0], [1.0, 1.0]], torch.tensor([[True, False], [True, True]]))
    b = ing([[1.0, 1.0], [0.0, 1.0]], torch.tensor([[True, True], [False, True]]))
    with pytest.raises(ValueError, match="never average masks.*2 units"):
        uniform_soup([a, b])
    c = Ingredient(state=dict(a.state), masks={"other": a.masks["weight"]})
    with pytest.raises(ValueError, match="never average masks"):
        average_states([a, c])
    leaky = ing([[1.0, 5.0], [1.0, 1.0]], torch.tensor([[True, False], [True, True]]))
    with pytest.raises(ValueError, match="nonzero outside the shared mask"):
        uniform_soup([a, leaky])
    with pytest.raises(ValueError, match="at least one ingredient"):
        uniform_soup([])


class Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


def scalar(w):
    return Ingredient(state={"w": torch.tensor([w])}, masks={"w": torch.ones(1, dtype=torch.bool)})


def closeness(model):  # held-out "accuracy": higher when w is nearer 1
    return -abs(float(model.w.detach()) - 1.0)


def test_greedy_soup_adds_an_ingredient_only_when_held_out_score_does_not_drop():
    model = Scalar()
    # scores -0.2, -0.2, -2.0: start from 0.8 (first of the tie), 0.8+1.2 -> 1.0 improves, + 3.0 -> 1.667 drops
    state, chosen, score = greedy_soup(model, [scalar(0.8), scalar(1.2), scalar(3.0)], closeness)
    assert chosen == [0, 1] and score == pytest.approx(0.0)
    assert float(state["w"]) == pytest.approx(1.0) and float(model.w.detach()) == pytest.approx(1.0)
    # equal score is accepted (no drop); any drop is refused
    _, chosen, _ = greedy_soup(model, [scalar(1.0), scalar(1.0)], closeness)
    assert chosen == [0, 1]
    _, chosen, score = greedy_soup(model, [scalar(0.9), scalar(1.5)], closeness)
    assert chosen == [0] and score == pytest.approx(-0.1)


def test_batchnorm_recalibration_changes_running_statistics_only():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.ReLU())
    model.eval()
    with torch.no_grad():
        model[1].running_mean.fill_(5.0)
    params = {k: v.clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, generator=g), torch.zeros(4)) for _ in range(3)]
    assert recalibrate_batchnorm(model, batches) == 3
    with torch.no_grad():
        acts = [model[0](x) for x, _ in batches]
    assert torch.allclose(model[1].running_mean, torch.stack([a.mean(0) for a in acts]).mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var, torch.stack([a.var(0) for a in acts]).mean(0), atol=1e-6)
    assert int(model[1].num_batches_tracked) == 3
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())
    assert model[1].momentum == 0.1 and not model.training and not model[1].training
    assert recalibrate_batchnorm(nn.Linear(2, 2), []) == 0  # no BatchNorm: nothing to do
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(model, [])


def sgd_retrain(steps=3):
    def retrain(model, ctrl, config):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=config.get("weight_decay", 0.0))
        ctrl.bind_optimizers([opt])
        torch.manual_seed(config["seed"] + 10 * config["phase"])
        train_steps(model, opt, ctrl, steps, (8, 1, 8, 8), seed=config["seed"])
    return retrain


def test_sms_phases_prune_the_soup_and_every_ingredient_shares_the_mask(tiny_net):
    batches = [(torch.randn(8, 1, 8, 8), None) for _ in range(2)]
    sms = SparseModelSoups(final_sparsity=0.75, phases=2, ingredients=[{"seed": 0}, {"seed": 1, "weight_decay": 0.1}],
                           soup="uniform")
    history = sms.run(tiny_net, sgd_retrain(), calibration=batches)
    assert [h["sparsity"] for h in history] == pytest.approx([0.5, 0.75])
    assert history[-1]["measured_sparsity"] == pytest.approx(0.75, abs=1 / 300)
    masks = sms.controller.masks
    for ingredient in sms.last_ingredients:
        assert all(torch.equal(ingredient.masks[k], masks[k].cpu()) for k in masks)
    for t in sms.controller.targets:  # the soup is zero where the mask prunes, nonzero somewhere it keeps
        assert bool((t.param[~masks[t.name]] == 0).all()) and bool((t.param[masks[t.name]] != 0).any())
    phase_one = [h for h in sms.controller.history if h["target_sparsity"] == 0.5]
    assert len(phase_one) == 1 and len(sms.controller.history) == 2
    buf = io.BytesIO()
    torch.save(tiny_net.state_dict(), buf)
    buf.seek(0)
    assert set(torch.load(buf, weights_only=True)) == set(tiny_net.state_dict())  # plain keys: a dense model loads it


def test_sms_refuses_an_ingredient_retrained_under_another_mask(tiny_net):
    def rogue(model, ctrl, config):
        if config["seed"] == 1:  # changes its mask: averaging would densify the soup
            name = next(iter(ctrl.masks))
            flipped = ctrl.masks.copy()
            flipped[name] = ~flipped[name]
            ctrl.replace_masks(flipped, step=1)
    sms = SparseModelSoups(final_sparsity=0.5, phases=1, ingredients=[{"seed": 0}, {"seed": 1}], soup="uniform")
    with pytest.raises(ValueError, match="never average masks"):
        sms.run(tiny_net, rogue)


def test_sms_greedy_with_evaluate_and_bad_configuration(tiny_net):
    x = torch.randn(16, 1, 8, 8)

    def evaluate(model):
        with torch.no_grad():
            return -float(model(x).pow(2).mean())

    sms = SparseModelSoups(final_sparsity=0.5, phases=1, ingredients=[{"seed": 0}, {"seed": 1}, {"seed": 2}])
    history = sms.run(tiny_net, sgd_retrain(2), evaluate=evaluate, calibration=[(x, None)])
    scores = history[0]["ingredient_scores"]
    assert history[0]["soup_score"] >= max(scores) and history[0]["chosen"][0] == scores.index(max(scores))
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    for kwargs, msg in [(dict(soup="median"), "uniform, greedy"), (dict(phases=0), "phases"),
                        (dict(final_sparsity=1.0), "final_sparsity"), (dict(ingredients=[]), "non-empty"),
                        (dict(criterion="taylor"), "weights alone"), (dict(criterion="magnitud"), "Did you mean")]:
        with pytest.raises(ValueError, match=msg):
            SparseModelSoups(**kwargs)
    with pytest.raises(ValueError, match="greedy soup needs evaluate"):
        SparseModelSoups(phases=1).run(tiny_net, sgd_retrain())
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())
    assert len(discover_targets(tiny_net)) == 2
