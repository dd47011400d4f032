"""SliceGPT: delete rows and columns of transformer weights through computational invariance
(Ashkboos et al., ICLR 2024, "SliceGPT: Compress Large Language Models by Deleting Rows and
Columns", https://arxiv.org/abs/2401.15024).

**Invariance.** LayerNorm is an RMS normalisation of the centred input followed by an affine
map: with ``C = I − 11ᵀ/D`` (centring, ``D`` the width of the residual stream),

    LN(z) = γ ⊙ (zC / σ(z)) + β,     σ(z)² = ‖zC‖²/D + eps.

``‖zCQ‖ = ‖zC‖`` for any orthogonal ``Q`` (``D × D``), so if the residual stream is carried
rotated, ``x̃ = xQ``, every module that writes into it (embeddings, the output linears of
attention and MLP) gets ``W ← QᵀW`` (``b ← Qᵀb``), every linear that reads it gets ``W ← WQ``,
and the norm's ``γ``, ``β`` and ``C`` are folded into the linears next to it, the network
computes the same function: the output at 0% slicing equals the original up to rounding.

**Slicing.** ``Q`` holds the eigenvectors of the calibration activations' second moment
``Σ_r x_r x_rᵀ`` in decreasing order of eigenvalue (PCA without centring, as the paper);
keeping the first ``d`` columns ``Q_d`` (``D × d``) deletes the trailing rows of every writer
and the trailing columns of every reader: the stream has width ``d``. The norm then sees the
reconstruction ``x̃Q_dᵀ``; :class:`StreamNorm` computes LayerNorm of it *exactly* on the
``d``-wide stream: ``σ² = (‖x̃‖² − (x̃·u)²)/D + eps`` with ``u = Q_dᵀ1/√D`` (the mean of the
reconstruction is ``x̃·u/√D``), and ``C`` inside the folded weights. Only the discarded
principal components are lost.

Two block layouts (a :class:`ResidualPlan` names the modules; :func:`bert_plan` and
:func:`vit_plan` build it for Hugging Face BERT and timm ViTs):

- **pre-LN** (``x ← x + f(LN(x))``: ViT, GPT, LLaMA; the paper's setting): the norm only
  feeds its block, so its ``γ, β, C`` are folded into the block's readers and the norm becomes
  :class:`StreamNorm` without affine. The residual addition happens inside the block's
  forward, so the stream keeps one basis: ``Q`` is the PCA of the normalised stream
  ``LN(x)`` pooled over every norm's input (the paper instead uses one ``Q`` per block and
  adds the shortcut matrices ``Q_ℓᵀQ_{ℓ+1}`` to the residual connections, which needs a new
  block forward; not done here).
- **post-LN** (``x ← LN(x + f(x))``: BERT, MiniLM): the norm sits *on* the stream, so each
  segment between two norms has its own basis ``Q_k`` at no cost: the norm becomes
  :class:`StreamNorm` followed by a ``d × d`` linear ``Q_{k+1}ᵀ diag(γ) C Q_k`` (bias
  ``Q_{k+1}ᵀβ``) that re-expresses its output in the next basis. ``Q_k`` is the PCA of the
  segment's hidden states (the norm's output), computed *sequentially* as in the paper: from
  the model whose earlier segments are already rotated and sliced (one calibration pass per
  segment, stopped at the segment's norm). The last norm maps back to the full width ``D``
  (``diag(γ) C Q_k``, ``β``), so the model's output keeps its shape; in a pre-LN model without
  a head the final norm does the same, with a head the head absorbs it.

Sizes: per post-LN norm a ``d × d`` linear is added (the role of the paper's shortcut
matrices); the ``d × D`` output map is the price of keeping the output width.
Conversions are computed in float64 and stored in each module's dtype; modules are replaced,
never edited, and restored if anything fails (NaN activations, too few calibration rows).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..observe import Forward
from ..validation import check_int, check_sparsity
from .data import CalibrationStop, calibration_batches, checked_forward
from .slicegpt_modules import StreamNorm  # noqa: F401 - re-exported: pickled sliced models name it here
from .slicegpt_modules import norm_affine, norm_out, plain_norm, read_from, write_into
from .slicegpt_plans import NORM_POSITIONS, ResidualBlock, ResidualPlan, bert_plan, vit_plan  # noqa: F401

WHAT = "slice_gpt"


# -- helpers ---------------------------------------------------------------------------------
def _resolve(model: nn.Module, name: str) -> Tuple[Any, str, Any]:
    """``(owner, attribute, value)`` of a dotted module or parameter name."""
    parts = name.split(".")
    owner: Any = model
    for p in parts[:-1]:
        owner = getattr(owner, p, None)
        if owner is None:
            raise ValueError(f"{WHAT}: {name!r} does not exist in the model")
    value = getattr(owner, parts[-1], None)
    if value is None:
        raise ValueError(f"{WHAT}: {name!r} does not exist in the model")
    return owner, parts[-1], value


def _normalised(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``LN`` without affine, rows of ``x`` in float64."""
    x = x.reshape(-1, x.shape[-1]).double()
    x = x - x.mean(dim=1, keepdim=True)
    return x * torch.rsqrt((x * x).mean(dim=1, keepdim=True) + eps)


