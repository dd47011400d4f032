"""Adapter-only save and load: safetensors or weights_only torch files with a JSON config,
round trips with equal outputs, and clear errors (model unchanged) on models that differ."""
import json
import os

import pytest
import torch

from sparsity_plugins.peft import inject_adapters, load_adapters
from sparsity_plugins.peft import persist

from .helpers import METHODS, assert_unchanged, perturb, snapshot
from .models import BERT_LAYERS, VIT_LAYERS, MLP, bert_input, tiny_bert, tiny_vit, vit_input


@pytest.mark.parametrize("method", sorted(METHODS))
def test_round_trip_gives_equal_outputs(tmp_path, method):
    model, x = tiny_vit(), vit_input()
    adapters = inject_adapters(model, method=method, target_modules=VIT_LAYERS, modules_to_save="head",
                               **METHODS[method])
    perturb(adapters)
    paths = adapters.save(str(tmp_path))
    assert os.path.basename(paths["tensors"]) == "adapter_model.safetensors"
    meta = json.load(open(paths["config"]))
    assert meta["config"]["method"] == method and meta["layers"]["blocks.0.attn.qkv"] == [48, 16]
    fresh = tiny_vit()  # same base weights (seeded), no adapter
    loaded = load_adapters(fresh, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert set(fresh.state_dict()) == set(model.state_dict())
    assert set(loaded.trainable_parameters()) == set(adapters.trainable_parameters())


def test_torch_format_is_read_with_weights_only(tmp_path, monkeypatch):
    model, batch = tiny_bert(), bert_input()
    adapters = inject_adapters(model, method="snell", target_modules=BERT_LAYERS, r=4, sparsity=0.3)
    perturb(adapters)
    monkeypatch.setattr(persist, "safetensors_torch", lambda: None)  # as without safetensors installed
    paths = adapters.save(str(tmp_path))
    assert paths["tensors"].endswith("adapter_model.pt")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    fresh = tiny_bert()
    load_adapters(fresh, str(tmp_path))
    assert calls == [True]
    with torch.no_grad():
        assert torch.equal(fresh(**batch).last_hidden_state, model(**batch).last_hidden_state)


def test_loading_into_an_injected_set(tmp_path):
    model, x = MLP(), torch.randn(4, 6)
    adapters = inject_adapters(model, method="pst", target_modules=r"fc\d", r=2, r_score=2, sparsity=0.5)
    perturb(adapters)
    adapters.save(str(tmp_path))
    torch.manual_seed(0)
    other = MLP()
    other.load_state_dict({k: v for k, v in model.state_dict().items() if ".adapter." not in k})
    mine = inject_adapters(other, method="pst", target_modules=r"fc\d", r=2, r_score=2, sparsity=0.5)
    assert load_adapters(other, str(tmp_path), adapters=mine) is mine
    assert torch.equal(other(x), model(x))


def test_shapes_that_differ_raise_and_leave_the_model_unchanged(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    adapters = inject_adapters(tiny_vit(), method="lora", target_modules=VIT_LAYERS, modules_to_save="head", r=2)
    adapters.save(str(tmp_path))
    wider = VisionTransformer(img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0,
                              num_classes=3)
    snap = snapshot(wider)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv.*\[72, 24\] here but \[48, 16\]"):
        load_adapters(wider, str(tmp_path))
    assert_unchanged(wider, snap)
    other_head = tiny_vit(num_classes=5)  # adapted layers fit, the saved head does not
    snap = snapshot(other_head)
    with pytest.raises(ValueError, match=r"head\.weight: saved \(3, 16\), model \(5, 16\)"):
        load_adapters(other_head, str(tmp_path))
    assert_unchanged(other_head, snap)
    mlp = MLP()
    snap = snapshot(mlp)
    with pytest.raises(ValueError, match="is not a module of this model"):
        load_adapters(mlp, str(tmp_path))
    assert_unchanged(mlp, snap)


def test_missing_or_foreign_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapters(MLP(), str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"format": "peft"}))
    with pytest.raises(ValueError, match="is not a sparsity-suite-adapter"):
        load_adapters(MLP(), str(tmp_path))
