import pytest
import torch
from torch import nn

from sparsity_core.criteria import Wanda
from sparsity_core.oneshot import OneShotResult, one_shot_prune
from sparsity_core.registry import UnknownNameError
from sparsity_core.targets import Target


def set_weight(layer, w):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w))


def two_linears():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    set_weight(model[0], [[1.0, -5.0], [0.1, 3.0]])
    set_weight(model[1], [[2.0, -0.2]])
    targets = [Target(f"{i}.weight", param=model[i].weight, module_name=str(i)) for i in (0, 1)]
    return model, targets


def one_linear(w=((1.0, 2.0), (3.0, 0.5))):
    model = nn.Sequential(nn.Linear(2, len(w), bias=False))
    set_weight(model[0], [list(r) for r in w])
    return model, [Target("0.weight", param=model[0].weight, module_name="0")]


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_magnitude_prunes_exactly_the_smallest_weights_globally():
    model, targets = two_linears()
    bias = model[0].bias.detach().clone()
    result = one_shot_prune(model, targets, None, 0.5)  # 6 weights, keep the 3 largest |w|: 5, 3, 2
    assert isinstance(result, OneShotResult) and result.activations is None
    assert result.masks["0.weight"].tolist() == [[False, True], [False, True]]
    assert result.masks["1.weight"].tolist() == [[True, False]]
    assert model[0].weight.tolist() == [[0.0, -5.0], [0.0, 3.0]]
    assert model[1].weight.tolist() == [[2.0, 0.0]]
    assert torch.equal(model[0].bias, bias)
    assert result.report == {"global": 0.5, "0.weight": 0.5, "1.weight": 0.5}


def test_wanda_activation_scale_flips_the_choice_of_magnitude():
    # Σx² = [6²+8², 1²] = [100, 1]: norms [10, 1]; wanda scores [[10, 2], [30, 0.5]].
    batches = [torch.tensor([[6.0, 1.0], [8.0, 0.0]])]
    model, targets = one_linear()
    one_shot_prune(model, targets, batches, 0.5, criterion="magnitude")  # keeps |3| and |2|
    assert model[0].weight.tolist() == [[0.0, 2.0], [3.0, 0.0]]
    for layer_by_layer in (False, True):
        model, targets = one_linear()
        model.train()
        result = one_shot_prune(model, targets, batches, 0.5, criterion="wanda", layer_by_layer=layer_by_layer)
        assert model[0].weight.tolist() == [[1.0, 0.0], [3.0, 0.0]]  # keeps 30 and 10
        assert result.activations["0.weight"].sq_sum.tolist() == [100.0, 1.0]
        assert model.training  # left in its original mode
    model, targets = one_linear()
    model.eval()
    one_shot_prune(model, targets, batches, 0.5, criterion=Wanda(), forward=lambda m, b: m(b[0]), apply=False)
    assert not model.training


def test_calibration_criterion_observes_every_batch():
    seen = []

    class Recorder(Wanda):
        def observe(self, target, context):
            seen.append((target.name, context.batch.shape[0], context.activations is not None))

    model, targets = one_linear()
    one_shot_prune(model, targets, [torch.ones(1, 2), torch.ones(3, 2)], 0.5, criterion=Recorder())
    assert seen == [("0.weight", 1, True), ("0.weight", 3, True)]


def test_tuple_batches_are_unpacked():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 1, bias=False)

        def forward(self, a, b):
            return self.fc(a + b)

    model = TwoInputs()
    set_weight(model.fc, [[1.0, 2.0]])
    target = Target("fc.weight", param=model.fc.weight, module_name="fc")
    result = one_shot_prune(model, [target], [(torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 1.0]]))], 0.5,
                      criterion="wanda")  # norms [4, 1]: scores [4, 2]
    assert model.fc.weight.tolist() == [[1.0, 0.0]]
    assert result.activations["fc.weight"].sq_sum.tolist() == [16.0, 1.0]


def test_gradient_criterion_needs_loss_fn_and_restores_grads():
    model, targets = one_linear(((1.0, -2.0),))
    sentinel = torch.full((1, 2), 7.0)
    model[0].weight.grad = sentinel.clone()
    before = snapshot(model)
    with pytest.raises(ValueError, match="needs loss_fn"):
        one_shot_prune(model, targets, [torch.ones(1, 2)], 0.5, criterion="taylor")
    assert unchanged(model, before)
    # grads = x: (g·w)² = [1, 4] for x = [1, 1] and [4, 0] for x = [2, 0]; mean [2.5, 2]
    batches = [torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])]
    model.train()
    one_shot_prune(model, targets, batches, 0.5, criterion="taylor", loss_fn=lambda m, b: m(b).sum())
    assert model[0].weight.tolist() == [[1.0, 0.0]]  # magnitude would have kept -2
    assert torch.equal(model[0].weight.grad, sentinel)
    assert model.training
    model, targets = one_linear(((1.0, -2.0),))
    with torch.no_grad():  # the gradient pass enables grad itself
        one_shot_prune(model, targets, batches, 0.5, criterion="taylor", loss_fn=lambda m, b: m(b).sum())
    assert model[0].weight.tolist() == [[1.0, 0.0]] and model[0].weight.grad is None
    with pytest.raises(ValueError, match="scalar tensor"):
        one_shot_prune(model, targets, batches, 0.5, criterion="taylor", loss_fn=lambda m, b: m(b).reshape(-1).repeat(2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparsity=1.0), r"sparsity must be a number in \[0, 1\)"),
    (dict(sparsity=-0.1), r"sparsity must be a number in \[0, 1\)"),
    (dict(criterion="wandaa"), "unknown criterion 'wandaa'. Did you mean 'wanda'"),
    (dict(allocator="globl"), "unknown allocator 'globl'"),
    (dict(measure="flops"), "measure must be one of units, params, macs"),
    (dict(criterion="wanda", batches=None), "needs calibration batches"),
    (dict(criterion="wanda", batches=[]), "no batches"),
    (dict(criterion="wanda", batches=iter([torch.ones(1, 2)]), layer_by_layer=True), "re-iterable"),
    (dict(criterion="wanda", forward=lambda m, b: 1 / 0), "division by zero"),
    (dict(measure="macs"), "MACs per unit"),
])
def test_bad_input_leaves_the_model_unchanged(kwargs, match):
    model, targets = two_linears()
    model.train()
    before = snapshot(model)
    args = dict(batches=[torch.ones(1, 2)], sparsity=0.5)
    args.update(kwargs)
    with pytest.raises((ValueError, ZeroDivisionError), match=match):
        one_shot_prune(model, targets, **args)
    assert unchanged(model, before)
    assert model.training
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_unknown_name_is_a_value_error_and_a_key_error():
    model, targets = two_linears()
    with pytest.raises(UnknownNameError) as info:
        one_shot_prune(model, targets, None, 0.5, criterion="nope")
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)


