"""DynamicSparsifier queries and node insertion, against brute force on the exported graphs:
edge membership (has_edge / contains / weight), connectivity (connected / components) after
every batch of random streams that merge and split components and add nodes, and inputs
refused without any change."""
import pickle
from collections import deque

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
pytest.importorskip("scipy", reason="the graph extra (scipy) is not installed")
from sparsity_plugins.graph.dygrass import DynamicSparsifier  # noqa: E402


def edges(pairs):
    return torch.tensor(list(pairs), dtype=torch.long).reshape(-1, 2).t().contiguous()


def pairs_of(edge_index, edge_weight):
    """{(u, v): w} over u < v of a both-directions edge_index."""
    return {(a, b): w for (a, b), w in zip(edge_index.t().tolist(), edge_weight.tolist()) if a < b}


def bfs_components(pairs, n):
    """Component of every node, numbered in the order of the smallest node id (plain BFS)."""
    adj = [[] for _ in range(n)]
    for a, b in pairs:
        adj[a].append(b)
        adj[b].append(a)
    label, count = [-1] * n, 0
    for s in range(n):
        if label[s] < 0:
            label[s], todo = count, deque([s])
            while todo:
                x = todo.popleft()
                for y in adj[x]:
                    if label[y] < 0:
                        label[y] = count
                        todo.append(y)
            count += 1
    return label


def check_against_brute_force(dyn):
    """Every query agrees with the exported G and H; H is a subgraph of G with G's components."""
    n = dyn.num_nodes
    g, h = pairs_of(*dyn.graph()), pairs_of(*dyn.sparsifier())
    assert all(e in g and g[e] == w for e, w in h.items())
    everything = [(u, v) for u in range(n) for v in range(n)]  # both directions and the self-loops
    got_h, got_g = dyn.contains(edges(everything)), dyn.contains(edges(everything), graph=True)
    assert got_h.dtype == torch.bool and got_h.shape == (n * n,)
    assert got_h.tolist() == [(min(e), max(e)) in h for e in everything]
    assert got_g.tolist() == [(min(e), max(e)) in g for e in everything]
    for u, v in everything[::7]:
        e = (min(u, v), max(u, v))
        assert dyn.has_edge(u, v) is (e in h) and dyn.has_edge(u, v, graph=True) is (e in g)
        assert dyn.weight(u, v) == h.get(e) and dyn.weight(u, v, graph=True) == g.get(e)
    comp_g, comp_h = bfs_components(g, n), bfs_components(h, n)
    assert comp_g == comp_h == dyn.components().tolist()
    for u, v in everything[::3]:
        assert dyn.connected(u, v) is (comp_h[u] == comp_h[v])
    assert dyn.num_edges == (len(g), len(h))


def random_graph(rng, n, m):
    pairs = set()
    while len(pairs) < m:
        a, b = (int(x) for x in rng.choice(n, 2, replace=False))
        pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


