"""QUEEN's gates driven as a program: the penalty gradient, the dual ascent and finalize come
from the callback; the user's loss is the task loss only."""
import pytorch_lightning as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparsity_core import Host, SparsityCallback
from sparsity_plugins.splat.queen import ResidualGate
from sparsity_plugins.splat.queen_program import ResidualGating

from ...lightning.helpers import trainer


class Frame(pl.LightningModule):
    """Fits x_t = x_{t-1} + z ⊙ Δ to a frame where only the first 4 of 40 Gaussians moved."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gate = ResidualGate(40, 3, density=0.1, dual_lr=0.5)
        self.previous = torch.zeros(40, 3)
        self.target = torch.zeros(40, 3)
        self.target[:4] = 1.0

    def training_step(self, batch, batch_idx):
        return (self.gate(self.previous) - self.target).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def test_penalty_gradient_and_dual_step_are_added_by_the_program():
    frame = Frame()
    gate = frame.gate
    prog = ResidualGating()
    prog.attach(Host(model=frame))
    gate.lam.fill_(0.5)
    opt = torch.optim.SGD(frame.parameters(), lr=0.0)
    gate.log_alpha.grad = torch.zeros(40)
    prog.before_optimizer_step(opt)
    p = gate.open_probability().detach()
    expected = 0.5 * p * (1 - p) / 40  # ∂(λ·mean σ(log α − c))/∂ log α
    assert torch.allclose(gate.log_alpha.grad, expected, atol=1e-7)
    rho = float(gate.expected_density())
    prog.after_optimizer_step(1)
    assert float(gate.lam) == pytest.approx(max(0.0, 0.5 + 0.5 * (rho - 0.1)))


def test_fit_drives_the_budget_and_finalizes_to_the_kept_residuals():
    frame = Frame()
    prog = ResidualGating()
    data = DataLoader(TensorDataset(torch.zeros(60, 1)), batch_size=1)
    t = trainer(max_steps=60, callbacks=[SparsityCallback(programs=[prog])])
    t.fit(frame, data)
    gate = frame.gate
    assert gate.finalized and gate.kept.tolist() == [0, 1, 2, 3]  # ⌊0.1·40⌋ rows, the ones that moved
    assert float(t.callback_metrics["sparsity/queen/density"]) < 0.9  # the gates were closing
    assert prog.report()["stored_fraction"] == pytest.approx(4 * 4 / 120)


def test_a_model_without_gates_is_refused():
    with pytest.raises(ValueError, match="has no ResidualGate"):
        ResidualGating().attach(Host(model=torch.nn.Linear(2, 2)))
