"""dyGRASS: the static start, walk-based insertions, path-restoring deletions, atomic errors
and seeded determinism, on hand-built graphs."""
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
pytest.importorskip("scipy", reason="the graph extra (scipy) is not installed")
import scipy.sparse as sp  # noqa: E402
from scipy.sparse.csgraph import connected_components, dijkstra  # noqa: E402
from torch_geometric.utils import grid, remove_self_loops, to_undirected  # noqa: E402

from sparsity_plugins.graph.dygrass import DynamicSparsifier, grass_sparsifier  # noqa: E402
from sparsity_plugins.graph.dygrass_walks import (SlackAdjacency, lowest_resistance_path, spanning_forest,  # noqa: E402
                                                  tree_resistance, walk_resistance)
from sparsity_plugins.graph.spectral import relative_condition_number  # noqa: E402


def edges(pairs):
    return torch.tensor(pairs, dtype=torch.long).t().contiguous()


def path(n):
    return edges([(i, i + 1) for i in range(n - 1)])


def lattice(side):
    """PyG's 8-neighbour grid without its self-loops."""
    return remove_self_loops(grid(side, side)[0])[0]


def pairs_of(edge_index, edge_weight=None):
    """{(u, v): w} over u < v of a both-directions edge_index."""
    w = edge_weight.tolist() if edge_weight is not None else [1.0] * edge_index.size(1)
    return {(a, b): x for (a, b), x in zip(edge_index.t().tolist(), w) if a < b}


def csr(edge_index, edge_weight, n):
    return sp.csr_matrix((1.0 / edge_weight.numpy(), (edge_index[0].numpy(), edge_index[1].numpy())), shape=(n, n))


def components(edge_index, n):
    return connected_components(sp.csr_matrix((np.ones(edge_index.size(1)), tuple(edge_index.numpy())),
                                              shape=(n, n)), directed=False)[1]


def same_partition(a, b):
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kappa_is_one_when_the_budget_keeps_all_of_g():
    ei = lattice(5)
    h, w = grass_sparsifier(ei, num_nodes=25, density=100.0)
    assert torch.equal(h, ei) and torch.equal(w, torch.ones(ei.size(1), dtype=torch.float64))
    assert relative_condition_number(ei, h, 25, None, w) == pytest.approx(1.0, abs=1e-6)


def test_initial_sparsifier_of_a_tree_is_the_tree():
    # a weighted tree, each edge given once: nothing is off-tree, so H = G = T
    tree = edges([(0, 1), (0, 2), (2, 3), (2, 4), (4, 5), (1, 6)])
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 4.0])
    dyn = DynamicSparsifier(tree, w, num_nodes=8)  # node 7 isolated
    g, gw = dyn.graph()
    h, hw = dyn.sparsifier()
    assert torch.equal(g, h) and torch.equal(gw, hw)
    assert pairs_of(h, hw) == {(0, 1): 1.0, (0, 2): 2.0, (2, 3): 0.5, (2, 4): 3.0, (4, 5): 1.5, (1, 6): 4.0}
    assert torch.equal(grass_sparsifier(tree, w, 8)[0], g)


def test_insertion_skips_an_edge_spanned_by_a_low_resistance_path():
    # path 0-1-2 of weight 10: R(0, 2) = 0.2 along H, and w·R = 0.2 < threshold 1
    dyn = DynamicSparsifier(path(3), torch.tensor([10.0, 10.0]), threshold=1.0)
    assert dyn.insert(0, 2, 1.0) is False
    assert (0, 2) in pairs_of(*dyn.graph()) and (0, 2) not in pairs_of(*dyn.sparsifier())


def test_insertion_adds_an_edge_whose_only_path_is_too_resistive_or_missing():
    # unit path 0..9: the walks do find 0 -> 9, but w·R = 9 >= threshold 5
    dyn = DynamicSparsifier(path(10), threshold=5.0)
    assert dyn.insert(0, 9) is True
    # 0 -> 2 costs 2 < 5 (and 0 -> 9 -> 8 now costs 2 as well)
    assert dyn.insert(0, 2) is False
    # a second component: no path in H at all
    two = DynamicSparsifier(edges([(0, 1), (1, 2), (3, 4)]), threshold=1e6)
    added = two.insert_edges(edges([(2, 3), (0, 4)]))
    assert added.tolist() == [True, False]  # once 2-3 joined H, 0-1-2-3-4 spans (0, 4)
    assert set(pairs_of(*two.sparsifier())) == {(0, 1), (1, 2), (3, 4), (2, 3)}


