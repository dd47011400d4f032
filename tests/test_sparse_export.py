"""Sparse export: per-layer choice by measurement, outputs equal to the dense masked model,
fallback to dense where a format is not faster, and bad input refused before any change."""
import pytest
import torch
from torch import nn

from sparsity_core.sparse_export import SparseConv1x1, SparseLinear, _csr32, export_sparse


def masked_linear(out_f, in_f, sparsity, seed=0, bias=True):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_f, in_f, generator=g))
        lin.weight.mul_((torch.rand(out_f, in_f, generator=g) >= sparsity).float())
    return lin


def storage(w, fmt):
    if fmt == "scipy-csr":
        return pytest.importorskip("scipy.sparse").csr_matrix(w.numpy())
    return w.to_sparse_csr() if fmt == "csr" else w.to_sparse_bsr((4, 4))


@pytest.mark.parametrize("fmt", ["csr", "bsr4", "scipy-csr"])
def test_sparse_linear_equals_the_dense_masked_layer(fmt):
    lin = masked_linear(8, 12, 0.9)
    x = torch.randn(2, 3, 12)
    with torch.no_grad():
        out = SparseLinear(storage(lin.weight.detach(), fmt), lin.bias, fmt)(x)
        assert out.shape == (2, 3, 8)
        assert torch.allclose(out, lin(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 12), (1, 1, 12), (5, 12)])
def test_int32_csr_for_one_row_and_many_equals_the_dense_layer(shape):
    lin = masked_linear(8, 12, 0.9, seed=1)
    w = _csr32(lin.weight.detach())
    assert w.crow_indices().dtype == torch.int32 and w.col_indices().dtype == torch.int32
    assert torch.equal(w.to_dense(), lin.weight.detach())
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.allclose(SparseLinear(w, lin.bias, "csr")(x), lin(x), rtol=1e-5, atol=1e-6)


def test_sparse_layers_refuse_gradients_and_scipy_weights_refuse_to_move():
    lin = masked_linear(8, 12, 0.9)
    sparse = SparseLinear(lin.weight.detach().to_sparse_csr(), lin.bias, "csr")
    with pytest.raises(RuntimeError, match="inference"):
        sparse(torch.randn(2, 12, requires_grad=True))
    scipy_layer = SparseLinear(storage(lin.weight.detach(), "scipy-csr"), lin.bias, "scipy-csr")
    scipy_layer.to("cpu")  # a no-op move is fine
    with pytest.raises(RuntimeError, match="export again"):
        scipy_layer.double()


def test_pointwise_conv_runs_as_a_sparse_linear_over_channels():
    conv = nn.Conv2d(6, 4, 1)
    with torch.no_grad():
        conv.weight[:, ::2] = 0
    x = torch.randn(2, 6, 5, 3)
    sparse = SparseConv1x1(SparseLinear(conv.weight.detach().reshape(4, 6).to_sparse_csr(), conv.bias, "csr"))
    with torch.no_grad():
        assert torch.allclose(sparse(x), conv(x), rtol=1e-5, atol=1e-6)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = masked_linear(64, 32, 0.95, seed=1)
        self.fc2 = masked_linear(16, 64, 0.2, seed=2)  # below min_sparsity: never a candidate
        self.pw = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = self.fc2(torch.relu(self.fc1(x)))
        return h + self.pw(h.reshape(-1, 4, 2, 2)).reshape(h.shape)


def test_every_layer_is_sparse_when_required_speedup_is_tiny_and_outputs_match():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(3, 32)
    ref = net(x)
    report = export_sparse(net, x, min_speedup=1e-9, min_model_speedup=1e-9, repeats=2, warmup=0)
    assert [c.name for c in report.layers] == ["fc1"]  # fc2 20 % zeros, pw dense
    assert set(report.model_ms) == {"dense", "sparse"}  # the whole model was timed both ways
    chosen = report.layers[0].chosen
    assert chosen in report.layers[0].times_ms and isinstance(net.fc1, SparseLinear) and net.fc1.fmt == chosen
    assert report.layers[0].sparsity == pytest.approx(float((Net().fc1.weight == 0).float().mean()))
    assert isinstance(net.fc2, nn.Linear)
    assert torch.allclose(net(x), ref, rtol=1e-5, atol=1e-6)
    assert f"-> {chosen}" in report.table() and "1 of 1 layers sparse" in report.table()


