"""Training-FLOPs counter against hand counts on a 2-layer MLP."""
import pytest
import torch
from torch import nn

from sparsity_core import SparsityCallback
from sparsity_plugins.continual import TaskAwareDynamicMasks, TrainingFlops, run_stream, step_macs

from .helpers import module, stream, trainer


class Dense:
    def __init__(self, table):
        self.table = table

    def densities(self):
        return self.table


def test_layer_macs_and_one_step_by_hand():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    counter = TrainingFlops(example_input=torch.zeros(1, 4))
    layers = counter.layer_macs(net)
    assert layers == {"0.weight": 12.0, "2.weight": 6.0}
    # fc1 at weight density 1/2, gradient density 1/4; the head dense; 10 examples:
    # fc1: 10·12·(2·0.5 + 0.25) = 150;  head: 10·6·3 = 180;  dense: 10·18·3 = 540
    assert step_macs(layers, {"0.weight": (0.5, 0.25)}, 10) == (330.0, 540.0)


def test_dense_fine_tuning_run_is_charged_three_forwards_per_example():
    counter = TrainingFlops()
    s = stream()
    run_stream(module(method="none", hidden=(16,)), s, lambda: trainer([counter], max_epochs=2))
    per_example = 3 * (8 * 16 + 16 * 4)
    assert counter.examples == {0: 96, 1: 96}
    assert counter.sparse == counter.dense == {0: 96.0 * per_example, 1: 96.0 * per_example}


def test_replayed_examples_are_charged():
    counter = TrainingFlops()
    s = stream()
    trainer([counter], max_epochs=2).fit(module(method="er", buffer_size=16), datamodule=s)
    # 6 batches of 8 per epoch; the first step replays nothing, the others 8 examples each
    assert counter.examples == {0: 8 + 11 * 16}


def test_sparse_weights_and_gradients_lower_the_count_exactly():
    tdm = TaskAwareDynamicMasks(sparsity=0.75, every=100, gradient_keep=0.5, gradient_every=1)
    counter = TrainingFlops([tdm])
    s = stream()
    trainer([SparsityCallback(programs=[tdm]), counter], max_steps=3).fit(module(method="none"), datamodule=s)
    # step 1 dense (the mask is computed after it); steps 2-3: fc1 (8x16) at d = 1/4 and
    # γ = round(0.5·32)/128 = 1/8; the head (16x4) stays dense
    d, g = 0.25, 16 / 128
    sparse_step = 8 * (128 * (2 * d + g) + 64 * 3)
    assert counter.sparse[0] == pytest.approx(8 * 192 * 3 + 2 * sparse_step)
    assert counter.dense[0] == 3 * 8 * 192 * 3
    assert tdm.densities() == {"net.1.weight": (0.25, 0.125)}
