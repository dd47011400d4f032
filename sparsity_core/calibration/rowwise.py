"""Per-output-row comparison groups: Wanda's choice of which weights compete.

Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language
Models", https://arxiv.org/abs/2306.11695, §3 "Comparison group") ranks the scores
``S_ij = |W_ij|·‖X_j‖₂`` *within each output row* ``i`` and removes the same fraction from
every row, instead of ranking the whole layer: each output neuron keeps the same number of
inputs. The core's layouts choose units per target (``element``: the whole layer competes;
``nm``: groups of ``m`` inputs of one row); :class:`PerRowElements` (registered as
``"per_row"``) is the layout for the per-row group:

- units are the weight's elements (an element layout: the same scores, masks and costs as
  ``element``), so allocators (uniform, OWL, global...) still decide the kept count ``k`` per
  target;
- :meth:`PerRowElements.select` keeps ``⌊k/R⌋`` entries of every row (``R`` = dim 0, the output
  rows; a convolution's row is one filter, all its inputs × kernel positions), the highest
  scores of the row; the ``k mod R`` remaining entries go to the rows whose next-best score is
  highest, so the layer keeps exactly ``k``. Ties are broken by position (stable sort).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layouts import Elements, Shape
from ..registry import LAYOUTS


@LAYOUTS.register("per_row")
@dataclass(frozen=True)
class PerRowElements(Elements):
    """Element units compared within each output row (dim 0) of a 2-D or larger weight."""

    name = "per_row"

    def validate(self, shape: Shape, target: str) -> None:
        if len(shape) < 2:
            raise ValueError(f"per-row comparison on {target!r} needs a 2-D or larger weight (rows = dim 0), "
                             f"got shape {tuple(shape)}")

    def select(self, scores: torch.Tensor, keep: int, shape: Shape) -> torch.Tensor:
        rows = int(shape[0])
        per_row = scores.reshape(rows, -1)
        cols = per_row.shape[1]
        if not 0 <= keep <= rows * cols:
            raise ValueError(f"keep must be in [0, {rows * cols}], got {keep}")
        base, extra = divmod(int(keep), rows)
        counts = torch.full((rows,), base, dtype=torch.long, device=per_row.device)
        thr = torch.full((rows,), float("inf"), dtype=per_row.dtype, device=per_row.device)
        if base:
            thr = kth_largest(per_row, base)
        if extra:  # the remaining units go to the rows whose next-best score is highest
            nxt = kth_largest(per_row, base + 1)
            more = torch.argsort(nxt, descending=True, stable=True)[:extra]
            counts[more] += 1
            thr[more] = nxt[more]
        return keep_above(per_row, counts, thr).reshape(shape)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest entry of every row (``1 <= k <= columns``), in O(columns) per row."""
    return torch.kthvalue(values, values.shape[1] - k + 1, dim=1).values


def keep_above(values: torch.Tensor, counts: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """Boolean mask keeping, in row ``i``, the ``counts[i]`` entries ``>= thr[i]`` (its
    ``counts[i]``-th largest value): everything above it, then ties by position (earlier first),
    as a stable descending sort would."""
    thr = thr.unsqueeze(1)
    above = values > thr
    ties = values == thr
    need = (counts - above.sum(dim=1)).unsqueeze(1)
    return above | (ties & (ties.cumsum(dim=1) <= need))