def test_a_format_that_is_not_faster_leaves_the_layer_dense_with_the_measured_reason():
    net = Net().eval()
    x = torch.randn(3, 32)
    report = export_sparse(net, x, min_speedup=1e9, repeats=2, warmup=0)
    assert report.layers[0].chosen == "dense" and isinstance(net.fc1, nn.Linear)
    assert "of dense" in report.layers[0].reason and "csr" in report.layers[0].times_ms


def test_block_sparse_weights_are_offered_bsr():
    lin = nn.Linear(16, 16)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:4, :4] = 1.0  # one non-zero 4x4 block of 16
    model = nn.Sequential(lin).eval()
    report = export_sparse(model, torch.randn(2, 16), min_speedup=1e-9, min_model_speedup=None, repeats=2, warmup=0)
    assert report.model_ms == {}
    # 1 of 16 4x4 blocks and 1 of 4 8x8 blocks are non-zero; the one 16x16 block is: no bsr16
    assert set(report.layers[0].times_ms) - {"scipy-csr"} == {"csr", "bsr4", "bsr8"}


def test_an_output_that_changes_puts_every_layer_back(monkeypatch):
    net = Net().eval()
    x = torch.randn(3, 32)
    fc1 = net.fc1
    real = SparseLinear.forward
    calls = {"n": 0}

    def drifting(self, inp):  # exact on the per-layer check, then off in the whole-model check
        calls["n"] += 1
        out = real(self, inp)
        return out if calls["n"] <= 3 else out + 1.0

    monkeypatch.setattr(SparseLinear, "forward", drifting)
    with pytest.raises(ValueError, match="put back"):
        export_sparse(net, x, min_speedup=1e-9, repeats=1, warmup=0)
    assert net.fc1 is fc1


def test_layers_that_win_alone_but_not_end_to_end_are_all_put_back():
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(3, 32)
    fc1, ref = net.fc1, net(x)
    report = export_sparse(net, x, min_speedup=1e-9, min_model_speedup=1e9, repeats=2, warmup=0)
    assert net.fc1 is fc1 and torch.equal(net(x), ref)
    assert [c.chosen for c in report.layers] == ["dense"] and report.layers[0].times_ms
    assert "put back: end to end" in report.layers[0].reason
    assert set(report.model_ms) == {"dense", "sparse"} and "end to end: dense" in report.table()


@pytest.mark.parametrize("kwargs, match", [
    ({"min_sparsity": 1.5}, "min_sparsity"), ({"min_speedup": 0}, "min_speedup"), ({"repeats": 0}, "repeats"),
    ({"rtol": -1.0}, "rtol"), ({"include": ["nope"]}, "include"), ({"min_model_speedup": 0}, "min_model_speedup"),
])
def test_bad_arguments_are_refused_before_any_change(kwargs, match):
    net = Net().eval()
    before = {n: type(m) for n, m in net.named_modules()}
    with pytest.raises(ValueError, match=match):
        export_sparse(net, torch.randn(3, 32), **kwargs)
    assert {n: type(m) for n, m in net.named_modules()} == before


def test_a_model_that_is_itself_the_layer_is_refused_with_the_way_out():
    lin = masked_linear(8, 12, 0.9)
    with pytest.raises(ValueError, match="nn.Sequential"):
        export_sparse(lin, torch.randn(1, 12))
    assert isinstance(lin, nn.Linear) and not lin._forward_hooks
