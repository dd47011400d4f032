"""Graph sparsification recipes, configured through LightningCLI.

    .venv/bin/python recipes/graph_sparsify.py node                  # TEDDY + weight sparsity, GCN on Cora
    .venv/bin/python recipes/graph_sparsify.py node --data.sparsifier ugs --model.arch gin
    .venv/bin/python recipes/graph_sparsify.py node --data.dataset sbm     # generated graph, no files needed
    .venv/bin/python recipes/graph_sparsify.py gtsp                  # GTSP on a GraphGPS model, MUTAG
    .venv/bin/python recipes/graph_sparsify.py node --help           # every option of a task

``node``: full-batch node classification (Planetoid protocol: test accuracy at the best
validation epoch). The graph is sparsified before training by TEDDY (degree-based, one-shot),
random edge dropping, or not at all; or by UGS (``--data.sparsifier ugs``: graph lottery
ticket rounds with rewinding, then the ticket trains). The weights are sparsified to
``--weights.sparsity`` by projected gradient descent onto the ℓ₀ ball (TEDDY's weight
regime; with UGS the weight masks are part of the ticket instead). With ``--baseline true``
(default) a dense model on the full graph trains first, gives the reference accuracy and,
with ``--model.distill_weight > 0``, the teacher logits for TEDDY's distillation loss.

``gtsp``: graph classification on MUTAG with a GraphGPS model (3 ``GPSConv`` layers, GINE
local message passing, 4 heads). With ``--baseline true`` the dense model trains first; then
the GTSP program trains the same model with learned gates on tokens, heads and layers while
a cubic ramp removes ``--gtsp.flops`` of the FLOPs (and ``--gtsp.weights`` of the linear
weights by magnitude), and removes the closed units at the end of fit. Printed: accuracy on
the held-out graphs and measured FLOPs per graph, dense vs GTSP.

Data: Cora from ``--data.root`` (default ``../shared/data``, or ``$SPARSITY_SHARED_DATA``;
PyG's ``Planetoid`` downloads it when the folder is absent) or a generated SBM graph. Under
``--output``: ``report.json``, the run's config, and the sparsified graph ``edge_index.pt``.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import pytorch_lightning as pl
import torch
from jsonargparse import DefaultHelpFormatter
from pytorch_lightning.cli import LightningCLI
from torch_geometric.utils import dropout_edge

from sparsity_core.lightning import SparsityCallback
from sparsity_core.schedules import Constant, Cubic
from sparsity_core.validation import check_sparsity
from sparsity_plugins.graph import (GCN, GIN, GTSP, TEDDY, UGS, GraphClassifier, GraphGPS, GTSPConfig, NodeClassifier,
                                    count_flops, node_datamodule, planetoid, rate_for, sbm_graph, tudataset)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSITY_SHARED_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "recipes" / "out" / "graph_sparsify"


# -- node classification -----------------------------------------------------------------
class NodeData(pl.LightningDataModule):
    """One graph for full-batch node classification, sparsified before training.

    Args:
        dataset: ``cora`` (Planetoid split) or ``sbm`` (generated: 3 blocks of 200 nodes,
            30/30/rest train/val/test per block).
        root: folder holding ``planetoid/Cora/raw`` (copied into ``cache_dir``).
        sparsifier: ``teddy``, ``random`` (``dropout_edge``, undirected), ``ugs`` (the
            graph stays whole here; the UGS program learns which edges to keep) or ``none``.
        edge_sparsity: fraction of the (undirected) edges removed.
    """

    def __init__(self, dataset: Literal["cora", "sbm"] = "cora", root: Optional[str] = None,
                 cache_dir: str = str(OUT / "data"), sparsifier: Literal["teddy", "random", "ugs", "none"] = "teddy",
                 edge_sparsity: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        check_sparsity(edge_sparsity, "edge_sparsity")
        self.dataset, self.root, self.cache_dir = dataset, Path(root) if root else SHARED, cache_dir
        self.sparsifier, self.edge_sparsity, self.seed = sparsifier, edge_sparsity, seed
        self.full = self._load()
        self.data = self._sparsify(self.full)
        self.inner = node_datamodule(self.data)

    @property
    def num_features(self) -> int:
        return self.full.num_features

    @property
    def num_classes(self) -> int:
        return int(self.full.y.max()) + 1

    def _load(self):
        if self.dataset == "cora":
            return planetoid("Cora", root=os.path.join(self.cache_dir, "planetoid"),
                             source=str(self.root / "planetoid") if (self.root / "planetoid").is_dir() else None)[0]
        data = sbm_graph((200, 200, 200), 0.03, 0.004, num_features=32, noise=4.0, seed=self.seed)
        within = torch.arange(data.num_nodes) % 200
        data.train_mask, data.val_mask, data.test_mask = within < 30, (within >= 30) & (within < 60), within >= 60
        return data

    def _sparsify(self, data):
        if self.sparsifier in ("none", "ugs") or self.edge_sparsity == 0.0:
            return data
        if self.sparsifier == "teddy":
            return TEDDY(sparsity=self.edge_sparsity)(data.clone())
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        edge_index, _ = dropout_edge(data.edge_index, p=self.edge_sparsity, force_undirected=True)
        torch.random.set_rng_state(gen_state)
        out = data.clone()
        out.edge_index = edge_index
        return out

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def val_dataloader(self):
        return self.inner.val_dataloader()


class GraphNodeClassifier(NodeClassifier):
    """:class:`NodeClassifier` over a GCN or GIN built from its hyper-parameters."""

    def __init__(self, arch: Literal["gcn", "gin"] = "gcn", in_channels: int = 0, num_classes: int = 0,
                 hidden: int = 16, dropout: float = 0.5, lr: float = 0.01, weight_decay: float = 5e-4,
                 distill_weight: float = 0.0) -> None:
        if in_channels <= 0 or num_classes <= 0:
            raise ValueError("in_channels and num_classes come from the data (linked by the CLI)")
        net = GCN(in_channels, num_classes, hidden, dropout) if arch == "gcn" else \
            GIN(in_channels, num_classes, hidden, dropout=dropout)
        super().__init__(net, lr=lr, weight_decay=weight_decay)
        self.arch = arch  # distill_weight is switched on by the run once the teacher exists


class HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help, with the description printed as written."""


class NodeCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--weights.sparsity", type=float, default=0.5,
                            help="fraction of the GNN weights removed (0: dense weights)")
        parser.add_argument("--ugs.rounds", type=int, default=3, help="UGS rounds (--data.sparsifier ugs)")
        parser.add_argument("--ugs.steps_per_round", type=int, default=100, help="optimizer steps per UGS round")
        parser.add_argument("--baseline", type=bool, default=True, help="train a dense model on the full graph first")
        parser.add_argument("--output", type=str, default=str(OUT / "node"), help="folder of the report")
        parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
        parser.link_arguments("data.num_features", "model.in_channels", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        torch.set_num_threads(self.config.threads)


TRAINER_DEFAULTS = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "max_epochs": 200}


def _trainer(max_epochs: int, callbacks: List[pl.Callback]) -> pl.Trainer:
    """A Trainer for one phase (the CLI's ``--trainer.max_epochs`` sets the epochs)."""
    kwargs = {**TRAINER_DEFAULTS, "max_epochs": max_epochs}
    return pl.Trainer(callbacks=callbacks, **kwargs)


def run_node(cli: NodeCLI) -> Dict[str, Any]:
    model, data, trainer, cfg = cli.model, cli.datamodule, cli.trainer, cli.config
    epochs = trainer.max_epochs
    start = time.perf_counter()
    report: Dict[str, Any] = {"dataset": cfg.data.dataset, "arch": cfg.model.arch, "epochs": epochs,
                              "sparsifier": cfg.data.sparsifier, "threads": torch.get_num_threads()}
    dense_model = copy.deepcopy(model)
    if cfg.baseline:
        base_trainer = _trainer(epochs, [])
        base_trainer.fit(dense_model, datamodule=NodeData(cfg.data.dataset, cfg.data.root, cfg.data.cache_dir,
                                                          "none", 0.0, cfg.data.seed))
        report["dense_test_acc"] = dense_model.best_test()
        if cfg.model.distill_weight > 0:
            dense_model.eval()
            with torch.no_grad():
                teacher = dense_model(data.full.x, data.full.edge_index)
            model.distill_weight, model.teacher_logits = cfg.model.distill_weight, teacher
    elif cfg.model.distill_weight > 0:
        raise ValueError("--model.distill_weight needs the dense teacher: keep --baseline true")

    search_steps = 0
    callbacks: List[pl.Callback] = []
    if cfg.data.sparsifier == "ugs":
        search_steps = cfg.ugs.rounds * cfg.ugs.steps_per_round
        weight_rate = rate_for(cfg.weights.sparsity, cfg.ugs.rounds) if cfg.weights.sparsity else 0.0
        ugs = UGS(rounds=cfg.ugs.rounds, steps_per_round=cfg.ugs.steps_per_round,
                  edge_rate=rate_for(cfg.data.edge_sparsity, cfg.ugs.rounds), weight_rate=weight_rate)
        callbacks.append(SparsityCallback(programs=[ugs]))
    elif cfg.weights.sparsity > 0:
        callbacks.append(SparsityCallback(Constant(sparsity=cfg.weights.sparsity), enforcement="projected_l0",
                                          update_every=1, log_per_target=False))
    sparse_trainer = _trainer(epochs + search_steps, callbacks)
    sparse_trainer.fit(model, datamodule=data)
    report["test_acc"] = model.best_test(after_step=search_steps)

    if cfg.data.sparsifier == "ugs":
        edge_index = callbacks[0].programs[0].kept_edge_index()
    else:
        edge_index = data.data.edge_index
    report["weight_sparsity"] = callbacks[0].programs[0].sparsity_report()["global"] if callbacks else 0.0
    report.update(edges_total=int(data.full.edge_index.size(1)), edges_kept=int(edge_index.size(1)),
                  fit_s=time.perf_counter() - start)

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "config.yaml").write_text(cli.parser.dump(cfg, skip_none=False))
    torch.save(edge_index, out / "edge_index.pt")
    kept = report["edges_kept"] / report["edges_total"]
    print(f"\n{cfg.model.arch} on {cfg.data.dataset}, {cfg.data.sparsifier}: {kept:.1%} of "
          f"{report['edges_total']} edges kept, weight sparsity {report['weight_sparsity']:.1%}, {epochs} epochs"
          + (f" after {search_steps} UGS steps" if search_steps else "") + f", {torch.get_num_threads()} threads")
    if "dense_test_acc" in report:
        print(f"dense (full graph, dense weights): test accuracy {report['dense_test_acc']:.2%}")
    print(f"sparsified: test accuracy {report['test_acc']:.2%}")
    print(f"wrote {out}/report.json, config.yaml, edge_index.pt; total {report['fit_s']:.0f} s")
    return report


