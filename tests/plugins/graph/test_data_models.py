"""Graph data loaders and reference models: exact generated graphs, offline Planetoid /
TUDataset from a local source folder, sparse input dropout, bad input."""
import os

import pytest
import torch

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from torch_geometric.utils import is_undirected  # noqa: E402

from sparsity_plugins.graph import (GCN, GIN, grid_graph, karate_club, node_datamodule, planetoid,  # noqa: E402
                                    sbm_graph, sparse_input_dropout, tudataset)

from ...shared_data import SHARED_DATA as SHARED  # noqa: E402


def test_grid_graph_has_exactly_the_four_neighbour_edges():
    g = grid_graph(2, 3)
    pairs = {tuple(sorted(e)) for e in g.edge_index.t().tolist()}
    assert pairs == {(0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (1, 4), (2, 5)}
    assert g.edge_index.size(1) == 14 and is_undirected(g.edge_index)
    assert g.y.tolist() == [0, 1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="two nodes"):
        grid_graph(1, 1)


def test_sbm_graph_is_seeded_undirected_and_labelled_by_block():
    a, b = sbm_graph((5, 7), 0.5, 0.1, seed=3), sbm_graph((5, 7), 0.5, 0.1, seed=3)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    assert a.y.tolist() == [0] * 5 + [1] * 7 and is_undirected(a.edge_index)
    with pytest.raises(ValueError, match="p_in"):
        sbm_graph((5,), 1.5, 0.1)
    with pytest.raises(ValueError, match="block_sizes"):
        sbm_graph((5, 0))


def test_karate_club_loads_offline():
    g = karate_club()
    assert g.num_nodes == 34 and g.edge_index.size(1) == 156


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "planetoid", "Cora", "raw")),
                    reason="../shared/data is not present")
def test_cora_and_mutag_load_from_a_local_source_without_download(tmp_path):
    cora = planetoid("Cora", root=str(tmp_path / "p"), source=os.path.join(SHARED, "planetoid"))[0]
    assert (cora.num_nodes, cora.edge_index.size(1), cora.num_features) == (2708, 10556, 1433)
    assert int(cora.train_mask.sum()) == 140
    mutag = tudataset("MUTAG", root=str(tmp_path / "t"), source=os.path.join(SHARED, "tudataset"))
    assert len(mutag) == 188
    with pytest.raises(FileNotFoundError, match="must hold"):
        planetoid("CiteSeer", root=str(tmp_path / "p"), source=os.path.join(SHARED, "planetoid"))


def test_sparse_input_dropout_keeps_zeros_and_rescales_survivors():
    torch.manual_seed(0)
    x = torch.zeros(200, 50)
    x[::2, ::5] = 3.0
    out = sparse_input_dropout(x, 0.5, training=True)
    assert torch.all(out[x == 0] == 0)
    survivors = out[x != 0]
    assert set(survivors.unique().tolist()) <= {0.0, 6.0}
    assert abs(float((survivors > 0).float().mean()) - 0.5) < 0.05  # 1000 draws
    assert sparse_input_dropout(x, 0.5, training=False) is x


def test_models_accept_the_graph_and_refuse_weights_gin_cannot_use():
    g = grid_graph(3, 3)
    assert GCN(4, 2, hidden=8)(g.x, g.edge_index, torch.ones(g.edge_index.size(1))).shape == (9, 2)
    gin = GIN(4, 2, hidden=8, num_layers=3)
    assert gin(g.x, g.edge_index).shape == (9, 2) and len(gin.convs) == 3
    with pytest.raises(ValueError, match="unweighted"):
        gin(g.x, g.edge_index, torch.ones(g.edge_index.size(1)))


def test_node_datamodule_needs_split_masks():
    with pytest.raises(ValueError, match="train_mask"):
        node_datamodule(grid_graph(2, 2))


def test_graph_gps_classifies_a_batch_and_checks_its_heads():
    from torch_geometric.data import Batch, Data

    from sparsity_plugins.graph import GraphGPS

    graphs = [Data(x=torch.randn(n, 5), edge_index=grid_graph(1, n).edge_index, edge_attr=torch.randn(2 * (n - 1), 2))
              for n in (3, 4)]
    b = Batch.from_data_list(graphs)
    net = GraphGPS(5, 2, 3, channels=8, layers=2, heads=2)
    assert net(b.x, b.edge_index, b.batch, b.edge_attr).shape == (2, 3)
    with pytest.raises(ValueError, match="divisible"):
        GraphGPS(5, 2, 3, channels=10, heads=4)
