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
