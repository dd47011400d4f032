"""Configurable optimizer and scheduler of GraphClassifier / NodeClassifier: the defaults
reproduce the former hard-coded Adam exactly; callables, LightningCLI dicts and LightningCLI
itself reach the trainer's optimizers and lr_scheduler_configs; bad options raise before
training."""
import functools

import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
import pytorch_lightning as pl  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402
from torch_geometric.nn import global_mean_pool  # noqa: E402

from sparsity_plugins.graph import GCN, GraphClassifier, NodeClassifier, grid_graph, node_datamodule  # noqa: E402


def fit(module, data, **kwargs):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, max_epochs=3, num_sanity_val_steps=0)
    args.update(kwargs)
    trainer = pl.Trainer(**args)
    if isinstance(data, pl.LightningDataModule):
        trainer.fit(module, datamodule=data)
    else:
        trainer.fit(module, train_dataloaders=data[0], val_dataloaders=data[1])
    return trainer


def node_data():
    g = grid_graph(3, 4)
    idx = torch.arange(g.num_nodes)
    g.train_mask, g.val_mask, g.test_mask = idx % 3 == 0, idx % 3 == 1, idx % 3 == 2
    return node_datamodule(g)


def gcn():
    torch.manual_seed(0)
    return GCN(4, 2, hidden=8)


class MeanPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x, edge_index, batch, edge_attr=None):
        return global_mean_pool(self.lin(x), batch)


def graph_data():
    graphs = []
    for i in range(6):
        g = grid_graph(2, 2 + i % 3, seed=i)
        g.y = torch.tensor([i % 2])
        graphs.append(g)
    return DataLoader(graphs, batch_size=2), DataLoader(graphs, batch_size=3)


def pool():
    torch.manual_seed(0)
    return MeanPool()


class OldNode(NodeClassifier):
    """NodeClassifier's optimizer as it was hard-coded before it became configurable."""

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class OldGraph(GraphClassifier):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def adam_defaults(**changed):
    ref = torch.optim.Adam([nn.Parameter(torch.zeros(1))]).defaults
    return {**ref, **changed}


def group_options(opt):
    return {k: v for k, v in opt.param_groups[0].items() if k != "params"}


# -- defaults ------------------------------------------------------------------------------
def test_node_default_is_the_former_adam_and_trains_identically():
    module = NodeClassifier(gcn())
    assert type(module.configure_optimizers()) is torch.optim.Adam  # a bare optimizer, as before
    trainer = fit(module, node_data())
    (opt,) = trainer.optimizers
    assert type(opt) is torch.optim.Adam and group_options(opt) == adam_defaults(lr=0.01, weight_decay=5e-4)
    assert trainer.lr_scheduler_configs == []
    old = OldNode(gcn())
    fit(old, node_data())
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), old.state_dict().values()))
    assert module.history == old.history
    # lr and weight_decay still shape the default optimizer
    trainer = fit(NodeClassifier(gcn(), lr=0.05, weight_decay=0.0), node_data(), max_epochs=1)
    assert group_options(trainer.optimizers[0]) == adam_defaults(lr=0.05, weight_decay=0.0)


def test_graph_default_is_the_former_adam_and_trains_identically():
    module = GraphClassifier(pool())
    assert type(module.configure_optimizers()) is torch.optim.Adam
    trainer = fit(module, graph_data())
    (opt,) = trainer.optimizers
    assert type(opt) is torch.optim.Adam and group_options(opt) == adam_defaults(lr=1e-3)
    assert trainer.lr_scheduler_configs == []
    old = OldGraph(pool())
    fit(old, graph_data())
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), old.state_dict().values()))
    assert module.history == old.history
    assert GraphClassifier(pool(), lr=0.02).configure_optimizers().param_groups[0]["lr"] == 0.02


# -- callables and dicts reach the trainer -------------------------------------------------
def test_node_partial_optimizer_and_cosine_schedule_per_step():
    module = NodeClassifier(gcn(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=5e-4),
                            lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
                            lr_scheduler_interval="step")
    trainer = fit(module, node_data(), max_epochs=2)
    (opt,) = trainer.optimizers
    assert type(opt) is torch.optim.AdamW
    assert opt.defaults["weight_decay"] == 5e-4 and opt.param_groups[0]["initial_lr"] == 1e-3
    (config,) = trainer.lr_scheduler_configs
    assert type(config.scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR
    assert config.interval == "step" and config.scheduler.T_max == 4 and config.scheduler.optimizer is opt
    assert config.scheduler.last_epoch == 2  # full batch: one optimizer step per epoch
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 2)).item()))


def test_graph_lightningcli_dicts_and_epoch_interval():
    module = GraphClassifier(pool(), optimizer={"class_path": "torch.optim.SGD",
                                                "init_args": {"lr": 0.1, "momentum": 0.9}},
                             lr_scheduler={"class_path": "StepLR", "init_args": {"step_size": 1, "gamma": 0.5}})
    trainer = fit(module, graph_data(), max_epochs=2)
    (opt,) = trainer.optimizers
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9
    (config,) = trainer.lr_scheduler_configs
    assert type(config.scheduler) is torch.optim.lr_scheduler.StepLR and config.interval == "epoch"
    assert config.scheduler.gamma == 0.5 and config.scheduler.last_epoch == 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 2)
    # an optimizer class works as a callable too (its own defaults)
    assert type(GraphClassifier(pool(), optimizer=torch.optim.Adagrad).configure_optimizers()) is torch.optim.Adagrad


