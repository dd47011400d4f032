"""BLASST's block skipping: threshold -> inf equals dense; finite thresholds skip with bounded error."""
import math

import pytest
import torch
import torch.nn.functional as F

from sparsity_plugins.video.blasst import blasst_attention, calibrate_threshold


def local_qkv(s=96, h=2, d=16, seed=0):
    """Queries/keys from smooth 1D position features: attention concentrates near the diagonal."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(s, dtype=torch.float64)[:, None]
    freqs = torch.linspace(0.05, 0.6, d // 2, dtype=torch.float64)[None, :]
    feat = torch.cat([torch.cos(pos * freqs), torch.sin(pos * freqs)], 1) * 4.0
    q = feat.expand(1, h, s, d) + 0.1 * torch.randn(1, h, s, d, generator=g, dtype=torch.float64)
    k = feat.expand(1, h, s, d) + 0.1 * torch.randn(1, h, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, h, s, d, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("bs", [16, 25, 96])
def test_infinite_threshold_equals_dense(bs):
    q, k, v = local_qkv()
    out, skipped = blasst_attention(q, k, v, bs, math.inf)
    assert skipped == 0.0
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v), atol=1e-10, rtol=0)


def test_finite_threshold_skips_with_small_error():
    q, k, v = local_qkv()
    ref = F.scaled_dot_product_attention(q, k, v)
    errors, skips = [], []
    for lam in (2.0, 6.0, 12.0):
        out, skipped = blasst_attention(q, k, v, 16, lam)
        errors.append(float((out - ref).norm() / ref.norm()))
        skips.append(skipped)
    assert skips[0] > 0.2 and skips == sorted(skips, reverse=True)
    assert errors[2] < 1e-3 and errors[2] <= errors[0]


def test_calibrated_threshold_meets_the_error_budget():
    batches = [local_qkv(seed=s) for s in range(2)]
    lam = calibrate_threshold(batches, 16, max_error=1e-2)
    assert math.isfinite(lam)
    for q, k, v in batches:
        out, _ = blasst_attention(q, k, v, 16, lam)
        ref = F.scaled_dot_product_attention(q, k, v)
        assert float((out - ref).norm() / ref.norm()) <= 1e-2


def test_bad_arguments():
    q, k, v = local_qkv(s=8)
    with pytest.raises(ValueError, match="threshold"):
        blasst_attention(q, k, v, 4, -1.0)
    with pytest.raises(ValueError, match="block_size"):
        blasst_attention(q, k, v, 0)
    with pytest.raises(ValueError, match="max_error"):
        calibrate_threshold([(q, k, v)], 4, 0.0)
