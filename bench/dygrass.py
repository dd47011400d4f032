"""dyGRASS dynamic spectral sparsification: cost per update vs recomputing from scratch.

Graphs (generated, unit weights): PyG's ``grid`` (8-neighbour lattice) of 150 x 150 nodes
(~89k edges; quick: 50 x 50, ~10k) and a stochastic block model of 5 blocks of 600 nodes
(``stochastic_blockmodel_graph``, ~60k edges; quick: 4 x 250, ~10k) and a Barabási–Albert
graph of 10,000 nodes, 3 edges per new node (networkx, seed 0; ~30k edges; quick too: it is
the graph on which κ used to take minutes). A random held-out set
of 1,000 edges (quick: 200) is removed, :class:`DynamicSparsifier` is built on the rest
(density 1.15, 256 walks of <= 100 steps), then a stream of those 1,000 insertions and
1,000 deletions of random present edges (quick: 200 + 200), interleaved in random order,
is applied one update at a time.

Compared on the final G, side by side in one run:

- dynamic: the sparsifier maintained through the stream; cost = wall time per update
  (mean = total / number of updates, and median);
- recomputed: :func:`grass_sparsifier` run from scratch on the final G (the same static
  construction the dynamic one starts from); cost = one full rebuild (median of 3 after a
  warm-up);
- match (information only): the static construction again, at the density the dynamic one
  ended with, to separate the effect of the extra edges from that of the method.

Both: |E_H|, |E_H|/|V| and κ(G, H) from ``relative_condition_number``, with the wall time
of each κ. Every H here is a subgraph of G with G's weights, so ``λ_min(L_G, L_H) = 1``
exactly and the function skips that solve; κ is ``λ_max(L_G, L_H)`` from one ARPACK run
with a factorisation of the sparse ``L_H``.

Targets (issue): the update >= 10x cheaper than a rebuild (mean per update), and κ of the
dynamic sparsifier within 2x of the recomputed one, on every graph; every κ computed in
under 10 s.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
from networkx import barabasi_albert_graph
from torch_geometric.utils import grid, stochastic_blockmodel_graph, to_undirected

from _common import median, parser, progress, result, start, table, target
from sparsity_plugins.graph.dygrass import DynamicSparsifier, grass_sparsifier
from sparsity_plugins.graph.spectral import relative_condition_number


def graphs(quick: bool):
    side = 50 if quick else 150
    yield f"grid {side}x{side}", grid(side, side)[0], side * side
    blocks, size, p_in = (4, 250, 0.07) if quick else (5, 600, 0.065)
    torch.manual_seed(0)
    probs = torch.full((blocks, blocks), 0.002).fill_diagonal_(p_in)
    ei = stochastic_blockmodel_graph(torch.full((blocks,), size), probs)
    yield f"SBM {blocks}x{size}", ei, blocks * size
    n = 10_000
    ba = torch.tensor(list(barabasi_albert_graph(n, 3, seed=0).edges()), dtype=torch.long).t()
    yield f"BA {n}", to_undirected(ba, num_nodes=n), n


def unique_pairs(edge_index):
    a, b = edge_index.numpy()
    keep = a < b
    return a[keep], b[keep]


def kappa(ei_g, w_g, ei_h, w_h, n):
    """κ(G, H) and the seconds it took."""
    t0 = time.perf_counter()
    k = relative_condition_number(ei_g, ei_h, n, w_g, w_h)
    return k, time.perf_counter() - t0


def stream(name, edge_index, n, updates, seed=0):
    src, dst = unique_pairs(edge_index)
    rng = np.random.default_rng(seed)
    held = rng.choice(src.size, updates, replace=False)
    rest = np.ones(src.size, dtype=bool)
    rest[held] = False
    t0 = time.perf_counter()
    dyn = DynamicSparsifier(torch.from_numpy(np.stack([src[rest], dst[rest]])), num_nodes=n, density=1.15,
                            num_walks=256, max_steps=100, seed=seed)
    build = time.perf_counter() - t0
    gone = rng.choice(np.flatnonzero(rest), updates, replace=False)
    ops = [(True, e) for e in held] + [(False, e) for e in gone]
    times, added, restored = {True: [], False: []}, 0, 0
    for j in rng.permutation(len(ops)):
        insert, e = ops[j]
        pair = torch.tensor([[int(src[e])], [int(dst[e])]])
        t0 = time.perf_counter()
        out = bool((dyn.insert_edges(pair) if insert else dyn.delete_edges(pair))[0])
        times[insert].append(time.perf_counter() - t0)
        added, restored = added + (out and insert), restored + (out and not insert)
    ei_g, w_g = dyn.graph()
    ei_h, w_h = dyn.sparsifier()
    grass_sparsifier(ei_g, w_g, n)  # warm-up
    rebuild = []
    for _ in range(3):
        t0 = time.perf_counter()
        ei_r, w_r = grass_sparsifier(ei_g, w_g, n)
        rebuild.append(time.perf_counter() - t0)
    k_dyn, s_dyn = kappa(ei_g, w_g, ei_h, w_h, n)
    k_rec, s_rec = kappa(ei_g, w_g, ei_r, w_r, n)
    ei_m, w_m = grass_sparsifier(ei_g, w_g, n, density=max(1.0, ei_h.size(1) / 2 / n))
    k_match, s_match = kappa(ei_g, w_g, ei_m, w_m, n)
    all_t = times[True] + times[False]
    row = dict(name=name, n=n, e_g=ei_g.size(1) // 2, build=build, rebuild=median(rebuild),
               mean=sum(all_t) / len(all_t), med=median(all_t), ins=median(times[True]), dele=median(times[False]),
               added=added, restored=restored, updates=updates, e_dyn=ei_h.size(1) // 2, e_rec=ei_r.size(1) // 2,
               e_match=ei_m.size(1) // 2, k_dyn=k_dyn, k_rec=k_rec, k_match=k_match, s_dyn=s_dyn, s_rec=s_rec,
               s_match=s_match)
    progress(f"{name}: done")
    return row


def main() -> None:
    args = parser(__doc__).parse_args()
    start(args)
    updates = 200 if args.quick else 1000
    rows = [stream(name, ei, n, updates) for name, ei, n in graphs(args.quick)]
    print(f"{updates} insertions + {updates} deletions per graph, one update at a time; torch threads "
          f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} "
          "(the sparsifier itself is numpy/scipy, single-threaded)")
    table(["graph", "|V|", "|E_G|", "init ms", "update ms mean", "median", "insert", "delete", "rebuild ms",
           "inserts kept", "deletes in H"],
          [[r["name"], r["n"], r["e_g"], f"{1e3 * r['build']:.1f}", f"{1e3 * r['mean']:.3f}",
            f"{1e3 * r['med']:.3f}", f"{1e3 * r['ins']:.3f}", f"{1e3 * r['dele']:.3f}",
            f"{1e3 * r['rebuild']:.1f}", f"{r['added']}/{r['updates']}", f"{r['restored']}/{r['updates']}"]
           for r in rows])
    print()
    table(["graph", "H", "|E_H|", "|E_H|/|V|", "κ(G,H)", "κ time s"],
          [[r["name"], h, r[f"e_{h}"], f"{r[f'e_{h}'] / r['n']:.3f}", f"{r[f'k_{h}']:.1f}", f"{r[f's_{h}']:.3f}"]
           for r in rows for h in ("dyn", "rec", "match")])
    values = {}
    kappa_s = {r["name"]: max(r[f"s_{h}"] for h in ("dyn", "rec", "match")) for r in rows}
    for r in rows:
        key = r["name"].split()[0].lower()
        speedup, ratio = r["rebuild"] / r["mean"], r["k_dyn"] / r["k_rec"]
        target(f"{r['name']} update >= 10x cheaper than a rebuild", speedup >= 10,
               f"{speedup:.1f}x ({1e3 * r['mean']:.3f} ms vs {1e3 * r['rebuild']:.1f} ms)", ">= 10x")
        target(f"{r['name']} κ within 2x of recomputed", ratio <= 2,
               f"{r['k_dyn']:.1f} vs {r['k_rec']:.1f}, ratio {ratio:.2f}", "<= 2")
        values.update({f"{key}_speedup": speedup, f"{key}_update_ms": 1e3 * r["mean"],
                       f"{key}_rebuild_ms": 1e3 * r["rebuild"], f"{key}_kappa_dyn": r["k_dyn"],
                       f"{key}_kappa_rec": r["k_rec"], f"{key}_density_dyn": r["e_dyn"] / r["n"],
                       f"{key}_density_rec": r["e_rec"] / r["n"], f"{key}_kappa_s": kappa_s[r["name"]]})
    slowest = max(kappa_s.values())
    target("every κ in < 10 s", slowest < 10, f"{slowest:.2f} s", "10 s")
    values["kappa_max_s"] = slowest
    result("dygrass", values)


if __name__ == "__main__":
    main()