def test_lowest_resistance_path_prefers_heavy_long_routes():
    # 0-1 (w=1, R=1) vs 0-2-3-1 (w=10 each, R=0.3)
    src, dst, w = np.array([0, 0, 2, 1]), np.array([1, 2, 3, 3]), np.array([1.0, 10.0, 10.0, 10.0])
    adj = SlackAdjacency(5, src, dst, 1.0 / w)
    assert lowest_resistance_path(adj, 0, 1) == [0, 2, 3, 1]
    adj.remove(0, 2)
    assert lowest_resistance_path(adj, 0, 1) == [0, 1]
    assert lowest_resistance_path(adj, 0, 4) is None
    for k in range(4):  # node 4 starts with 2 spare slots: its row grows
        adj.add(4, k, 1.0)
    assert sorted(adj.neighbors(4)[0].tolist()) == [0, 1, 2, 3]
    assert lowest_resistance_path(adj, 0, 4) == [0, 4]


def test_deleting_a_tree_edge_restores_the_lowest_resistance_path():
    # 4 x 4 lattice with unit weights, density 1: H is a spanning tree plus one edge
    n = 16
    ei = lattice(4)
    dyn = DynamicSparsifier(ei, num_nodes=n, density=1.0)
    h0 = pairs_of(*dyn.sparsifier())
    assert len(h0) == 16 < len(pairs_of(ei))
    # an edge of H whose removal alone would split H
    bridge = next(e for e in sorted(h0)
                  if connected_components(sp.csr_matrix((np.ones(len(h0) - 1), tuple(zip(*[x for x in h0 if x != e]))),
                                                        shape=(n, n)), directed=False)[0] > 1)
    assert dyn.delete(*bridge) is True
    g, gw = dyn.graph()
    h, hw = dyn.sparsifier()
    assert bridge not in pairs_of(g, gw) and bridge not in pairs_of(h, hw)
    assert connected_components(csr(h, hw, n), directed=False)[0] == 1
    p, q = bridge
    assert dijkstra(csr(h, hw, n), directed=False, indices=p)[q] == pytest.approx(
        dijkstra(csr(g, gw, n), directed=False, indices=p)[q])
    assert dyn.delete(*next(e for e in sorted(pairs_of(g)) if e not in pairs_of(h))) is False
    assert pairs_of(*dyn.sparsifier()) == pairs_of(h, hw)  # deleting an edge outside H leaves H alone


def test_stream_keeps_h_a_connected_subgraph_of_g():
    n = 36
    ei = lattice(6)
    full = sorted(pairs_of(ei))
    rng = np.random.default_rng(1)
    held = [full[i] for i in rng.choice(len(full), 15, replace=False)]
    start = edges([e for e in full if e not in held])
    dyn = DynamicSparsifier(start, num_nodes=n, num_walks=16, max_steps=20, seed=3)
    for step in range(30):
        g = pairs_of(*dyn.graph())
        if step % 2 == 0 and held:
            u, v = held.pop()
            dyn.insert(u, v, float(1 + step % 3))
        else:
            dyn.delete(*sorted(g)[int(rng.integers(len(g)))])
        g_ei, g_w = dyn.graph()
        h_ei, h_w = dyn.sparsifier()
        g, h = pairs_of(g_ei, g_w), pairs_of(h_ei, h_w)
        assert all(e in g and g[e] == w for e, w in h.items())
        assert same_partition(components(g_ei, n), components(h_ei, n))
        assert dyn.num_edges == (len(g), len(h))


def test_bad_deletion_or_insertion_changes_nothing():
    dyn = DynamicSparsifier(lattice(4), num_nodes=16, density=1.0)
    before = dyn.graph() + dyn.sparsifier()
    rng_before = dyn._rng.bit_generator.state
    some = sorted(pairs_of(dyn.sparsifier()[0]))[0]
    with pytest.raises(ValueError, match=r"edge \(0, 15\) is not in G"):
        dyn.delete(0, 15)
    with pytest.raises(ValueError, match="not in G"):  # the valid first edge is not deleted either
        dyn.delete_edges(edges([some, (0, 15)]))
    with pytest.raises(ValueError, match="more than once"):
        dyn.delete_edges(edges([some, some[::-1]]))
    with pytest.raises(ValueError, match="already in G"):
        dyn.insert_edges(edges([(0, 15), some]))
    with pytest.raises(ValueError, match="self-loop"):
        dyn.insert(3, 3)
    with pytest.raises(ValueError, match="> 0"):
        dyn.insert_edges(edges([(0, 15)]), torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="outside"):
        dyn.insert(0, 16)
    after = dyn.graph() + dyn.sparsifier()
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert dyn._rng.bit_generator.state == rng_before


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[0.0, 1.0], [1.0, 2.0]]), "dtype"),
    (torch.tensor([[0, 1, 2]]), "shape"),
    (torch.tensor([[0, 1], [1, 5]]), "outside"),
    (torch.empty(2, 0, dtype=torch.long), "empty"),
    (torch.tensor([[1, 2], [1, 2]]), "only self-loops"),
    ([[0, 1], [1, 2]], "must be a tensor"),
])
def test_bad_edge_index_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        DynamicSparsifier(bad, num_nodes=3)
    with pytest.raises(ValueError, match=match):
        grass_sparsifier(bad, num_nodes=3)


