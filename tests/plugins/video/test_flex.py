"""FlexAttention path: our block masks as a BlockMask (only kept blocks listed, the tail block
partial), equal to the masked dense reference eager and compiled; the backend switch."""
import pytest
import torch

from sparsity_plugins.video.dynamic import per_head_attention
from sparsity_plugins.video.flex import flex_attention_masked, flex_block_mask
from sparsity_plugins.video.kernel import block_sparse_attention, masked_attention, multi_pattern_attention, use_flex


def reference(q, k, v, masks, bs):
    return torch.stack([torch.cat([masked_attention(q[b:b + 1, h:h + 1], k[b:b + 1, h:h + 1], v[b:b + 1, h:h + 1],
                                                    masks[b, h], bs) for h in range(q.shape[1])], 1)[0]
                        for b in range(q.shape[0])])


def inputs(s=70, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, s, 8, generator=g) for _ in range(3))
    nb = -(-s // bs)
    masks = torch.rand(2, 3, nb, nb, generator=g) < 0.5
    masks[0, 0, 1] = False  # a query block without keys: zeros
    return q, k, v, masks


def test_block_mask_lists_exactly_the_kept_blocks_with_the_tail_partial():
    masks = torch.tensor([[[[True, False, True], [False, True, True], [True, True, False]]]])
    bm = flex_block_mask(masks, 40, 16)  # 3 blocks, the last holds 8 tokens
    assert bm.full_kv_num_blocks.flatten().tolist() == [1, 1, 0]  # rows of full-length blocks, tail column apart
    assert bm.kv_num_blocks.flatten().tolist() == [1, 1, 2]
    assert (bm.full_kv_num_blocks + bm.kv_num_blocks).flatten().tolist() == masks.sum(-1).flatten().tolist()
    assert bm.full_kv_indices[0, 0, 0, 0].item() == 0 and bm.kv_indices[0, 0, 0, 0].item() == 2


def test_eager_flex_equals_masked_reference_with_tail_and_empty_rows():
    q, k, v, masks = inputs()
    out = flex_attention_masked(q, k, v, masks, 16, compiled=False)
    assert torch.allclose(out, reference(q, k, v, masks, 16), atol=1e-5)
    assert out[0, 0, 16:32].abs().max() == 0


def test_compiled_flex_equals_masked_reference():
    q, k, v, masks = inputs(s=64, seed=1)
    out = flex_attention_masked(q, k, v, masks, 16)
    assert torch.allclose(out, reference(q, k, v, masks, 16), atol=1e-5)


def test_backend_switch():
    q, k, v, masks = inputs()
    assert not use_flex(q, 128)  # auto: the gather kernel on CPU
    assert use_flex(q, 16, "flex") and not use_flex(q, 128, "gather")
    with pytest.raises(ValueError, match="backend"):
        use_flex(q, 16, "triton")
    out = block_sparse_attention(q, k, v, masks[1, 2], 16, backend="flex")
    assert torch.allclose(out, block_sparse_attention(q, k, v, masks[1, 2], 16), atol=1e-5)
    groups = [([0, 2], masks[0, 0]), ([1], None)]
    out = multi_pattern_attention(q, k, v, groups, 16, backend="flex")
    assert torch.allclose(out, multi_pattern_attention(q, k, v, groups, 16), atol=1e-5)
    out = per_head_attention(q, k, v, masks, 16, backend="flex")
    assert torch.allclose(out, per_head_attention(q, k, v, masks, 16), atol=1e-5)


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match="bool"):
        flex_block_mask(torch.ones(1, 1, 2, 2), 32, 16)
    with pytest.raises(ValueError, match=r"\[2, 2\] blocks"):
        flex_block_mask(torch.ones(1, 1, 3, 3, dtype=torch.bool), 32, 16)
