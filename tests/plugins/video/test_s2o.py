"""S2O: importance-ordered online softmax with early stopping. ε = 0 is dense; larger ε
stops earlier (nested computed blocks, growing error); the order is by importance, not position."""
import pytest
import torch
import torch.nn.functional as F

from sparsity_plugins.video.processors import install
from sparsity_plugins.video.s2o import S2O, block_order, calibrate_epsilon, s2o_attention, s2o_blocks

from .helpers import model_and_inputs, run


def local_qkv(s=96, h=2, d=16, seed=0):
    """Queries/keys from smooth 1D position features: attention concentrates near the diagonal."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(s, dtype=torch.float64)[:, None]
    freqs = torch.linspace(0.05, 0.6, d // 2, dtype=torch.float64)[None, :]
    feat = torch.cat([torch.cos(pos * freqs), torch.sin(pos * freqs)], 1) * 2.0
    q = feat.expand(1, h, s, d) + 0.1 * torch.randn(1, h, s, d, generator=g, dtype=torch.float64)
    k = feat.expand(1, h, s, d) + 0.1 * torch.randn(1, h, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, h, s, d, generator=g, dtype=torch.float64)
    return q, k, v


def rel(out, ref):
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("bs", [16, 25, 96])
def test_zero_epsilon_equals_dense(bs):
    q, k, v = local_qkv()
    out, computed = s2o_attention(q.float(), k.float(), v.float(), bs, 0.0)
    assert computed == 1.0
    assert torch.allclose(out, F.scaled_dot_product_attention(q.float(), k.float(), v.float()), atol=1e-5, rtol=0)


def test_larger_epsilon_computes_fewer_nested_blocks_with_growing_error():
    q, k, v = local_qkv()
    ref = F.scaled_dot_product_attention(q, k, v)
    fractions, errors, masks = [], [], []
    for eps in (0.0, 1e-3, 1e-2, 1e-1, 1.0):
        out, computed = s2o_blocks(q, k, v, 16, eps)
        masks.append(computed)
        fractions.append(float(computed.double().mean()))
        errors.append(rel(out, ref))
    assert fractions == sorted(fractions, reverse=True) and fractions[0] == 1.0 and fractions[-1] < 0.5
    assert errors == sorted(errors) and errors[0] < 1e-12 and errors[-1] > 1e-3
    for bigger, smaller in zip(masks, masks[1:]):  # each ε stops at a prefix of the same order
        assert bool((smaller <= bigger).all())
    assert all(bool(m.diagonal(dim1=-2, dim2=-1).all()) for m in masks)


def test_order_is_by_importance_the_last_block_is_computed_and_weak_ones_skipped():
    s, bs, d = 64, 8, 8
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    q = (5.0 * u).expand(1, 1, s, d) + 0.05 * torch.randn(1, 1, s, d, generator=g, dtype=torch.float64)
    k = 0.1 * torch.randn(1, 1, s, d, generator=g, dtype=torch.float64)
    k[:, :, 56:] += 5.0 * u  # key block 7, last in sequence order, dominates every query
    v = torch.randn(1, 1, s, d, generator=g, dtype=torch.float64)
    order = block_order(q, k, bs)[0, 0]
    assert order[:, 0].tolist() == list(range(8))  # the diagonal first
    assert (order[:7, 1] == 7).all()  # then the important block, wherever it sits
    out, computed = s2o_blocks(q, k, v, bs, 1e-2)
    expected = torch.eye(8, dtype=torch.bool)
    expected[:, 7] = True
    assert torch.equal(computed[0, 0], expected)  # block 7 computed, the 6 weak blocks skipped
    assert rel(out, F.scaled_dot_product_attention(q, k, v)) < 1e-2


def test_one_row_needing_a_block_keeps_it_for_its_query_block():
    """The stop test is the worst row's mass: a single query that needs key block 3 keeps it."""
    s, bs, d = 64, 8, 8
    g = torch.Generator().manual_seed(1)
    u, w = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))[0].T
    q = (5.0 * u).expand(1, 1, s, d) + 0.05 * torch.randn(1, 1, s, d, generator=g, dtype=torch.float64)
    q[0, 0, 0] = 5.0 * w  # query 0 alone looks at key block 3
    k = 0.1 * torch.randn(1, 1, s, d, generator=g, dtype=torch.float64)
    k[:, :, 56:] += 5.0 * u
    k[:, :, 24:32] += 5.0 * w
    v = torch.randn(1, 1, s, d, generator=g, dtype=torch.float64)
    out, computed = s2o_blocks(q, k, v, bs, 1e-2)
    expected = torch.eye(8, dtype=torch.bool)
    expected[:, 7] = True
    expected[0, 3] = True  # query block 0 keeps block 3 for its one query; no other block does
    assert torch.equal(computed[0, 0], expected)
    assert rel(out, F.scaled_dot_product_attention(q, k, v)) < 1e-2


def test_first_blocks_are_always_computed():
    q, k, v = local_qkv()
    first = torch.zeros(6, dtype=torch.bool)
    first[5] = True  # a text block at the end (HunyuanVideo's [video; text])
    _, computed = s2o_blocks(q, k, v, 16, 100.0, first=first)
    expected = torch.eye(6, dtype=torch.bool)
    expected[:, 5] = True
    assert torch.equal(computed, expected.expand_as(computed))


def test_calibrated_epsilon_meets_the_error_budget():
    batches = [local_qkv(seed=s) for s in range(2)]
    eps = calibrate_epsilon(batches, 16, max_error=5e-2, iterations=8)
    assert 0 < eps < 1
    for q, k, v in batches:
        out, fraction = s2o_attention(q, k, v, 16, eps)
        assert rel(out, F.scaled_dot_product_attention(q, k, v)) <= 5e-2
        assert fraction < 1.0
        over, _ = s2o_attention(q, k, v, 16, 1.0)  # the top of the range is over budget here
        assert rel(over, F.scaled_dot_product_attention(q, k, v)) > 5e-2


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_zero_epsilon_reproduces_the_dense_model(kind):
    model, x = model_and_inputs(kind)
    ref = run(model, x)
    method = S2O(0.0)
    with install(model, block_size=8, method=method):
        out = run(model, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert method.stats["calls"] == 2 and method.stats["density"] == 1.0


def test_positive_epsilon_in_the_model_records_less_than_dense():
    model, x = model_and_inputs("wan")
    method = S2O({48: 0.5, 100: 0.0})  # 3 frames × 4 × 4 patches: 48 tokens
    with install(model, block_size=4, method=method):
        run(model, x)
    assert method.stats["calls"] == 2 and method.stats["density"] < 1.0


def test_bad_arguments():
    q, k, v = local_qkv(s=8)
    with pytest.raises(ValueError, match="epsilon"):
        s2o_attention(q, k, v, 4, -0.1)
    with pytest.raises(ValueError, match="block_size"):
        s2o_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="epsilon"):
        S2O(float("nan"))
    with pytest.raises(ValueError, match="epsilon"):
        S2O({48: -1.0})
    with pytest.raises(ValueError, match="first"):
        s2o_attention(q, k, v, 4, 0.1, first=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_error"):
        calibrate_epsilon([(q, k, v)], 4, 0.0)
    with pytest.raises(ValueError, match="low"):
        calibrate_epsilon([(q, k, v)], 4, 0.1, low=0.0)
    with pytest.raises(ValueError, match="dense_steps"):
        S2O(0.1, dense_steps=-1)
