"""GTSP on a GraphGPS model on MUTAG: dense vs GTSP at 30 % fewer FLOPs.

MUTAG (188 graphs, 2 classes; TUDataset from ../shared/data), GraphGPS: node and edge
embeddings (Linear 7→64, 4→64), 3 ``GPSConv`` layers (64 channels, 4 heads, GINE local
MPNN with a 64-64 MLP, batch norm), sum pooling, MLP head. Adam lr 1e-3, batch 32, 40
epochs (quick: 25), stratified 10-fold cross-validation (quick: 2 of the 10 folds); test
accuracy of the last epoch (no model selection on the test fold). Rows:

- dense;
- GTSP: :class:`sparsity_plugins.graph.GTSP` with ``flops = Cubic(10 % → 60 % of training,
  final 0.3)`` over tokens, heads and layers (default limits), finalized after fit (closed
  heads/layers and dropped tokens physically removed; the finalized model is tested, and its
  logits are checked against the gated model's on all 188 graphs);
- GTSP + weights: the same plus core magnitude pruning of the linear weights to 50 %
  (same cubic ramp). Weight zeros are reported as density, never as FLOPs or speed.

FLOPs are counted as executed (hooks; see ``sparsity_plugins.graph.gtsp_flops``) over the
whole data set in batches of 32 and reported per graph. Latency: eval forward of the first
fold's models on a fixed batch of 128 graphs, configurations interleaved, warm-up first,
median of repeats, threads stated; reported as a ratio to dense, not derived from FLOPs, next
to the executed-FLOPs ratio on the same batch. The models' attention runs in size buckets
(``GraphGPS``'s default, :mod:`sparsity_plugins.graph.attention_buckets`). The same trained
models are also timed on a batch of 128 larger generated graphs (20-199 nodes, MUTAG-like
one-hot features, rings plus random chords), bucketed and padded to the batch maximum.

Targets (issues): GTSP within 1 pt of dense accuracy at >= 30 % fewer FLOPs; GTSP's latency
ratio within 1.25x of its FLOPs ratio (MUTAG batch and larger graphs).
"""
from __future__ import annotations

import copy
import os
import shutil
import statistics
import time

import pytorch_lightning as pl
import torch
from torch import nn
from torch_geometric.data import Batch, Data
from torch_geometric.datasets import TUDataset
from torch_geometric.loader import DataLoader

from _common import mean_std, median, parser, progress, quiet, result, rotations, start, table, target
from _data import SHARED, WORK
from sparsity_core.schedules import Cubic
from sparsity_plugins.graph import GraphGPS
from sparsity_core import SparsityCallback
from sparsity_plugins.graph.gtsp_config import GTSPConfig
from sparsity_plugins.graph.gtsp_program import GTSP
from sparsity_plugins.graph.attention_buckets import bucket_attention
from sparsity_plugins.graph.gtsp_flops import count_flops

CONFIGS = ("dense", "gtsp", "gtsp+w50")
GOAL_FLOPS, GOAL_PT, GOAL_LATENCY = 0.30, 1.0, 1.25


def mutag():
    root = os.path.join(WORK, "tudataset")
    raw = os.path.join(root, "MUTAG", "raw")
    if not os.path.isdir(raw):
        shutil.copytree(os.path.join(SHARED, "tudataset", "MUTAG", "raw"), raw)
    return TUDataset(root, "MUTAG")