def test_targets_must_belong_to_the_model_to_be_applied():
    model, targets = two_linears()
    stray = Target("stray.weight", param=nn.Parameter(torch.ones(2, 2)), module_name="0")
    before = snapshot(model)
    with pytest.raises(ValueError, match="'stray.weight' has no parameter of the model"):
        one_shot_prune(model, targets + [stray], None, 0.5)
    assert unchanged(model, before)
    with pytest.raises(ValueError, match="duplicate target names"):
        one_shot_prune(model, targets + targets[:1], None, 0.5)
    with pytest.raises(ValueError, match="not a submodule"):
        one_shot_prune(model, [Target("0.weight", param=model[0].weight, module_name="x")], [torch.ones(1, 2)], 0.5,
                 criterion="wanda")
    assert unchanged(model, before)


def test_nan_scores_are_an_error_not_a_prune():
    model, targets = two_linears()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    before = snapshot(model)
    with pytest.raises(ValueError, match="1 NaN/Inf score"):
        one_shot_prune(model, targets, None, 0.5)
    assert all(torch.equal(v.nan_to_num(), before[k].nan_to_num()) for k, v in model.state_dict().items())


def test_apply_false_only_computes_masks():
    model, targets = two_linears()
    before = snapshot(model)
    result = one_shot_prune(model, targets, None, 0.5, apply=False)
    assert unchanged(model, before)
    assert result.masks["0.weight"].tolist() == [[False, True], [False, True]]


@pytest.mark.parametrize("name", ["ecoflap", "search", "random_search"])
def test_allocators_that_measure_the_model_get_a_probe_from_loss_fn_by_name(name):
    torch.manual_seed(0)
    model, targets = two_linears()
    batches = [(torch.randn(8, 2), torch.randn(8, 1)) for _ in range(2)]
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        x, y = batch
        return ((m(x) - y) ** 2).mean()

    result = one_shot_prune(model, targets, batches, 0.5, allocator=name, loss_fn=loss_fn)
    assert calls  # the probe ran the calibration loss
    kept = sum(int(result.masks[t.name].sum()) for t in targets)
    assert kept == 3  # floor((1 - 0.5) * 6 weights)
    with pytest.raises(ValueError, match="probe"):
        one_shot_prune(*two_linears(), batches, 0.5, allocator=name)


def test_allocators_that_read_input_statistics_get_the_calibration_pass():
    from sparsity_core.allocators import OWL
    from sparsity_core.observe import ActivationObserver

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    targets = [Target(f"{i}.weight", param=model[i].weight, module_name=str(i)) for i in (0, 2)]
    outlier_feature = torch.cat([torch.full((15,), 0.1), torch.tensor([20.0])])  # layer 0 sees one huge input
    batches = [torch.randn(32, 16) * outlier_feature for _ in range(3)]
    observer = ActivationObserver(model, targets)
    observer.calibrate(batches)
    owl = OWL(lam=0.2, m=2.0)
    by_name = one_shot_prune(model, targets, batches, 0.6, criterion="magnitude", allocator=owl, apply=False)
    assert owl.activations is None  # the caller's allocator is not changed
    explicit = one_shot_prune(model, targets, None, 0.6, criterion="magnitude",
                              allocator=OWL(lam=0.2, m=2.0, activations=observer), apply=False)
    for t in targets:
        assert torch.equal(by_name.masks[t.name], explicit.masks[t.name])
    # without calibration batches OWL reads outliers of the magnitude scores: another allocation
    from_scores = one_shot_prune(model, targets, None, 0.6, criterion="magnitude", allocator=OWL(lam=0.2, m=2.0),
                                 apply=False)
    assert any(not torch.equal(by_name.masks[t.name], from_scores.masks[t.name]) for t in targets)


def test_a_weight_program_binds_its_observer_to_an_allocator_that_reads_statistics():
    from sparsity_core import Host, WeightSparsity

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    program = WeightSparsity(schedule=0.5, criterion="magnitude", allocator="owl")
    program.attach(Host(model))
    observer = program.controller.activations
    assert observer is not None and program.controller.allocator.activations is observer
    program.detach()
