"""Edge sparsification on Cora: dense vs random edge dropping vs TEDDY; TEDDY's speed.

Cora (Planetoid split, from ../shared/data), 2-layer GCN (hidden 16, dropout 0.5), Adam lr
0.01, weight decay 5e-4, 200 full-batch epochs (quick: 50), test accuracy at the best
validation epoch, mean ± std over 5 seeds (quick: 2). The graph is sparsified once before
training and the model trains and is tested on the sparsified graph:

- random: ``dropout_edge(p, force_undirected=True)`` once, seeded;
- TEDDY: :class:`sparsity_plugins.graph.TEDDY` (degree-based scores, undirected pairs).

UGS (graph lottery tickets) is not built yet and has no column.

Speed: TEDDY scoring + sparsifying (mask + ``edge_subgraph``) of a generated undirected
graph with 1,000,000 directed edges (about 500,000 pairs on 100,000 nodes), median of 5.

Targets (issue 5): TEDDY >= random + 2 pt at 50 % removed; TEDDY within 1 pt of dense at
30 % removed; the 1M-edge sparsification <= 1 s.
"""
from __future__ import annotations

import os
import shutil
import statistics
import time

import torch
import torch.nn.functional as F
from torch_geometric.datasets import Planetoid
from torch_geometric.nn import GCNConv
from torch_geometric.utils import dropout_edge, to_undirected

from _common import mean_std, parser, progress, result, start, table, target
from _data import SHARED, WORK
from sparsity_plugins.graph import TEDDY, teddy_mask


def cora():
    root = os.path.join(WORK, "planetoid")
    raw = os.path.join(root, "Cora", "raw")
    if not os.path.isdir(raw):
        shutil.copytree(os.path.join(SHARED, "planetoid", "Cora", "raw"), raw)
    return Planetoid(root, "Cora")[0]


class GCN(torch.nn.Module):
    def __init__(self, d_in: int, d_out: int, hidden: int = 16):
        super().__init__()
        # cached: the (sparsified) graph is fixed during training, normalise it once
        self.c1, self.c2 = GCNConv(d_in, hidden, cached=True), GCNConv(hidden, d_out, cached=True)

    def forward(self, x, edge_index):
        x = F.dropout(x, 0.5, self.training)
        x = F.relu(self.c1(x, edge_index))
        return self.c2(F.dropout(x, 0.5, self.training), edge_index)


def train_eval(data, edge_index, seed: int, epochs: int) -> float:
    torch.manual_seed(seed)
    model = GCN(data.num_features, int(data.y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    best_val, best_test = -1.0, 0.0
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(data.x, edge_index)[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(data.x, edge_index).argmax(1)
        val = float((pred[data.val_mask] == data.y[data.val_mask]).float().mean())
        if val > best_val:
            best_val, best_test = val, float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
    return 100.0 * best_test


def sparsified(data, method: str, removed: float, seed: int):
    if method == "dense" or removed == 0:
        return data.edge_index
    if method == "random":
        torch.manual_seed(seed)
        return dropout_edge(data.edge_index, p=removed, force_undirected=True)[0]
    return TEDDY(keep_ratio=1.0 - removed)(data.clone()).edge_index


def speed(repeats: int = 5) -> float:
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, 100_000, (2, 500_000), generator=g)
    pairs = pairs[:, pairs[0] != pairs[1]]
    ei = to_undirected(pairs, num_nodes=100_000)  # both directions: ~1M directed edges
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mask = teddy_mask(ei, 0.5, 100_000, undirected=True)
        kept = ei[:, mask]
        times.append(time.perf_counter() - t0)
    assert kept.size(1) > 0
    return statistics.median(times), ei.size(1)


def main() -> None:
    args = parser(__doc__, seeds=True).parse_args()
    start(args)
    seeds = args.seeds or (2 if args.quick else 5)
    epochs = 50 if args.quick else 200
    data = cora()
    levels = (0.3, 0.5, 0.7)
    dense = [train_eval(data, data.edge_index, s, epochs) for s in range(seeds)]
    acc = {("dense", 0.0): dense}
    for removed in levels:
        for method in ("random", "teddy"):
            acc[(method, removed)] = [train_eval(data, sparsified(data, method, removed, s), s, epochs)
                                      for s in range(seeds)]
            progress(f"{method} {removed:.0%}: {statistics.mean(acc[(method, removed)]):.2f}")
    mean, std = mean_std(acc)
    print(f"Cora, GCN, {epochs} epochs, {seeds} seeds, {torch.get_num_threads()} threads; test accuracy % "
          f"(dense {mean[('dense', 0.0)]:.2f} ± {std[('dense', 0.0)]:.2f})")
    table(["edges removed", "random", "TEDDY"],
          [[f"{r:.0%}", f"{mean[('random', r)]:.2f} ± {std[('random', r)]:.2f}",
            f"{mean[('teddy', r)]:.2f} ± {std[('teddy', r)]:.2f}"] for r in levels])
    sec, n_edges = speed()
    print(f"TEDDY on a generated graph with {n_edges:,} directed edges: {sec * 1e3:.0f} ms (median of 5)")
    gap = mean[("teddy", 0.5)] - mean[("random", 0.5)]
    target("TEDDY >= random + 2 pt at 50% removed", gap >= 2.0, f"{gap:+.2f} pt", "+2 pt")
    d30 = mean[("dense", 0.0)] - mean[("teddy", 0.3)]
    target("TEDDY within 1 pt of dense at 30% removed", d30 <= 1.0, f"{d30:.2f} pt below dense", "<= 1 pt")
    target("TEDDY on 1M edges", sec <= 1.0, f"{sec:.2f} s", "<= 1 s")
    result("edge_sparsify", {"dense": mean[("dense", 0.0)], **{f"{m}_{int(r * 100)}": mean[(m, r)]
                                                              for m in ("random", "teddy") for r in levels},
                             "teddy_1m_s": sec})


if __name__ == "__main__":
    main()