class Module(pl.LightningModule):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, b):
        return self.net(b.x, b.edge_index, b.batch, b.edge_attr)

    def training_step(self, b, idx):
        return nn.functional.cross_entropy(self(b), b.y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def folds(ds, k: int = 10, seed: int = 0):
    """Stratified k folds: per class, a seeded permutation dealt round-robin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([int(d.y) for d in ds])
    out = [[] for _ in range(k)]
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        for i, j in enumerate(idx.tolist()):
            out[i % k].append(j)
    return out


@torch.no_grad()
def accuracy(net, ds) -> float:
    net.eval()
    correct = 0
    for b in DataLoader(ds, batch_size=64):
        correct += int((net(b.x, b.edge_index, b.batch, b.edge_attr).argmax(1) == b.y).sum())
    return 100.0 * correct / len(ds)


@torch.no_grad()
def flops_per_graph(net, ds) -> float:
    net.eval()
    total = 0.0
    for b in DataLoader(ds, batch_size=32):
        total += count_flops(net, b.x, b.edge_index, b.batch, b.edge_attr).total
    return total / len(ds)


def callback(config: str, total: int):
    if config == "dense":
        return None
    ramp = dict(start_step=max(1, total // 10), end_step=max(2, 6 * total // 10))
    weights = Cubic(**ramp, final_sparsity=0.5) if config == "gtsp+w50" else 0.0
    config = GTSPConfig(flops=Cubic(**ramp, final_sparsity=GOAL_FLOPS), update_every=max(1, total // 50))
    return GTSP(config=config, weights=weights, finalize=False, weight_update_every=max(1, total // 50))


@torch.no_grad()
def finalize(cb, net, ds) -> float:
    """Finalize by hand (weight zeros, then structure) and return max |finalized − gated|
    over the logits of the whole data set (both in eval)."""
    if cb.weights is not None:
        cb.weights.finalize()
    net.eval()
    batches = list(DataLoader(ds, batch_size=64))
    gated = [net(b.x, b.edge_index, b.batch, b.edge_attr) for b in batches]
    cb.result = cb.controller.finalize()
    final = [net(b.x, b.edge_index, b.batch, b.edge_attr) for b in batches]
    return max(float((a - b).abs().max()) for a, b in zip(gated, final))


def run(ds, train_idx, test_idx, config: str, epochs: int, seed: int):
    torch.manual_seed(seed)
    train = ds[torch.tensor(train_idx)]
    loader = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed))
    total = epochs * len(loader)
    net = GraphGPS(ds.num_node_features, ds.num_edge_features, ds.num_classes)
    cb = callback(config, total)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SparsityCallback(programs=[cb])] if cb else [])
    trainer.fit(Module(net), loader)
    info = {}
    if cb is not None:
        diff = finalize(cb, net, ds)
        weight_sparsity = cb.weights.controller.sparsity("params") if cb.weights is not None else 0.0
        info = dict(cb.result, weight_sparsity=weight_sparsity, diff=diff)
    return net, accuracy(net, ds[torch.tensor(test_idx)]), info


def latency(nets, batch, repeats: int) -> dict:
    args = (batch.x, batch.edge_index, batch.batch, batch.edge_attr)
    times = {k: [] for k in nets}
    with torch.no_grad():
        for net in nets.values():
            net.eval()
            for _ in range(3):  # warm-up
                net(*args)
        for order in rotations(list(nets), repeats):
            for k in order:
                t0 = time.perf_counter()
                nets[k](*args)
                times[k].append(time.perf_counter() - t0)
    return {k: median(v) for k, v in times.items()}


def larger_graphs(count: int = 128, low: int = 20, high: int = 200, seed: int = 0) -> Batch:
    """``count`` generated graphs of ``low``-``high`` nodes with MUTAG's feature layout: one-hot
    node labels (7) and edge labels (4), an undirected ring plus ``n`` random chords each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in torch.randint(low, high, (count,), generator=g).tolist():
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        ei = torch.cat([ring, torch.randint(0, n, (2, n), generator=g)], 1)
        ei = torch.cat([ei, ei.flip(0)], 1)
        x = nn.functional.one_hot(torch.randint(0, 7, (n,), generator=g), 7).float()
        e = nn.functional.one_hot(torch.randint(0, 4, (ei.size(1) // 2,), generator=g), 4).float().repeat(2, 1)
        out.append(Data(x=x, edge_index=ei, edge_attr=e))
    return Batch.from_data_list(out)


def latency_vs_flops(nets: dict, batch, repeats: int) -> dict:
    """``{config: (latency / dense, executed FLOPs / dense, latency in s)}`` on ``batch``."""
    args = (batch.x, batch.edge_index, batch.batch, batch.edge_attr)
    lat = latency(nets, batch, repeats)
    fl = {k: count_flops(net, *args).total for k, net in nets.items()}
    return {k: (lat[k] / lat["dense"], fl[k] / fl["dense"], lat[k]) for k in nets}


def params(net) -> tuple:
    ps = list(net.parameters())
    return sum(p.numel() for p in ps), sum(int((p != 0).sum()) for p in ps)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--folds", type=int, default=None, help="folds to run (default 10, quick 2)")
    args = p.parse_args()
    start(args)
    quiet()
    epochs = 25 if args.quick else 40
    n_folds = args.folds or (2 if args.quick else 10)
    ds = mutag()
    split = folds(ds)
    began = time.perf_counter()
    acc = {c: [] for c in CONFIGS}
    flops = {c: [] for c in CONFIGS}
    infos = {c: [] for c in CONFIGS}
    first = {}
    for f in range(n_folds):
        test_idx = split[f]
        train_idx = [i for j, s in enumerate(split) if j != f for i in s]
        for config in CONFIGS:
            net, a, info = run(ds, train_idx, test_idx, config, epochs, seed=f)
            acc[config].append(a)
            flops[config].append(flops_per_graph(net, ds))
            infos[config].append(info)
            if f == 0:
                first[config] = net
            progress(f"fold {f} {config}: {a:.2f}% ({time.perf_counter() - began:.0f} s)")
    mean, std = mean_std(acc)
    fl = {c: statistics.mean(v) for c, v in flops.items()}
    repeats = 10 if args.quick else 30
    lat = latency_vs_flops(first, Batch.from_data_list([ds[i] for i in range(128)]), repeats)
    padded = {f"{c} (padded)": copy.deepcopy(first[c]) for c in ("dense", "gtsp")}
    for net in padded.values():
        bucket_attention(net, None)
    large = latency_vs_flops({"dense": first["dense"], "gtsp": first["gtsp"], **padded}, larger_graphs(), repeats)
    print(f"MUTAG, GraphGPS (3 x GPSConv, 64 ch, 4 heads, GINE), {epochs} epochs, {n_folds} of 10 stratified folds, "
          f"{torch.get_num_threads()} threads; accuracy % of the last epoch on the test fold")
    rows = []
    for c in CONFIGS:
        total_p, nonzero_p = params(first[c])
        info = infos[c]
        kept = "-" if c == "dense" else (
            f"{statistics.mean(i['heads_kept'] for i in info):.1f}/{info[0]['heads']} h, "
            f"{statistics.mean(i['layers_kept'] for i in info):.1f}/{info[0]['layers']} l, "
            f"tok {statistics.mean(i['token_keep'] for i in info):.2f}")
        wd = "1.00" if c == "dense" else f"{1 - statistics.mean(i['weight_sparsity'] for i in info):.2f}"
        rows.append([c, f"{mean[c]:.2f} ± {std[c]:.2f}", f"{fl[c] / 1e6:.3f}", f"{1 - fl[c] / fl['dense']:.1%}",
                     f"{total_p:,}", f"{nonzero_p:,}", wd, kept, f"{lat[c][1]:.3f}", f"{lat[c][0]:.3f}"])
    table(["config", "accuracy", "MFLOPs/graph", "FLOPs removed", "params (fold 0)", "nonzero", "weight density",
           "kept (mean over folds)", "FLOPs / dense (batch)", "latency / dense"], rows)
    print(f"latency: eval forward of fold 0's models on 128 MUTAG graphs, median of {repeats} interleaved "
          f"repeats after warm-up; dense {lat['dense'][2] * 1e3:.2f} ms; {torch.get_num_threads()} threads")
    print("\nfold 0's models on 128 larger generated graphs (20-199 nodes); ratios to the bucketed dense model")
    table(["config", "FLOPs / dense", "latency / dense", "latency (ms)"],
          [[c, f"{f:.3f}", f"{r:.3f}", f"{t * 1e3:.1f}"] for c, (r, f, t) in large.items()])
    diff = max(i["diff"] for c in CONFIGS[1:] for i in infos[c])
    print(f"finalized vs gated model (eval, all 188 graphs, every GTSP run): max |logit difference| {diff:.2e}")
    print(f"total time {time.perf_counter() - began:.0f} s")
    for c, name in (("gtsp", "gtsp"), ("gtsp+w50", "gtsp + 50% weight sparsity")):
        gap = mean["dense"] - mean[c]
        removed = 1 - fl[c] / fl["dense"]
        target(f"{name} within 1 pt of dense at 30% fewer FLOPs", gap <= GOAL_PT and removed >= GOAL_FLOPS - 1e-9,
               f"{-gap:+.2f} pt vs dense at {removed:.1%} fewer FLOPs", f">= -{GOAL_PT:.0f} pt at >= 30%")
    for where, ratios in (("MUTAG batch", lat), ("larger graphs", large)):
        r, f, _ = ratios["gtsp"]
        target(f"gtsp latency ratio within {GOAL_LATENCY}x of its FLOPs ratio ({where})", r <= GOAL_LATENCY * f,
               f"{r:.3f} latency vs {f:.3f} FLOPs: {r / f:.2f}x", f"<= {GOAL_LATENCY}x")
    result("gtsp", {"dense_acc": mean["dense"], "gtsp_acc": mean["gtsp"], "gtsp_w50_acc": mean["gtsp+w50"],
                    "gtsp_flops_removed": 1 - fl["gtsp"] / fl["dense"],
                    "gtsp_w50_flops_removed": 1 - fl["gtsp+w50"] / fl["dense"],
                    "gtsp_latency_ratio": lat["gtsp"][0], "gtsp_flops_ratio_batch": lat["gtsp"][1],
                    "large_latency_ratio": large["gtsp"][0], "large_flops_ratio": large["gtsp"][1],
                    "padded_dense_latency_ratio": large["dense (padded)"][0], "finalize_max_diff": diff,
                    "folds": n_folds, "epochs": epochs, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
