"""TDM's update: prune to the lower density bound by |w| + λ|g|, regrow at random (from zero)
to the upper bound; one mask across tasks."""
import torch
from sparsity_plugins.continual import TaskAwareDynamicMasks, WeightGradientImportance
from torch import nn

from sparsity_core import Host
from sparsity_core.criteria.base import ScoreContext
from sparsity_core.targets import Target


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 10, bias=False)
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        return self.head(self.fc(x))


def test_importance_is_magnitude_plus_lambda_gradient():
    p = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    p.grad = torch.tensor([[0.25, 0.5], [-3.0, 1.0]])
    t = Target("w", param=p)
    crit = WeightGradientImportance(lam=0.5)
    crit.observe(t, ScoreContext())
    assert crit.score(t, ScoreContext()).tolist() == [1.125, 2.25, 2.0, 0.5]


def step(net, program, opt, n):
    torch.manual_seed(n)
    opt.zero_grad()
    net(torch.randn(4, 10)).sum().backward()
    program.before_optimizer_step(opt)
    opt.step()
    program.after_optimizer_step(n)


def test_update_prunes_by_importance_and_regrows_zeros_to_the_same_count():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    program = TaskAwareDynamicMasks(sparsity=0.5, prune_sparsity=0.7, every=2, lam=0.5, gradient_keep=None)
    program.attach(Host(model=net))
    program.bind(Host(model=net, optimizers=[opt]))
    step(net, program, opt, 1)  # the initial mask (step 1)
    mask1 = program.masks["fc.weight"].clone()
    assert int(mask1.sum()) == 50
    torch.manual_seed(2)
    opt.zero_grad()
    net(torch.randn(4, 10)).sum().backward()
    dense_grad = net.fc.weight.grad.clone()  # what the criterion observes (before masks act)
    program.before_optimizer_step(opt)
    opt.step()
    after_step = net.fc.weight.detach().clone()
    importance = (after_step.abs() + 0.5 * dense_grad.abs()).reshape(-1)  # |w| at the update, λ = 0.5
    program.after_optimizer_step(2)  # an update step: prune to 30% density, regrow to 50%
    mask2 = program.masks["fc.weight"].reshape(-1)
    assert int(mask2.sum()) == 50
    top30 = torch.topk(importance, 30).indices
    assert mask2[top30].all()  # the lower bound: the 30 most important survive
    grown = mask2.clone()
    grown[top30] = False
    assert int(grown.sum()) == 20
    assert (net.fc.weight.detach().reshape(-1)[grown] == 0).all()  # regrown from zero
    kept = mask2.clone()
    kept[grown] = False
    assert torch.equal(net.fc.weight.detach().reshape(-1)[kept], after_step.reshape(-1)[kept])
    assert program.controller.history[-1]["event"] == "prune_regrow"


def test_one_mask_across_tasks():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    program = TaskAwareDynamicMasks(sparsity=0.5, every=100, gradient_keep=None)
    program.attach(Host(model=net))
    program.bind(Host(model=net, optimizers=[opt]))
    step(net, program, opt, 1)
    mask = program.masks["fc.weight"].clone()
    program.set_task("task1", 1)
    assert torch.equal(program.masks["fc.weight"], mask) and program.controller.task == "default"
    assert program.regrow.task_start == 1


def test_gradient_regrowth_takes_the_pruned_units_with_the_largest_dense_gradient():
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    program = TaskAwareDynamicMasks(sparsity=0.5, prune_sparsity=0.7, every=2, lam=0.5, gradient_keep=None,
                                    regrow="gradient")
    program.attach(Host(model=net))
    program.bind(Host(model=net, optimizers=[opt]))
    step(net, program, opt, 1)
    torch.manual_seed(2)
    opt.zero_grad()
    net(torch.randn(4, 10)).sum().backward()
    dense_grad = net.fc.weight.grad.clone().abs().reshape(-1)
    program.before_optimizer_step(opt)
    opt.step()
    importance = (net.fc.weight.detach().abs().reshape(-1) + 0.5 * dense_grad)
    program.after_optimizer_step(2)
    mask2 = program.masks["fc.weight"].reshape(-1)
    top30 = torch.topk(importance, 30).indices
    low = torch.zeros(100, dtype=torch.bool)
    low[top30] = True
    expected = torch.topk(dense_grad.masked_fill(low, -1.0), 20).indices  # the 20 largest |g| outside the 30
    grown = mask2 & ~low
    assert int(mask2.sum()) == 50 and sorted(grown.nonzero().flatten().tolist()) == sorted(expected.tolist())
    assert "regrow='gradient'" in repr(program.regrow)


def test_unknown_regrowth_is_refused():
    import pytest
    with pytest.raises(ValueError, match="regrow must be 'random' \\(SparCL\\) or 'gradient'"):
        TaskAwareDynamicMasks(sparsity=0.5, regrow="hebbian")


def test_experiment_config_allocator_splits_the_sparsity_over_layers():
    """``ExperimentConfig(allocator=...)`` reaches TDM: ERK (density ∝ (n_in + n_out) / (n_in·n_out))
    leaves the 8x16 layer denser than the 16x16 one; uniform leaves both alike; an unknown
    allocator is refused before anything trains."""
    import pytest
    from sparsity_plugins.continual.experiment import ExperimentConfig, build
    from sparsity_plugins.continual.stream import run_stream

    from .helpers import stream, trainer

    densities = {}
    for allocator in ("uniform", "erk"):
        data = stream()
        cfg = ExperimentConfig(method="derpp", buffer_size=8, hidden=(16, 16), sparsity=0.75, allocator=allocator,
                               ddr_fraction=None, gradient_keep=None, epochs=1)
        module, callbacks = build(data, cfg, (8,))
        run_stream(module, data, lambda: trainer(callbacks, max_epochs=1))
        (tdm,) = [p for p in callbacks[0].programs if isinstance(p, TaskAwareDynamicMasks)]
        densities[allocator] = {name: round(w, 3) for name, (w, _) in tdm.densities().items()}
    assert list(densities["uniform"].values()) == [0.25, 0.25]
    first, second = densities["erk"].values()
    assert first > 0.25 > second and round(first * 128 + second * 256) == 96  # same total: 25% of 384
    with pytest.raises(ValueError, match="allocator"):
        build(stream(), ExperimentConfig(sparsity=0.75, allocator="no-such"), (8,))
