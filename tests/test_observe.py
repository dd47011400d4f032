import io

import pytest
import torch
from torch import nn

from sparsity_core.criteria import OBSERVES, AccumulatingCriterion, Criterion, Magnitude, Taylor, Wanda
from sparsity_core.observe import ActivationObserver, InputStats, observe
from sparsity_core.targets import Target

# Rows of the Linear(3→2) input over two batches (the second has a token dimension).
BATCHES = [torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0]]), torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]]])]
SQ_SUM = [11.0, 6.0, 6.0]  # column sums of x²: 1+9+0+1, 4+1+1+0, 0+1+4+1
GRAM = [[11.0, -1.0, 2.0], [-1.0, 6.0, 1.0], [2.0, 1.0, 6.0]]


def linear_model():
    model = nn.Sequential(nn.Linear(3, 2))
    return model, [Target("0.weight", param=model[0].weight, module_name="0")]


def two_layer_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    targets = [Target(f"{i}.weight", param=model[i].weight, module_name=str(i)) for i in (0, 2)]
    return model, targets


def no_hooks(model):
    return all(not m._forward_pre_hooks for m in model.modules())


def test_linear_sums_of_squares_rows_and_gram():
    model, targets = linear_model()
    obs = observe(model, targets, BATCHES, gram=True)
    stats = obs["0.weight"]
    assert stats.sq_sum.dtype == torch.float64 and stats.gram.dtype == torch.float64
    assert stats.sq_sum.tolist() == SQ_SUM
    assert stats.rows == 4
    assert stats.gram.tolist() == GRAM
    assert stats.norms().tolist() == pytest.approx([11 ** 0.5, 6 ** 0.5, 6 ** 0.5])
    assert stats.norms(mean=True).tolist() == pytest.approx([(11 / 4) ** 0.5, 1.5 ** 0.5, 1.5 ** 0.5])
    assert no_hooks(model)


def test_gram_only_when_asked():
    model, targets = linear_model()
    assert observe(model, targets, BATCHES)["0.weight"].gram is None


def test_conv_sums_per_input_channel_over_batch_and_positions():
    conv = nn.Sequential(nn.Conv2d(2, 1, kernel_size=2))
    x = torch.tensor([[[[1.0, 2.0], [2.0, 4.0]], [[2.0, 0.0], [0.0, 0.0]]],
                      [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]]])  # (N=2, C=2, 2, 2)
    obs = observe(conv, [Target("0.weight", param=conv[0].weight, module_name="0")], [x])
    assert obs["0.weight"].sq_sum.tolist() == [25.0 + 1.0, 4.0 + 3.0]
    assert obs["0.weight"].rows == 2 * 4


def test_bare_module_is_observed_as_the_root():
    model = nn.Linear(3, 2)
    obs = observe(model, [Target("weight", param=model.weight, module_name="")], BATCHES)
    assert obs["weight"].sq_sum.tolist() == SQ_SUM
    with pytest.raises(ValueError, match="'edges'.*targets need module_name"):
        ActivationObserver(model, [Target("edges", shape=(5,))])


def test_targets_of_one_module_share_statistics():
    model = nn.Sequential(nn.Linear(3, 2))
    targets = [Target("0.weight", param=model[0].weight, module_name="0"),
               Target("0.bias", param=model[0].bias, module_name="0")]
    obs = observe(model, targets, BATCHES)
    assert obs["0.weight"] is obs["0.bias"]
    assert sorted(obs) == ["0.bias", "0.weight"] and len(obs) == 2


def test_layer_by_layer_equals_one_pass_and_runs_once_per_module():
    model, targets = two_layer_model()
    batches = [torch.randn(5, 3), torch.randn(2, 7, 3)]
    calls = []

    def forward(m, batch):
        calls.append(batch.shape)
        return m(batch)

    one = observe(model, targets, batches, forward=forward, gram=True)
    assert len(calls) == 2
    calls.clear()
    seen = []
    layered = ActivationObserver(model, targets, gram=True)
    assert layered.calibrate(batches, forward, layer_by_layer=True, on_batch=seen.append) == 2
    assert len(calls) == 2 * 2  # batches × observed modules
    assert len(seen) == 2  # on_batch once per distinct batch
    a, b = one.state_dict()["stats"], layered.state_dict()["stats"]
    assert layered.calibrate(batches, layer_by_layer=True) == 2  # a second call accumulates
    assert layered["0.weight"].rows == 2 * 19
    assert torch.equal(layered["0.weight"].sq_sum, 2 * a["0"]["sq_sum"])
    assert sorted(a) == sorted(b) == ["0", "2"]
    for name in a:
        assert a[name]["rows"] == b[name]["rows"] == 19
        assert torch.equal(a[name]["sq_sum"], b[name]["sq_sum"])
        assert torch.equal(a[name]["gram"], b[name]["gram"])
    assert no_hooks(model)


