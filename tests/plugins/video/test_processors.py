"""Processors: full-density plans reproduce the dense model; uninstall restores it exactly;
sparse plans equal the masked dense reference; bad plans fail before any swap."""
import pytest
import torch

from sparsity_plugins.video.kernel import masked_attention
from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.patterns import block_mask
from sparsity_plugins.video.plan import AttentionPlan
from sparsity_plugins.video.processors import SparseAttnProcessor, install

from .helpers import model_and_inputs, run

KINDS = ["wan", "cogvideox", "hunyuan", "ltx"]


def layout_of(model, inputs):
    with install(model, block_size=1) as s:
        run(model, inputs)
        return s.layout


@pytest.mark.parametrize("kind", KINDS)
def test_full_density_plan_reproduces_dense_and_uninstall_restores(kind):
    model, x = model_and_inputs(kind)
    before = dict(model.attn_processors)
    ref = run(model, x)
    plan = AttentionPlan.uniform(type(model).__name__, layout_of(model, x), 2, 2, "dense", block_size=16)
    with install(model, plan) as s:
        wrapped = model.attn_processors
        assert sum(isinstance(p, SparseAttnProcessor) for p in wrapped.values()) == 2  # self-attention only
        assert all(p is before[k] for k, p in wrapped.items() if not isinstance(p, SparseAttnProcessor))
        out = run(model, x)
        assert s.calls["sparse"] == 2
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)
    after = model.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not model._forward_pre_hooks
    assert torch.equal(run(model, x), ref)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_plan_equals_masked_reference(kind):
    model, x = model_and_inputs(kind)
    layout = layout_of(model, x)
    specs = ["diagonal(h=1,w=1)+stripe", "multidiagonal(h=1,w=1)"]
    plan = AttentionPlan(type(model).__name__, layout, [specs, specs[::-1]], block_size=16)
    with install(model, plan):
        out = run(model, x)
    masks = [[block_mask(p, layout, 16) for p in row] for row in plan.patterns]

    def reference(layer, q, k, v, scale):
        return torch.cat([masked_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], masks[layer][h], 16, scale)
                          for h in range(q.shape[1])], 1)
    with install(model, block_size=16) as s:
        s.observer = reference
        ref = run(model, x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(out, run(model, x), atol=1e-4)  # the plan did change the output


def test_dense_steps_and_timestep_tracking():
    model, x = model_and_inputs("wan")
    layout = layout_of(model, x)
    plan = AttentionPlan.uniform("WanTransformer3DModel", layout, 2, 2, "stripe", block_size=16, dense_steps=1)
    with install(model, plan) as s:
        for t in (900.0, 900.0, 500.0):  # two calls at one timestep (guidance) count as one step
            run(model, dict(x, timestep=torch.tensor([t])))
        assert (s.step, s.timestep, s.calls["sparse"]) == (1, 500.0, 2)


def test_plan_json_round_trip(tmp_path):
    layout = TokenLayout(3, 4, 4, text=8, text_first=True)
    plan = AttentionPlan("CogVideoXTransformer3DModel", layout, [["dense", "stripe+diagonal(h=1,w=1)"]] * 2,
                         block_size=16, dense_steps=2)
    plan.save(tmp_path / "plan.json")
    back = AttentionPlan.load(tmp_path / "plan.json")
    assert back == plan and back.densities() == plan.densities()
    assert back.patterns[0][1] == "diagonal(h=1,w=1)+stripe"


@pytest.mark.parametrize("change,match", [
    ({"model": "MochiTransformer3DModel"}, "made for MochiTransformer3DModel"),
    ({"patterns": [["dense", "dense"]] * 3}, "3 layers × 2 heads"),
    ({"patterns": [["dense"] * 4] * 2}, "2 layers × 4 heads"),
])
def test_mismatched_plan_fails_before_any_swap(change, match):
    model, x = model_and_inputs("wan")
    before = dict(model.attn_processors)
    args = dict(model="WanTransformer3DModel", layout=layout_of(model, x), patterns=[["dense"] * 2] * 2,
                block_size=16)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        install(model, AttentionPlan(**args))
    assert all(model.attn_processors[k] is before[k] for k in before) and not model._forward_pre_hooks


def test_layout_mismatch_is_caught_before_attention():
    model, x = model_and_inputs("wan")
    plan = AttentionPlan.uniform("WanTransformer3DModel", TokenLayout(5, 4, 4), 2, 2, "stripe", block_size=16)
    with install(model, plan) as s:
        with pytest.raises(ValueError, match="made for token layout"):
            run(model, x)
        assert s.calls == {"sparse": 0, "dense": 0}


def test_unsupported_model_names_supported_ones():
    with pytest.raises(ValueError, match="supported model classes: .*WanTransformer3DModel"):
        install(torch.nn.Linear(2, 2), block_size=16)


@pytest.mark.parametrize("bad,match", [
    (dict(patterns=[["bogus"] * 2] * 2), "unknown attention pattern 'bogus'"),
    (dict(block_size=10_000), "larger than the sequence"),
    (dict(dense_steps=-1), "dense_steps"),
])
def test_bad_plans(bad, match):
    args = dict(model="WanTransformer3DModel", layout=TokenLayout(3, 4, 4), patterns=[["dense"] * 2] * 2,
                block_size=16)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        AttentionPlan(**args)


def test_bad_densities_in_json(tmp_path):
    plan = AttentionPlan.uniform("WanTransformer3DModel", TokenLayout(3, 4, 4), 1, 2, "stripe", block_size=16)
    data = plan.to_dict()
    data["density"] = [[0.5, 1.5]]
    with pytest.raises(ValueError, match=r"density of layer 0 head 1 must be a number in \(0, 1\]"):
        AttentionPlan.from_dict(data)
    data["density"] = [[0.0, 0.5]]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        AttentionPlan.from_dict(data)


def test_padded_text_runs_dense_and_backend_is_untouched():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    backend = _AttentionBackendRegistry.get_active_backend()
    model, x = model_and_inputs("hunyuan")
    x["encoder_attention_mask"] = torch.tensor([[1.0] * 5 + [0.0] * 3])
    ref = run(model, x)
    layout = layout_of(model, x)
    plan = AttentionPlan.uniform("HunyuanVideoTransformer3DModel", layout, 2, 2, "stripe", block_size=16)
    with install(model, plan) as s:
        out = run(model, x)
        assert s.calls == {"sparse": 0, "dense": 2}  # a padding mask: the layer's own dense attention
    assert torch.equal(out, ref)
    assert _AttentionBackendRegistry.get_active_backend() == backend


def test_installing_twice_is_refused():
    model, x = model_and_inputs("wan")
    with install(model, block_size=16):
        with pytest.raises(ValueError, match="already installed"):
            install(model, block_size=16)


def test_uniform_plan_at_density():
    layout = TokenLayout(8, 4, 4)
    candidates = ["diagonal", "diagonal(t=1)", "stripe"]
    plan = AttentionPlan.at_density("WanTransformer3DModel", layout, 2, 2, 0.13, candidates, block_size=16)
    assert plan.patterns[0] == ["diagonal", "diagonal"] and plan.mean_density() == 0.125
    assert AttentionPlan.at_density("WanTransformer3DModel", layout, 1, 2, 1.0, ["stripe"], block_size=16).patterns \
        == [["dense", "dense"]]
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"density must be a number in \(0, 1\]"):
            AttentionPlan.at_density("WanTransformer3DModel", layout, 1, 2, bad, ["stripe"], block_size=16)


def test_backend_choice_reaches_the_kernel_and_a_bad_one_is_refused_before_any_swap(monkeypatch):
    import sparsity_plugins.video.flex as flex_module
    flex_calls = []
    real = flex_module.flex_attention_masked
    monkeypatch.setattr(flex_module, "flex_attention_masked", lambda *a: flex_calls.append(1) or real(*a))
    model, x = model_and_inputs("wan")
    layout = layout_of(model, x)
    specs = ["diagonal(h=1,w=1)+stripe", "multidiagonal(h=1,w=1)"]
    plan = AttentionPlan(type(model).__name__, layout, [specs, specs[::-1]], block_size=16)
    with install(model, plan, backend="gather") as s:
        gather = run(model, x)
        assert s.backend == "gather" and not flex_calls
    with install(model, plan, backend="flex"):  # FlexAttention (eager on CPU) with the same block masks
        flex = run(model, x)
    assert len(flex_calls) == 2  # one call per layer, every head in it
    assert torch.allclose(flex, gather, atol=1e-5, rtol=0)
    before = dict(model.attn_processors)
    with pytest.raises(ValueError, match="unknown attention backend 'triton'; valid"):
        install(model, plan, backend="triton")
    assert dict(model.attn_processors) == before
