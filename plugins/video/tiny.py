"""Tiny random-initialised diffusers video transformers and inputs for them (offline).

Built from a config only (no download), seeded, fp32. Used by the tests, the recipe and the
benchmarks; sizes follow the probe in ``shared/notes/diffusers_sparse_attention.md``.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from ._deps import diffusers

#: supported model kinds -> class names
KINDS = {"wan": "WanTransformer3DModel", "cogvideox": "CogVideoXTransformer3DModel",
         "hunyuan": "HunyuanVideoTransformer3DModel", "ltx": "LTXVideoTransformer3DModel",
         "mochi": "MochiTransformer3DModel"}


def tiny_model(kind: str, heads: int = 2, head_dim: int = 8, layers: int = 2, ffn_mult: int = 2,
               seed: int = 0) -> nn.Module:
    """A random-init transformer of ``kind`` (one of :data:`KINDS`, feed-forward width
    ``ffn_mult × heads × head_dim`` for Wan), in eval mode."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {sorted(KINDS)}")
    torch.manual_seed(seed)
    d = diffusers()
    dim = heads * head_dim
    if kind == "wan":
        m = d.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                                    in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=ffn_mult * dim,
                                    num_layers=layers, rope_max_seq_len=64)
    elif kind == "cogvideox":
        m = d.CogVideoXTransformer3DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                          out_channels=4, time_embed_dim=8, text_embed_dim=8, num_layers=layers,
                                          sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
                                          max_text_seq_length=8,
                                          use_rotary_positional_embeddings=head_dim % 16 == 0)
    elif kind == "hunyuan":  # ``layers`` double-stream blocks + ``layers`` single-stream blocks
        m = d.HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=heads,
                                             attention_head_dim=head_dim, num_layers=layers, num_single_layers=layers,
                                             num_refiner_layers=1, patch_size=2, patch_size_t=1,
                                             guidance_embeds=False, text_embed_dim=16, pooled_projection_dim=8,
                                             rope_axes_dim=_hunyuan_rope(head_dim))
    elif kind == "mochi":
        m = d.MochiTransformer3DModel(patch_size=2, num_attention_heads=heads, attention_head_dim=head_dim,
                                      num_layers=layers, pooled_projection_dim=8, in_channels=4, text_embed_dim=16,
                                      time_embed_dim=16, max_sequence_length=8)
    else:
        m = d.LTXVideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                         num_attention_heads=heads, attention_head_dim=head_dim,
                                         cross_attention_dim=dim, num_layers=layers, caption_channels=16)
    return m.eval()


def tiny_inputs(model: nn.Module, frames: int = 3, height: int = 8, width: int = 8, seed: int = 0,
                timestep: float = 500.0) -> Dict[str, Any]:
    """Forward keyword arguments: a latent of ``frames × height × width`` (before patching)."""
    g = torch.Generator().manual_seed(seed)
    name = type(model).__name__
    t = torch.tensor([timestep])
    if name == "WanTransformer3DModel":
        return {"hidden_states": torch.randn(1, 4, frames, height, width, generator=g), "timestep": t,
                "encoder_hidden_states": torch.randn(1, 8, 16, generator=g), "return_dict": False}
    if name == "CogVideoXTransformer3DModel":
        return {"hidden_states": torch.randn(1, frames, 4, height, width, generator=g), "timestep": t,
                "encoder_hidden_states": torch.randn(1, 8, 8, generator=g),
                "image_rotary_emb": (_cog_rope(model, frames, height, width)
                                     if model.config.use_rotary_positional_embeddings else None),
                "return_dict": False}
    if name == "HunyuanVideoTransformer3DModel":
        return {"hidden_states": torch.randn(1, 4, frames, height, width, generator=g), "timestep": t,
                "encoder_hidden_states": torch.randn(1, 8, 16, generator=g),
                "encoder_attention_mask": torch.ones(1, 8), "pooled_projections": torch.randn(1, 8, generator=g),
                "return_dict": False}
    if name == "LTXVideoTransformer3DModel":
        return {"hidden_states": torch.randn(1, frames * height * width, 4, generator=g), "timestep": t,
                "encoder_hidden_states": torch.randn(1, 8, 16, generator=g),
                "encoder_attention_mask": torch.ones(1, 8), "num_frames": frames, "height": height,
                "width": width, "return_dict": False}
    if name == "MochiTransformer3DModel":  # every prompt token valid (see models.py for padding)
        return {"hidden_states": torch.randn(1, 4, frames, height, width, generator=g), "timestep": t,
                "encoder_hidden_states": torch.randn(1, 8, 16, generator=g),
                "encoder_attention_mask": torch.ones(1, 8), "return_dict": False}
    raise ValueError(f"no inputs for {name}; supported: {sorted(KINDS.values())}")


def _hunyuan_rope(head_dim: int):
    """Rotary axes (t, h, w) summing to the head width, each even."""
    h = w = 2 * (head_dim // 6)
    return (head_dim - h - w, h, w)


def _cog_rope(model: nn.Module, frames: int, height: int, width: int):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    p = model.config.patch_size
    dim = model.config.attention_head_dim
    return get_3d_rotary_pos_embed(dim, (0, 0), (height // p, width // p), frames, grid_type="slice",
                                   max_size=(height // p, width // p))
