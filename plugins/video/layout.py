"""Token layout of a video transformer's self-attention sequence.

After patching, a video latent of ``F`` frames of ``H × W`` patches is a sequence of
``F·H·W`` tokens in frame-major order: token ``v`` sits at frame ``t = v // (H·W)``, row
``y = (v // W) % H`` and column ``x = v % W``. Some models join text tokens to the same
sequence (CogVideoX ``[text; video]``, HunyuanVideo ``[video; text]``); text tokens are kept
dense by every pattern (they attend to everything and everything attends to them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor

from sparsity_core.validation import check_int


@dataclass(frozen=True)
class TokenLayout:
    """``frames × height × width`` video tokens plus ``text`` text tokens, before
    (``text_first=True``) or after the video tokens."""

    frames: int
    height: int
    width: int
    text: int = 0
    text_first: bool = False

    def __post_init__(self) -> None:
        for what in ("frames", "height", "width"):
            check_int(getattr(self, what), f"TokenLayout.{what}", minimum=1)
        check_int(self.text, "TokenLayout.text", minimum=0)
        if not isinstance(self.text_first, bool):
            raise ValueError(f"TokenLayout.text_first must be a bool, got {self.text_first!r}")

    @property
    def frame_tokens(self) -> int:
        return self.height * self.width

    @property
    def video(self) -> int:
        return self.frames * self.frame_tokens

    @property
    def total(self) -> int:
        return self.video + self.text

    @property
    def video_start(self) -> int:
        return self.text if self.text_first else 0

    def coords(self, positions: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(is_text, t, y, x)`` of sequence ``positions`` (coordinates of text tokens are -1)."""
        v = positions - self.video_start
        is_text = (v < 0) | (v >= self.video)
        v = v.clamp(0, self.video - 1)
        t, y, x = v // self.frame_tokens, (v // self.width) % self.height, v % self.width
        neg = torch.full_like(v, -1)
        return is_text, torch.where(is_text, neg, t), torch.where(is_text, neg, y), torch.where(is_text, neg, x)

    def to_dict(self) -> Dict[str, object]:
        return {"frames": self.frames, "height": self.height, "width": self.width, "text": self.text,
                "text_first": self.text_first}

    @classmethod
    def from_dict(cls, data: Dict[str, object]) -> "TokenLayout":
        if not isinstance(data, dict):
            raise ValueError(f"a token layout is a mapping, got {type(data).__name__}")
        keys = {"frames", "height", "width", "text", "text_first"}
        unknown = sorted(set(data) - keys)
        if unknown:
            raise ValueError(f"unknown token layout keys {unknown}; valid: {sorted(keys)}")
        return cls(**data)
