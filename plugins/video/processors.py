"""Sparse self-attention installed per layer around a diffusers model's own processors.

:func:`install` wraps the processor of every self-attention layer in a
:class:`SparseAttnProcessor` that knows its layer index and a shared :class:`SparseAttention`
session (plan, token layout and denoising timestep of the current forward). The wrapper calls
the model's own processor with the same ``*args, **kwargs``; only while it runs, the
attention function that processor calls (diffusers' ``dispatch_attention_fn`` for Wan / LTX,
``F.scaled_dot_product_attention`` for CogVideoX; see :mod:`.models`) is swapped for the
block-sparse kernel with this layer's per-head patterns (heads sharing a pattern in one call,
:func:`.kernel.multi_pattern_attention`). Everything else the processor does (projections,
norms, rotary embeddings, text concatenation) is untouched, and so is cross-attention. A call
that does not look like this layer's self-attention (a mask, dropout, other lengths) runs
dense. The swap is process-global for the duration of one processor call: do not run two
models' forwards concurrently in threads.

A forward pre-hook reads the layout and the timestep; the step index counts distinct
timesteps (so classifier-free guidance's two calls per step count once); the first
``plan.dense_steps`` steps run dense. :meth:`SparseAttention.uninstall` puts the original
processor objects back and removes the hook (diffusers' global attention backend is never
touched).

A plan with an STA ``tile`` (:mod:`.tiling`) runs its kernel on q / k / v permuted into
tiled order (``index_select`` along the sequence, differentiable) and permutes the output
back. Models whose calls may hold fewer text tokens than the layout (Mochi's valid prompt
tokens per sample, ``ModelSpec.variable_text``) run such a call with the layout's ``text``
set to the call's count (exact: text is dense in every pattern); :attr:`SparseAttention.call_layout`
is the layout of the call being run.

Instead of a plan, a dynamic method (:class:`.dynamic.DynamicAttention`: BLASST, ProxyAttn,
S2O, SeerAttention, Trainable Dynamic Mask Attention) may be installed; it chooses its block
mask from every call's q / k / v and runs after its own ``dense_steps``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from sparsity_core.validation import check_int

from .dynamic import DynamicAttention
from .kernel import BACKENDS, head_groups, multi_pattern_attention
from .layout import TokenLayout
from .models import attention_layers, bind_forward, hook_owner, model_spec, num_heads
from .patterns import block_mask, check_block_size
from .plan import AttentionPlan
from .tiling import from_tiled, to_tiled

#: ``observer(layer, q, k, v, scale) -> output or None`` with q/k/v ``[B, H, S, D]`` (search)
Observer = Callable[[int, Tensor, Tensor, Tensor, Optional[float]], Optional[Tensor]]


@contextlib.contextmanager
def _swapped(owner: Any, attr: str, fn: Callable) -> Iterator[None]:
    original = getattr(owner, attr)
    setattr(owner, attr, fn)
    try:
        yield
    finally:
        setattr(owner, attr, original)


class SparseAttnProcessor:
    """A model's own processor for layer ``layer``, run with sparse self-attention.

    :func:`wrap` builds it through a subclass per wrapped processor class whose ``__call__``
    carries the wrapped one's signature (diffusers' ``Attention.forward`` drops keyword
    arguments a processor's signature does not name, e.g. ``image_rotary_emb``)."""

    def __init__(self, inner: Any, layer: int, session: "SparseAttention") -> None:
        self.inner, self.layer, self.session = inner, layer, session

    def __call__(self, attn: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self._run(attn, *args, **kwargs)

    def _run(self, attn: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not self.session.sparse_now(self.layer):
            return self.inner(attn, *args, **kwargs)
        owner, attr = self.session.hook
        original = getattr(owner, attr)

        def attend(query, key, value, *rest, **kw):
            named = dict(zip(_NAMED, rest))  # the call's own arguments go back unchanged when run dense
            named.update({n: kw[n] for n in _NAMED if n in kw})  # (torch's SDPA takes ``scale`` by keyword only)
            other = {n: v for n, v in kw.items() if n not in _NAMED}
            with _swapped(owner, attr, original):  # our kernel and observers see the original function
                out = self.session.attend(self.layer, query, key, value, named.get("attn_mask"),
                                          named.get("dropout_p", 0.0), named.get("is_causal", False),
                                          named.get("scale"), rest[len(_NAMED):], other)
            if out is None:
                return original(query, key, value, *rest, **kw)
            return out

        with _swapped(owner, attr, attend):
            return self.inner(attn, *args, **kwargs)


#: leading optional arguments shared by ``F.scaled_dot_product_attention`` and ``dispatch_attention_fn``
_NAMED = ("attn_mask", "dropout_p", "is_causal", "scale")


def _set_processor(attn: nn.Module, processor: Any) -> None:
    """diffusers' ``set_processor`` (it unregisters a processor that is an ``nn.Module``), or
    plain assignment for attention modules without it (Mochi's)."""
    setter = getattr(attn, "set_processor", None)
    if callable(setter):
        setter(processor)
    else:
        attn.processor = processor


_CLASSES: Dict[type, type] = {}


def wrap(inner: Any, layer: int, session: "SparseAttention") -> SparseAttnProcessor:
    """``inner`` wrapped as a :class:`SparseAttnProcessor` with ``inner.__call__``'s signature."""
    cls = type(inner)
    if cls not in _CLASSES:
        def __call__(self: SparseAttnProcessor, attn: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return self._run(attn, *args, **kwargs)

        __call__.__signature__ = inspect.signature(cls.__call__)  # type: ignore[attr-defined]
        _CLASSES[cls] = type(f"Sparse{cls.__name__}", (SparseAttnProcessor,), {"__call__": __call__})
    return _CLASSES[cls](inner, layer, session)


class SparseAttention:
    """The installed state: plan, current layout / timestep / step, original processors."""

    def __init__(self, model: nn.Module, plan: Optional[AttentionPlan], block_size: int,
                 method: Optional[DynamicAttention] = None, backend: str = "auto") -> None:
        self.model, self.plan, self.block_size, self.method = model, plan, block_size, method
        self.backend = backend
        self.spec = model_spec(model)
        self.hook = hook_owner(self.spec)
        self.layout: Optional[TokenLayout] = None
        self.call_layout: Optional[TokenLayout] = None
        self.timestep: Optional[float] = None
        self.step = -1
        self.enabled = True
        self.observer: Optional[Observer] = None
        self.calls = {"sparse": 0, "dense": 0}
        self._groups: Dict[Tuple[int, TokenLayout], List[Tuple[List[int], Tensor]]] = {}
        self._originals: List[Tuple[nn.Module, Any]] = []
        self._handle = None

    # -- install / uninstall -----------------------------------------------------------
    def _install(self) -> None:
        layers = attention_layers(self.model)
        self._originals = [(m, m.processor) for m in layers]
        for i, m in enumerate(layers):
            _set_processor(m, wrap(m.processor, i, self))
        self._handle = self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

    def uninstall(self) -> None:
        """Put the original processor objects back and remove the forward hook."""
        for m, proc in self._originals:
            _set_processor(m, proc)
        self._originals = []
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "SparseAttention":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def reset(self) -> None:
        """A new generation starts (the step count restarts)."""
        self.step, self.timestep = -1, None

    # -- per forward -------------------------------------------------------------------
    def _pre_forward(self, model: nn.Module, args: tuple, kwargs: Dict[str, Any]) -> None:
        named = bind_forward(model, args, kwargs)
        layout = self.spec.layout(model, named)
        if self.plan is not None and layout != self.plan.layout:
            raise ValueError(f"the attention plan was made for token layout {self.plan.layout}, this forward has "
                             f"{layout}; search a plan for this resolution and frame count")
        check_block_size(self.block_size, layout)
        self.layout = layout
        t = named.get("timestep")
        t = float(t.flatten()[0]) if isinstance(t, Tensor) else (None if t is None else float(t))
        if t is None or t != self.timestep:
            self.step += 1
        self.timestep = t

    def sparse_now(self, layer: int) -> bool:
        if not self.enabled or self.layout is None:
            return False
        if self.observer is not None:
            return True
        if self.method is not None:
            return self.step >= self.method.dense_steps
        return self.plan is not None and self.step >= self.plan.dense_steps

    def groups(self, layer: int, layout: Optional[TokenLayout] = None) -> List[Tuple[List[int], Tensor]]:
        """Heads of ``layer`` grouped by pattern, with their block masks (in the plan's tiled
        order if it has a tile; cached per layout)."""
        layout = self.layout if layout is None else layout
        key = (layer, layout)
        if key not in self._groups:
            masks = [block_mask(p, layout, self.block_size, self.plan.tile) for p in self.plan.parsed[layer]]
            self._groups[key] = head_groups(masks)
        return self._groups[key]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, attn_mask: Any, dropout_p: float,
               is_causal: bool, scale: Optional[float], args: tuple, kwargs: Dict[str, Any]) -> Optional[Tensor]:
        """The sparse product, or ``None`` for calls it does not handle (run dense)."""
        bshd = self.spec.qkv == "BSHD"
        s_axis = 1 if bshd else 2
        layout = self._layout_of(q.shape[s_axis])
        if isinstance(attn_mask, Tensor) and attn_mask.dtype == torch.bool and bool(attn_mask.all()):
            attn_mask = None  # every key valid (HunyuanVideo's text mask without padding)
        if (attn_mask is not None or dropout_p or is_causal or args or kwargs.get("enable_gqa")
                or layout is None or k.shape[s_axis] != layout.total or q.dim() != 4):
            self.calls["dense"] += 1
            return None
        if bshd:
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        self.call_layout = layout
        if self.observer is not None:
            out = self.observer(layer, q, k, v, scale)
            if out is None:
                return None
        elif self.method is not None:
            out = self.method.attend(layer, q, k, v, scale, layout, self.block_size)
        elif self.plan.tile is not None:  # STA: the kernel runs on the tokens in tiled order
            tile = self.plan.tile
            q, k, v = (to_tiled(x, layout, tile) for x in (q, k, v))
            out = from_tiled(multi_pattern_attention(q, k, v, self.groups(layer, layout), self.block_size, scale,
                                                     self.backend), layout, tile)
        else:
            out = multi_pattern_attention(q, k, v, self.groups(layer, layout), self.block_size, scale, self.backend)
        self.calls["sparse"] += 1
        return out.transpose(1, 2) if bshd else out

    def _layout_of(self, seq_len: int) -> Optional[TokenLayout]:
        """The layout of a call with ``seq_len`` tokens: the forward's, or (``variable_text``
        models) the same with fewer text tokens after the video; ``None``: not handled."""
        layout = self.layout
        if seq_len == layout.total:
            return layout
        if (self.spec.variable_text and not layout.text_first and layout.video <= seq_len < layout.total
                and seq_len >= self.block_size):
            return dataclasses.replace(layout, text=seq_len - layout.video)
        return None


def check_plan(model: nn.Module, plan: AttentionPlan) -> None:
    """``ValueError`` when ``plan`` was not made for ``model`` (class, layers, heads)."""
    model_spec(model)
    name = type(model).__name__
    if plan.model != name:
        raise ValueError(f"the attention plan was made for {plan.model}, not {name}")
    layers = len(attention_layers(model))
    if plan.layers != layers or plan.heads != num_heads(model):
        raise ValueError(f"the attention plan has {plan.layers} layers × {plan.heads} heads, {name} has "
                         f"{layers} × {num_heads(model)}")


def install(model: nn.Module, plan: Optional[AttentionPlan] = None, block_size: Optional[int] = None,
            method: Optional[DynamicAttention] = None, backend: str = "auto") -> SparseAttention:
    """Wrap ``model``'s self-attention processors with ``plan``, or with the dynamic ``method``
    (needs ``block_size``), or neither (dense until an observer is set, the search's mode);
    every check runs before any processor changes. ``backend`` is the plan's kernel
    (:data:`.kernel.BACKENDS`: ``"auto"`` FlexAttention on CUDA at block sizes that are
    multiples of 128, else the gather loop; ``"gather"``; ``"flex"``)."""
    model_spec(model)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid: {list(BACKENDS)}")
    if method is not None:
        if plan is not None:
            raise ValueError("install takes a static plan or a dynamic method, not both")
        if not isinstance(method, DynamicAttention):
            raise ValueError(f"method must be a DynamicAttention (BLASST, ProxyAttn, S2O, SeerAttention, ...), "
                             f"got {type(method).__name__}")
        method.check_model(model)
    if plan is not None:
        check_plan(model, plan)
        block_size = plan.block_size if block_size is None else block_size
        if block_size != plan.block_size:
            raise ValueError(f"block_size {block_size} differs from the plan's {plan.block_size}")
    if block_size is None:
        raise ValueError("install needs a plan or a block_size")
    check_int(block_size, "block_size", minimum=1)
    if any(isinstance(m.processor, SparseAttnProcessor) for m in attention_layers(model)):
        raise ValueError("sparse attention is already installed on this model; uninstall it first")
    session = SparseAttention(model, plan, int(block_size), method, backend)
    session._install()
    return session

