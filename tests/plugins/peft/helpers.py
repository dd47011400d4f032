"""Shared checks for the peft plugin's tests."""
import torch

from sparsity_plugins.peft.base import is_adapted

METHODS = {"lora": dict(r=2), "snell": dict(r=4, sparsity=0.5), "pst": dict(r=2, r_score=2, sparsity=0.4),
           "dsee": dict(r=2, n_sparse=6)}


def perturb(adapters, scale=0.05, seed=3):
    """Move every trainable tensor off its initialisation (deterministically)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.trainable_parameters().values():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def snapshot(model):
    """Everything that must come back unchanged: state (bitwise), classes, requires_grad flags."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: type(m) for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()})


def assert_unchanged(model, snap):
    state, classes, flags = snap
    now = model.state_dict()
    assert set(now) == set(state)
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any(is_adapted(m) for m in model.modules())