@pytest.mark.parametrize("seed", range(4))
def test_random_stream_queries_match_brute_force_after_every_batch(seed):
    rng = np.random.default_rng(seed)
    n = 14 + seed
    start = random_graph(rng, n, n)  # sparse: several components, many bridges
    dyn = DynamicSparsifier(edges(start), num_nodes=n, num_walks=8, max_steps=12, threshold=2.0 + seed, seed=seed)
    check_against_brute_force(dyn)
    added_nodes = merges = splits = 0
    for step in range(24):
        g = pairs_of(*dyn.graph())
        before = len(set(dyn.components().tolist()))
        kind = step % 4
        if kind == 3:  # new nodes, then edges to them (and between them)
            count = int(rng.integers(1, 4))
            first = dyn.add_nodes(count)
            assert first + count == dyn.num_nodes
            added_nodes += count
            new = list(range(first, dyn.num_nodes))
            batch = [(v, int(rng.integers(first))) for v in new[::2]] + [(new[0], new[-1])] * (len(new) > 1)
            dyn.insert_edges(edges(batch), torch.from_numpy(rng.uniform(0.5, 3.0, len(batch))))
        elif kind == 2:  # delete a few edges of G: one of H, one bridge of G (a split), one at random
            h = sorted(pairs_of(*dyn.sparsifier()))
            bridges = [e for e in sorted(g) if bfs_components([x for x in g if x != e], dyn.num_nodes)[e[0]]
                       != bfs_components([x for x in g if x != e], dyn.num_nodes)[e[1]]]
            pick = {h[int(rng.integers(len(h)))], sorted(g)[int(rng.integers(len(g)))]}
            pick |= {bridges[int(rng.integers(len(bridges)))]} if bridges else set()
            dyn.delete_edges(edges(sorted(pick)))
        else:  # insert absent edges
            m = dyn.num_nodes
            absent = [(a, b) for a in range(m) for b in range(a + 1, m) if (a, b) not in g]
            batch = [absent[int(i)] for i in rng.choice(len(absent), 3, replace=False)]
            dyn.insert_edges(edges(batch), torch.from_numpy(rng.uniform(0.5, 3.0, len(batch))))
        after = len(set(dyn.components().tolist()))
        merges += after < before and kind != 2
        splits += after > before and kind == 2
        check_against_brute_force(dyn)
    assert added_nodes > 0 and merges > 0 and splits > 0  # the stream exercised every path


def test_split_and_merge_on_a_path():
    dyn = DynamicSparsifier(edges([(i, i + 1) for i in range(9)]), num_nodes=12)
    assert dyn.connected(0, 9) and not dyn.connected(0, 10) and not dyn.connected(10, 11)
    assert dyn.connected(11, 11) and dyn.components().tolist() == [0] * 10 + [1, 2]
    assert dyn.delete(6, 7) is True  # a bridge: no path to restore
    assert dyn.connected(0, 6) and dyn.connected(7, 9) and not dyn.connected(6, 7)
    assert dyn.components().tolist() == [0] * 7 + [1] * 3 + [2, 3]
    assert dyn.insert(9, 10) is True and dyn.insert(2, 8, 0.5) is True  # no path in H: both join it
    assert dyn.components().tolist() == [0] * 11 + [1]
    assert dyn.has_edge(8, 2) and dyn.weight(2, 8) == 0.5 and dyn.weight(6, 7, graph=True) is None
    check_against_brute_force(dyn)


def test_added_nodes_take_edges_and_stay_consistent_through_capacity_growth():
    dyn = DynamicSparsifier(edges([(0, 1), (1, 2), (2, 0), (2, 3)]), num_walks=4, max_steps=10, seed=1)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):  # the failure node insertion resolves
        dyn.insert(4, 0)
    assert dyn.add_nodes() == 4 and dyn.num_nodes == 5
    assert not dyn.connected(4, 0) and dyn.components().tolist() == [0, 0, 0, 0, 1]
    assert not dyn.has_edge(4, 0) and dyn.contains(edges([(4, 0), (4, 4)])).tolist() == [False, False]
    assert dyn.insert(4, 0, 2.0) is True  # nothing in H reaches a new node: its first edge joins H
    assert dyn.connected(4, 3) and dyn.has_edge(0, 4) and dyn.weight(4, 0) == 2.0
    for i in range(40):  # one node at a time: the capacity grows several times
        v = dyn.add_nodes(1)
        assert v == 5 + i
        dyn.insert(v, int(v * 7 % v))
        if i % 5 == 0:
            dyn.insert(v, v - 1)
    first = dyn.add_nodes(30)
    assert first == 45 and dyn.num_nodes == 75
    dyn.insert_edges(edges([(first + i, first + i + 1) for i in range(29)]))
    assert all(not dyn.connected(first, u) for u in range(first)) and dyn.connected(first, 74)
    dyn.insert(74, 0)
    check_against_brute_force(dyn)
    g_ei, _ = dyn.graph()
    assert int(g_ei.max()) == 74
    dyn.delete(74, 0)  # a bridge again
    assert not dyn.connected(0, first)
    check_against_brute_force(dyn)
    copy = pickle.loads(pickle.dumps(dyn))
    batch = edges([(3, 60), (10, 70), (1, 2)])
    assert torch.equal(dyn.delete_edges(batch[:, 2:]), copy.delete_edges(batch[:, 2:]))
    assert torch.equal(dyn.insert_edges(batch[:, :2]), copy.insert_edges(batch[:, :2]))
    assert all(torch.equal(a, b) for a, b in zip(dyn.sparsifier() + dyn.graph(), copy.sparsifier() + copy.graph()))
    assert torch.equal(dyn.components(), copy.components())


