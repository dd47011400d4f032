"""Distilling the gates through Lightning: the loss falls and the recall of the true top blocks
rises, the transformer's weights never change, checkpoints hold the gates, batches stay dicts."""
import pytest
import pytorch_lightning as pl
import torch

from sparsity_plugins.video.distill import GateDistillation, calibration_inputs, calibration_loader, collate_kwargs
from sparsity_plugins.video.gates import SeerAttention, TrainableDynamicMask, block_recall, dense_block_targets
from sparsity_plugins.video.processors import install

from .helpers import model_and_inputs


def trainer(steps):
    return pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


def recall(model, method, inputs, keep=3, block_size=4):
    """Mean recall of the gates' ``keep`` top blocks among the true top blocks of the dense map."""
    found = []

    def observe(layer, q, k, v, scale):
        tiles, mass = dense_block_targets(q, k, scale, block_size)
        with torch.no_grad():
            pred = method.predict(layer, q, k, v, block_size)
        found.append(block_recall(pred, tiles if pred.dim() == 4 else mass, keep))
    with install(model, block_size=block_size) as s:
        s.observer = observe
        with torch.no_grad():
            for x in inputs:
                model(**x)
    return sum(found) / len(found)


def test_collate_keeps_the_forward_kwargs():
    model, _ = model_and_inputs("wan")
    inputs = calibration_inputs(model, seeds=range(2), timesteps=(900.0, 100.0))
    assert len(inputs) == 4 and inputs[1]["timestep"].item() == 100.0 and inputs[2]["timestep"].item() == 900.0
    batch = collate_kwargs(inputs[:3])
    assert batch["hidden_states"].shape == (3, 4, 3, 8, 8) and batch["timestep"].tolist() == [900.0, 100.0, 900.0]
    assert batch["return_dict"] is False
    assert next(iter(calibration_loader(inputs, batch_size=2)))["encoder_hidden_states"].shape[0] == 2


@pytest.mark.parametrize("cls", [SeerAttention, TrainableDynamicMask])
def test_a_lightning_fit_trains_the_gates_only(cls):
    model, _ = model_and_inputs("wan")
    torch.manual_seed(0)
    method = cls(2, 2, 8, density=0.25)
    inputs = calibration_inputs(model, seeds=range(2), timesteps=(900.0, 100.0))
    module = GateDistillation(model, method, block_size=4, lr=0.05)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    gates = {k: v.clone() for k, v in method.gates.state_dict().items()}
    with torch.no_grad():
        before = module.distill_loss(inputs[0])
    recall_before = recall(model, method, inputs)
    trainer(24).fit(module, calibration_loader(inputs))
    with torch.no_grad():
        after = module.distill_loss(inputs[0])
    assert len(module.losses) == 24
    assert after < 0.6 * before
    assert sum(module.losses[-4:]) < 0.6 * sum(module.losses[:4])
    assert recall(model, method, inputs) > recall_before + 0.15
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not all(torch.equal(gates[k], v) for k, v in method.gates.state_dict().items())
    assert not model.training and not model._forward_pre_hooks  # frozen in eval mode, processors removed
    assert not any(type(p).__name__.startswith("Sparse") for p in model.attn_processors.values())


def test_checkpoint_state_is_the_gates_state():
    model, _ = model_and_inputs("wan")
    method = SeerAttention(2, 2, 8)
    module = GateDistillation(model, method, block_size=4)
    state = module.state_dict()
    assert set(state) == set(method.gates.state_dict()) and all(k[0].isdigit() for k in state)
    other = SeerAttention(2, 2, 8)
    GateDistillation(model, other, block_size=4).load_state_dict(state)
    assert all(torch.equal(state[k], v) for k, v in other.gates.state_dict().items())


def test_distillation_refuses_a_method_for_another_model():
    model, _ = model_and_inputs("wan")
    with pytest.raises(ValueError, match="layers"):
        GateDistillation(model, SeerAttention(3, 2, 8))
    with pytest.raises(ValueError, match="method"):
        GateDistillation(model, object())
    with pytest.raises(ValueError, match="lr"):
        GateDistillation(model, SeerAttention(2, 2, 8), lr=-1.0)
