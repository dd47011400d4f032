"""SNELL: kernelized LoRA with competition-based sparsification recomputed in every forward."""
import pytest
import torch
from torch import nn

from sparsity_core.allocators.budget import kept_count
from sparsity_core.criteria.base import ScoreContext
from sparsity_core.criteria.magnitude import Magnitude
from sparsity_plugins.peft import LoRA, SNELL, inject_adapters

from .models import MLP


def weight(out=7, inp=9):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(5))


def randomize(adapter, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_linear_kernel_at_sparsity_zero_is_lora_exactly():
    w = weight()
    lora, snell = LoRA(w, r=3, alpha=6.0), SNELL(w, r=3, alpha=6.0, kernel="linear", sparsity=0.0)
    assert torch.equal(snell.B, torch.zeros_like(snell.B))  # LoRA's initialisation: ΔW = 0 at the start
    randomize(lora)
    with torch.no_grad():
        snell.A[0].copy_(lora.A)
        snell.B[0].copy_(lora.B)
    assert torch.equal(snell.delta(), lora.delta())
    assert sum(p.numel() for p in snell.parameters()) == sum(p.numel() for p in lora.parameters())


def test_distance_kernel_is_the_difference_of_two_euclidean_kernels():
    snell = SNELL(weight(), r=4, kernel="distance", scale=0.1)
    randomize(snell)
    A, B = snell.A.detach(), snell.B.detach()
    expected = torch.empty(7, 9)
    for i in range(7):
        for j in range(9):
            expected[i, j] = 0.1 * ((B[0, i] - A[0, :, j]).norm() - (B[1, i] - A[1, :, j]).norm())
    assert torch.allclose(snell.dense_delta(), expected, atol=1e-6, rtol=0)
    assert torch.linalg.matrix_rank(snell.dense_delta()) > 4  # more than the rank of a LoRA of equal size


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77, 0.9, 0.99])
def test_sparsity_keeps_the_top_fraction_exactly_scaled_by_magnitude(sparsity):
    snell = SNELL(weight(), r=4, sparsity=sparsity)
    randomize(snell)
    dense = snell.dense_delta().detach()
    sparse = snell.delta().detach()
    k = kept_count(dense.numel(), sparsity)
    assert int((sparse != 0).sum()) == k
    top = torch.topk(dense.abs().reshape(-1), k).indices
    assert set(torch.nonzero(sparse.reshape(-1)).squeeze(1).tolist()) == set(top.tolist())
    kept = sparse != 0
    assert torch.equal(sparse[kept], dense[kept] * dense[kept].abs())
    assert snell.removed_fraction() == pytest.approx(1 - k / dense.numel())


def test_the_mask_uses_the_core_target_and_magnitude_criterion_and_is_recomputed_every_forward():
    snell = SNELL(weight(), r=4, sparsity=0.5)
    randomize(snell)
    snell.bind(nn.Linear(9, 7), "fc")  # what injection does: the target is named after the layer
    target = snell.targets()[0]
    assert target.name == "fc.delta" and target.param is None and target.shape == (7, 9)
    assert torch.equal(target.read(), snell.dense_delta().detach())  # a core Target over a computed tensor
    scores = Magnitude().score(target, ScoreContext())
    assert torch.equal(scores, snell.dense_delta().detach().abs().reshape(-1))
    first = snell.delta().detach() != 0
    with torch.no_grad():
        snell.A.mul_(-1).add_(0.5)
    assert not torch.equal(snell.delta().detach() != 0, first)  # a new competition, no stored indices
    assert set(snell.state_dict()) == {"A", "B"}


def test_checkpointing_gives_the_same_outputs_and_gradients():
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = MLP()
        adapters = inject_adapters(model, method="snell", target_modules=r"fc\d", r=4, sparsity=0.6, checkpoint=ckpt)
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in adapters.trainable_parameters().items()}))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o1, o2, atol=1e-6, rtol=0)  # (W + ΔW̃)x vs Wx + ΔW̃x: equal up to rounding
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[k], g2[k], atol=1e-6, rtol=0) for k in g1)
    assert all(float(g.abs().sum()) > 0 for g in g1.values())


def test_set_sparsity_is_validated():
    snell = SNELL(weight(), r=2)
    with pytest.raises(ValueError, match="sparsity"):
        snell.sparsity = 1.0
    with pytest.raises(ValueError, match="no sparsity"):
        LoRA(weight(), r=2).sparsity = 0.5


def saved_for_backward(fn):
    """Elements of the tensors autograd keeps between forward and backward while ``fn`` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes)


def test_checkpointing_does_not_keep_the_dense_update_for_backward():
    layer = nn.Linear(64, 48)
    saved = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        adapter = SNELL(layer.weight.detach(), r=4, sparsity=0.9, checkpoint=ckpt)
        adapter.bind(layer, "fc")
        x = torch.randn(3, 64)
        saved[ckpt] = saved_for_backward(lambda: adapter.forward_linear(x, layer.weight, layer.bias))
    assert saved[False] >= 2 * 48 * 64  # ΔW̃ (for x's gradient) and more out×in tensors
    assert saved[True] < 48 * 64  # only the inputs of the checkpointed region
