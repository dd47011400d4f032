"""Boolean masks stored one bit per entry: ``pack_bits`` / ``unpack_bits`` (uint8 tensors,
eight entries per byte, first entry in the highest bit, as ``numpy.packbits``)."""
from __future__ import annotations

from typing import Sequence

import torch

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """``ceil(numel / 8)`` bytes holding ``mask`` flattened."""
    flat = mask.reshape(-1).bool().cpu()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, torch.zeros(pad, dtype=torch.bool)])
    return (flat.reshape(-1, 8).to(torch.uint8) * _WEIGHTS).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The bool mask of ``shape`` that :func:`pack_bits` stored."""
    n = int(torch.Size(shape).numel())
    if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
        raise ValueError(f"{packed.numel()} packed bytes ({packed.dtype}) do not hold a mask of shape {tuple(shape)}")
    bits = (packed.reshape(-1, 1) & _WEIGHTS) != 0
    return bits.reshape(-1)[:n].reshape(tuple(shape))
