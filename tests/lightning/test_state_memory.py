"""What a checkpoint pays for sparsity: masks are stored as bool, so the callback's state for
a 25M-parameter model stays a fraction of the model's fp32 size, and it loads with
``weights_only=True``."""
import io

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsity_core.lightning.callback import SparsityCallback
from sparsity_core.schedules.ramps import Cubic

from .helpers import trainer


class Wide(pl.LightningModule):
    """25,017,502 parameters in two wide layers and a small head."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(5000, 2500), nn.Linear(2500, 5000), nn.Linear(5000, 2)

    def forward(self, x):
        return self.head(self.b(self.a(x)))

    def training_step(self, batch, batch_idx):
        return self(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_callback_state_of_a_25m_parameter_model_is_under_a_third_of_its_fp32_size():
    torch.manual_seed(0)
    model = Wide()
    params = sum(p.numel() for p in model.parameters())
    assert params >= 25_000_000
    callback = SparsityCallback(schedule=Cubic(start_step=1, end_step=2, final_sparsity=0.5), criterion="movement",
                                update_every=1)
    data = DataLoader(TensorDataset(torch.randn(2, 5000)), batch_size=1)
    trainer(max_steps=2, callbacks=[callback]).fit(model, data)
    state = callback.state_dict()
    masks = [t for t in _tensors(state) if t.numel() >= 1_000_000]
    assert masks and all(t.dtype == torch.bool for t in masks)  # the big tensors of the state are masks
    buffer = io.BytesIO()
    torch.save(state, buffer)
    assert buffer.tell() <= 4 * params / 3
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert sum(t.numel() for t in _tensors(loaded)) == sum(t.numel() for t in _tensors(state))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
