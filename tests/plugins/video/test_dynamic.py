"""Dynamic methods in the processors: the base class keeps text and the diagonal, runs each
head's own mask (equal to the masked dense reference), and BLASST at λ = ∞ equals dense."""
import math

import pytest
import torch

from sparsity_plugins.video.blasst import Blasst
from sparsity_plugins.video.dynamic import (DynamicAttention, mask_density, per_head_attention, pooled,
                                            safe_mask, top_blocks)
from sparsity_plugins.video.kernel import masked_attention
from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.processors import install

from .helpers import model_and_inputs, run


class RandomBlocks(DynamicAttention):
    """Keeps each key block with probability 1/2, per batch element, head and query block."""

    name = "random"

    def __init__(self, seed=0, **kw):
        super().__init__(**kw)
        self.g = torch.Generator().manual_seed(seed)
        self.masks = []

    def select(self, layer, q, k, v, scale, layout, block_size):
        nb = math.ceil(q.shape[2] / block_size)
        m = torch.rand(q.shape[0], q.shape[1], nb, nb, generator=self.g) < 0.5
        self.masks.append(safe_mask(m, layout, block_size))
        return m


def test_safe_mask_keeps_text_rows_columns_and_the_diagonal():
    layout = TokenLayout(1, 2, 2, text=2, text_first=True)  # 6 tokens, blocks of 2: block 0 is text
    out = safe_mask(torch.zeros(3, 3, dtype=torch.bool), layout, 2)
    assert out.tolist() == [[True, True, True], [True, True, False], [True, False, True]]


def test_mask_density_weighs_the_short_tail_block():
    m = torch.tensor([[True, False], [False, True]])  # 3 tokens in blocks of 2: 2·2 + 1·1 of 9 pairs
    assert mask_density(m, 3, 2) == pytest.approx(5 / 9)


def test_pooled_mean_over_blocks_with_a_short_tail():
    x = torch.arange(5.0).view(1, 1, 5, 1)
    assert pooled(x, 2).flatten().tolist() == [0.5, 2.5, 4.0]
    assert pooled(x, 2, "max").flatten().tolist() == [1.0, 3.0, 4.0]


def test_top_blocks_keeps_the_highest_scores_per_row():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert top_blocks(scores, torch.tensor([2, 1])).tolist() == [[False, True, True], [True, False, False]]


def test_per_head_attention_equals_masked_reference_per_head():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 4, requires_grad=True) for _ in range(3))
    masks = torch.rand(2, 3, 4, 4) < 0.5
    masks |= torch.eye(4, dtype=torch.bool)
    out = per_head_attention(q, k, v, masks, 3)
    ref = torch.stack([torch.cat([masked_attention(q[b:b + 1, h:h + 1], k[b:b + 1, h:h + 1], v[b:b + 1, h:h + 1],
                                                   masks[b, h], 3) for h in range(3)], 1)[0] for b in range(2)])
    assert torch.allclose(out, ref, atol=1e-5)
    g, = torch.autograd.grad(out.sum(), q)
    g_ref, = torch.autograd.grad(ref.sum(), q)
    assert torch.allclose(g, g_ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_a_dynamic_method_runs_its_own_masks_in_the_model(kind):
    model, x = model_and_inputs(kind)
    method = RandomBlocks()
    with install(model, block_size=16, method=method) as s:
        out = run(model, x)
        layout = s.layout
    assert method.stats["calls"] == 2 and 0 < method.stats["density"] < 1
    masks = iter(method.masks)

    def reference(layer, q, k, v, scale):
        m = next(masks)
        return torch.stack([torch.cat([masked_attention(q[b:b + 1, h:h + 1], k[b:b + 1, h:h + 1],
                                                        v[b:b + 1, h:h + 1], m[b, h], 16, scale)
                                       for h in range(q.shape[1])], 1)[0] for b in range(q.shape[0])])
    with install(model, block_size=16) as s:
        s.observer = reference
        ref = run(model, x)
    assert layout.text == (8 if kind == "cogvideox" else 0)
    assert torch.allclose(out, ref, atol=1e-5)


def test_dense_steps_of_a_method_run_dense():
    model, x = model_and_inputs("wan")
    ref = run(model, x)
    method = RandomBlocks(dense_steps=1)
    with install(model, block_size=16, method=method):
        assert torch.equal(run(model, x), ref)
    assert method.stats["calls"] == 0


@pytest.mark.parametrize("kind", ["wan", "hunyuan"])
def test_blasst_with_infinite_threshold_equals_dense_in_the_model(kind):
    model, x = model_and_inputs(kind)
    ref = run(model, x)
    method = Blasst(math.inf)
    with install(model, block_size=16, method=method):
        out = run(model, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert method.stats["density"] == 1.0 and method.stats["calls"] == 2


def test_blasst_threshold_per_sequence_length_and_zero_skips():
    model, x = model_and_inputs("wan")
    method = Blasst({48: 0.0, 100: math.inf})  # 3 frames × 4 × 4 patches: λ = 0
    with install(model, block_size=4, method=method):
        run(model, x)
    assert method.stats["calls"] == 2 and method.stats["density"] < 1.0
    method = Blasst({100: 0.0})  # no entry for 48 tokens: dense
    with install(model, block_size=4, method=method):
        run(model, x)
    assert method.stats["density"] == 1.0


def test_install_refuses_a_plan_and_a_method_together_and_a_non_method():
    from sparsity_plugins.video.plan import AttentionPlan
    model, x = model_and_inputs("wan")
    plan = AttentionPlan.uniform(type(model).__name__, TokenLayout(3, 4, 4), 2, 2, "dense", block_size=16)
    with pytest.raises(ValueError, match="not both"):
        install(model, plan, method=Blasst())
    with pytest.raises(ValueError, match="DynamicAttention"):
        install(model, block_size=16, method=lambda *a: None)
    with pytest.raises(ValueError, match="threshold"):
        Blasst(-1.0)
    assert not any(type(p).__name__.startswith("Sparse") for p in model.attn_processors.values())