def node_main(args: Optional[List[str]] = None) -> Dict[str, Any]:
    cli = NodeCLI(GraphNodeClassifier, NodeData, run=False, args=args, seed_everything_default=0,
                  save_config_callback=None, trainer_defaults=TRAINER_DEFAULTS,
                  parser_kwargs={"description": __doc__, "formatter_class": HelpFormatter})
    return run_node(cli)


# -- GTSP on a graph transformer ---------------------------------------------------------
class MutagData(pl.LightningDataModule):
    """MUTAG (188 molecules, 2 classes) through PyG's ``TUDataset``, a stratified seeded
    split with ``test_fraction`` of each class held out for validation/testing."""

    def __init__(self, root: Optional[str] = None, cache_dir: str = str(OUT / "data"), batch_size: int = 32,
                 test_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        source = Path(root) if root else SHARED
        self.dataset = tudataset("MUTAG", root=os.path.join(cache_dir, "tudataset"),
                                 source=str(source / "tudataset") if (source / "tudataset").is_dir() else None)
        self.batch_size, self.seed = batch_size, seed
        g = torch.Generator().manual_seed(seed)
        y = self.dataset.y
        test = []
        for c in y.unique().tolist():
            idx = (y == c).nonzero().flatten()
            idx = idx[torch.randperm(idx.numel(), generator=g)]
            test += idx[: max(1, round(test_fraction * idx.numel()))].tolist()
        held = set(test)
        self.train_idx = torch.tensor([i for i in range(len(self.dataset)) if i not in held])
        self.test_idx = torch.tensor(sorted(held))

    @property
    def node_features(self) -> int:
        return self.dataset.num_node_features

    @property
    def edge_features(self) -> int:
        return self.dataset.num_edge_features

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def train_dataloader(self):
        from torch_geometric.loader import DataLoader

        return DataLoader(self.dataset[self.train_idx], batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self):
        from torch_geometric.loader import DataLoader

        return DataLoader(self.dataset[self.test_idx], batch_size=64)


class GPSClassifier(GraphClassifier):
    """:class:`GraphClassifier` over a :class:`GraphGPS` built from its hyper-parameters."""

    def __init__(self, node_features: int = 0, edge_features: int = 0, num_classes: int = 0, channels: int = 64,
                 layers: int = 3, heads: int = 4, lr: float = 1e-3) -> None:
        if node_features <= 0 or num_classes <= 0:
            raise ValueError("node_features and num_classes come from the data (linked by the CLI)")
        super().__init__(GraphGPS(node_features, edge_features, num_classes, channels, layers, heads), lr=lr)


class GTSPCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--gtsp.flops", type=float, default=0.3, help="fraction of the FLOPs to remove")
        parser.add_argument("--gtsp.weights", type=float, default=0.0, help="weight sparsity of the linear weights")
        parser.add_argument("--gtsp.kinds", type=List[str], default=["tokens", "heads", "layers"],
                            help="unit kinds GTSP may close")
        parser.add_argument("--gtsp.ramp", type=List[float], default=[0.1, 0.6],
                            help="start and end of the budget ramp, as fractions of training")
        parser.add_argument("--baseline", type=bool, default=True, help="train the dense model first")
        parser.add_argument("--output", type=str, default=str(OUT / "gtsp"), help="folder of the report")
        parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
        parser.link_arguments("data.node_features", "model.node_features", apply_on="instantiate")
        parser.link_arguments("data.edge_features", "model.edge_features", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        torch.set_num_threads(self.config.threads)


@torch.no_grad()
def _flops_per_graph(model: GraphClassifier, loader) -> float:
    model.eval()
    total = graphs = 0
    for b in loader:
        total += count_flops(model.model, b.x, b.edge_index, b.batch, b.edge_attr).total
        graphs += b.num_graphs
    return total / graphs


def run_gtsp(cli: GTSPCLI) -> Dict[str, Any]:
    model, data, trainer, cfg = cli.model, cli.datamodule, cli.trainer, cli.config
    epochs = trainer.max_epochs
    start = time.perf_counter()
    report: Dict[str, Any] = {"epochs": epochs, "threads": torch.get_num_threads(), "kinds": cfg.gtsp.kinds}
    dense = copy.deepcopy(model)
    if cfg.baseline:
        _trainer(epochs, []).fit(dense, datamodule=data)
        report["dense_acc"] = dense.history[-1][1]
    report["dense_mflops_per_graph"] = _flops_per_graph(dense, data.val_dataloader()) / 1e6
    total = epochs * len(data.train_dataloader())
    lo, hi = cfg.gtsp.ramp
    ramp = dict(start_step=max(1, int(lo * total)), end_step=max(2, int(hi * total)))
    weights = Cubic(**ramp, final_sparsity=cfg.gtsp.weights) if cfg.gtsp.weights else 0.0
    config = GTSPConfig(flops=Cubic(**ramp, final_sparsity=cfg.gtsp.flops), kinds=tuple(cfg.gtsp.kinds),
                        update_every=max(1, total // 50))
    cb = GTSP(config=config, weights=weights, weight_update_every=max(1, total // 50))
    _trainer(epochs, [SparsityCallback(programs=[cb])]).fit(model, datamodule=data)
    model.eval()
    with torch.no_grad():
        acc = sum(int((model(b).argmax(-1) == b.y).sum()) for b in data.val_dataloader()) / len(data.test_idx)
    report.update(gtsp_acc=acc, gtsp=dict(cb.result), fit_s=time.perf_counter() - start,
                  gtsp_mflops_per_graph=_flops_per_graph(model, data.val_dataloader()) / 1e6)
    removed = 1 - report["gtsp_mflops_per_graph"] / report["dense_mflops_per_graph"]
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "config.yaml").write_text(cli.parser.dump(cfg, skip_none=False))
    torch.save(model.model.state_dict(), out / "gtsp_state_dict.pt")
    print(f"\nGraphGPS on MUTAG ({len(data.train_idx)} train / {len(data.test_idx)} test graphs), {epochs} epochs, "
          f"{torch.get_num_threads()} threads; GTSP over {', '.join(cfg.gtsp.kinds)}")
    if "dense_acc" in report:
        print(f"dense: accuracy {report['dense_acc']:.2%}, {report['dense_mflops_per_graph']:.3f} MFLOPs/graph")
    kept = {k: v for k, v in cb.result.items() if k in ("heads_kept", "heads", "layers_kept", "layers", "token_keep")}
    print(f"GTSP:  accuracy {acc:.2%}, {report['gtsp_mflops_per_graph']:.3f} MFLOPs/graph ({removed:.1%} fewer, "
          f"measured), kept {kept}")
    print(f"wrote {out}/report.json, config.yaml, gtsp_state_dict.pt; total {report['fit_s']:.0f} s")
    return report


def gtsp_main(args: Optional[List[str]] = None) -> Dict[str, Any]:
    defaults = {**TRAINER_DEFAULTS, "max_epochs": 40}
    cli = GTSPCLI(GPSClassifier, MutagData, run=False, args=args, seed_everything_default=0,
                  save_config_callback=None, trainer_defaults=defaults,
                  parser_kwargs={"description": __doc__, "formatter_class": HelpFormatter})
    return run_gtsp(cli)


TASKS = {"node": node_main, "gtsp": gtsp_main}


def main(args: Optional[List[str]] = None) -> Dict[str, Any]:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    warnings.filterwarnings("ignore", ".*LightningCLI's args parameter.*")  # the task name is argv[1]
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] not in TASKS:
        raise SystemExit(f"usage: graph_sparsify.py {{{','.join(TASKS)}}} [options]; got {args[:1] or 'nothing'}\n\n"
                         + __doc__)
    return TASKS[args[0]](args[1:])


if __name__ == "__main__":
    main()
