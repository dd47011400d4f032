"""κ(G, H): 1 for a graph with itself; n for a cycle against the path left by removing one edge."""
import pytest
import torch

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
pytest.importorskip("scipy", reason="the graph extra (scipy) is not installed")
from torch_geometric.utils import to_undirected  # noqa: E402

from sparsity_plugins.graph import relative_condition_number  # noqa: E402


def cycle(n):
    src = torch.arange(n)
    return to_undirected(torch.stack([src, (src + 1) % n]), num_nodes=n)


def path(n):
    src = torch.arange(n - 1)
    return to_undirected(torch.stack([src, src + 1]), num_nodes=n)


@pytest.mark.parametrize("n", [3, 12])
def test_kappa_of_a_graph_with_itself_is_one(n):
    assert relative_condition_number(cycle(n), cycle(n), n) == pytest.approx(1.0, abs=1e-6)


def test_kappa_of_cycle_and_path_is_one_plus_the_path_resistance():
    # L_C = L_P + L_e and the effective resistance of e in the path is n - 1, so λ_max = n, λ_min = 1
    n = 12
    assert relative_condition_number(cycle(n), path(n), n) == pytest.approx(n, rel=1e-4)


def test_kappa_refuses_mismatched_graphs():
    with pytest.raises(ValueError, match="outside"):
        relative_condition_number(cycle(5), cycle(6), 5)
    with pytest.raises(ValueError, match="shift"):
        relative_condition_number(cycle(5), cycle(5), 5, shift=0.0)
    one_direction = torch.stack([torch.arange(4), torch.arange(1, 5)])
    with pytest.raises(ValueError, match="directed"):
        relative_condition_number(cycle(5), one_direction, 5)


def test_kappa_falls_back_when_arpack_does_not_converge(monkeypatch):
    import scipy.sparse.linalg as sla

    from sparsity_plugins.graph import spectral

    def never(*args, **kwargs):
        raise sla.ArpackNoConvergence("no convergence", [], [])

    monkeypatch.setattr(sla, "eigsh", never)  # both ARPACK attempts fail: the dense solver answers
    assert spectral.relative_condition_number(cycle(12), path(12), 12) == pytest.approx(12, rel=1e-4)
    monkeypatch.setattr(spectral, "DENSE_FALLBACK_NODES", 5)
    with pytest.raises(sla.ArpackNoConvergence):
        spectral.relative_condition_number(cycle(12), path(12), 12)


# --- exact shortcut for subgraphs, λ_min by Lanczos otherwise --------------------------------------------------------

