"""Export: BatchNorm folding is exact; saved files reload (the state dict with weights_only)."""
import json

import pytest
import torch

from sparsity_core.macs import count_macs
from sparsity_plugins.vision import fold_batchnorm, optimize_for_inference, save_pruned
from sparsity_plugins.vision.removal import remove_channels

from .models import example, randomize_norms, tiny
from .test_groups_removal import build


def test_fold_batchnorm_is_numerically_equal():
    model = tiny("resnet")
    randomize_norms(model)
    model.eval()
    x = example(2)
    with torch.no_grad():
        ref = model(x)
    n = fold_batchnorm(model, x)
    assert n == sum(1 for m in tiny("resnet").modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)


def test_optimized_pruned_model_matches_and_reloads(tmp_path):
    model, groups, ctrl, opt = build("resnet")
    record = remove_channels(groups, ctrl.masks, [opt])
    model.eval()
    x = example(2)
    with torch.no_grad():
        ref = model(x)
    fast, info = optimize_for_inference(model, x)
    assert info["memory_format"] in ("channels_last", "contiguous") and info["batchnorms_folded"] > 0
    fmt = torch.channels_last if info["memory_format"] == "channels_last" else torch.contiguous_format
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=fmt)), ref, atol=1e-5)
    save_pruned(model, tmp_path, info)
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert not hasattr(loaded, "_sparsity_pruning_record")
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), ref, atol=1e-6)
    state = torch.load(tmp_path / "state_dict.pt", weights_only=True)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in model.state_dict().items()}
    meta = json.loads((tmp_path / "pruning.json").read_text())
    assert meta["record"]["kept"] == record.kept
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())


def test_vision_counter_adds_attention_matrix_products():
    import timm

    from sparsity_plugins.vision.report import count_macs_params

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16, depth=1)
    x = torch.randn(1, 3, 32, 32)
    macs = count_macs_params(model, x)["macs"]
    linear_and_conv = sum(count_macs(model, x).values())
    # 5 tokens (4 patches + class), 3 heads of 64: QKᵀ and attention·V, 2 · 3 · 5² · 64 each block
    assert macs - linear_and_conv == 2 * 3 * 5 * 5 * 64


def test_optimize_for_inference_chooses_among_all_candidates_in_one_timing():
    model, *_ = build("resnet")
    model.eval()
    x = example(2)
    with torch.no_grad():
        ref = model(x)
    fast, info = optimize_for_inference(model, x, torchscript="auto", repeats=2)
    measured = info["candidates_ms"]
    assert set(measured) == {"contiguous", "channels_last", "contiguous+torchscript", "channels_last+torchscript"}
    best = min(measured, key=measured.get)
    assert info["memory_format"] == best.split("+")[0]
    assert info["torchscript"] == best.endswith("+torchscript")
    assert isinstance(fast, torch.jit.ScriptModule) == info["torchscript"]
    fmt = torch.channels_last if info["memory_format"] == "channels_last" else torch.contiguous_format
    with torch.no_grad():
        assert torch.allclose(fast(x.contiguous(memory_format=fmt)), ref, atol=1e-5)


def test_optimize_for_inference_fixed_choices_time_nothing_and_bad_choices_are_refused():
    model, *_ = build("resnet")
    x = example(2)
    fast, info = optimize_for_inference(model, x, memory_format="contiguous")
    assert info["candidates_ms"] == {} and info["memory_format"] == "contiguous" and not info["torchscript"]
    with pytest.raises(ValueError, match="memory_format"):
        optimize_for_inference(model, x, memory_format="nhwc")
    with pytest.raises(ValueError, match="torchscript"):
        optimize_for_inference(model, x, torchscript="yes")
