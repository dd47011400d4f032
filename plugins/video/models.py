"""What the plugin knows about each supported diffusers video transformer.

For every class: where its self-attention layers are, which function its processor calls
for the attention product (and whether q/k/v come as ``[B, S, H, D]`` for diffusers'
``dispatch_attention_fn`` or ``[B, H, S, D]`` for ``F.scaled_dot_product_attention``), and
the self-attention token layout of a forward call (frames × height × width after patching,
text tokens before or after the video ones). Cross-attention layers are never touched.

Mochi (``MochiAttnProcessor2_0``) joins each sample's video tokens with its *valid* text
tokens only, ``[video; text[mask_b]]``, and calls ``F.scaled_dot_product_attention`` (q/k/v
``[1, H, S, D]``) once per batch element, so per-sample lengths differ when the
``encoder_attention_mask`` pads the prompt. Its layout's ``text`` is the padded prompt length
``N`` (``encoder_hidden_states.shape[1]``, an upper bound that keeps a plan valid for every
prompt of that length); a call with ``F·H·W + n`` tokens, ``n ≤ N``, is that layout with
``n`` text tokens (``variable_text``: text is dense in every pattern, so this is exact).
Its attention modules have no ``set_processor`` and the model no ``attn_processors``: the
processors are assigned per layer.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Tuple

from torch import nn

from .layout import TokenLayout


def _size(p: Any, i: int) -> int:
    return int(p[i]) if isinstance(p, (tuple, list)) else int(p)


def _wan_layout(model: nn.Module, args: Mapping[str, Any]) -> TokenLayout:
    _, _, f, h, w = args["hidden_states"].shape
    p = model.config.patch_size
    return TokenLayout(f // _size(p, 0), h // _size(p, 1), w // _size(p, 2))


def _cogvideox_layout(model: nn.Module, args: Mapping[str, Any]) -> TokenLayout:
    _, f, _, h, w = args["hidden_states"].shape
    p, pt = model.config.patch_size, model.config.patch_size_t or 1
    return TokenLayout((f + pt - 1) // pt, h // p, w // p, text=int(args["encoder_hidden_states"].shape[1]),
                       text_first=True)


def _hunyuan_layout(model: nn.Module, args: Mapping[str, Any]) -> TokenLayout:
    _, _, f, h, w = args["hidden_states"].shape
    p, pt = model.config.patch_size, model.config.patch_size_t
    return TokenLayout(f // pt, h // p, w // p, text=int(args["encoder_hidden_states"].shape[1]), text_first=False)


def _mochi_layout(model: nn.Module, args: Mapping[str, Any]) -> TokenLayout:
    _, _, f, h, w = args["hidden_states"].shape
    p = model.config.patch_size
    return TokenLayout(f, h // p, w // p, text=int(args["encoder_hidden_states"].shape[1]), text_first=False)


def _ltx_layout(model: nn.Module, args: Mapping[str, Any]) -> TokenLayout:
    p, pt = model.config.patch_size, model.config.patch_size_t
    return TokenLayout(int(args["num_frames"]) // pt, int(args["height"]) // p, int(args["width"]) // p)


@dataclass(frozen=True)
class ModelSpec:
    """``attention``: ``(block list attribute, self-attention module name of its block i)``
    per kind of block, in execution order; ``hook``: ``(module, attribute)`` the processor
    calls for the attention product; ``qkv``: that function's tensor layout;
    ``variable_text``: a call may hold fewer text tokens than the layout (Mochi's valid
    tokens per sample, text after the video)."""

    attention: Tuple[Tuple[str, str], ...]
    hook: Tuple[str, str]
    qkv: str
    layout: Callable[[nn.Module, Mapping[str, Any]], TokenLayout]
    variable_text: bool = False


SPECS: Dict[str, ModelSpec] = {
    "WanTransformer3DModel": ModelSpec((("blocks", "blocks.{i}.attn1"),),
                                       ("diffusers.models.transformers.transformer_wan", "dispatch_attention_fn"),
                                       "BSHD", _wan_layout),
    "CogVideoXTransformer3DModel": ModelSpec((("transformer_blocks", "transformer_blocks.{i}.attn1"),),
                                             ("torch.nn.functional", "scaled_dot_product_attention"),
                                             "BHSD", _cogvideox_layout),
    "HunyuanVideoTransformer3DModel": ModelSpec(
        (("transformer_blocks", "transformer_blocks.{i}.attn"),
         ("single_transformer_blocks", "single_transformer_blocks.{i}.attn")),
        ("diffusers.models.transformers.transformer_hunyuan_video", "dispatch_attention_fn"), "BSHD",
        _hunyuan_layout),
    "LTXVideoTransformer3DModel": ModelSpec((("transformer_blocks", "transformer_blocks.{i}.attn1"),),
                                            ("diffusers.models.transformers.transformer_ltx", "dispatch_attention_fn"),
                                            "BSHD", _ltx_layout),
    "MochiTransformer3DModel": ModelSpec((("transformer_blocks", "transformer_blocks.{i}.attn1"),),
                                         ("torch.nn.functional", "scaled_dot_product_attention"),
                                         "BHSD", _mochi_layout, variable_text=True),
}


def model_spec(model: nn.Module) -> ModelSpec:
    """The spec of ``model``'s class; ``ValueError`` naming the supported classes."""
    name = type(model).__name__
    if name not in SPECS:
        raise ValueError(f"sparse attention does not support {name}; supported model classes: {sorted(SPECS)}")
    return SPECS[name]


def attention_names(model: nn.Module) -> List[str]:
    """Names of the self-attention modules, in layer order (the plan's layer index)."""
    return [template.format(i=i) for blocks, template in model_spec(model).attention
            for i in range(len(getattr(model, blocks)))]


def attention_layers(model: nn.Module) -> List[nn.Module]:
    """The self-attention modules, in layer order."""
    return [model.get_submodule(name) for name in attention_names(model)]


def num_heads(model: nn.Module) -> int:
    return int(model.config.num_attention_heads)


def hook_owner(spec: ModelSpec) -> Tuple[Any, str]:
    module, attr = spec.hook
    return importlib.import_module(module), attr


def bind_forward(model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The forward call's arguments by name."""
    bound = inspect.signature(model.forward).bind_partial(*args, **kwargs)
    return dict(bound.arguments)
