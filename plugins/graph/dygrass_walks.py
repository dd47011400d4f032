"""The mechanics under dyGRASS (Han, Feng et al., 2025, "dyGRASS: Dynamic Spectral Graph
Sparsification via Localized Random Walks"; the public API and the math are in
:mod:`.dygrass`): the GRASS/feGRASS static start (spanning forest, tree resistances,
similarity-filtered off-tree recovery), an adjacency that edges can join and leave cheaply,
batched non-backtracking random walks that accumulate path resistance, the
lowest-resistance path search used to repair a deletion, and the component labels that
answer connectivity queries (kept up to date by relabelling the smaller side of a merge or
a split, found by a vectorised breadth-first search).

Resistances: an edge of weight ``w`` is a resistor of ``1/w``; the resistance of a path is
``Σ 1/w_e`` over its edges, and it bounds the effective resistance between its ends from
above (Rayleigh monotonicity: removing every other edge can only raise resistance).
"""
from __future__ import annotations

import heapq
import math
from typing import List, Optional, Tuple

import numpy as np


def spanning_forest(src: np.ndarray, dst: np.ndarray, w: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Mask of the edges of the maximum spanning forest of the feGRASS effective weights,
    and the root (highest degree, then lowest id) of every component."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components, dijkstra, minimum_spanning_tree

    graph = sp.csr_matrix((1.0 / w, (src, dst)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    deg = np.bincount(np.concatenate([src, dst]), minlength=n)
    order = np.lexsort((np.arange(n), -deg, label))
    roots = order[np.r_[True, label[order][1:] != label[order][:-1]]]
    dist = dijkstra(graph, directed=False, indices=roots, min_only=True)
    eff = w * np.log1p(np.maximum(deg[src], deg[dst])) / (dist[src] + dist[dst])
    tree = minimum_spanning_tree(sp.csr_matrix((1.0 / eff, (src, dst)), shape=(n, n))).tocoo()
    key = np.minimum(tree.row, tree.col).astype(np.int64) * n + np.maximum(tree.row, tree.col)
    mask = np.zeros(src.size, dtype=bool)
    mask[np.searchsorted(src * n + dst, key)] = True
    return mask, roots


def tree_resistance(src: np.ndarray, dst: np.ndarray, w: np.ndarray, n: int, roots: np.ndarray,
                     u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``R_T(u_i, v_i)`` in the forest of the edges ``src, dst, w`` (one root per tree), all
    pairs at once: ``ρ(u) + ρ(v) − 2 ρ(lca(u, v))`` with the lowest common ancestor found by
    binary lifting. Every pair must lie in one tree."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra

    t = sp.csr_matrix((1.0 / w, (src, dst)), shape=(n, n))
    depth, parent, _ = dijkstra(t, directed=False, indices=roots, unweighted=True, min_only=True,
                                return_predecessors=True)
    rho = dijkstra(t, directed=False, indices=roots, min_only=True)
    parent = np.where(parent < 0, np.arange(n), parent)
    depth = depth.astype(np.int64)
    up = [parent]
    for _ in range(max(1, int(depth.max()).bit_length()) - 1):
        up.append(up[-1][up[-1]])
    a, b = np.where(depth[u] >= depth[v], u, v), np.where(depth[u] >= depth[v], v, u)
    diff = depth[a] - depth[b]
    for k, anc in enumerate(up):
        a = np.where((diff >> k) & 1 == 1, anc[a], a)
    for anc in reversed(up):
        step = anc[a] != anc[b]
        a, b = np.where(step, anc[a], a), np.where(step, anc[b], b)
    lca = np.where(a == b, a, parent[a])
    return rho[u] + rho[v] - 2.0 * rho[lca]


def recover_off_tree(src: np.ndarray, dst: np.ndarray, n: int, tree: np.ndarray, ranked: np.ndarray, budget: int,
             beta: int) -> np.ndarray:
    """Positions in ``ranked`` of the first ``budget`` off-tree edges that pass the
    similarity filter (an edge is skipped when both its endpoints already lie within
    ``beta`` tree hops of endpoints of recovered edges: it would close nearly the same
    cycle); if fewer pass, the skipped ones fill the budget in rank order."""
    import scipy.sparse as sp

    t = sp.csr_matrix((np.ones(2 * int(tree.sum())), (np.r_[src[tree], dst[tree]], np.r_[dst[tree], src[tree]])),
                      shape=(n, n))
    indptr, indices = t.indptr.tolist(), t.indices.tolist()
    marked = bytearray(n)
    chosen, skipped, s_l, d_l = [], [], src.tolist(), dst.tolist()
    for i, e in enumerate(ranked.tolist()):
        if len(chosen) == budget:
            break
        u, v = s_l[e], d_l[e]
        if beta and marked[u] and marked[v]:
            skipped.append(i)
            continue
        chosen.append(i)
        for front in ([u], [v]):
            for _ in range(beta):  # mark the ball; stop where an earlier ball already reached
                nxt = []
                for x in front:
                    marked[x] = 1
                    nxt.extend(y for y in indices[indptr[x]:indptr[x + 1]] if not marked[y])
                front = nxt
            for x in front:
                marked[x] = 1
    if len(chosen) < budget:  # every candidate was seen
        chosen += skipped
    return np.sort(np.asarray(chosen[:budget], dtype=np.int64))


class SlackAdjacency:
    """Undirected simple graph as a CSR with spare slots per row.

    Row ``u`` owns ``cap[u]`` slots from ``start[u]``; its first ``deg[u]`` hold the
    neighbours (``col``) and the resistances ``1/w`` of the edges (``res``). Adding an edge
    writes into a spare slot (a full row makes the whole layout grow once, O(nnz)); removing
    one moves the row's last entry into its slot. The arrays are read directly by the
    vectorised walks, so no CSR is rebuilt between updates.
    """

    def __init__(self, num_nodes: int, src: np.ndarray, dst: np.ndarray, res: np.ndarray):
        rows = np.concatenate([src, dst])
        order = np.argsort(rows, kind="stable")
        self.deg = np.bincount(rows, minlength=num_nodes).astype(np.int64)
        self._layout(self.deg + np.maximum(2, self.deg // 2))
        pos = self.start[rows[order]] + (np.arange(rows.size) - np.repeat(np.cumsum(self.deg) - self.deg,
                                                                           self.deg))
        self.col[pos] = np.concatenate([dst, src])[order]
        self.res[pos] = np.concatenate([res, res])[order]

    def _layout(self, cap: np.ndarray) -> None:
        self.cap = cap
        self.start = np.concatenate([[0], np.cumsum(cap)[:-1]]).astype(np.int64)
        size = int(cap.sum())
        self.col = np.full(size, -1, dtype=np.int64)
        self.res = np.zeros(size, dtype=np.float64)

    def _grow(self, u: int) -> None:
        old_start, old_col, old_res = self.start, self.col, self.res
        cap = self.cap.copy()
        cap[u] *= 2
        self._layout(cap)
        row = np.repeat(np.arange(self.deg.size), self.deg)
        offset = np.arange(row.size) - np.repeat(np.cumsum(self.deg) - self.deg, self.deg)
        self.col[self.start[row] + offset] = old_col[old_start[row] + offset]
        self.res[self.start[row] + offset] = old_res[old_start[row] + offset]

    def neighbors(self, u: int):
        """``(neighbours, resistances)`` of ``u`` (views into the layout)."""
        s = self.start[u]
        return self.col[s:s + self.deg[u]], self.res[s:s + self.deg[u]]

    def gather(self, nodes: np.ndarray) -> np.ndarray:
        """The neighbours of all ``nodes``, concatenated (with repeats), in one vectorised step."""
        d = self.deg[nodes]
        offset = np.arange(int(d.sum())) - np.repeat(np.cumsum(d) - d, d)
        return self.col[np.repeat(self.start[nodes], d) + offset]

    def add_nodes(self, count: int) -> None:
        """Append ``count`` isolated rows (ids ``deg.size …``), each with the two spare slots a
        row of degree 0 gets at construction; O(nnz) once (callers reserve rows ahead)."""
        cap = np.full(count, 2, dtype=np.int64)
        size = self.col.size
        self.deg = np.concatenate([self.deg, np.zeros(count, dtype=np.int64)])
        self.cap = np.concatenate([self.cap, cap])
        self.start = np.concatenate([self.start, size + np.cumsum(cap) - cap])
        self.col = np.concatenate([self.col, np.full(2 * count, -1, dtype=np.int64)])
        self.res = np.concatenate([self.res, np.zeros(2 * count, dtype=np.float64)])

    def _append(self, u: int, v: int, res: float) -> None:
        if self.deg[u] == self.cap[u]:
            self._grow(u)
        slot = self.start[u] + self.deg[u]
        self.col[slot], self.res[slot] = v, res
        self.deg[u] += 1

    def _drop(self, u: int, v: int) -> None:
        s, d = self.start[u], self.deg[u]
        i = s + int(np.flatnonzero(self.col[s:s + d] == v)[0])
        last = s + d - 1
        self.col[i], self.res[i] = self.col[last], self.res[last]
        self.col[last], self.res[last] = -1, 0.0
        self.deg[u] -= 1

    def add(self, u: int, v: int, res: float) -> None:
        self._append(u, v, res)
        self._append(v, u, res)

    def remove(self, u: int, v: int) -> None:
        self._drop(u, v)
        self._drop(v, u)


def walk_resistance(adj: SlackAdjacency, p: int, q: int, limit: float, num_walks: int, max_steps: int,
                    rng: np.random.Generator, best: np.ndarray) -> float:
    """Resistance of a p–q path below ``limit`` found by non-backtracking random walks, or
    ``inf`` if none was found.

    ``num_walks`` walkers start at p and as many at q; all advance together, one vectorised
    step per iteration, for at most ``max_steps`` steps. A walker at ``u`` that came from
    ``prev`` picks uniformly among the ``deg(u) - 1`` other neighbours (a slot
    ``j < deg - 1`` is drawn and, if it holds ``prev``, replaced by the last slot); one at a
    dead end, or whose accumulated resistance reached ``limit``, stops. ``best`` (``2·n``
    floats, all ``inf``; left so on return) holds the least resistance at which each side
    has reached each node, so a p-walker at ``x`` with resistance ``a`` closes a p–q walk of
    resistance ``a + best_q[x]`` (``best_q[q] = 0``: reaching q itself is the special case).
    The search ends at the first such walk below ``limit``.
    """
    n = adj.deg.size
    side = np.repeat(np.array([0, n], dtype=np.int64), num_walks)  # offset of the walker's own half of best
    cur = np.repeat(np.array([p, q], dtype=np.int64), num_walks)
    prev = np.full(2 * num_walks, -1, dtype=np.int64)
    acc = np.zeros(2 * num_walks, dtype=np.float64)
    best[p], best[n + q] = 0.0, 0.0
    touched = [np.array([p, n + q])]
    start, deg, col, res = adj.start, adj.deg, adj.col, adj.res
    found = math.inf
    for _ in range(max_steps):
        d = deg[cur]
        choices = d - (prev >= 0)
        alive = choices > 0
        if not alive.all():
            side, cur, prev, acc, d, choices = side[alive], cur[alive], prev[alive], acc[alive], d[alive], choices[alive]
            if cur.size == 0:
                break
        base = start[cur]
        j = (rng.random(cur.size) * choices).astype(np.int64)
        j = np.where(col[base + j] == prev, d - 1, j)
        slot = base + j
        prev, cur, acc = cur, col[slot], acc + res[slot]
        ok = acc < limit
        side, cur, prev, acc = side[ok], cur[ok], prev[ok], acc[ok]
        own = side + cur
        np.minimum.at(best, own, acc)
        touched.append(own)
        total = acc + best[(n - side) + cur]
        if (total < limit).any():
            found = float(total.min())
            break
        if cur.size == 0:
            break
    best[np.concatenate(touched)] = math.inf
    return found


def lowest_resistance_path(adj: SlackAdjacency, p: int, q: int) -> Optional[List[int]]:
    """Nodes of the p→q path of least resistance ``Σ 1/w`` (bidirectional Dijkstra: the two
    searches grow by turns from the side whose next node is nearer and stop once the two
    nearest unsettled nodes are together no closer than the best meeting found), or
    ``None`` when ``q`` cannot be reached. Ties are broken by node id, so it is
    deterministic."""
    if p == q:
        return [p]
    dist = ({p: 0.0}, {q: 0.0})
    pred = ({p: -1}, {q: -1})
    heaps = ([(0.0, p)], [(0.0, q)])
    done = (set(), set())
    best, meet = math.inf, -1
    while heaps[0] and heaps[1]:
        if heaps[0][0][0] + heaps[1][0][0] >= best:
            break
        side = 0 if heaps[0][0][0] <= heaps[1][0][0] else 1
        d, u = heapq.heappop(heaps[side])
        if u in done[side]:
            continue
        done[side].add(u)
        mine, other = dist[side], dist[1 - side]
        cols, ress = adj.neighbors(u)
        for v, r in zip(cols.tolist(), ress.tolist()):
            nd = d + r
            if nd < mine.get(v, math.inf):
                mine[v], pred[side][v] = nd, u
                heapq.heappush(heaps[side], (nd, v))
            if v in other and mine[v] + other[v] < best:
                best, meet = mine[v] + other[v], v
    if meet < 0:
        return None
    head, node = [], meet
    while node >= 0:
        head.append(node)
        node = pred[0][node]
    node, tail = pred[1][meet], []
    while node >= 0:
        tail.append(node)
        node = pred[1][node]
    return head[::-1] + tail


def component_labels(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Connected-component label (``0 …``) of every node of the graph with edges ``src, dst``."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    graph = sp.csr_matrix((np.ones(src.size), (src, dst)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def flood_label(adj: SlackAdjacency, label: np.ndarray, seed: int, old: int, new: int) -> int:
    """Give label ``new`` to ``seed`` (labelled ``old``) and to every node reachable from it in
    ``adj`` through nodes labelled ``old``; return how many nodes were relabelled."""
    label[seed] = new
    frontier, count = np.array([seed], dtype=np.int64), 1
    while frontier.size:
        nb = adj.gather(frontier)
        frontier = np.unique(nb[label[nb] == old])
        label[frontier] = new
        count += frontier.size
    return count


def split_label(adj: SlackAdjacency, label: np.ndarray, p: int, q: int, old: int, new_p: int,
                new_q: int) -> Tuple[int, int]:
    """After the component labelled ``old`` fell apart with ``p`` and ``q`` on different sides
    (no path between them in ``adj`` any more), relabel the smaller side.

    Two breadth-first searches grow by turns, always the one that has reached fewer nodes,
    marking their nodes ``new_p`` / ``new_q``; the first to run out of nodes has found its
    whole side, which keeps its new label, while the other search's nodes go back to ``old``.
    The cost is about twice the smaller side. Returns ``(new label, size)`` of that side."""
    labels, counts = (new_p, new_q), [1, 1]
    fronts = [np.array([p], dtype=np.int64), np.array([q], dtype=np.int64)]
    seen: Tuple[List[np.ndarray], List[np.ndarray]] = ([fronts[0]], [fronts[1]])
    label[p], label[q] = new_p, new_q
    while True:
        side = 0 if counts[0] <= counts[1] else 1
        nb = adj.gather(fronts[side])
        nb = np.unique(nb[label[nb] == old])
        if nb.size == 0:
            break
        label[nb] = labels[side]
        counts[side] += nb.size
        seen[side].append(nb)
        fronts[side] = nb
    label[np.concatenate(seen[1 - side])] = old
    return labels[side], counts[side]