def test_adding_nodes_later_equals_having_them_isolated_from_the_start():
    rng = np.random.default_rng(5)
    start = random_graph(rng, 20, 40)
    later = random_graph(rng, 30, 50)
    # the static start budgets density·|V| edges: let both keep all of G, so only the stream differs
    options = dict(density=10.0, threshold=3.0, num_walks=8, max_steps=20, seed=2)
    grown = DynamicSparsifier(edges(start), num_nodes=20, **options)
    fixed = DynamicSparsifier(edges(start), num_nodes=30, **options)
    assert all(torch.equal(a, b) for a, b in zip(grown.sparsifier(), fixed.sparsifier()))
    assert grown.add_nodes(10) == 20
    new = [e for e in later if e not in set(start)]
    assert torch.equal(grown.insert_edges(edges(new)), fixed.insert_edges(edges(new)))
    gone = new[::3] + start[::4]
    assert torch.equal(grown.delete_edges(edges(gone)), fixed.delete_edges(edges(gone)))
    assert all(torch.equal(a, b) for a, b in zip(grown.sparsifier() + grown.graph(),
                                                 fixed.sparsifier() + fixed.graph()))
    assert torch.equal(grown.components(), fixed.components())
    check_against_brute_force(grown)


def test_bad_inputs_are_refused_and_change_nothing():
    dyn = DynamicSparsifier(edges([(0, 1), (1, 2), (3, 4)]), num_nodes=6, num_walks=4)
    dyn.add_nodes(2)

    def state():
        return (dyn.num_nodes, dyn.num_edges, dyn.components().tolist(), dyn._base,
                [t.tolist() for t in dyn.graph() + dyn.sparsifier()], dyn._rng.bit_generator.state)

    before = state()
    for count, match in [(0, "count"), (-2, "count"), (1.5, "count"), (True, "count"), ("3", "count")]:
        with pytest.raises(ValueError, match=match):
            dyn.add_nodes(count)
    for u, v in [(-1, 0), (0, 8), (8, 8), (0.5, 1), (True, 1), (None, 1)]:
        with pytest.raises(ValueError, match="node id"):
            dyn.has_edge(u, v)
        with pytest.raises(ValueError, match="node id"):
            dyn.connected(u, v)
        with pytest.raises(ValueError, match="node id"):
            dyn.weight(u, v, graph=True)
    for graph in (1, "yes", None):
        with pytest.raises(ValueError, match="graph must be a bool"):
            dyn.has_edge(0, 1, graph=graph)
        with pytest.raises(ValueError, match="graph must be a bool"):
            dyn.contains(edges([(0, 1)]), graph=graph)
    for bad, match in [(torch.tensor([[0.0], [1.0]]), "dtype"), (torch.tensor([[0, 1, 2]]), "shape"),
                       (torch.tensor([[0], [8]]), r"outside \[0, 8\)"), ([[0], [1]], "must be a tensor")]:
        with pytest.raises(ValueError, match=match):
            dyn.contains(bad)
    with pytest.raises(ValueError, match="outside"):  # ids past num_nodes fail though the capacity has room
        dyn.insert_edges(edges([(0, 2), (7, dyn.num_nodes)]))
    assert state() == before
    assert dyn.contains(torch.empty(2, 0, dtype=torch.long)).tolist() == []
    assert dyn.contains(edges([(2, 1), (1, 1), (2, 1)])).tolist() == [True, False, True]  # repeats are fine
