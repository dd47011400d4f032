"""TEDDY: exact scores and kept edges on hand-built graphs; undirected symmetry, self-loops,
aligned edge attributes, HeteroData, bad input."""
import math

import pytest
import torch

pyg = pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from torch_geometric.data import Data, HeteroData  # noqa: E402

from sparsity_plugins.graph import TEDDY, teddy_edge_scores, teddy_mask  # noqa: E402

# A star (hub 0 with leaves 1, 2, 3) plus a tail 3-4: undirected, both directions stored.
PAIRS = [(0, 1), (0, 2), (0, 3), (3, 4)]
EDGE_INDEX = torch.tensor([[a for a, b in PAIRS] + [b for a, b in PAIRS], [b for a, b in PAIRS] + [a for a, b in PAIRS]])


def expected_scores():
    deg = {0: 3, 1: 1, 2: 1, 3: 2, 4: 1}
    nbrs = {0: [1, 2, 3], 1: [0], 2: [0], 3: [0, 4], 4: [3]}
    g = {i: sum(deg[k] ** -0.5 for k in nbrs[i]) / deg[i] for i in deg}
    return {(i, j): (g[i] / deg[i]) * (g[j] / deg[j]) for i in deg for j in nbrs[i]}


def test_scores_match_the_formula_exactly():
    scores = teddy_edge_scores(EDGE_INDEX, 5)
    exp = expected_scores()
    for e, (i, j) in enumerate(EDGE_INDEX.t().tolist()):
        assert scores[e].item() == pytest.approx(exp[(i, j)], rel=1e-12)
    # the hub's edges score lowest: (0,3) < (0,1) = (0,2) < (3,4)
    pair = {p: exp[p] for p in PAIRS}
    assert pair[(0, 3)] < pair[(0, 1)] == pair[(0, 2)] < pair[(3, 4)]


def test_half_of_the_undirected_edges_kept_symmetrically():
    mask = teddy_mask(EDGE_INDEX, 0.5, 5, undirected=True)
    kept = {tuple(e) for e in EDGE_INDEX.t()[mask].tolist()}
    # 2 of 4 undirected edges: (3,4) first, then (0,1) (tie with (0,2) broken by edge order)
    assert kept == {(3, 4), (4, 3), (0, 1), (1, 0)}


def test_self_loops_are_never_removed_and_not_counted():
    ei = torch.cat([EDGE_INDEX, torch.tensor([[2, 4], [2, 4]])], dim=1)
    scores = teddy_edge_scores(ei, 5)
    assert math.isinf(scores[-1]) and math.isinf(scores[-2])
    assert torch.allclose(scores[:-2], teddy_edge_scores(EDGE_INDEX, 5))  # degrees ignore self-loops
    mask = teddy_mask(ei, 0.75, 5, undirected=True)
    assert mask[-2:].all() and int(mask[:-2].sum()) == 2  # one undirected edge + the loops


def test_transform_keeps_edge_attributes_aligned_and_reports_the_mask():
    attr = torch.arange(EDGE_INDEX.size(1), dtype=torch.float).unsqueeze(1)
    data = Data(x=torch.randn(5, 3), edge_index=EDGE_INDEX, edge_attr=attr, edge_weight=attr.squeeze(1) * 2)
    out = TEDDY(sparsity=0.5)(data)
    mask = out.teddy_kept
    assert torch.equal(out.edge_index, EDGE_INDEX[:, mask])
    assert torch.equal(out.edge_attr, attr[mask]) and torch.equal(out.edge_weight, attr.squeeze(1)[mask] * 2)
    assert pyg.utils.is_undirected(out.edge_index)
    assert data.edge_index.size(1) == 8  # the input is not modified
    assert repr(TEDDY(0.5)) == "TEDDY(sparsity=0.5, undirected=None)"


def test_hetero_data_sparsifies_every_edge_type():
    data = HeteroData()
    data["paper"].num_nodes = 3
    data["author"].num_nodes = 2
    data["author", "writes", "paper"].edge_index = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 2]])
    data["paper", "cites", "paper"].edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    t = TEDDY(sparsity=0.5)
    out = t(data)
    w = out["author", "writes", "paper"].edge_index
    # bipartite degrees: author0 3, author1 1; paper0 1, paper1 1, paper2 2 -> (1, 2) scores highest
    assert w.size(1) == 2 and [1, 2] in w.t().tolist()
    c = out["paper", "cites", "paper"].edge_index
    assert c.size(1) == 2 and pyg.utils.is_undirected(c)
    assert set(t.masks) == {("author", "writes", "paper"), ("paper", "cites", "paper")}


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[0, 1], [1, 7]]), "outside"),
    (torch.tensor([[0, 1], [1, 0]], dtype=torch.int32), "torch.long"),
    (torch.tensor([0, 1, 2]), "shape"),
    (torch.zeros(2, 0, dtype=torch.long), "empty"),
])
def test_bad_edge_index_is_a_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        teddy_edge_scores(bad, 5)


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1, True])
def test_sparsity_outside_0_1_is_refused(sparsity):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        TEDDY(sparsity)


def test_directed_graph_passed_as_undirected_is_refused():
    with pytest.raises(ValueError, match="directed"):
        teddy_mask(torch.tensor([[0, 1], [1, 2]]), 0.5, 3, undirected=True)


def test_distillation_loss_is_the_tempered_kl_to_the_teacher():
    from sparsity_plugins.graph import distillation_loss
    teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    assert distillation_loss(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.zeros(2, 2, requires_grad=True)
    loss = distillation_loss(student, teacher, temperature=2.0)
    q = torch.softmax(teacher / 2, dim=1)
    expected = 4 * (q * (q.log() - math.log(0.5))).sum() / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert student.grad is not None
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, temperature=0)


def test_one_rounding_rule_for_every_edge_sparsifier():
    """7 undirected edges, 30% removed: 4.9 may stay, so 4 stay in TEDDY and in the core's
    global ranking (which UGS's rounds use) alike."""
    from sparsity_core.allocators import Budget, GlobalRank
    from sparsity_core.allocators.budget import kept_count
    from sparsity_core.targets import Target

    path = torch.tensor([[i for i in range(7)] + [i + 1 for i in range(7)],
                         [i + 1 for i in range(7)] + [i for i in range(7)]])
    mask = teddy_mask(path, 0.3, 8, undirected=True)
    assert int(mask.sum()) == 2 * 4 == 2 * kept_count(7, 0.3)
    edges = Target("ugs_edge_mask.mask", shape=(7,))
    keep = GlobalRank(min_keep_units=0).allocate([edges], {edges.name: torch.arange(7.0)}, Budget(sparsity=0.3))
    assert keep == {edges.name: 4}
