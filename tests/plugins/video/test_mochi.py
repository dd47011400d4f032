"""Mochi: processors assigned per layer (no ``attn_processors``), ``[video; valid text]`` per
sample through ``F.scaled_dot_product_attention``; layout, exactness, uninstall, search."""
import pytest
import torch

from sparsity_plugins.video.kernel import masked_attention
from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.models import attention_layers
from sparsity_plugins.video.patterns import block_mask, density
from sparsity_plugins.video.plan import AttentionPlan
from sparsity_plugins.video.processors import SparseAttnProcessor, install
from sparsity_plugins.video.search import PatternSearch

from .helpers import model_and_inputs, run
from .test_search import calibrate

NAME = "MochiTransformer3DModel"


def padded_batch(x):
    """Two samples: all 8 prompt tokens valid, and 5 of 8 (per-sample lengths 56 and 53)."""
    x = dict(x)
    x["hidden_states"] = torch.cat([x["hidden_states"], x["hidden_states"].flip(-1)])
    x["encoder_hidden_states"] = torch.cat([x["encoder_hidden_states"], x["encoder_hidden_states"].flip(1)])
    x["encoder_attention_mask"] = torch.tensor([[1.0] * 8, [1.0] * 5 + [0.0] * 3])
    x["timestep"] = torch.tensor([500.0, 500.0])
    return x


def layout_of(model, inputs):
    with install(model, block_size=1) as s:
        run(model, inputs)
        return s.layout


def processors(model):
    return [m.processor for m in attention_layers(model)]


def test_layout_read_from_a_forward():
    model, x = model_and_inputs("mochi")
    assert not hasattr(model, "attn_processors")  # no AttentionMixin: processors are assigned per layer
    # 3 frames (no temporal patching) of 8×8 latents in 2×2 patches, then the 8 prompt tokens
    assert layout_of(model, x) == TokenLayout(3, 4, 4, text=8, text_first=False)
    # the padded prompt length, whatever the mask (a call holds only its valid tokens, see models.py)
    assert layout_of(model, padded_batch(x)) == TokenLayout(3, 4, 4, text=8)


def test_full_density_plan_reproduces_dense_and_uninstall_restores():
    model, x = model_and_inputs("mochi")
    before = processors(model)
    ref = run(model, x)
    plan = AttentionPlan.uniform(NAME, layout_of(model, x), 2, 2, "dense", block_size=16)
    with install(model, plan) as s:
        assert all(isinstance(p, SparseAttnProcessor) and p.inner is b for p, b in zip(processors(model), before))
        out = run(model, x)
        assert s.calls["sparse"] == 2
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    assert all(p is b for p, b in zip(processors(model), before))  # the original objects, exactly
    assert not model._forward_pre_hooks
    assert torch.equal(run(model, x), ref)
    with install(model, block_size=16):
        with pytest.raises(ValueError, match="already installed"):
            install(model, block_size=16)
    assert all(p is b for p, b in zip(processors(model), before))


@pytest.mark.parametrize("padded", [False, True])
def test_sparse_plan_equals_masked_reference(padded):
    model, x = model_and_inputs("mochi")
    if padded:
        x = padded_batch(x)
    layout = layout_of(model, x)
    specs = ["diagonal(h=1,w=1)+stripe", "multidiagonal(h=1,w=1)"]
    plan = AttentionPlan(NAME, layout, [specs, specs[::-1]], block_size=16)
    with install(model, plan) as s:
        out = run(model, x)
        assert s.calls == {"sparse": 4 if padded else 2, "dense": 0}  # one call per sample and layer
    seen = []

    def reference(layer, q, k, v, scale):
        call = s.call_layout  # the padded sample's call holds 5 text tokens
        seen.append(call.text)
        assert q.shape[2] == call.total
        return torch.cat([masked_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1],
                                           block_mask(plan.patterns[layer][h], call, 16), 16, scale)
                          for h in range(q.shape[1])], 1)
    with install(model, block_size=16) as s:
        s.observer = reference
        ref = run(model, x)
    assert seen == ([8, 5] * 2 if padded else [8, 8])
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(out, run(model, x), atol=1e-4)  # the plan did change the output


def test_call_shorter_than_a_block_runs_dense():
    model, x = model_and_inputs("mochi")
    x = padded_batch(x)
    ref = run(model, x)
    plan = AttentionPlan.uniform(NAME, layout_of(model, x), 2, 2, "stripe", block_size=54)
    with install(model, plan) as s:
        run(model, x)
        assert s.calls == {"sparse": 2, "dense": 2}  # the 53-token sample: dense, exactly as the model
    assert ref.shape == run(model, x).shape


@pytest.mark.parametrize("tile", [None, (2, 2, 2)])
def test_search_then_install(tile, tmp_path):
    model, x = model_and_inputs("mochi")
    x = padded_batch(x)
    before = processors(model)
    search = calibrate(PatternSearch(block_size=8, error_budget=0.5, sparsity=0.3, measure=False, tile=tile),
                       model, x)
    plan = search.finalize()
    assert all(p is b for p, b in zip(processors(model), before))
    layout = TokenLayout(3, 4, 4, text=8)
    assert search.cost.densities == {p: density(block_mask(p, layout, 8, tile=tile), layout.total, 8)
                                     for p in search.candidates}  # costed in the plan's (tiled) order
    assert plan.model == NAME and plan.tile == tile and plan.mean_density() <= 0.7 + 1e-9
    plan.save(tmp_path / "p.json")
    plan = AttentionPlan.load(tmp_path / "p.json")
    ref = run(model, x)
    with install(model, plan) as s:
        out = run(model, x)
        assert s.calls["sparse"] == 2 * plan.layers
    assert out.shape == ref.shape and torch.isfinite(out).all()
