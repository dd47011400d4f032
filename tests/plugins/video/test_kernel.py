"""The block-sparse kernel equals dense attention under the same mask, forward and gradient."""
import pytest
import torch

from sparsity_plugins.video.kernel import (
    block_sparse_attention,
    head_groups,
    masked_attention,
    multi_pattern_attention,
    schedule,
)
from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.patterns import block_mask

LAYOUT = TokenLayout(4, 4, 6, text=7, text_first=True)  # 103 tokens: a short tail at every block size


def qkv(s, h=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, h, s, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def check(fn, ref, q, k, v):
    out, expect = fn(q, k, v), ref(q, k, v)
    assert torch.allclose(out, expect, atol=1e-5, rtol=0)
    w = torch.randn_like(out)
    g1 = torch.autograd.grad((out * w).sum(), (q, k, v))
    g2 = torch.autograd.grad((expect * w).sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", ["dense", "diagonal", "diagonal(h=1,w=1)", "multidiagonal(h=1,w=1)", "stripe",
                                  "diagonal(h=0,w=2)+stripe(n=10)", "diagonal(t=1,h=1,w=1)+multidiagonal"])
@pytest.mark.parametrize("bs", [8, 16, 30])
def test_kernel_equals_masked_dense(spec, bs):
    m = block_mask(spec, LAYOUT, bs)
    q, k, v = qkv(LAYOUT.total)
    check(lambda *x: block_sparse_attention(*x, m, bs), lambda *x: masked_attention(*x, m, bs), q, k, v)


def test_random_masks_and_empty_rows():
    g = torch.Generator().manual_seed(1)
    q, k, v = qkv(50)
    for _ in range(5):
        m = torch.rand(7, 7, generator=g) < 0.4
        m[3] = False  # a query block with no key: zeros
        check(lambda *x: block_sparse_attention(*x, m, 8), lambda *x: masked_attention(*x, m, 8), q, k, v)
        out = block_sparse_attention(q, k, v, m, 8)
        assert torch.equal(out[:, :, 24:32], torch.zeros_like(out[:, :, 24:32]))


def test_fast_paths_are_taken():
    layout = TokenLayout(4, 4, 8)
    diag = block_mask("diagonal", layout, 16)
    assert schedule(diag, layout.total, 16).diagonal == 32  # one frame per run, reshape path
    stripe = block_mask("stripe", layout, 16)
    plan = schedule(stripe, layout.total, 16)
    assert len(plan.runs) == 1 and plan.runs[0].keys == (0, 32)
    q, k, v = qkv(layout.total)
    check(lambda *x: block_sparse_attention(*x, diag, 16), lambda *x: masked_attention(*x, diag, 16), q, k, v)


def test_float32_matches_to_1e5():
    m = block_mask("diagonal(h=1,w=1)+stripe", LAYOUT, 16)
    q, k, v = (x.detach().float().requires_grad_() for x in qkv(LAYOUT.total))
    check(lambda *x: block_sparse_attention(*x, m, 16), lambda *x: masked_attention(*x, m, 16), q, k, v)


def test_heads_grouped_by_pattern():
    specs = ["diagonal", "stripe", "dense", "diagonal"]
    masks = [block_mask(s, LAYOUT, 16) for s in specs]
    groups = head_groups(masks)
    assert [h for h, _ in groups] == [[0, 3], [1], [2]]
    q, k, v = qkv(LAYOUT.total, h=4)

    def ref(q, k, v):
        return torch.cat([masked_attention(q[:, i:i + 1], k[:, i:i + 1], v[:, i:i + 1], masks[i], 16)
                          for i in range(4)], 1)
    check(lambda *x: multi_pattern_attention(*x, groups, 16), ref, q, k, v)


def test_bad_mask_shape():
    q, k, v = qkv(40)
    with pytest.raises(ValueError, match=r"\[5, 5\] bool"):
        block_sparse_attention(q, k, v, torch.ones(4, 4, dtype=torch.bool), 8)
