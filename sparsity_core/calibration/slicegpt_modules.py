"""Modules of a SliceGPT-rotated model (:mod:`.slicegpt`): the LayerNorm of the sliced stream
(:class:`StreamNorm`), and writers / readers of the residual stream re-expressed in a basis
``Q`` (``D × d``), built in float64 and stored in each module's dtype; modules are replaced,
never edited.
"""
from __future__ import annotations

import copy
from typing import Any, Optional, Tuple

import torch
from torch import nn

# -- the normalisation on the sliced stream ------------------------------------------------
class StreamNorm(nn.Module):
    """LayerNorm of the reconstruction ``x̃Q_dᵀ`` computed on the rotated, sliced stream ``x̃``
    (width ``d``): ``y = x̃ / σ``, ``σ² = (‖x̃‖² − (x̃·u)²)/D + eps``, ``u = Q_dᵀ1/√D``; then
    ``out`` (a linear holding ``γ``, ``β``, the centring and the next basis) if given. Without
    ``out`` the affine part lives in the linears that read it."""

    def __init__(self, u: torch.Tensor, full_dim: int, eps: float, out: Optional[nn.Linear] = None) -> None:
        super().__init__()
        self.register_buffer("u", u.detach().clone())
        self.full_dim = int(full_dim)
        self.eps = float(eps)
        self.out = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_part = x @ self.u
        var = ((x * x).sum(dim=-1) - mean_part * mean_part).clamp_min(0.0) / self.full_dim
        y = x * torch.rsqrt(var + self.eps).unsqueeze(-1)
        return self.out(y) if self.out is not None else y

    def extra_repr(self) -> str:
        return f"width={self.u.numel()}, full_dim={self.full_dim}, eps={self.eps}"


# -- helpers ----------------------------------------------------------------------------------
def device_dtype(module: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first parameter or buffer (CPU float32 if none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def linear_like(weight: torch.Tensor, bias: Optional[torch.Tensor], like: nn.Module) -> nn.Linear:
    device, dtype = device_dtype(like)
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=device, dtype=dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out


def norm_affine(norm: nn.LayerNorm, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    dev = device_dtype(norm)[0]
    gamma = norm.weight.detach().double() if norm.weight is not None else torch.ones(width, dtype=torch.float64, device=dev)
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros(width, dtype=torch.float64, device=dev)
    return gamma, beta


def centring(width: int, device: torch.device) -> torch.Tensor:
    return torch.eye(width, dtype=torch.float64, device=device) - 1.0 / width


# -- rewriting modules -------------------------------------------------------------------------
def write_into(module: Any, q: torch.Tensor, gamma: Optional[torch.Tensor] = None) -> Any:
    """A writer re-expressed in the basis ``q`` (``D × d``): its outputs become ``out·q``.
    ``gamma`` (LayerScale) multiplies the outputs first."""
    if isinstance(module, torch.Tensor):
        p = module.detach().double()
        return nn.Parameter((p @ q.to(p.device)).to(module.dtype), requires_grad=module.requires_grad)
    w = module.weight.detach().double()
    q = q.to(w.device)
    if isinstance(module, nn.Embedding):
        return nn.Embedding(module.num_embeddings, q.shape[1], padding_idx=module.padding_idx,
                            max_norm=module.max_norm, norm_type=module.norm_type,
                            scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse,
                            _weight=(w @ q).to(module.weight.dtype), _freeze=not module.weight.requires_grad)
    b = module.bias.detach().double() if module.bias is not None else None
    if gamma is not None:
        g = gamma.detach().double().to(w.device)
        w = w * g.reshape(-1, *([1] * (w.dim() - 1)))
        b = b * g if b is not None else None
    flat = q.T @ w.reshape(w.shape[0], -1)
    nb = q.T @ b if b is not None else None
    if isinstance(module, nn.Linear):
        return linear_like(flat, nb, module)
    new = copy.deepcopy(module)  # a convolution
    new.weight = nn.Parameter(flat.reshape(q.shape[1], *w.shape[1:]).to(module.weight.dtype))
    if nb is not None:
        new.bias = nn.Parameter(nb.to(module.bias.dtype))
    new.out_channels = q.shape[1]
    return new


def read_from(module: nn.Linear, q: torch.Tensor, gamma: Optional[torch.Tensor] = None,
               beta: Optional[torch.Tensor] = None) -> nn.Linear:
    """A reader of the reconstruction ``x̃qᵀ`` (``gamma``/``beta``: it reads the centred,
    normalised reconstruction through a LayerNorm folded into it)."""
    w = module.weight.detach().double()
    q = q.to(w.device)
    b = module.bias.detach().double() if module.bias is not None else None
    if gamma is not None:
        w = w * gamma.to(w.device) @ centring(w.shape[1], w.device)
        shift = module.weight.detach().double() @ beta.to(w.device)
        b = shift if b is None else b + shift
    return linear_like(w @ q, b, module)


def norm_out(norm: nn.LayerNorm, q_in: torch.Tensor, q_out: Optional[torch.Tensor]) -> StreamNorm:
    """``StreamNorm`` of the stream in basis ``q_in`` whose output is ``LN(x̃q_inᵀ)`` expressed in
    ``q_out`` (``None``: the full width)."""
    width = q_in.shape[0]
    dev, dtype = device_dtype(norm)
    gamma, beta = (t.to(dev) for t in norm_affine(norm, width))
    q_in = q_in.to(dev)
    full = (gamma.unsqueeze(1) * centring(width, dev)) @ q_in  # D × d_in: diag(γ) C Q_in
    if q_out is None:
        weight, bias = full, beta
    else:
        q_out = q_out.to(dev)
        weight, bias = q_out.T @ full, q_out.T @ beta
    out = linear_like(weight, bias, norm)
    u = q_in.sum(dim=0) / width ** 0.5
    return StreamNorm(u.to(dtype), width, norm.eps, out)


def plain_norm(norm: nn.LayerNorm, q: torch.Tensor) -> StreamNorm:
    u = q.sum(dim=0) / q.shape[0] ** 0.5
    dev, dtype = device_dtype(norm)
    return StreamNorm(u.to(device=dev, dtype=dtype), q.shape[0], norm.eps)