def test_layers_can_drop_statistics_and_see_changed_weights():
    model, targets = two_layer_model()
    obs = ActivationObserver(model, targets)
    names = []
    for name, stats in obs.layers([torch.ones(2, 3)], keep=False):
        names.append(name)
        assert no_hooks(model)  # no hook while the consumer runs
        if name == "0":  # "prune" the first layer entirely before the second is observed
            with torch.no_grad():
                model[0].weight.zero_()
                model[0].bias.zero_()
        else:
            assert stats.sq_sum.tolist() == [0.0] * 4
    assert names == ["0", "2"]
    assert len(obs) == 0
    skipped = nn.ModuleDict({"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2)})
    targets = [Target(f"{n}.weight", param=skipped[n].weight, module_name=n) for n in ("used", "unused")]
    with pytest.raises(ValueError, match="'unused' was not called"):
        observe(skipped, targets, [torch.ones(1, 2)], forward=lambda m, b: m["used"](b), layer_by_layer=True)


def test_hooks_removed_when_forward_raises():
    model, targets = two_layer_model()

    def boom(m, batch):
        m(batch)
        raise RuntimeError("boom")

    for layer_by_layer in (False, True):
        with pytest.raises(RuntimeError, match="boom"):
            observe(model, targets, [torch.ones(1, 3)], forward=boom, layer_by_layer=layer_by_layer)
        assert no_hooks(model)
        assert model.training


def test_calibration_in_eval_mode_without_grad_and_mode_restored():
    model, targets = linear_model()
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    model.train()
    observe(model, targets, BATCHES)
    assert seen == [(False, False), (False, False)]
    assert model.training
    model.eval()
    observe(model, targets, BATCHES, layer_by_layer=True)
    assert not model.training


def test_state_dict_round_trip_with_weights_only_load():
    model, targets = linear_model()
    obs = observe(model, targets, BATCHES, gram=True)
    buf = io.BytesIO()
    torch.save(obs.state_dict(), buf)
    buf.seek(0)
    other = ActivationObserver(model, targets)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert other.gram and other["0.weight"].rows == 4
    assert other["0.weight"].sq_sum.tolist() == SQ_SUM and other["0.weight"].gram.tolist() == GRAM
    with pytest.raises(ValueError, match="does not watch"):
        other.load_state_dict({"stats": {"nope": {"sq_sum": torch.zeros(1), "rows": 1}}})


def test_reduce_sums_over_ranks():
    model, targets = linear_model()
    obs = observe(model, targets, BATCHES, gram=True)
    sizes = []

    def two_identical_ranks(flat):
        sizes.append(flat.numel())
        return flat * 2

    obs.reduce(two_identical_ranks)
    assert sizes == [3 + 1 + 9]  # one collective: sq_sum, rows, gram
    stats = obs["0.weight"]
    assert stats.sq_sum.tolist() == [2 * v for v in SQ_SUM]
    assert stats.rows == 8
    assert stats.gram.tolist() == [[2 * v for v in row] for row in GRAM]


def test_bad_input_is_rejected():
    model, targets = linear_model()
    with pytest.raises(ValueError, match="'x.weight'.*not a submodule"):
        ActivationObserver(model, [Target("x.weight", shape=(2, 3), module_name="missing")])
    with pytest.raises(ValueError, match="no batches"):
        observe(model, targets, [])
    with pytest.raises(ValueError, match="re-iterable"):
        observe(model, targets, iter(BATCHES), layer_by_layer=True)
    emb = nn.Sequential(nn.Embedding(4, 2))
    with pytest.raises(ValueError, match="not a floating-point tensor"):
        observe(emb, [Target("0.weight", param=emb[0].weight, module_name="0")], [torch.tensor([1, 2])])
    assert no_hooks(emb)
    with pytest.raises(ValueError, match="module '0'.*2 features"):
        observe(model, targets, [torch.ones(1, 3), torch.ones(1, 2)])


def test_input_stats_add_rejects_other_widths():
    s = InputStats(torch.zeros(2, dtype=torch.float64))
    s.add(torch.tensor([[1.0, 2.0]]))
    assert s.sq_sum.tolist() == [1.0, 4.0] and s.rows == 1
    with pytest.raises(ValueError, match="3 features"):
        s.add(torch.ones(1, 3))


# -- criteria declare when they observe -------------------------------------------------
def test_observes_declarations_of_core_criteria():
    assert OBSERVES == ("never", "step", "forward", "calibration")
    assert Magnitude.observes == "never" and Magnitude.needs_gradients is False
    assert Magnitude().needs_gradients is False
    assert Taylor.observes == "step" and Taylor().needs_gradients is True
    assert AccumulatingCriterion.needs_gradients is True
    assert Wanda.observes == "calibration" and Wanda().needs_gradients is False


def test_legacy_needs_gradients_subclasses_keep_working():
    class Legacy(Criterion):
        needs_gradients = True

    class LegacyOff(AccumulatingCriterion):
        needs_gradients = False

    class Calibrated(Legacy):
        observes = "calibration"

    assert Legacy.observes == "step" and Legacy().needs_gradients is True and Legacy.needs_gradients is True
    assert LegacyOff.observes == "never" and LegacyOff().needs_gradients is False
    assert Calibrated().needs_gradients is False  # the inherited legacy flag does not shadow `observes`
    crit = Magnitude()
    crit.needs_gradients = True  # instance assignment, as before
    assert crit.observes == "step" and Magnitude.observes == "never"


def test_plugin_criteria_declared_the_old_way_report_step():
    import sparsity_plugins.vision.criteria as vision
    assert vision.HeadSensitivity.observes == "step" and vision.HeadSensitivity().needs_gradients is True
    assert vision.BNScale.observes == "never"
    from sparsity_plugins.splat.hashgrid_pruning import SaliencyUsage
    assert SaliencyUsage.observes == "forward" and SaliencyUsage().needs_gradients is False


def test_invalid_or_contradictory_observes_is_rejected():
    with pytest.raises(ValueError, match="must be one of never, step, forward, calibration"):
        type("Bad", (Criterion,), {"observes": "sometimes"})
    with pytest.raises(ValueError, match="contradicts"):
        type("Both", (Criterion,), {"observes": "calibration", "needs_gradients": True})
