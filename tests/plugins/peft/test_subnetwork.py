"""Subnetwork fine-tuning: the entries a sensitivity pass or a previous fine-tune selects
train, the others keep their values; checked against hand computations and through Lightning
(including a resume from a checkpoint)."""
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsity_core import SparsityCallback
from sparsity_plugins.peft import SubnetworkTuning, select_subnetwork

from .models import MLP, lit_mlp


def data(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def batches(seed=0):
    x, y = data(seed)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]


def test_sensitivity_selects_the_largest_mean_squared_gradients():
    torch.manual_seed(0)
    model = MLP()
    sums = {"fc1.weight": torch.zeros(8, 6), "fc2.weight": torch.zeros(8, 8)}
    for b in batches():
        model.zero_grad()
        loss_fn(model, b).backward()
        for name in sums:
            sums[name] += model.get_parameter(name).grad.pow(2)
    flat = torch.cat([s.reshape(-1) for s in sums.values()])
    k = int(0.25 * flat.numel())  # 28 of 112
    threshold = flat.topk(k).values.min()
    before = {k_: v.clone() for k_, v in model.state_dict().items()}
    masks = select_subnetwork(model, trainable=0.25, batches=batches(), loss_fn=loss_fn)
    assert sorted(masks) == ["fc1.weight", "fc2.weight"]  # the head is left out by default
    assert sum(int(masks[n].sum()) for n in masks) == k
    for name in sums:
        assert torch.equal(masks[name].reshape(sums[name].shape), sums[name] >= threshold)
    assert all(torch.equal(v, model.state_dict()[k_]) for k_, v in before.items())  # weights untouched


def test_changed_with_eps_trains_exactly_the_entries_that_moved():
    torch.manual_seed(0)
    model = MLP()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    reference["fc1.weight"][0, :3] += torch.tensor([0.5, 0.01, -0.2])
    reference["fc2.weight"][4, 4] -= 1.0
    masks = select_subnetwork(model, eps=0.1, select="changed", reference=reference)
    assert masks["fc1.weight"].reshape(8, 6).nonzero().tolist() == [[0, 0], [0, 2]]
    assert masks["fc2.weight"].reshape(8, 8).nonzero().tolist() == [[4, 4]]


def test_masks_from_different_seeds_overlap_in_part():
    torch.manual_seed(0)
    model = MLP()
    a = select_subnetwork(model, trainable=0.2, batches=batches(0), loss_fn=loss_fn)
    b = select_subnetwork(model, trainable=0.2, batches=batches(1), loss_fn=loss_fn)
    assert 0.0 < a.overlap(b) < 1.0 and a.overlap(a) == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"trainable": 0.1, "eps": 0.1, "select": "changed", "reference": {}}, "exactly one of trainable"),
    ({"eps": 0.1}, "needs select='changed'"),
    ({"select": "changed"}, "needs reference="),
    ({"trainable": 0.0}, "trainable"),
    ({"select": "nope"}, "select must be"),
    ({"select": "sensitivity", "reference": {}}, "only read by select='changed'"),
    ({"calibration": 0}, "calibration"),
])
def test_bad_configuration_is_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SubnetworkTuning(**kwargs)


def fit(program, epochs, tmp_path=None, ckpt_path=None, module=None):
    """``epochs`` epochs of 4 steps."""
    x, y = data()
    callbacks = [SparsityCallback(programs=[program])]
    if tmp_path is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1))  # at epoch ends
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=tmp_path is not None, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    module = module or lit_mlp(weight_decay=0.1)
    base = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8), ckpt_path=ckpt_path)
    return trainer, module, base


def test_lightning_fit_trains_only_the_subnetwork_and_reports_its_fraction():
    program = SubnetworkTuning(trainable=0.25, calibration=2)
    trainer, module, base = fit(program, epochs=2)
    for name in ("net.fc1.weight", "net.fc2.weight"):
        mask = program.masks[name].reshape(base[name].shape)
        w = module.state_dict()[name]
        assert torch.equal(w[~mask], base[name][~mask])  # frozen despite weight decay
        assert (w[mask] != base[name][mask]).all()
    assert not torch.equal(module.net.head.weight, base["net.head.weight"])  # the head trains in full
    assert trainer.callback_metrics["sparsity/subnetwork/trainable_fraction"].item() == pytest.approx(28 / 112)


def test_resume_keeps_the_subnetwork_and_continues_exactly(tmp_path):
    _, straight, _ = fit(SubnetworkTuning(trainable=0.25, calibration=2), epochs=2)
    fit(SubnetworkTuning(trainable=0.25, calibration=2), epochs=1, tmp_path=tmp_path)
    ckpt = next(p for p in tmp_path.iterdir() if "step=4" in p.name)
    program = SubnetworkTuning(trainable=0.25, calibration=3)  # a different calibration is not re-run
    _, resumed, _ = fit(program, epochs=2, ckpt_path=str(ckpt))
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-6)
