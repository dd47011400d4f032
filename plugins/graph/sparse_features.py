"""Sparse node features in a GNN's first layer: ``X W^T`` with ``X`` a CSR matrix.

Bag-of-words features are mostly zeros (Cora: 1.3 % of 2,708 × 1,433). With ``X`` dense a
training step of the first linear layer costs two dense products, ``X W^T`` forward and
``∂L/∂W = (X^T G)^T`` backward (``G = ∂L/∂(X W^T)``), each ``N·F·H`` multiply-adds. With
``X`` in CSR both are sparse-times-dense, ``nnz(X)·H``:

- forward: ``X @ W^T`` (torch's CSR × dense kernel);
- backward: ``(X^T @ G)^T`` with ``X^T`` kept as a CSR matrix too. Its structure (row
  pointers, column indices and the permutation taking ``X``'s values to ``X^T``'s order) is
  computed once per sparsity pattern and reused; only the values are permuted each step,
  so input dropout (which keeps the pattern and zeroes values) costs nothing extra.

Gradients reach ``W`` only: the features are data (``x.requires_grad`` is refused).
:class:`SparseInputLinear` is PyG's ``Linear`` with that path for CSR inputs (and the dense
path otherwise), so state-dict keys, initialisation and parametrizations (UGS's weight
masks) stay those of the layer it replaces.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._deps import torch_geometric

Linear = torch_geometric("nn.dense.linear").Linear


def as_csr(x: Tensor) -> Tensor:
    """``x`` as a 2-D CSR matrix (a CSR ``x`` is returned as is; dense and COO are converted,
    which costs a pass over ``x``: convert once, outside the training loop)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"sparse_features: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"sparse_features: x must be a [nodes, features] matrix, got shape {list(x.shape)}")
    if x.layout == torch.sparse_csr:
        return x
    if x.layout in (torch.strided, torch.sparse_coo):
        return x.to_sparse_csr()
    raise ValueError(f"sparse_features: x must be dense, COO or CSR, got layout {x.layout}")


class CSRTranspose:
    """``X^T`` of a CSR ``X`` as a CSR matrix, its structure cached per sparsity pattern.

    The cache key is the identity of ``X``'s index tensors (their data pointers, sizes and
    the shape); the cache holds those tensors, so their memory cannot be reused by another
    pattern while the key lives. Matrices that share the index tensors (dropout outputs of
    one feature matrix) share the structure."""

    def __init__(self) -> None:
        self._key: Optional[Tuple] = None
        self._held: Tuple[Tensor, ...] = ()
        self._perm = self._crow_t = self._col_t = None

    def __call__(self, x: Tensor) -> Tensor:
        crow, col = x.crow_indices(), x.col_indices()
        rows, cols = x.shape
        key = (crow.data_ptr(), col.data_ptr(), col.numel(), rows, cols, str(x.device))
        if key != self._key:
            perm = torch.argsort(col, stable=True)  # X^T row by row, X's rows ascending within each
            row_of = torch.repeat_interleave(torch.arange(rows, device=x.device), crow.diff())
            crow_t = torch.zeros(cols + 1, dtype=crow.dtype, device=x.device)
            crow_t[1:] = torch.bincount(col, minlength=cols).cumsum(0)
            self._key, self._held = key, (crow, col)
            self._perm, self._crow_t, self._col_t = perm, crow_t, row_of[perm].to(crow.dtype)
        return torch.sparse_csr_tensor(self._crow_t, self._col_t, x.values()[self._perm], (cols, rows),
                                       check_invariants=False)


class _CSRMatmul(torch.autograd.Function):
    """``X @ W^T`` for a CSR ``X`` (no gradient) and a dense ``W``; ``∂L/∂W = (X^T G)^T``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, transpose: CSRTranspose) -> Tensor:
        ctx.x, ctx.transpose = x, transpose
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[1]:
            return None, None, None
        return None, (ctx.transpose(ctx.x) @ grad.contiguous()).t(), None


def csr_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
               transpose: Optional[CSRTranspose] = None) -> Tensor:
    """``x @ weight^T + bias`` for a CSR ``x``, sparse-times-dense forward and backward."""
    if x.layout != torch.sparse_csr:
        raise ValueError(f"csr_linear needs a CSR x, got layout {x.layout}")
    if x.requires_grad:
        raise ValueError("sparse_features: x must not require grad (gradients reach the weight only)")
    if x.size(1) != weight.size(1):
        raise ValueError(f"x has {x.size(1)} features but the weight expects {weight.size(1)}")
    out = _CSRMatmul.apply(x, weight, transpose if transpose is not None else CSRTranspose())
    return out if bias is None else out + bias


class SparseInputLinear(Linear):
    """PyG ``Linear`` that takes a CSR input through :func:`csr_linear` (dense inputs as
    before). Build it from a layer with :meth:`replacing`, which keeps that layer's values."""

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(x, Tensor) and x.layout == torch.sparse_csr:
            transpose = self.__dict__.setdefault("_transpose", CSRTranspose())  # a cache, not state
            return csr_linear(x, self.weight, self.bias, transpose)
        return super().forward(x)

    @classmethod
    def replacing(cls, lin) -> "SparseInputLinear":
        """A copy of PyG ``Linear`` ``lin`` (same configuration and values; the global RNG is
        not advanced, so models built with and without it draw the same numbers)."""
        if not isinstance(lin, Linear):
            raise ValueError(f"expected a torch_geometric Linear, got {type(lin).__name__}")
        with torch.random.fork_rng(devices=[]):
            new = cls(lin.in_channels, lin.out_channels, bias=lin.bias is not None,
                      weight_initializer=lin.weight_initializer, bias_initializer=lin.bias_initializer)
        new.load_state_dict(lin.state_dict())
        return new.to(lin.weight.device)
