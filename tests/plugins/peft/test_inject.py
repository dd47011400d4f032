"""The adapter framework: full-match patterns, clear errors with the model unchanged, frozen
base, state-dict keys, merge / unmerge (bitwise), gradients, removal; timm ViT and BERT."""
import copy

import pytest
import torch
from torch import nn

from sparsity_plugins.peft import inject_adapters

from .helpers import METHODS, assert_unchanged, perturb, snapshot
from .models import BERT_LAYERS, VIT_LAYERS, MLP, bert_input, tiny_bert, tiny_vit, vit_input


@pytest.mark.parametrize("patterns, message", [
    ("proj", "matches no module name in full"),          # no suffix matching ...
    (r".*proj", "Conv2d"),                                # ... and patch_embed.proj is no Linear
    ([r"blocks\.0\.attn\.qkv", "nothing"], "'nothing' matches no module"),
    (r"blocks\.0\.attn", "Attention"),
    ("[", "not a valid regular expression"),
])
def test_bad_patterns_raise_and_leave_the_model_unchanged(patterns, message):
    model = tiny_vit()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=message):
        inject_adapters(model, method="lora", target_modules=patterns)
    assert_unchanged(model, snap)


def test_suffix_pattern_error_names_where_it_occurs():
    with pytest.raises(ValueError, match=r"patch_embed\.proj"):
        inject_adapters(tiny_vit(), method="lora", target_modules="proj")


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="nope"), "unknown adapter method"),
    (dict(method="lora", rank=3), "bad parameters"),
    (dict(method="snell", sparsity=1.0), r"sparsity must be a number in \[0, 1\)"),
    (dict(method="snell", sparsity=-0.1), "sparsity"),
    (dict(method="snell", r=3), "r must be even"),
    (dict(method="lora", modules_to_save="blocks.0.attn.qkv"), "both adapted and saved"),
])
def test_bad_configuration_raises_before_any_change(kwargs, message):
    model = tiny_vit()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=message):
        inject_adapters(model, target_modules=r"blocks\.\d+\.attn\.qkv", **kwargs)
    assert_unchanged(model, snap)


def test_multihead_attention_out_proj_is_refused():
    model = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="MultiheadAttention"):
        inject_adapters(model, method="lora", target_modules=r"0\.out_proj")


def test_full_match_adapts_attn_proj_only_and_freezes_the_base():
    model = tiny_vit()
    base_keys = set(model.state_dict())
    adapters = inject_adapters(model, method="lora", target_modules=r"blocks\.\d+\.attn\.proj", modules_to_save="head",
                               r=2)
    assert sorted(adapters.adapters) == ["blocks.0.attn.proj", "blocks.1.attn.proj"]
    assert type(model.patch_embed.proj) is nn.Conv2d and isinstance(model.blocks[0].attn.proj, nn.Linear)
    keys = set(model.state_dict())
    assert base_keys <= keys and {k for k in keys - base_keys} == {
        f"blocks.{i}.attn.proj.adapter.{t}" for i in (0, 1) for t in ("A", "B")}
    trainable = adapters.trainable_parameters()
    assert sorted(trainable) == sorted([f"blocks.{i}.attn.proj.adapter.{t}" for i in (0, 1) for t in ("A", "B")]
                                       + ["head.weight", "head.bias"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    count = adapters.count()
    assert count["trainable"] == 2 * (2 * 16 + 16 * 2) + 3 * 16 + 3
    assert count["total"] == sum(p.numel() for p in model.parameters())
    assert adapters.summary().startswith(f"trainable params: {count['trainable']:,} || all params:")


def test_a_model_with_adapters_refuses_a_second_injection():
    model = MLP()
    inject_adapters(model, method="lora", target_modules="fc1")
    snap = snapshot(model)
    with pytest.raises(ValueError, match="already has adapters"):
        inject_adapters(model, method="lora", target_modules="fc2")
    state, _, _ = snap
    assert set(model.state_dict()) == set(state)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merge_matches_unmerge_restores_bitwise_and_only_adapters_get_gradients(method):
    model, x = tiny_vit(), vit_input()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    adapters = inject_adapters(model, method=method, target_modules=VIT_LAYERS, **METHODS[method])
    perturb(adapters)
    out = model(x)
    out.square().sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(adapters.trainable_parameters())
    assert all(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if n in with_grad)
    with torch.no_grad():
        adapters.merge()
        merged = model(x)
        assert adapters.merged and not torch.equal(model.blocks[0].attn.qkv.weight, base["blocks.0.attn.qkv.weight"])
        adapters.unmerge()
        again = model(x)
    assert torch.allclose(merged, out, atol=1e-5, rtol=0)
    assert torch.equal(again, out.detach())
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items())  # bitwise
    adapters.remove()
    assert set(model.state_dict()) == set(base)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("method", ["lora", "snell", "pst"])
def test_bert_encoder_merge_and_remove(method):
    model, batch = tiny_bert(), bert_input()
    ref = model(**batch).last_hidden_state
    adapters = inject_adapters(model, method=method, target_modules=BERT_LAYERS, **METHODS[method])
    assert len(adapters.adapters) == 2 * 6
    perturb(adapters)
    with torch.no_grad():
        out = model(**batch).last_hidden_state
        with adapters.disabled():
            assert torch.equal(model(**batch).last_hidden_state, ref)
        adapters.merge()
        assert torch.allclose(model(**batch).last_hidden_state, out, atol=1e-5, rtol=0)
        adapters.unmerge()
        adapters.remove()
        assert torch.equal(model(**batch).last_hidden_state, ref)


def test_merge_and_unload_leaves_a_plain_model_with_the_adapted_outputs():
    model, x = tiny_vit(), vit_input()
    adapters = inject_adapters(model, method="snell", target_modules=VIT_LAYERS, modules_to_save="head", r=4,
                               sparsity=0.5)
    perturb(adapters)
    with torch.no_grad():
        out = model(x)
        twin = copy.deepcopy(model)  # the class swap and the adapter survive a deepcopy
        assert torch.equal(twin(x), out)
        plain = adapters.merge_and_unload()
        assert plain is model and type(model.blocks[0].attn.qkv) is nn.Linear
        assert not any(".adapter." in k for k in model.state_dict())
        assert torch.allclose(model(x), out, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="removed"):
        adapters.merge()


def test_timm_vit_tiny_counts_match_peft_lora():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, weight_init="skip")
    adapters = inject_adapters(model, method="lora", target_modules=r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
                               modules_to_save=["head"], r=8)
    assert len(adapters.adapters) == 48 and type(model.patch_embed.proj) is nn.Conv2d
    assert adapters.count()["trainable"] == 296_842  # what peft's LoRA r=8 trains on this model (shared notes)
