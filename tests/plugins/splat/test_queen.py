"""QUEEN-style residual gating on a synthetic moving scene: the gates open for the Gaussians
that move, the dual ascent drives the density to its budget, finalize keeps exactly the
budget and stores the residual sparsely."""
import io
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


def train(gate, opt, frame0, frame1, steps, finalize_at=None):
    """``steps`` training steps (hard-concrete samples, dual ascent); finalize before step
    ``finalize_at``. Returns the outputs of every step."""
    outputs = []
    for i in range(steps):
        if i == finalize_at:
            gate.finalize()
            gate.train()
        out = gate(frame0)
        loss = ((out - frame1) ** 2).sum(-1).mean() + gate.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not gate.finalized:
            gate.dual_step()
        outputs.append(out.detach().clone())
    return outputs


def reload(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # plain data only


def test_a_finalized_gate_reloads_finalized():
    torch.manual_seed(0)
    frame0, frame1, _ = moving_scene(n=30, moving=3)
    gate = ResidualGate(30, 3, density=0.1)
    train(gate, torch.optim.Adam(gate.parameters(), lr=0.05), frame0, frame1, 20)
    gate.eval()
    kept, values = gate.finalize()
    outer = torch.nn.ModuleDict({"pos": gate})  # a gate inside a model: its prefix is kept
    state = reload(outer.state_dict())
    assert state["pos._extra_state"] == {"finalized": True}
    fresh = torch.nn.ModuleDict({"pos": ResidualGate(30, 3, density=0.1)})
    fresh.load_state_dict(state)
    again = fresh["pos"]
    assert again.finalized and torch.equal(again.kept, kept) and not again.log_alpha.requires_grad
    assert torch.equal(again.gates(), gate.gates()) and int(again.gates().sum()) == 3
    assert torch.equal(again(frame0), gate(frame0)) and float(again.penalty()) == 0.0
    assert again.stored_parameters() == gate.stored_parameters() == 3 * 4
    assert torch.equal(again.finalize()[1], values)  # finalize again: the same sparse residual


@pytest.mark.parametrize("save_at", [6, 14])  # during the gate training, and after finalize (step 10)
def test_a_gate_resumed_mid_training_continues_identically(save_at):
    frame0, frame1, _ = moving_scene(n=30, moving=3)
    torch.manual_seed(0)
    gate = ResidualGate(30, 3, density=0.1, dual_lr=0.5)
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    train(gate, opt, frame0, frame1, save_at, finalize_at=10)
    saved = reload({"gate": gate.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()})
    rest = train(gate, opt, frame0, frame1, 20 - save_at, finalize_at=10 - save_at)  # never reached if after

    torch.manual_seed(1)  # the saved RNG state must be used
    resumed = ResidualGate(30, 3, density=0.1, dual_lr=0.5)
    resumed.load_state_dict(saved["gate"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=0.05)
    opt2.load_state_dict(saved["opt"])
    torch.set_rng_state(saved["rng"])
    rest2 = train(resumed, opt2, frame0, frame1, 20 - save_at, finalize_at=10 - save_at)
    assert resumed.finalized and gate.finalized
    assert all(torch.equal(a, b) for a, b in zip(rest, rest2))
    assert torch.equal(resumed.kept, gate.kept) and torch.equal(resumed.residual, gate.residual)


@pytest.mark.parametrize("key, match", [("_extra_state", "lacks '_extra_state'"), ("kept", "lacks 'kept'"),
                                        ("lam", "lacks 'lam'")])
def test_a_state_missing_a_key_is_refused_and_changes_nothing(key, match):
    torch.manual_seed(0)
    source = ResidualGate(10, 3, density=0.3)
    with torch.no_grad():
        source.residual.normal_()
    source.finalize()
    state = source.state_dict()
    del state[key]
    target = ResidualGate(10, 3, density=0.3)
    before = {k: v.clone() for k, v in target.state_dict().items() if k != "_extra_state"}
    for strict in (True, False):
        with pytest.raises(ValueError, match=match):
            target.load_state_dict(state, strict=strict)
        assert not target.finalized and target.log_alpha.requires_grad
        assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())


def test_an_inconsistent_state_is_refused():
    gate = ResidualGate(10, 3, density=0.3)
    state = gate.state_dict()
    with pytest.raises(ValueError, match="finalized=True"):
        gate.load_state_dict({**state, "_extra_state": {"finalized": True}})  # finalized without kept rows
    with pytest.raises(ValueError, match="sorted distinct"):
        gate.load_state_dict({**state, "_extra_state": {"finalized": True}, "kept": torch.tensor([3, 12])})
    with pytest.raises(ValueError, match="residual"):
        gate.load_state_dict({**state, "residual": torch.zeros(9, 3)})
    assert not gate.finalized and gate.kept.numel() == 0
