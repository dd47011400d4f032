"""Neighbour sampling without pyg-lib: exact checks of UniformNeighborSampler against the graph
(edges exist, fan-outs, all neighbours at low degree, seeds first, edge ids, determinism),
sparsified graphs feeding the loader, NodeClassifier on mini-batches (with weight sparsity)
and bad input."""
import logging
import warnings

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
import pytorch_lightning as pl  # noqa: E402
from torch_geometric.data import Data, HeteroData  # noqa: E402
from torch_geometric.loader import NeighborLoader, NodeLoader  # noqa: E402
from torch_geometric.nn import SAGEConv  # noqa: E402
from torch_geometric.utils import dropout_edge  # noqa: E402

from sparsity_core import SparsityCallback  # noqa: E402
from sparsity_plugins.graph import (GCN, TEDDY, NodeClassifier, UniformNeighborSampler, neighbor_loader,  # noqa: E402
                                    sampler_backend, sbm_graph)
from sparsity_plugins.graph import sampling  # noqa: E402

N = 40


def graph():
    """A directed graph without duplicate edges, in-degrees 0..20 (node 0: a hub of 20 in-edges,
    node 39: none), an edge feature and weight per edge."""
    g = torch.Generator().manual_seed(0)
    dst = torch.cat([torch.zeros(20, dtype=torch.long), torch.randint(1, N - 1, (150,), generator=g)])
    src = torch.randint(0, N, (dst.numel(),), generator=g)
    key = torch.unique(src * N + dst)
    key = key[torch.randperm(key.numel(), generator=g)]  # not sorted by destination
    edge_index = torch.stack([key // N, key % N])
    e = edge_index.size(1)
    return Data(x=torch.randn(N, 4, generator=g), edge_index=edge_index, y=torch.arange(N) % 3,
                edge_weight=torch.arange(e, dtype=torch.float), edge_attr=torch.arange(2 * e).view(e, 2))


def in_edges(data, node):
    return set(torch.nonzero(data.edge_index[1] == node).flatten().tolist())


def hops(out):
    """Per hop: (edge slice, frontier local ids)."""
    e0, n0, res = 0, 0, []
    for h, ne in enumerate(out.num_sampled_edges):
        res.append((slice(e0, e0 + ne), range(n0, n0 + out.num_sampled_nodes[h])))
        e0, n0 = e0 + ne, n0 + out.num_sampled_nodes[h]
    return res


def test_edges_exist_ids_map_and_fanouts_are_exact():
    data = graph()
    seeds = torch.tensor([0, 5, 17, 39, 5])
    torch.manual_seed(1)
    out = UniformNeighborSampler(data, [3, 2]).sample(seeds)
    # every sampled edge is edge `edge` of the graph, in PyG's direction: row = source, col = destination
    assert torch.equal(torch.stack([out.node[out.row], out.node[out.col]]), data.edge_index[:, out.edge])
    assert out.edge.unique().numel() == out.edge.numel()  # without replacement
    assert sum(out.num_sampled_nodes) == out.node.numel() and sum(out.num_sampled_edges) == out.edge.numel()
    for (edges, frontier), k in zip(hops(out), [3, 2]):
        col = out.col[edges]
        assert set(col.tolist()) <= set(frontier)
        for local in frontier:
            mine = set(out.edge[edges][col == local].tolist())
            incident = in_edges(data, int(out.node[local]))
            assert mine <= incident and len(mine) == min(k, len(incident))  # <= k, all when degree <= k
    assert len(set(out.edge[hops(out)[0][0]][out.col[hops(out)[0][0]] == 0].tolist())) == 3  # the hub: 3 of 20


def test_seeds_first_then_new_nodes_in_order_of_appearance():
    data = graph()
    seeds = torch.tensor([3, 0, 8, 3])
    out = UniformNeighborSampler(data, [-1, 4, 1]).sample(seeds)
    assert torch.equal(out.node[:4], seeds) and out.num_sampled_nodes[0] == 4
    assert out.node[4:].unique().numel() == out.node.numel() - 4 and not set(out.node[4:].tolist()) & {0, 3, 8}
    known = set(seeds.tolist())
    for h, (edges, _) in enumerate(hops(out)):
        expected = []
        for v in out.node[out.row[edges]].tolist():
            if v not in known:
                known.add(v)
                expected.append(v)
        start = sum(out.num_sampled_nodes[:h + 1])
        assert out.node[start:start + out.num_sampled_nodes[h + 1]].tolist() == expected
    # -1 takes every in-edge of every seed (duplicate seeds sample for each position; local id = first)
    first = hops(out)[0][0]
    assert sorted(out.edge[first][out.col[first] == 1].tolist()) == sorted(in_edges(data, 0))
    assert torch.equal(out.edge[first][out.col[first] == 0], out.edge[first][out.col[first] == 3])
    assert set(out.row.tolist()) <= set(range(out.node.numel())) and 3 not in out.row.tolist()


def test_deterministic_under_a_seed_and_uniform():
    data = graph()
    sampler = UniformNeighborSampler(data, [3])
    torch.manual_seed(7)
    a = sampler.sample(torch.tensor([0]))
    torch.manual_seed(7)
    b = sampler.sample(torch.tensor([0]))
    assert all(torch.equal(x, y) for x, y in [(a.node, b.node), (a.row, b.row), (a.edge, b.edge)])
    hub = torch.tensor(sorted(in_edges(data, 0)))
    assert hub.numel() == 14
    for k in (3, 8):  # degree > 2k: drawn slot by slot; k < degree <= 2k: random keys over its edges
        # 10000 copies of the hub as seeds: independent draws of k of its in-edges each (10% band: > 4 sd)
        out = UniformNeighborSampler(data, [k]).sample(torch.zeros(10000, dtype=torch.long))
        per_seed = out.edge.view(10000, k)  # grouped by seed, k distinct edges each
        assert (per_seed.sort(1).values.diff(dim=1) > 0).all()
        counts = torch.bincount(out.edge, minlength=data.edge_index.size(1)).float()
        expected = 10000 * k / hub.numel()
        assert counts.sum() == counts[hub].sum() == 10000 * k
        assert counts[hub].min() > 0.9 * expected and counts[hub].max() < 1.1 * expected
    gen = UniformNeighborSampler(data, [3], generator=torch.Generator().manual_seed(3))
    assert torch.equal(gen.sample(torch.tensor([0])).edge, UniformNeighborSampler(
        data, [3], generator=torch.Generator().manual_seed(3)).sample(torch.tensor([0])).edge)


def test_loader_batches_carry_pyg_attributes_and_edge_features():
    data = graph()
    assert sampler_backend() in ("pyg-lib", "torch-sparse", "torch")
    loader = neighbor_loader(data, [2, 2], batch_size=6, shuffle=True, input_nodes=torch.arange(N) % 2 == 0,
                             backend="torch")
    assert isinstance(loader, NodeLoader) and isinstance(loader.node_sampler, UniformNeighborSampler)
    seen = []
    for batch in loader:
        assert torch.equal(batch.n_id[:batch.batch_size], batch.input_id)  # bool mask: input_id = node ids
        assert torch.equal(batch.x, data.x[batch.n_id]) and torch.equal(batch.y, data.y[batch.n_id])
        assert torch.equal(batch.edge_weight, data.edge_weight[batch.e_id])
        assert torch.equal(batch.edge_attr, data.edge_attr[batch.e_id])
        assert torch.equal(batch.n_id[batch.edge_index], data.edge_index[:, batch.e_id])
        assert len(batch.num_sampled_nodes) == 3 and sum(batch.num_sampled_edges) == batch.e_id.numel()
        seen += batch.input_id.tolist()
    assert sorted(seen) == list(range(0, N, 2))


def test_backend_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(sampling, "_announced", set())
    with caplog.at_level(logging.INFO, logger="sparsity_plugins.graph.sampling"):
        neighbor_loader(graph(), [2], batch_size=4, backend="torch")
        neighbor_loader(graph(), [2], batch_size=4, backend="torch")
    assert [r.getMessage() for r in caplog.records] == [
        "neighbor_loader: PyG NodeLoader with the pure-torch UniformNeighborSampler (no pyg-lib / torch-sparse)"]
    monkeypatch.setattr(sampling, "sampler_backend", lambda: "pyg-lib")  # as if pyg-lib were installed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(neighbor_loader(graph(), [2], batch_size=4), NeighborLoader)
    monkeypatch.setattr(sampling, "sampler_backend", lambda: "torch")
    assert isinstance(neighbor_loader(graph(), [2], batch_size=4), NodeLoader)


@pytest.mark.parametrize("method", ["teddy", "random"])
def test_sparsified_graph_feeds_the_loader_and_only_its_edges_appear(method):
    data = sbm_graph((30, 30), p_in=0.3, p_out=0.05)
    torch.manual_seed(0)
    if method == "teddy":
        sparse = TEDDY(sparsity=0.5)(data.clone())
    else:
        sparse = data.clone()
        sparse.edge_index = dropout_edge(data.edge_index, p=0.5, force_undirected=True)[0]
    assert 0 < sparse.edge_index.size(1) < data.edge_index.size(1)
    kept = set((sparse.edge_index[0] * 60 + sparse.edge_index[1]).tolist())
    removed = set((data.edge_index[0] * 60 + data.edge_index[1]).tolist()) - kept
    sampled = set()
    for batch in neighbor_loader(sparse, [5, 5], batch_size=16, shuffle=True, backend="torch"):
        ei = batch.n_id[batch.edge_index]
        assert torch.equal(ei, sparse.edge_index[:, batch.e_id])
        sampled |= set((ei[0] * 60 + ei[1]).tolist())
    assert sampled <= kept and not sampled & removed and len(sampled) > len(kept) // 2


def test_node_classifier_loss_on_the_seeds_and_distillation():
    data = graph()
    data.train_mask = torch.arange(N) < 30
    torch.manual_seed(0)
    teacher = torch.randn(N, 3)
    module = NodeClassifier(GCN(4, 3, hidden=8, dropout=0.0), distill_from=teacher, distill_weight=0.5)
    batch = next(iter(neighbor_loader(data, [3, 3], batch_size=8, input_nodes=torch.arange(10, 18),
                                      backend="torch")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = module.training_step(batch, 0)
    out = module.model(batch.x, batch.edge_index)[:8]
    ce = F.cross_entropy(out, data.y[10:18])
    kl = F.kl_div(F.log_softmax(out, -1), F.softmax(teacher[10:18], -1), reduction="batchmean")
    assert torch.allclose(loss, ce + 0.5 * kl)
    data.train_mask[10:18] = False
    batch = next(iter(neighbor_loader(data, [3], batch_size=8, input_nodes=torch.arange(10, 18), backend="torch")))
    with pytest.raises(ValueError, match="no training node among its seeds"):
        module.training_step(batch, 0)


class SAGE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = SAGEConv(4, 16), SAGEConv(16, 3)

    def forward(self, x, edge_index):
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)


def test_mini_batch_fit_with_weight_sparsity_and_exact_validation():
    data = sbm_graph((40, 40, 40), p_in=0.2, p_out=0.02, num_features=4, noise=1.0)
    idx = torch.arange(data.num_nodes)
    data.train_mask, data.val_mask, data.test_mask = idx % 3 == 0, idx % 3 == 1, idx % 3 == 2
    torch.manual_seed(0)
    module = NodeClassifier(SAGE())
    train = neighbor_loader(data, [4, 3], batch_size=16, shuffle=True, input_nodes=data.train_mask, backend="torch")
    val = neighbor_loader(data, [-1, -1], batch_size=32, input_nodes=data.val_mask | data.test_mask, backend="torch")
    cb = SparsityCallback(0.5, update_every=1)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[cb])
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    assert trainer.global_step == 6  # 40 training seeds, 16 per batch, 2 epochs
    masks = cb.controller.masks
    assert len(masks) >= 2
    pruned = 0
    for name in masks:
        weight = module.get_parameter(name)
        assert torch.all(weight[masks[name] == 0] == 0)  # the masks hold after every step
        pruned += int((masks[name] == 0).sum())
    assert pruned / sum(masks[n].numel() for n in masks) == pytest.approx(0.5, abs=0.01)
    # with every neighbour sampled, a 2-layer mean-aggregating model sees exactly its full-graph inputs
    module.eval()
    with torch.no_grad():
        pred = module(data.x, data.edge_index).argmax(-1)
    acc = [int((pred[m] == data.y[m]).sum()) / int(m.sum()) for m in (data.val_mask, data.test_mask)]
    assert [h[0] for h in module.history] == [3, 6]
    assert module.history[-1][1:] == tuple(acc)


def test_bad_input_raises_before_sampling():
    data = graph()
    for bad in ([], [2, -2], "23", [1.5], None):
        with pytest.raises(ValueError, match="num_neighbors"):
            neighbor_loader(data, bad, batch_size=4)
    for bad in (0, -3, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            neighbor_loader(data, [2], batch_size=bad)
    with pytest.raises(ValueError, match=r"input_nodes must lie in \[0, 40\)"):
        neighbor_loader(data, [2], batch_size=4, input_nodes=torch.tensor([0, 40]))
    with pytest.raises(ValueError, match="40 entries"):
        neighbor_loader(data, [2], batch_size=4, input_nodes=torch.ones(39, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no node"):
        neighbor_loader(data, [2], batch_size=4, input_nodes=torch.zeros(N, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"seed nodes must lie in \[0, 40\)"):
        UniformNeighborSampler(data, [2]).sample(torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="replace"):
        neighbor_loader(data, [2], batch_size=4, replace=True, backend="torch")
    with pytest.raises(ValueError, match="backend"):
        neighbor_loader(data, [2], batch_size=4, backend="cuda")
    with pytest.raises(ValueError, match="homogeneous"):
        UniformNeighborSampler(HeteroData(), [2])
    if sampler_backend() == "torch":
        with pytest.raises(ImportError, match="pyg-lib or torch-sparse"):
            neighbor_loader(data, [2], batch_size=4, backend="pyg")


def test_teddy_undirected_check_agrees_with_pyg():
    """TEDDY decides undirectedness with one sort (pair balance); PyG's is_undirected agrees."""
    from torch_geometric.utils import is_undirected, to_undirected

    from sparsity_plugins.graph.teddy import _pairs, teddy_mask

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        ei = torch.randint(0, 6, (2, 12), generator=g)
        if trial % 2:
            ei = to_undirected(ei, num_nodes=6)
        if trial % 4 == 1:  # a multi-edge in both directions keeps it undirected; in one direction it does not
            ei = torch.cat([ei, ei[:, :1], ei[:, :1].flip(0)] if trial % 8 == 1 else [ei, ei[:, :1]], dim=1)
        assert _pairs(ei, 6)[2] == is_undirected(ei, num_nodes=6), ei
        auto = teddy_mask(ei, 0.5, 6, undirected=None)
        assert torch.equal(auto, teddy_mask(ei, 0.5, 6, undirected=is_undirected(ei, num_nodes=6)))


def test_mini_batches_without_masks_count_every_seed():
    data = graph()  # no masks: every seed of the training loader trains, of the validation loader validates
    module = NodeClassifier(GCN(4, 3, hidden=8, dropout=0.0))
    batch = next(iter(neighbor_loader(data, [2, 2], batch_size=8, backend="torch")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = module.training_step(batch, 0)
        module.on_validation_epoch_start()
        module.validation_step(batch, 0)
        module.on_validation_epoch_end()
    out = module.model(batch.x, batch.edge_index)[:8]
    assert torch.allclose(loss, F.cross_entropy(out, data.y[:8]))
    step, val, test = module.history[-1]
    assert val == int((out.argmax(-1) == data.y[:8]).sum()) / 8 and test != test  # no test node: nan
    with pytest.raises(ValueError, match="a full-graph batch needs train_mask"):
        module.training_step(data, 0)