def test_reduce_on_plateau_needs_and_gets_a_metric():
    plateau = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="max", patience=0)
    trainer = fit(NodeClassifier(gcn(), lr_scheduler=plateau, lr_scheduler_monitor="val_acc"), node_data(),
                  max_epochs=2)
    (config,) = trainer.lr_scheduler_configs
    assert config.monitor == "val_acc" and config.reduce_on_plateau
    # LightningCLI's subclass names its metric itself
    module = GraphClassifier(pool(), lr_scheduler={"class_path": "pytorch_lightning.cli.ReduceLROnPlateau",
                                                   "init_args": {"monitor": "train_loss"}})
    assert module.configure_optimizers()["lr_scheduler"]["monitor"] == "train_loss"
    # without a metric: refused when the optimizers are configured, before any training step
    module = NodeClassifier(gcn(), lr_scheduler=plateau)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match="lr_scheduler_monitor"):
        fit(module, node_data())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_lightningcli_builds_the_callables_from_a_config():
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse")
    from pytorch_lightning.cli import LightningCLI

    config = {"model": {"model": {"class_path": "sparsity_plugins.graph.models.GCN",
                                  "init_args": {"in_channels": 4, "out_channels": 2, "hidden": 8}},
                        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003,
                                                                                      "weight_decay": 0.01}},
                        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                         "init_args": {"T_max": 10}},
                        "lr_scheduler_interval": "step"},
              "trainer": {"max_epochs": 1, "logger": False, "enable_checkpointing": False,
                          "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu"}}
    cli = LightningCLI(NodeClassifier, run=False, args=config, save_config_callback=None,
                       seed_everything_default=0)
    assert callable(cli.model.optimizer) and cli.model.lr_scheduler_interval == "step"
    cli.trainer.fit(cli.model, datamodule=node_data())
    (opt,) = cli.trainer.optimizers
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.01
    assert opt.param_groups[0]["initial_lr"] == 0.003
    (sched,) = cli.trainer.lr_scheduler_configs
    assert type(sched.scheduler) is torch.optim.lr_scheduler.CosineAnnealingLR and sched.scheduler.T_max == 10
    assert sched.interval == "step"
    # and on the command line, with the short class names
    cli = LightningCLI(NodeClassifier, run=False, save_config_callback=None, seed_everything_default=0,
                       args=["--model.model=sparsity_plugins.graph.models.GCN", "--model.model.in_channels=4",
                             "--model.model.out_channels=2", "--model.optimizer=SGD", "--model.optimizer.lr=0.2",
                             "--model.lr_scheduler=StepLR", "--model.lr_scheduler.step_size=3",
                             "--trainer.logger=false", "--trainer.enable_checkpointing=false"])
    out = cli.model.configure_optimizers()
    assert type(out["optimizer"]) is torch.optim.SGD and out["optimizer"].defaults["lr"] == 0.2
    assert out["lr_scheduler"]["scheduler"].step_size == 3 and out["lr_scheduler"]["interval"] == "epoch"


# -- bad options ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"optimizer": 0.1}, "optimizer must be a callable"),
    ({"optimizer": "adam"}, "optimizer must be a callable"),
    ({"optimizer": nn.Linear}, "optimizer must build a Optimizer"),
    ({"optimizer": {"class_path": "torch.optim.NoSuchThing"}}, "cannot import"),
    ({"optimizer": {"class_path": "torch.nn.Linear", "init_args": {}}}, "not a subclass"),
    ({"optimizer": {"class_path": "torch.optim.SGD", "init_args": [0.1]}}, "init_args"),
    ({"optimizer": {"init_args": {"lr": 0.1}}}, "class_path"),
    ({"optimizer": {"class_path": "SGD", "lr": 0.1}}, "class_path"),
    ({"lr_scheduler": 5}, "lr_scheduler must be a callable"),
    ({"lr_scheduler": {"class_path": "torch.optim.AdamW"}}, "not a subclass"),
    ({"lr_scheduler_interval": "batch"}, "lr_scheduler_interval"),
    ({"lr_scheduler_monitor": ""}, "lr_scheduler_monitor"),
    ({"lr": -1.0}, "lr must be"),
    ({"lr": True}, "lr must be"),
    ({"optimizer": torch.optim.SGD, "lr": 0.5}, "default Adam only"),
])
def test_bad_options_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphClassifier(pool(), **kwargs)
    with pytest.raises(ValueError, match=match):
        NodeClassifier(gcn(), **kwargs)


def test_bad_node_only_options_and_bad_factories():
    with pytest.raises(ValueError, match="weight_decay must be"):
        NodeClassifier(gcn(), weight_decay=-1e-4)
    with pytest.raises(ValueError, match="default Adam only"):
        NodeClassifier(gcn(), weight_decay=0.0, optimizer=torch.optim.SGD)
    with pytest.raises(ValueError, match="must be a callable"):  # an optimizer, not a factory of one
        NodeClassifier(gcn(), optimizer=torch.optim.Adam(gcn().parameters()))
    # factories that return the wrong thing fail when the optimizers are configured
    with pytest.raises(ValueError, match="must return a torch.optim.Optimizer"):
        fit(NodeClassifier(gcn(), optimizer=lambda params: list(params)), node_data())
    with pytest.raises(ValueError, match="must return a torch.optim.lr_scheduler"):
        fit(GraphClassifier(pool(), lr_scheduler=lambda opt: 0.5), graph_data())