class _SecondMoment:
    def __init__(self, where: str) -> None:
        self.where = where
        self.sum: Optional[torch.Tensor] = None
        self.rows = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.reshape(-1, rows.shape[-1]).double()
        self.sum = rows.T @ rows if self.sum is None else self.sum + rows.T @ rows
        self.rows += rows.shape[0]

    def basis(self, keep: int) -> Tuple[torch.Tensor, float]:
        """Top-``keep`` eigenvectors (``D × keep``) and the fraction of the trace they hold."""
        if self.sum is None:
            raise ValueError(f"{WHAT}: {self.where} was not reached by the calibration forward")
        if not torch.isfinite(self.sum).all():
            raise ValueError(f"{WHAT}: the calibration activations at {self.where} contain NaN/Inf; "
                             "the model is left unchanged")
        if self.rows < keep:
            raise ValueError(f"{WHAT}: {self.rows} calibration rows (tokens) reached {self.where}, fewer than the "
                             f"{keep} principal components to keep; give more calibration data")
        values, vectors = torch.linalg.eigh(self.sum)
        order = torch.argsort(values, descending=True)
        values, vectors = values[order], vectors[:, order]
        total = float(values.clamp_min(0).sum())
        return vectors[:, :keep].contiguous(), (float(values[:keep].clamp_min(0).sum()) / total if total > 0 else 1.0)


@dataclass
class SliceResult:
    """``width`` ``D`` → ``sliced`` ``d``; parameters before/after (all of the model's);
    ``explained``: per basis, the fraction of the calibration second moment kept;
    ``seconds``: the conversion's wall time (calibration passes included); ``passes``."""

    width: int
    sliced: int
    params_before: int
    params_after: int
    explained: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    passes: int = 0


