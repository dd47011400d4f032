"""A sparse-attention plan: a pattern per self-attention layer and head, saved as JSON.

The plan is plain data (STA and Sparse-vDiT store their searched masks the same way, per
layer and head): the model class it was made for, the layer and head counts, the token
layout and block size it was searched at, the number of first denoising steps run dense,
an optional STA 3D ``tile`` (the blocks are then taken over the tokens in tiled order, see
:mod:`.tiling`; plans saved without it load untiled), and ``patterns[layer][head]``, a pattern spec (:mod:`.patterns`). The block density of each
entry is stored next to it for reading; loading parses and checks everything (no code is
executed: the specs go through a strict grammar) and recomputes the densities.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from sparsity_core.validation import check_int, check_range

from .layout import TokenLayout
from .patterns import Pattern, block_mask, check_block_size
from .patterns import density as pattern_density
from .tiling import Tile, check_tile

FORMAT = "sparsity-suite/video-attention-plan"
VERSION = 1


@dataclass
class AttentionPlan:
    """Per-layer, per-head attention patterns for one model class and token layout.

    Args:
        model: class name of the transformer (``"WanTransformer3DModel"``).
        layout: the self-attention token layout the plan was made for.
        patterns: ``patterns[layer][head]`` pattern specs.
        block_size: tokens per attention block.
        dense_steps: the first denoising steps run dense (Sparse VideoGen's warm-up).
        tile: ``(t, h, w)`` STA tile (Zhang et al., 2025, arXiv:2502.04507): the kernel runs
            on the tokens in tiled order, each block a 3D box; ``None`` keeps frame-major order.
    """

    model: str
    layout: TokenLayout
    patterns: List[List[str]]
    block_size: int = 128
    dense_steps: int = 0
    tile: Optional[Tile] = None
    parsed: List[List[Pattern]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"AttentionPlan.model must be a model class name, got {self.model!r}")
        if not isinstance(self.layout, TokenLayout):
            raise ValueError(f"AttentionPlan.layout must be a TokenLayout, got {type(self.layout).__name__}")
        check_block_size(self.block_size, self.layout)
        check_int(self.dense_steps, "dense_steps", minimum=0)
        self.tile = check_tile(self.tile)
        if not isinstance(self.patterns, list) or not self.patterns \
                or not all(isinstance(row, list) and row for row in self.patterns):
            raise ValueError("AttentionPlan.patterns must be a non-empty list (layers) of non-empty lists (heads)")
        if len({len(row) for row in self.patterns}) != 1:
            raise ValueError(f"every layer needs the same number of heads, got {[len(r) for r in self.patterns]}")
        self.parsed = [[Pattern.parse(p) for p in row] for row in self.patterns]
        self.patterns = [[str(p) for p in row] for row in self.parsed]

    @property
    def layers(self) -> int:
        return len(self.patterns)

    @property
    def heads(self) -> int:
        return len(self.patterns[0])

    def densities(self) -> List[List[float]]:
        """Fraction of query-key pairs each head computes."""
        s, bs = self.layout.total, self.block_size
        return [[pattern_density(block_mask(p, self.layout, bs, self.tile), s, bs) for p in row]
                for row in self.parsed]

    def mean_density(self) -> float:
        d = self.densities()
        return sum(map(sum, d)) / (self.layers * self.heads)

    @classmethod
    def uniform(cls, model: str, layout: TokenLayout, layers: int, heads: int, pattern: str = "dense",
                **kwargs: object) -> "AttentionPlan":
        """One pattern for every layer and head."""
        check_int(layers, "layers", minimum=1)
        check_int(heads, "heads", minimum=1)
        return cls(model, layout, [[pattern] * heads for _ in range(layers)], **kwargs)

    @classmethod
    def at_density(cls, model: str, layout: TokenLayout, layers: int, heads: int, density: float,
                   candidates: Sequence[str], block_size: int = 128, **kwargs: object) -> "AttentionPlan":
        """A uniform plan with the candidate whose block density is closest to ``density`` ∈ (0, 1]
        (``"dense"`` when it is 1), e.g. the single-pattern baseline of a searched plan."""
        check_range(density, "density", 0.0, 1.0, low_open=True)
        if not candidates:
            raise ValueError("at_density needs at least one candidate pattern")
        check_block_size(block_size, layout)
        s, tile = layout.total, check_tile(kwargs.get("tile"))
        best = "dense" if density == 1.0 else min(candidates, key=lambda p: abs(
            pattern_density(block_mask(p, layout, block_size, tile), s, block_size) - density))
        return cls.uniform(model, layout, layers, heads, best, block_size=block_size, **kwargs)

    # -- JSON --------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, object]:
        out = {"format": FORMAT, "version": VERSION, "model": self.model, "layout": self.layout.to_dict(),
               "block_size": self.block_size, "dense_steps": self.dense_steps, "patterns": self.patterns,
               "density": [[round(d, 6) for d in row] for row in self.densities()]}
        if self.tile is not None:  # untiled plans keep the original format
            out["tile"] = list(self.tile)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> "AttentionPlan":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a video attention plan (expected format {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported plan version {data.get('version')!r}; this library reads {VERSION}")
        keys = {"format", "version", "model", "layout", "block_size", "dense_steps", "patterns", "density", "tile"}
        unknown = sorted(set(data) - keys)
        if unknown:
            raise ValueError(f"unknown plan keys {unknown}; valid: {sorted(keys)}")
        plan = cls(data.get("model"), TokenLayout.from_dict(data.get("layout")), data.get("patterns"),
                   block_size=data.get("block_size", 128), dense_steps=data.get("dense_steps", 0),
                   tile=data.get("tile"))
        stored = data.get("density")
        if stored is not None:
            check_densities(stored, plan.layers, plan.heads)
        return plan

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "AttentionPlan":
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}): not a video attention plan") from None
        return cls.from_dict(data)


def check_densities(values: Sequence[Sequence[object]], layers: int, heads: int) -> None:
    """A ``[layers][heads]`` table of densities in ``(0, 1]``."""
    if not isinstance(values, list) or len(values) != layers or any(
            not isinstance(r, list) or len(r) != heads for r in values):
        raise ValueError(f"plan densities must be a [{layers}][{heads}] table")
    for i, row in enumerate(values):
        for h, d in enumerate(row):
            check_range(d, f"density of layer {i} head {h}", 0.0, 1.0, low_open=True)
