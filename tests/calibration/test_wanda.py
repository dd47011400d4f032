import pytest
import torch
from torch import nn

from sparsity_core.allocators import OWL
from sparsity_core.calibration import DSnoT, calibrate_prune, wanda_prune, wanda_targets
from sparsity_core.observe import observe


def model_and_batches(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 6))
    scale = torch.linspace(0.1, 3.0, 8)  # inputs of very different norms: Wanda differs from magnitude
    batches = [torch.randn(16, 8) * scale for _ in range(2)]
    return model, batches


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_wanda_keeps_the_top_scores_of_every_output_row():
    model, batches = model_and_batches()
    dense = model[0].weight.detach().clone()
    norms = torch.cat(batches).pow(2).sum(0).sqrt()
    result = wanda_prune(model, batches, 0.5, skip_head=False)
    scores = dense.abs() * norms
    expected = torch.zeros_like(dense, dtype=torch.bool)
    expected.scatter_(1, scores.topk(4, dim=1).indices, True)
    assert torch.equal(result.masks["0.weight"], expected)
    assert torch.equal(model[0].weight, dense * expected)
    assert result.masks["2.weight"].sum(dim=1).tolist() == [6] * 6
    assert result.report["global"] == pytest.approx(0.5)
    assert set(result.seconds) == {"calibration", "select", "refine", "per_layer"}
    # comparing within the layer instead keeps different counts per row
    model, batches = model_and_batches()
    layer = wanda_prune(model, batches, 0.5, group="layer", skip_head=False).masks["0.weight"]
    assert not torch.equal(layer, expected) and int(layer.sum()) == 48


def test_nm_pattern_and_owl_allocation():
    model, batches = model_and_batches()
    nm = wanda_prune(model, batches, 0.9, pattern="2:4", skip_head=False)  # the pattern fixes 50%
    for name in ("0.weight", "2.weight"):
        groups = nm.masks[name].reshape(nm.masks[name].shape[0], -1, 4)
        assert (groups.sum(dim=-1) == 2).all()
    model, batches = model_and_batches()
    owl = OWL(lam=0.2, m=1.5)
    result = wanda_prune(model, batches, 0.6, allocator=owl, skip_head=False)
    kept = {n: int(m.sum()) for n, m in result.masks.items()}
    assert sum(kept.values()) == round(0.4 * (96 + 72))
    for name, mask in result.masks.items():  # per row: the same count up to one
        counts = mask.sum(dim=1)
        assert int(counts.max() - counts.min()) <= 1


def test_sequential_observes_each_layer_after_the_earlier_ones_are_pruned():
    model, batches = model_and_batches()
    seq = wanda_prune(model, batches, 0.5, sequential=True, skip_head=False)
    # by hand: prune layer 0, then observe layer 2 on the pruned model
    manual, _ = model_and_batches()
    targets = wanda_targets(manual, skip_head=False)
    calibrate_prune(manual, targets[:1], batches, 0.5)
    calibrate_prune(manual, targets[1:], batches, 0.5)
    assert torch.equal(seq.masks["0.weight"], (manual[0].weight != 0))
    assert torch.equal(seq.masks["2.weight"], (manual[2].weight != 0))
    assert torch.equal(model[2].weight, manual[2].weight)
    # differs from statistics of the dense model for the second layer
    dense, _ = model_and_batches()
    one = wanda_prune(dense, batches, 0.5, skip_head=False)
    assert not torch.equal(one.masks["2.weight"], seq.masks["2.weight"])


def test_an_iterator_of_batches_is_read_once():
    model, batches = model_and_batches()
    expected = wanda_prune(model, batches, 0.5, sequential=True, skip_head=False).masks
    model, batches = model_and_batches()
    got = wanda_prune(model, (b for b in batches), 0.5, sequential=True, skip_head=False).masks
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_precomputed_statistics_are_reused():
    model, batches = model_and_batches()
    targets = wanda_targets(model, skip_head=False)
    stats = observe(model, targets, batches, means=True)
    result = calibrate_prune(model, targets, None, 0.5, activations=stats, refine=DSnoT())
    assert result.activations is stats and set(result.refinement) == {"0.weight", "2.weight"}
    with pytest.raises(ValueError, match="needs per-feature input means"):
        calibrate_prune(model, targets, None, 0.5, activations=observe(model, targets, batches), refine=DSnoT())


@pytest.mark.parametrize("change, match", [
    (dict(batches=[torch.ones(2, 8)]), r"has 2 samples in 1 batches; at least 16 are needed"),
    (dict(batches=[torch.ones(16, 5)]), r"a calibration batch \(shapes \(16, 5\)\) does not fit the model"),
    (dict(batches=[torch.full((16, 8), float("nan"))]), "NaN/Inf score"),
    (dict(sparsity=1.0), r"sparsity must be a number in \[0, 1\)"),
    (dict(refine="dsnot"), "refine must have a refine"),
    (dict(min_samples=0), "min_samples must be an int >= 1"),
])
def test_bad_input_is_an_error_and_the_model_is_untouched(change, match):
    for sequential in (False, True):
        model, batches = model_and_batches()
        before = state(model)
        args = dict(batches=batches, sparsity=0.5, sequential=sequential)
        args.update(change)
        with pytest.raises(ValueError, match=match):
            wanda_prune(model, skip_head=False, **args)
        assert same(model, before)


def test_a_failure_in_a_later_layer_restores_the_earlier_ones():
    model, batches = model_and_batches()
    before = state(model)

    class Boom(DSnoT):
        def refine(self, target, mask, stats):
            if target.name == "2.weight":
                raise ValueError("boom")
            return super().refine(target, mask, stats)

    with pytest.raises(ValueError, match="boom"):
        wanda_prune(model, batches, 0.5, refine=Boom(), sequential=True, skip_head=False)
    assert same(model, before)
