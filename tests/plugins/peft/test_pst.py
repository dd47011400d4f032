"""PST: W′ = W + βUV, S = |W′| + α₁AB + α₂(R1ᵀ + 1Cᵀ), M = TopK(S) with a straight-through estimator."""
import pytest
import torch
from torch import nn

from sparsity_core.allocators.budget import kept_count
from sparsity_plugins.peft import PST, inject_adapters

from .helpers import perturb
from .models import MLP


def pst_layer(sparsity=0.6, seed=4):
    layer = nn.Linear(9, 7)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(7, 9, generator=torch.Generator().manual_seed(seed)))
    adapter = PST(layer.weight.detach(), r=2, r_score=3, sparsity=sparsity, beta=0.7, alpha1=0.3, alpha2=0.2)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    adapter.bind(layer, "fc")
    return layer, adapter


def importance(layer, a):
    w_prime = layer.weight + 0.7 * a.U @ a.V
    return w_prime, w_prime.abs() + 0.3 * a.A @ a.B + 0.2 * (a.R[:, None] + a.C[None, :])


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.6, 0.95])
def test_mask_keeps_exactly_the_top_k_of_the_importance(sparsity):
    layer, a = pst_layer(sparsity)
    with torch.no_grad():
        w_prime, score = importance(layer, a)
    k = kept_count(score.numel(), sparsity)
    mask = a.mask()
    assert int(mask.sum()) == k
    assert set(torch.nonzero(mask.reshape(-1)).squeeze(1).tolist()) == set(torch.topk(score.reshape(-1), k).indices.tolist())
    with torch.no_grad():
        assert torch.allclose(a.effective_weight(layer.weight), torch.where(mask, w_prime, 0.0), atol=1e-6, rtol=0)


def test_the_learned_scores_are_not_a_magnitude():
    layer, a = pst_layer(0.5)
    with torch.no_grad():
        w_prime, _ = importance(layer, a)
        by_magnitude = torch.topk(w_prime.abs().reshape(-1), kept_count(63, 0.5)).indices
    assert set(torch.nonzero(a.mask().reshape(-1)).squeeze(1).tolist()) != set(by_magnitude.tolist())


def test_straight_through_gradients_reach_the_score_factors():
    layer, a = pst_layer(0.5)
    G = torch.randn(7, 9, generator=torch.Generator().manual_seed(9))
    (a.effective_weight(layer.weight) * G).sum().backward()
    with torch.no_grad():
        w_prime, _ = importance(layer, a)
        dS = G * w_prime  # ∂L/∂S through the estimator: ∂L/∂W_eff ⊙ W′
    assert torch.allclose(a.R.grad, 0.2 * dS.sum(1), atol=1e-5)
    assert torch.allclose(a.C.grad, 0.2 * dS.sum(0), atol=1e-5)
    assert torch.allclose(a.A.grad, 0.3 * dS @ a.B.detach().T, atol=1e-5)
    assert torch.allclose(a.B.grad, 0.3 * a.A.detach().T @ dS, atol=1e-5)
    assert all(float(p.grad.abs().sum()) > 0 for p in (a.U, a.V))


def test_in_a_model_only_the_six_small_tensors_train_and_merging_prunes_the_weight():
    model, x = MLP(), torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    adapters = inject_adapters(model, method="pst", target_modules=r"fc\d", r=2, r_score=2, sparsity=0.5)
    assert torch.equal(adapters.adapters["fc1"].mask(), adapters.adapters["fc1"].mask())
    with torch.no_grad():  # zero-initialised U, A, R, C: PST starts as magnitude pruning of W
        w = model.fc1.weight
        top = torch.topk(w.abs().reshape(-1), kept_count(w.numel(), 0.5)).indices
        assert set(torch.nonzero(adapters.adapters["fc1"].mask().reshape(-1)).squeeze(1).tolist()) == set(top.tolist())
    perturb(adapters)
    model(x).square().sum().backward()
    assert {n.rsplit(".", 1)[1] for n, p in model.named_parameters() if p.grad is not None} == set("UVABRC")
    with torch.no_grad():
        out = model(x)
        adapters.merge()
        assert int((model.fc1.weight == 0).sum()) == w.numel() - kept_count(w.numel(), 0.5)
        assert torch.allclose(model(x), out, atol=1e-5, rtol=0)
