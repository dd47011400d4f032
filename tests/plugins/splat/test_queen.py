"""QUEEN-style residual gating on a synthetic moving scene: the gates open for the Gaussians
that move, the dual ascent drives the density to its budget, finalize keeps exactly the
budget and stores the residual sparsely."""
import math

import pytest
import torch

from sparsity_plugins.splat.queen import GAMMA, ZETA, ResidualGate


def moving_scene(n=200, moving=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    frame0 = torch.randn(n, 3, generator=g)
    idx = torch.randperm(n, generator=g)[:moving]
    frame1 = frame0.clone()
    frame1[idx] += 0.5 * torch.randn(moving, 3, generator=g)
    return frame0, frame1, idx


def test_gates_open_where_the_scene_moves_and_the_density_meets_the_budget():
    torch.manual_seed(0)
    frame0, frame1, moving = moving_scene()
    gate = ResidualGate(200, 3, density=0.1, dual_lr=0.5)
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(600):
        loss = ((gate(frame0) - frame1) ** 2).sum(-1).mean() + gate.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        gate.dual_step()
    assert float(gate.expected_density()) <= 0.1 + 0.03
    gate.eval()
    before = gate(frame0).detach()
    kept, values = gate.finalize()
    assert kept.numel() == 20 and set(kept.tolist()) == set(moving.tolist())
    assert torch.allclose(gate(frame0), before)  # continuous at the switch
    for _ in range(200):  # fine-tune the kept residuals with the gates fixed
        loss = ((gate(frame0) - frame1) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ((gate(frame0) - frame1) ** 2).sum(-1).mean() < 1e-4
    assert gate.stored_parameters() == 20 * 4 and values.shape == (20, 3)
    moved = (gate(frame0) - frame0).abs().sum(-1) > 0
    assert torch.equal(torch.where(moved)[0], kept)  # nothing else moves


def test_hard_concrete_math():
    gate = ResidualGate(4, 2, init_open=0.9)
    assert torch.allclose(gate.open_probability(), torch.full((4,), 0.9))
    with torch.no_grad():
        gate.log_alpha[:] = torch.tensor([-20.0, 0.0, 20.0, 1.0])
    gate.eval()
    z = gate.gates()
    assert z[0] == 0.0 and z[2] == 1.0 and float(z[1]) == pytest.approx(0.5 * (ZETA - GAMMA) + GAMMA)
    gate.train()
    samples = torch.stack([gate.gates() for _ in range(200)])
    assert samples.min() >= 0 and samples.max() <= 1 and (samples[:, 0] == 0).all() and (samples[:, 2] == 1).all()


def test_dual_ascent_raises_lambda_only_above_the_budget():
    gate = ResidualGate(10, 3, density=0.5, dual_lr=1.0, init_open=0.9)
    rho = gate.dual_step()
    assert rho == pytest.approx(0.9) and float(gate.lam) == pytest.approx(0.4)
    with torch.no_grad():
        gate.log_alpha.fill_(-10.0)
    gate.dual_step()
    assert float(gate.lam) == pytest.approx(max(0.0, 0.4 + (float(gate.expected_density()) - 0.5)))


def test_target_and_bad_input():
    gate = ResidualGate(7, 3, density=0.3)
    t = gate.target()
    assert t.num_units == 7 and t.param is None and t.params_per_unit == 3.0
    with pytest.raises(ValueError, match="density"):
        ResidualGate(7, 3, density=0.0)
    with pytest.raises(ValueError, match="shape"):
        gate(torch.zeros(6, 3))
    gate.finalize()
    assert gate.kept.numel() == math.floor(0.3 * 7)
