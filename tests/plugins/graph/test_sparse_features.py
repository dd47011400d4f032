"""GCN with CSR features in its first layer: outputs and weight gradients equal the dense
path's (same dropout draws), the cached X^T follows the values, Lightning full-graph batches,
bad input refused before anything changes."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")

from sparsity_plugins.graph import GCN, csr_linear, sbm_graph, sparse_input_dropout  # noqa: E402
from sparsity_plugins.graph.sparse_features import CSRTranspose, as_csr  # noqa: E402


def tiny_graph():
    data = sbm_graph((6, 6, 6), 0.5, 0.1, num_features=12, seed=1)
    g = torch.Generator().manual_seed(0)
    data.x = data.x * (torch.rand(data.x.shape, generator=g) < 0.2)  # bag-of-words-like: mostly zeros
    return data


def pair(**kw):
    torch.manual_seed(0)
    dense = GCN(12, 3, hidden=8, **kw)
    torch.manual_seed(0)
    sparse = GCN(12, 3, hidden=8, sparse_features=True, **kw)
    return dense, sparse


def test_outputs_and_weight_gradients_equal_the_dense_path():
    data = tiny_graph()
    dense, sparse = pair()
    assert torch.equal(dense.conv1.lin.weight, sparse.conv1.lin.weight)  # same draws at construction
    assert torch.equal(dense.conv2.lin.weight, sparse.conv2.lin.weight)
    xs = data.x.to_sparse_csr()
    outs = []
    for model, x in ((dense, data.x), (sparse, xs)):
        torch.manual_seed(3)  # the same dropout draws on both paths
        out = model(x, data.edge_index)
        F.cross_entropy(out, data.y).backward()
        outs.append(out.detach())
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    assert not torch.allclose(outs[0], dense.eval()(data.x, data.edge_index), atol=1e-3)  # dropout did act
    for name in ("conv1.lin.weight", "conv1.bias", "conv2.lin.weight"):
        gd, gs = dense.get_parameter(name).grad, sparse.get_parameter(name).grad
        assert gs.layout == torch.strided and gd.abs().max() > 0
        assert torch.allclose(gd, gs, atol=1e-5), name
    sparse.eval()
    assert torch.allclose(dense(data.x, data.edge_index), sparse(xs, data.edge_index), atol=1e-5)
    assert torch.allclose(sparse(data.x, data.edge_index), sparse(xs, data.edge_index), atol=1e-6)  # converted


def test_csr_linear_gradient_is_exact_and_the_cached_transpose_follows_new_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g) * (torch.rand(7, 5, generator=g) < 0.4)
    w = torch.randn(3, 5, generator=g, requires_grad=True)
    grad_out = torch.randn(7, 3, generator=g)
    transpose = CSRTranspose()
    xs = x.to_sparse_csr()
    for values in (xs.values(), xs.values() * 2.0 - 1.0):  # same pattern, new values: the cache is reused
        xv = torch.sparse_csr_tensor(xs.crow_indices(), xs.col_indices(), values, xs.shape, check_invariants=False)
        out = csr_linear(xv, w, transpose=transpose)
        (grad_w,) = torch.autograd.grad(out, w, grad_out)
        xd = xv.to_dense()
        assert torch.allclose(out, xd @ w.t(), atol=1e-6)
        assert torch.allclose(grad_w, grad_out.t() @ xd, atol=1e-6)
    assert torch.equal(transpose(xs).to_dense(), x.t())


def test_csr_dropout_draws_what_the_dense_dropout_draws():
    x = tiny_graph().x
    torch.manual_seed(5)
    dense = sparse_input_dropout(x, 0.5, training=True)
    torch.manual_seed(5)
    sparse = sparse_input_dropout(x.to_sparse_csr(), 0.5, training=True)
    assert torch.equal(sparse.to_dense(), dense)


def test_a_sparse_gcn_trains_in_lightning_on_a_csr_graph():
    from sparsity_plugins.graph import NodeClassifier, node_datamodule

    from ...lightning.helpers import trainer

    data = tiny_graph()
    idx = torch.arange(data.num_nodes)
    data.train_mask, data.val_mask, data.test_mask = idx % 3 == 0, idx % 3 == 1, idx % 3 == 2
    data.x = data.x.to_sparse_csr()
    torch.manual_seed(0)
    module = NodeClassifier(GCN(12, 3, hidden=8, sparse_features=True))
    before = module.model.conv1.lin.weight.detach().clone()
    trainer(max_steps=3, limit_val_batches=1).fit(module, datamodule=node_datamodule(data))
    assert not torch.equal(before, module.model.conv1.lin.weight) and module.history


def test_state_dicts_are_interchangeable():
    dense, sparse = pair()
    assert list(dense.state_dict()) == list(sparse.state_dict())
    dense.load_state_dict(sparse.state_dict())


@pytest.mark.parametrize("flag", ["yes", 1, None])
def test_sparse_features_must_be_a_bool(flag):
    with pytest.raises(ValueError, match="sparse_features must be True or False"):
        GCN(12, 3, sparse_features=flag)


def test_bad_inputs_are_refused_before_the_model_changes():
    data = tiny_graph()
    dense, sparse = pair()
    state = {k: v.clone() for k, v in sparse.state_dict().items()}
    with pytest.raises(ValueError, match=r"sparse_features=True"):
        dense(data.x.to_sparse_csr(), data.edge_index)
    xs = data.x.to_sparse_csr().requires_grad_(True)
    with pytest.raises(ValueError, match="sparse_features: x must not require grad"):
        sparse(xs, data.edge_index)
    with pytest.raises(ValueError, match=r"sparse_features: x must be a \[nodes, features\] matrix"):
        sparse(data.x[None], data.edge_index)
    with pytest.raises(ValueError, match="sparse_features: x must be a tensor"):
        as_csr(data.x.tolist())
    assert all(torch.equal(v, state[k]) for k, v in sparse.state_dict().items())
    assert sparse.conv1._cached_edge_index is None
