"""Properties of the graph edge sparsifiers (``plugins/graph``) on random undirected graphs
(random sizes and densities, both directions of every edge stored in random column order,
self-loops now and then, random weights):

- TEDDY (``teddy_mask`` with ``undirected=True`` or ``None``, and the ``TEDDY`` transform):
  an edge (u, v) is kept iff (v, u) is; every self-loop is kept; ``⌊(1 − s)·pairs⌋``
  undirected edges stay;
- UGS: the edge mask (one unit per undirected edge) pruned by the core's allocator and
  layout keeps the ticket's graph (``UGS.kept_edge_index``) undirected, self-loops kept;
- dyGRASS: the static sparsifier and the dynamic one after random insertions and
  deletions are undirected (both directions, one weight), subgraphs of G, and have G's
  connected components.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsity_core.allocators import Budget, GlobalRank
from sparsity_core.allocators.budget import kept_count
from sparsity_core.targets import Target

from . import prop_settings

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from torch_geometric.data import Data  # noqa: E402

from sparsity_plugins.graph import TEDDY, UGS, DynamicSparsifier, EdgeMask, grass_sparsifier, teddy_mask  # noqa: E402


@st.composite
def undirected_graphs(draw, self_loops: bool = True, min_pairs: int = 1):
    """``(edge_index, num_nodes, pairs)``: every pair u < v stored as (u, v) and (v, u), in a
    random column order, plus some self-loops."""
    n = draw(st.integers(2, 24))
    all_pairs = [(u, v) for u in range(n) for v in range(u + 1, n)]
    pairs = sorted(draw(st.sets(st.sampled_from(all_pairs), min_size=min_pairs, max_size=min(len(all_pairs), 60))))
    loops = sorted(draw(st.sets(st.integers(0, n - 1), max_size=3))) if self_loops else []
    cols = [(u, v) for u, v in pairs] + [(v, u) for u, v in pairs] + [(i, i) for i in loops]
    perm = draw(st.permutations(range(len(cols))))
    edge_index = torch.tensor([cols[i] for i in perm], dtype=torch.long).t().contiguous()
    return edge_index, n, pairs


def directed_multiset(edge_index) -> Counter:
    return Counter(map(tuple, edge_index.t().tolist()))


def assert_undirected(edge_index):
    """Edge (u, v) present iff (v, u) is, as many times."""
    edges = directed_multiset(edge_index)
    for (u, v), count in edges.items():
        assert edges.get((v, u), 0) == count, ((u, v), count, edges.get((v, u), 0))


def undirected_pairs(edge_index):
    return {(min(u, v), max(u, v)) for u, v in edge_index.t().tolist() if u != v}


def components(pairs, n):
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for u, v in pairs:
        parent[find(u)] = find(v)
    return [find(i) for i in range(n)]


def same_partition(a, b):
    return len(set(zip(a, b))) == len(set(a)) == len(set(b))


# -- TEDDY -------------------------------------------------------------------------------------
@prop_settings(80)
@given(graph=undirected_graphs(), sparsity=st.floats(0.0, 0.99), undirected=st.sampled_from([True, None]))
def test_teddy_keeps_both_directions_together(graph, sparsity, undirected):
    edge_index, n, pairs = graph
    mask = teddy_mask(edge_index, sparsity, n, undirected=undirected)
    kept = edge_index[:, mask]
    assert_undirected(kept)
    loops = edge_index[0] == edge_index[1]
    assert mask[loops].all()  # self-loops are never removed
    assert len(undirected_pairs(kept)) == kept_count(len(pairs), sparsity)
    assert torch.equal(teddy_mask(edge_index, sparsity, n, undirected=undirected), mask)  # deterministic


@prop_settings(40)
@given(graph=undirected_graphs(), sparsity=st.floats(0.0, 0.99))
def test_teddy_transform_leaves_an_undirected_graph_undirected(graph, sparsity):
    edge_index, n, pairs = graph
    data = Data(edge_index=edge_index, num_nodes=n, edge_attr=torch.arange(edge_index.size(1)).float())
    out = TEDDY(sparsity)(data)
    assert_undirected(out.edge_index)
    # edge attributes follow their edges
    assert torch.equal(out.edge_attr, data.edge_attr[out.teddy_kept])
    assert len(undirected_pairs(out.edge_index)) == kept_count(len(pairs), sparsity)


# -- UGS ---------------------------------------------------------------------------------------
@prop_settings(60)
@given(graph=undirected_graphs(), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 2 ** 16),
       ties=st.booleans())
def test_ugs_ticket_graph_is_undirected(graph, sparsity, seed, ties):
    edge_index, n, pairs = graph
    em = EdgeMask(edge_index, n, undirected=True)
    assert em.num_units == len(pairs)
    # the core prunes the mask's units (global ranking of |mask|, as UGS's magnitude criterion)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        em.mask.copy_(torch.randint(1, 4, (em.num_units,), generator=gen).float() if ties
                      else torch.rand(em.num_units, generator=gen))
    target = Target("ugs_edge_mask.mask", param=em.mask)
    scores = {target.name: em.mask.detach().abs()}
    keep = GlobalRank(min_keep_units=0).allocate([target], scores, Budget(sparsity=sparsity))
    kept_units = target.layout.select(scores[target.name], keep[target.name], target.shape)
    with torch.no_grad():
        em.mask.mul_(kept_units)
    ugs = UGS(edge_index=edge_index, num_nodes=n)
    ugs.edge_mask = em  # what UGS.discover sets up
    ticket = ugs.kept_edge_index()
    assert_undirected(ticket)
    assert len(undirected_pairs(ticket)) == keep[target.name]  # one pair per kept unit
    loops = int((edge_index[0] == edge_index[1]).sum())
    assert int((ticket[0] == ticket[1]).sum()) == loops  # self-loops kept
    values = em.edge_values()
    edge_value = {}
    for (u, v), x in zip(edge_index.t().tolist(), values.tolist()):
        edge_value.setdefault((min(u, v), max(u, v)), set()).add(x)
    assert all(len(x) == 1 for x in edge_value.values())  # both directions carry one value


# -- dyGRASS -----------------------------------------------------------------------------------
def weighted(graph, draw_weights):
    edge_index, n, pairs = graph
    w_of = {p: w for p, w in zip(pairs, draw_weights)}
    w = torch.tensor([w_of[(min(u, v), max(u, v))] if u != v else 1.0 for u, v in edge_index.t().tolist()],
                     dtype=torch.float64)
    return edge_index, w, w_of


def check_sparsifier(h, hw, g_pairs, g_weight, n):
    assert_undirected(h)
    assert not bool((h[0] == h[1]).any())  # a Laplacian has no self-loops
    seen = {}
    for (u, v), x in zip(h.t().tolist(), hw.tolist()):
        key = (min(u, v), max(u, v))
        assert seen.setdefault(key, x) == x  # one weight per undirected edge
    h_pairs = set(seen)
    assert h_pairs <= set(g_pairs)
    assert all(seen[p] == g_weight[p] for p in h_pairs)  # weights as in G
    assert same_partition(components(h_pairs, n), components(g_pairs, n))
    return h_pairs


@prop_settings(30)
@given(graph=undirected_graphs(), data=st.data(), density=st.floats(1.0, 3.0), beta=st.integers(0, 3))
def test_grass_sparsifier_is_an_undirected_subgraph_with_the_same_components(graph, data, density, beta):
    edge_index, n, pairs = graph
    ws = data.draw(st.lists(st.floats(0.1, 10.0), min_size=len(pairs), max_size=len(pairs)))
    edge_index, w, w_of = weighted(graph, ws)
    h, hw = grass_sparsifier(edge_index, w, num_nodes=n, density=density, beta=beta)
    check_sparsifier(h, hw, pairs, w_of, n)


@prop_settings(25)
@given(graph=undirected_graphs(), data=st.data(), seed=st.integers(0, 999))
def test_dynamic_sparsifier_stays_undirected_under_insertions_and_deletions(graph, data, seed):
    edge_index, n, pairs = graph
    edge_index, w, w_of = weighted(graph, [1.0 + (i % 3) for i in range(len(pairs))])
    dyn = DynamicSparsifier(edge_index, w, num_nodes=n, num_walks=16, max_steps=20, seed=seed)
    g_weight = dict(w_of)
    check_sparsifier(*dyn.sparsifier(), g_weight, g_weight, n)
    all_pairs = [(u, v) for u in range(n) for v in range(u + 1, n)]
    for _ in range(data.draw(st.integers(1, 6))):
        insert = data.draw(st.booleans())
        absent = [p for p in all_pairs if p not in g_weight]
        if insert and absent:
            batch = data.draw(st.lists(st.sampled_from(absent), min_size=1, max_size=4, unique=True))
            wb = data.draw(st.lists(st.sampled_from([0.5, 1.0, 4.0]), min_size=len(batch), max_size=len(batch)))
            ei = torch.tensor([[v, u] if (u + v) % 2 else [u, v] for u, v in batch], dtype=torch.long).t()
            dyn.insert_edges(ei, torch.tensor(wb, dtype=torch.float64))
            g_weight.update(zip(batch, wb))
        elif g_weight:
            batch = data.draw(st.lists(st.sampled_from(sorted(g_weight)), min_size=1, max_size=3, unique=True))
            dyn.delete_edges(torch.tensor(batch, dtype=torch.long).t())
            for p in batch:
                del g_weight[p]
        if not g_weight:
            break
        g, gw = dyn.graph()
        assert_undirected(g)
        assert {(min(u, v), max(u, v)): x for (u, v), x in zip(g.t().tolist(), gw.tolist())} == g_weight
        h_pairs = check_sparsifier(*dyn.sparsifier(), g_weight, g_weight, n)
        for u, v in list(h_pairs)[:5]:  # the queries agree with the export, in both directions
            assert dyn.has_edge(u, v) and dyn.has_edge(v, u)