def random_graph(n, p, seed, weighted):
    """A connected random graph (a path plus G(n, p) edges) as unique pairs ``a < b`` with weights."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a, b = np.triu_indices(n, 1)
    keep = (rng.random(a.size) < p) | (b == a + 1)
    a, b = torch.from_numpy(a[keep]), torch.from_numpy(b[keep])
    w = torch.from_numpy(rng.uniform(0.2, 3.0, a.numel())) if weighted else torch.ones(a.numel(), dtype=torch.float64)
    return a, b, w


def both(a, b, w, n):
    return to_undirected(torch.stack([a, b]), w, num_nodes=n)


def dense_kappa(ei_g, ei_h, n, w_g=None, w_h=None):
    """Reference: all generalized eigenvalues of the pencil (L_G, L_H) by scipy.linalg.eigh."""
    import scipy.linalg

    from sparsity_plugins.graph.spectral import laplacian

    vals = scipy.linalg.eigh(laplacian(ei_g, n, w_g).toarray(), laplacian(ei_h, n, w_h).toarray(), eigvals_only=True)
    return vals[-1] / vals[0]


@pytest.fixture
def lambda_min_calls(monkeypatch):
    """Counts the iterative λ_min solves (the shortcut skips them)."""
    from sparsity_plugins.graph import spectral

    calls, real = [], spectral._smallest
    monkeypatch.setattr(spectral, "_smallest", lambda *args: calls.append(1) or real(*args))
    return calls


@pytest.mark.parametrize("weighted", [False, True])
def test_kappa_of_a_graph_with_itself_is_exactly_one(weighted, lambda_min_calls):
    n = 30
    a, b, w = random_graph(n, 0.2, 0, weighted)
    ei, ew = both(a, b, w, n)
    perm = torch.randperm(ei.size(1), generator=torch.Generator().manual_seed(0))  # same edges, another order
    assert relative_condition_number(ei, ei[:, perm], n, ew, ew[perm]) == 1.0
    if not weighted:  # no weights and explicit unit weights are the same graph
        assert relative_condition_number(ei, ei, n, None, torch.ones(ei.size(1))) == 1.0
    assert relative_condition_number(cycle(12), cycle(12), 12) == 1.0
    assert lambda_min_calls == []


@pytest.mark.parametrize("seed", range(6))
def test_subgraph_shortcut_agrees_with_the_full_solve(seed, monkeypatch, lambda_min_calls):
    from sparsity_plugins.graph import spectral

    n = [12, 25, 40, 60, 80, 120][seed]
    a, b, w = random_graph(n, 0.25, seed, weighted=seed % 2 == 1)
    keep = torch.rand(a.numel(), generator=torch.Generator().manual_seed(seed)) < 0.5
    keep[b == a + 1] = True  # H keeps the spanning path: connected, κ moderate
    ei_g, w_g = both(a, b, w, n)
    ei_h, w_h = both(a[keep], b[keep], w[keep], n)
    fast = relative_condition_number(ei_g, ei_h, n, w_g, w_h)
    assert lambda_min_calls == []  # H ⊆ G with G's weights: λ_min = 1 without a solve
    monkeypatch.setattr(spectral, "_dominated", lambda small, big: False)
    full = relative_condition_number(ei_g, ei_h, n, w_g, w_h)
    assert lambda_min_calls == [1]
    assert fast == pytest.approx(full, rel=1e-6)
    assert fast == pytest.approx(dense_kappa(ei_g, ei_h, n, w_g, w_h), rel=1e-6)
    assert full == pytest.approx(dense_kappa(ei_g, ei_h, n, w_g, w_h), rel=1e-6)


def test_subgraph_with_a_heavier_edge_takes_the_full_solve(lambda_min_calls):
    n = 40
    a, b, w = random_graph(n, 0.2, 7, weighted=True)
    keep = (torch.arange(a.numel()) % 2 == 0) | (b == a + 1)
    w_h = w[keep].clone()
    w_h[3] *= 5.0  # one edge of H heavier than in G: L_G − L_H is no longer PSD
    ei_g, ew_g = both(a, b, w, n)
    ei_h, ew_h = both(a[keep], b[keep], w_h, n)
    kappa = relative_condition_number(ei_g, ei_h, n, ew_g, ew_h)
    assert lambda_min_calls == [1]
    reference = dense_kappa(ei_g, ei_h, n, ew_g, ew_h)
    assert kappa == pytest.approx(reference, rel=1e-6)
    same_weights = relative_condition_number(ei_g, ei_h, n, ew_g, both(a[keep], b[keep], w[keep], n)[1])
    assert kappa > same_weights  # λ_min < 1 now: the heavier edge is visible in κ


def test_subgraph_with_lighter_edges_is_still_exact(lambda_min_calls):
    # A_H ≤ A_G entrywise still makes L_G − L_H a Laplacian with nonnegative weights
    n = 40
    a, b, w = random_graph(n, 0.2, 8, weighted=True)
    keep = (torch.arange(a.numel()) % 3 == 0) | (b == a + 1)
    ei_g, ew_g = both(a, b, w, n)
    ei_h, ew_h = both(a[keep], b[keep], 0.5 * w[keep], n)
    kappa = relative_condition_number(ei_g, ei_h, n, ew_g, ew_h)
    assert lambda_min_calls == []
    assert kappa == pytest.approx(dense_kappa(ei_g, ei_h, n, ew_g, ew_h), rel=1e-6)


def test_kappa_is_symmetric_and_matches_the_dense_pencil_for_a_reweighted_sparsifier():
    import numpy as np

    n = 200
    a, b, w = random_graph(n, 0.05, 3, weighted=False)
    rng = np.random.default_rng(3)
    keep = torch.from_numpy(rng.random(a.numel()) < 0.4) | (b == a + 1)
    w_h = torch.from_numpy(rng.uniform(0.5, 2.0, int(keep.sum())))  # neither graph dominates the other
    ei_g, ew_g = both(a, b, w, n)
    ei_h, ew_h = both(a[keep], b[keep], w_h, n)
    reference = dense_kappa(ei_g, ei_h, n, ew_g, ew_h)
    assert relative_condition_number(ei_g, ei_h, n, ew_g, ew_h) == pytest.approx(reference, rel=1e-6)
    assert relative_condition_number(ei_h, ei_g, n, ew_h, ew_g) == pytest.approx(reference, rel=1e-6)


def test_kappa_of_a_uniformly_heavier_complete_graph():
    # L_H = c·L_G off the shift: every non-constant vector has λ = (n + s)/(c·n + s), the constant one 1
    n, c, s = 10, 3.0, 1e-6
    a, b = torch.triu_indices(n, n, 1)
    ei, w = both(a, b, torch.ones(a.numel(), dtype=torch.float64), n)
    assert relative_condition_number(ei, ei, n, w, c * w, shift=s) == pytest.approx((c * n + s) / (n + s), rel=1e-9)


def test_envelope_bounds_the_fill_exactly_on_a_path_and_a_clique():
    from sparsity_plugins.graph.spectral import _envelope, laplacian

    assert _envelope(laplacian(path(9), 9)) == 8  # tridiagonal in its own order
    a, b = torch.triu_indices(7, 7, 1)
    assert _envelope(laplacian(to_undirected(torch.stack([a, b]), num_nodes=7), 7)) == 7 * 6 // 2


@pytest.mark.parametrize("route", ["lanczos", "shift-invert"])
def test_both_lambda_min_routes_match_the_dense_pencil(route, monkeypatch):
    import numpy as np

    from sparsity_plugins.graph import spectral

    # a 15 x 15 lattice against a reweighted comb (spanning tree): κ in the thousands
    side = 15
    n = side * side
    ids = torch.arange(n).view(side, side)
    rows = torch.stack([ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)])
    cols = torch.stack([ids[:-1, :].reshape(-1), ids[1:, :].reshape(-1)])
    ei_g = to_undirected(torch.cat([rows, cols], 1), num_nodes=n)
    comb = torch.cat([rows, torch.stack([ids[:-1, 0], ids[1:, 0]])], 1)
    w = torch.from_numpy(np.random.default_rng(0).uniform(0.5, 2.0, comb.size(1)))
    ei_h, w_h = to_undirected(comb, w, num_nodes=n)
    if route == "lanczos":
        monkeypatch.setattr(spectral, "FACTOR_ENVELOPE_BUDGET", 0)
    else:
        monkeypatch.setattr(spectral, "LANCZOS_MAX_PREDICTED_STEPS", 0)
        monkeypatch.setattr(spectral, "_lanczos_smallest", None)  # would fail if called
    kappa = relative_condition_number(ei_g, ei_h, n, None, w_h)
    reference = dense_kappa(ei_g, ei_h, n, None, w_h)
    assert reference > 100
    assert kappa == pytest.approx(reference, rel=1e-6)