class _Surgery:
    """Module/parameter replacements with rollback."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.undo: List[Tuple[Any, str, Any]] = []

    def replace(self, name: str, new: Any) -> None:
        owner, attr, old = _resolve(self.model, name)
        self.undo.append((owner, attr, old))
        setattr(owner, attr, new)

    def rollback(self) -> None:
        for owner, attr, old in reversed(self.undo):
            setattr(owner, attr, old)
        self.undo.clear()


def _check_plan(model: nn.Module, plan: ResidualPlan) -> int:
    if plan.norm not in NORM_POSITIONS:
        raise ValueError(f"{WHAT}: plan.norm must be one of {NORM_POSITIONS}, got {plan.norm!r}")
    if not plan.blocks:
        raise ValueError(f"{WHAT}: the plan has no residual blocks")
    if not plan.embeddings:
        raise ValueError(f"{WHAT}: the plan names nothing that writes the initial stream (embeddings)")
    if plan.norm == "post" and plan.embed_norm is None:
        raise ValueError(f"{WHAT}: a post-LN plan needs embed_norm (the norm after the embeddings)")
    if plan.norm == "pre" and plan.final_norm is None:
        raise ValueError(f"{WHAT}: a pre-LN plan needs final_norm (the norm after the last block)")
    norms = [b.norm for b in plan.blocks] + [n for n in (plan.embed_norm, plan.final_norm) if n is not None]
    first = _resolve(model, norms[0])[2]
    if not isinstance(first, nn.LayerNorm) or len(first.normalized_shape) != 1:
        raise ValueError(f"{WHAT}: {norms[0]!r} must be an nn.LayerNorm over the last dimension")
    width = int(first.normalized_shape[0])
    names: List[str] = []
    for n in norms:
        m = _resolve(model, n)[2]
        if not isinstance(m, nn.LayerNorm) or tuple(m.normalized_shape) != (width,):
            raise ValueError(f"{WHAT}: {n!r} must be an nn.LayerNorm of width {width}, got {m!r}")
        names.append(n)
    for b in plan.blocks:
        for r in b.readers:
            m = _resolve(model, r)[2]
            if not isinstance(m, nn.Linear) or m.in_features != width:
                raise ValueError(f"{WHAT}: reader {r!r} must be an nn.Linear with {width} inputs, got {m!r}")
            names.append(r)
        m = _resolve(model, b.writer)[2]
        if not isinstance(m, nn.Linear) or m.out_features != width:
            raise ValueError(f"{WHAT}: writer {b.writer!r} must be an nn.Linear with {width} outputs, got {m!r}")
        names.append(b.writer)
        if b.scale is not None:
            g = getattr(_resolve(model, b.scale)[2], "gamma", None)
            if not isinstance(g, torch.Tensor) or g.numel() != width:
                raise ValueError(f"{WHAT}: scale {b.scale!r} must hold a gamma vector of width {width}")
    for h in plan.head:
        m = _resolve(model, h)[2]
        if not isinstance(m, nn.Linear) or m.in_features != width:
            raise ValueError(f"{WHAT}: head {h!r} must be an nn.Linear with {width} inputs, got {m!r}")
        names.append(h)
    for e in plan.embeddings:
        m = _resolve(model, e)[2]
        ok = ((isinstance(m, nn.Embedding) and m.embedding_dim == width)
              or (isinstance(m, nn.Linear) and m.out_features == width)
              or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == width and m.groups == 1)
              or (isinstance(m, torch.Tensor) and m.shape[-1] == width))
        if not ok:
            raise ValueError(f"{WHAT}: embedding {e!r} must be an Embedding/Linear/Conv (groups=1) writing width "
                             f"{width} or a parameter whose last dimension is {width}")
        names.append(e)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{WHAT}: modules named twice in the plan: {dup}")
    return width


# -- calibration passes ---------------------------------------------------------------------
def _run(model: nn.Module, batches: Iterable, forward: Forward, hooks: Sequence[Tuple[nn.Module, str, Callable]],
         stop: bool) -> None:
    handles = []
    was_training = model.training
    model.eval()
    try:
        for module, kind, fn in hooks:
            if kind == "input":
                def pre(mod, args, kwargs, fn=fn):
                    x = args[0] if args else next(iter(kwargs.values()))
                    fn(x)
                    if stop:
                        raise CalibrationStop
                handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(mod, args, output, fn=fn):
                    fn(output)
                    if stop:
                        raise CalibrationStop
                handles.append(module.register_forward_hook(post))
        with torch.no_grad():
            for batch in batches:
                try:
                    forward(model, batch)
                except CalibrationStop:
                    pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def slice_gpt(model: nn.Module, batches: Iterable, slicing: float, plan: Optional[ResidualPlan] = None,
              forward: Optional[Forward] = None, round_to: int = 1, min_samples: int = 8) -> SliceResult:
    """Rotate and slice ``model``'s residual stream by ``slicing`` (the fraction of its width
    removed; ``0`` keeps the width and only rotates: the outputs are unchanged). Modules are
    replaced in place.

    Args:
        batches: calibration batches (post-LN runs them once per segment; an iterator is
            read into a list).
        plan: the :class:`ResidualPlan`; default: :func:`bert_plan` if the model looks like
            BERT, else :func:`vit_plan`.
        forward: ``forward(model, batch)``; default ``model(**batch)`` for a mapping (a
            tokenizer's output), ``model(*batch)`` for a tuple, else ``model(batch)``.
        round_to: the sliced width is a multiple of it (the paper rounds to 8 for kernels).
        min_samples: the fewest calibration samples accepted.
    """
    slicing = check_sparsity(slicing, "slicing")
    round_to = check_int(round_to, "round_to", 1)
    if plan is None:
        plan = bert_plan(model) if hasattr(model, "encoder") or hasattr(model, "bert") else vit_plan(model)
    width = _check_plan(model, plan)
    keep = width - int(round(slicing * width))
    keep = max(round_to, keep - keep % round_to) if round_to > 1 else max(1, keep)
    keep = min(keep, width)
    batches = calibration_batches(batches, WHAT, min_samples)
    fwd = checked_forward(forward, WHAT)
    began = time.perf_counter()
    before = sum(p.numel() for p in model.parameters())
    surgery = _Surgery(model)
    result = SliceResult(width=width, sliced=keep, params_before=before, params_after=before)
    try:
        if plan.norm == "pre":
            _slice_pre(model, plan, batches, fwd, keep, surgery, result)
        else:
            _slice_post(model, plan, batches, fwd, keep, surgery, result)
    except BaseException:
        surgery.rollback()
        raise
    result.params_after = sum(p.numel() for p in model.parameters())
    result.seconds = time.perf_counter() - began
    return result


def _slice_pre(model, plan, batches, fwd, keep, surgery, result) -> None:
    norms = [b.norm for b in plan.blocks] + [plan.final_norm]
    moment = _SecondMoment("the inputs of the pre-LN norms")
    hooks = []
    for n in norms:
        norm = _resolve(model, n)[2]
        hooks.append((norm, "input", lambda x, eps=norm.eps: moment.add(_normalised(x, eps))))
    _run(model, batches, fwd, hooks, stop=False)
    result.passes = 1
    q, explained = moment.basis(keep)
    result.explained["stream"] = explained
    for e in plan.embeddings:
        surgery.replace(e, write_into(_resolve(model, e)[2], q))
    for b in plan.blocks:
        norm = _resolve(model, b.norm)[2]
        gamma, beta = norm_affine(norm, q.shape[0])
        for r in b.readers:
            surgery.replace(r, read_from(_resolve(model, r)[2], q, gamma, beta))
        scale = None
        if b.scale is not None:
            scale = _resolve(model, b.scale)[2].gamma
            surgery.replace(b.scale, nn.Identity())
        surgery.replace(b.writer, write_into(_resolve(model, b.writer)[2], q, scale))
        surgery.replace(b.norm, plain_norm(norm, q))
    final = _resolve(model, plan.final_norm)[2]
    if plan.head:
        gamma, beta = norm_affine(final, q.shape[0])
        for h in plan.head:
            surgery.replace(h, read_from(_resolve(model, h)[2], q, gamma, beta))
        surgery.replace(plan.final_norm, plain_norm(final, q))
    else:
        surgery.replace(plan.final_norm, norm_out(final, q, None))


def _slice_post(model, plan, batches, fwd, keep, surgery, result) -> None:
    # the embeddings' sum, read by the embedding norm (which centres it)
    embed_norm = _resolve(model, plan.embed_norm)[2]
    moment = _SecondMoment(f"the input of {plan.embed_norm!r}")
    _run(model, batches, fwd, [(embed_norm, "input", lambda x: moment.add(_normalised(x, embed_norm.eps)))], stop=True)
    passes = 1
    q_in, result.explained["embeddings"] = moment.basis(keep)
    for e in plan.embeddings:
        surgery.replace(e, write_into(_resolve(model, e)[2], q_in))
    prev_name, prev_norm = plan.embed_norm, embed_norm
    surgery.replace(prev_name, norm_out(prev_norm, q_in, None))  # full-width output until the next basis is known
    for b in plan.blocks:
        moment = _SecondMoment(f"the output of {prev_name!r}")
        current = _resolve(model, prev_name)[2]
        _run(model, batches, fwd, [(current, "output", moment.add)], stop=True)
        passes += 1
        q, result.explained[prev_name] = moment.basis(keep)
        surgery.replace(prev_name, norm_out(prev_norm, q_in, q))
        for r in b.readers:
            surgery.replace(r, read_from(_resolve(model, r)[2], q))
        surgery.replace(b.writer, write_into(_resolve(model, b.writer)[2], q))
        prev_name, prev_norm, q_in = b.norm, _resolve(model, b.norm)[2], q
        surgery.replace(prev_name, norm_out(prev_norm, q_in, None))
    result.passes = passes