def test_bad_weights_and_options_are_refused():
    ei = to_undirected(path(4))
    with pytest.raises(ValueError, match="different weights"):
        DynamicSparsifier(ei, torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="floating-point"):
        DynamicSparsifier(ei, torch.ones(6, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        DynamicSparsifier(ei, torch.ones(5))
    for kwargs, match in [({"density": 0.5}, "density"), ({"num_walks": 0}, "num_walks"),
                          ({"max_steps": 0}, "max_steps"), ({"threshold": -1.0}, "threshold"),
                          ({"beta": -1}, "beta"), ({"seed": 1.5}, "seed"), ({"num_nodes": 0}, "num_nodes")]:
        with pytest.raises(ValueError, match=match):
            DynamicSparsifier(ei, **kwargs)


def test_same_seed_same_sparsifier():
    ei = lattice(8)
    full = sorted(pairs_of(ei))
    held = full[::7]
    start = edges([e for e in full if e not in held])

    def run(seed):
        dyn = DynamicSparsifier(start, num_nodes=64, num_walks=4, max_steps=30, seed=seed)
        added = dyn.insert_edges(edges(held))
        dyn.delete_edges(edges(full[1:40:5]))
        return added, dyn.sparsifier()

    a, b = run(7), run(7)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("seed", range(4))
def test_non_backtracking_walks_on_a_cycle_meet_at_the_shortest_way_round(seed):
    # cycle of 8: walkers from 0 and from 4 can only go round, so every meeting costs 4
    n = 8
    adj = SlackAdjacency(n, np.arange(n), (np.arange(n) + 1) % n, np.ones(n))
    best = np.full(2 * n, np.inf)
    assert walk_resistance(adj, 0, 4, 100.0, 1, 10, np.random.default_rng(seed), best) == 4.0
    assert walk_resistance(adj, 0, 4, 4.0, 8, 10, np.random.default_rng(seed), best) == np.inf  # w·R < limit, strict
    assert np.isinf(best).all()  # the scratch is left clean


def test_empty_batches_and_pickling():
    dyn = DynamicSparsifier(lattice(4), num_nodes=16, num_walks=8, seed=5)
    assert dyn.insert_edges(torch.empty(2, 0, dtype=torch.long)).tolist() == []
    assert dyn.delete_edges(torch.empty(2, 0, dtype=torch.long)).tolist() == []
    dyn.delete(0, 1)
    copy = pickle.loads(pickle.dumps(dyn))
    new = edges([(0, 1), (0, 15), (3, 12)])
    assert torch.equal(dyn.insert_edges(new), copy.insert_edges(new))
    assert all(torch.equal(a, b) for a, b in zip(dyn.sparsifier() + dyn.graph(), copy.sparsifier() + copy.graph()))


def test_spanning_forest_and_tree_resistance_match_brute_force():
    rng = np.random.default_rng(0)
    n = 30  # two random components (0..19 and 20..28) and the isolated node 29
    pairs = {tuple(sorted(map(int, rng.choice(20, 2, replace=False)))) for _ in range(60)}
    pairs |= {tuple(sorted(map(int, 20 + rng.choice(9, 2, replace=False)))) for _ in range(20)}
    pairs |= {(i, i + 1) for i in range(19)} | {(i, i + 1) for i in range(20, 28)}
    src, dst = (np.array(x) for x in zip(*sorted(pairs)))
    w = rng.uniform(0.5, 3.0, src.size)
    tree, roots = spanning_forest(src, dst, w, n)
    assert tree.sum() == n - 3 and sorted(roots.tolist())[-1] == 29
    t = sp.csr_matrix((1.0 / w[tree], (src[tree], dst[tree])), shape=(n, n))
    assert connected_components(t, directed=False)[0] == 3
    u, v = src[~tree], dst[~tree]
    exact = dijkstra(t, directed=False)[u, v]  # the tree path is the only path
    assert np.allclose(tree_resistance(src[tree], dst[tree], w[tree], n, roots, u, v), exact)
