"""SliceGPT's plans: which modules read, write and normalise the residual stream of a
transformer (:class:`ResidualPlan`), with builders for Hugging Face BERT-style (post-LN) and
timm ViT (pre-LN) models; :func:`~.slicegpt.slice_gpt` executes a plan."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

NORM_POSITIONS = ("pre", "post")


@dataclass
class ResidualBlock:
    """One residual branch: ``readers`` (``nn.Linear``) read its input, ``writer``
    (``nn.Linear``) adds its output to the stream, ``norm`` (``nn.LayerNorm``) is the norm
    before the readers (pre-LN) or after the addition (post-LN). ``scale``: an optional module
    with a ``gamma`` vector between the writer and the addition (timm's LayerScale), folded
    into the writer."""

    readers: Sequence[str]
    writer: str
    norm: str
    scale: Optional[str] = None


@dataclass
class ResidualPlan:
    """The residual stream of a transformer, by module name.

    Args:
        norm: ``"pre"`` or ``"post"`` (where the blocks' LayerNorms sit).
        embeddings: what writes the initial stream: ``nn.Embedding`` / ``nn.Linear`` /
            ``nn.Conv*`` modules and parameters (last dimension = the width), summed.
        blocks: the residual branches in forward order.
        embed_norm: post-LN: the norm applied to the embeddings' sum (required).
        final_norm: pre-LN: the norm after the last block (required).
        head: pre-LN: linears reading the final norm (folded); none: the final norm outputs
            the full width.
    """

    norm: str
    embeddings: Sequence[str]
    blocks: Sequence[ResidualBlock]
    embed_norm: Optional[str] = None
    final_norm: Optional[str] = None
    head: Sequence[str] = ()


def bert_plan(model: nn.Module) -> ResidualPlan:
    """The plan of a Hugging Face BERT encoder (``BertModel``, or a model holding one as
    ``.bert``): post-LN, word/position/token-type embeddings, two branches per layer."""
    prefix = "bert." if hasattr(model, "bert") and not hasattr(model, "encoder") else ""
    root = model.bert if prefix else model
    if not (hasattr(root, "embeddings") and hasattr(root, "encoder") and hasattr(root.encoder, "layer")):
        raise ValueError("bert_plan needs a BERT-style model with .embeddings and .encoder.layer")
    emb = [f"{prefix}embeddings.{n}" for n in ("word_embeddings", "position_embeddings", "token_type_embeddings")
           if isinstance(getattr(root.embeddings, n, None), nn.Embedding)]
    blocks = []
    for i in range(len(root.encoder.layer)):
        layer = f"{prefix}encoder.layer.{i}"
        blocks.append(ResidualBlock([f"{layer}.attention.self.{n}" for n in ("query", "key", "value")],
                                    f"{layer}.attention.output.dense", f"{layer}.attention.output.LayerNorm"))
        blocks.append(ResidualBlock([f"{layer}.intermediate.dense"], f"{layer}.output.dense",
                                    f"{layer}.output.LayerNorm"))
    return ResidualPlan("post", emb, blocks, embed_norm=f"{prefix}embeddings.LayerNorm")


def vit_plan(model: nn.Module) -> ResidualPlan:
    """The plan of a timm ``VisionTransformer`` (pre-LN): patch embedding, class/register
    tokens and position embedding write the stream; ``norm1 → attn.qkv … attn.proj`` and
    ``norm2 → mlp.fc1 … mlp.fc2`` per block; the final ``norm`` (or ``fc_norm`` with average
    pooling) read by ``head``."""
    for name in ("patch_embed", "blocks"):
        if not hasattr(model, name):
            raise ValueError(f"vit_plan needs a timm VisionTransformer (no .{name})")
    for name in ("norm_pre",):
        if not isinstance(getattr(model, name, nn.Identity()), nn.Identity):
            raise ValueError(f"vit_plan: a non-identity {name} is not supported")
    if not isinstance(getattr(model.patch_embed, "norm", nn.Identity()), nn.Identity):
        raise ValueError("vit_plan: a patch-embedding norm is not supported")
    if getattr(model, "global_pool", "token") not in ("token", "avg", ""):
        raise ValueError(f"vit_plan: global_pool={model.global_pool!r} is not supported (token or avg)")
    emb = ["patch_embed.proj"] + [n for n in ("cls_token", "reg_token", "pos_embed")
                                  if isinstance(getattr(model, n, None), torch.Tensor)]
    blocks = []
    for i, block in enumerate(model.blocks):
        for norm, attn_or_mlp, readers, writer, ls in (("norm1", "attn", ["qkv"], "proj", "ls1"),
                                                        ("norm2", "mlp", ["fc1"], "fc2", "ls2")):
            scale = getattr(block, ls, None)
            blocks.append(ResidualBlock([f"blocks.{i}.{attn_or_mlp}.{r}" for r in readers],
                                        f"blocks.{i}.{attn_or_mlp}.{writer}", f"blocks.{i}.{norm}",
                                        None if scale is None or isinstance(scale, nn.Identity) else f"blocks.{i}.{ls}"))
    final = "norm" if not isinstance(getattr(model, "norm", nn.Identity()), nn.Identity) else "fc_norm"
    head = ["head"] if isinstance(getattr(model, "head", None), nn.Linear) else []
    return ResidualPlan("pre", emb, blocks, final_norm=final, head=head)
