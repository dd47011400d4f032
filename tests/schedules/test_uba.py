"""UBA learning-rate schedule: values by hand, cosine as φ = 2, the budget's end, bad input,
state round trip and use from Lightning's configure_optimizers."""
import io
import math

import pytest
import torch

from sparsity_core.lr_schedules import UBA, uba_factor

from ..lightning.helpers import TinyModule, loader, trainer


def lrs(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def sgd(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_values_by_hand():
    # T = 4, φ = 1: c = 1 + cos(πt/4); η = 2c / (2 + c)
    opt = sgd()
    got = lrs(UBA(opt, total_steps=4, phi=1.0), opt, 6)
    c1 = 1 + math.sqrt(0.5)
    expected = [1.0, 2 * c1 / (2 + c1), 2 / 3, 2 * (2 - c1) / (2 + 2 - c1), 0.0, 0.0]
    assert got == pytest.approx(expected, abs=1e-12)
    # φ = 0.5, η_min = 0.1 at t = 2 of 4: c = 1, factor 2 / (1 + 1.5) = 0.8 -> 0.1 + 0.9 * 0.8
    assert uba_factor(2, 4, 0.5) == pytest.approx(0.8)
    opt = sgd()
    assert lrs(UBA(opt, total_steps=4, phi=0.5, eta_min=0.1), opt, 3)[2] == pytest.approx(0.82)


def test_phi_two_is_cosine_annealing_and_small_phi_stays_high_longer():
    a, b = sgd(0.3), sgd(0.3)
    uba = lrs(UBA(a, total_steps=10, phi=2.0, eta_min=0.01), a, 12)
    cos = lrs(torch.optim.lr_scheduler.CosineAnnealingLR(b, T_max=10, eta_min=0.01), b, 11)
    assert uba[:11] == pytest.approx(cos, abs=1e-12)
    assert uba[11] == pytest.approx(0.01)
    assert uba_factor(5, 10, 0.5) > uba_factor(5, 10, 2.0) > uba_factor(5, 10, 4.0)
    assert all(uba_factor(t, 10, 0.5) >= uba_factor(t + 1, 10, 0.5) for t in range(10))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(total_steps=0), "total_steps"), (dict(total_steps=2.5), "total_steps"), (dict(phi=0.0), "phi"),
    (dict(phi=float("nan")), "phi"), (dict(eta_min=-1.0), "eta_min"), (dict(eta_min=2.0), "eta_min"),
])
def test_bad_input_is_an_error_before_the_optimizer_changes(kwargs, msg):
    opt = sgd()
    args = dict(total_steps=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        UBA(opt, **args)
    assert opt.param_groups[0]["lr"] == 1.0 and "initial_lr" not in opt.param_groups[0]


def test_state_round_trip_continues_identically():
    opt = sgd()
    sched = UBA(opt, total_steps=8, phi=0.7, eta_min=0.05)
    lrs(sched, opt, 3)
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt2 = sgd()
    resumed = UBA(opt2, total_steps=8, phi=0.7, eta_min=0.05)
    resumed.load_state_dict(state)
    opt2.param_groups[0]["lr"] = resumed.get_last_lr()[0]
    assert lrs(resumed, opt2, 6) == pytest.approx(lrs(sched, opt, 6), abs=1e-15)


class UBAModule(TinyModule):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.2)
        sched = UBA(opt, total_steps=self.trainer.estimated_stepping_batches, phi=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_lightning_configure_optimizers_steps_it_every_optimizer_step():
    module = UBAModule()
    t = trainer(max_epochs=1)
    t.fit(module, loader(n=24, batch_size=8))  # 3 steps: the budget
    opt = t.optimizers[0]
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 3
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)
