"""Injecting adapters into a model, peft-style, and handling them as one set.

    adapters = inject_adapters(vit, method="snell", target_modules=r"blocks\\.\\d+\\.(attn\\.(qkv|proj)|mlp\\.fc\\d)",
                               modules_to_save="head", r=8, sparsity=0.9)
    adapters.summary()             # trainable params: ... || all params: ... || trainable%: ...
    adapters.merge(); adapters.unmerge()        # unmerge restores the base weights bit for bit
    adapters.save("run/adapter")               # adapter-only state + config JSON
    load_adapters(fresh_vit, "run/adapter")     # checked against the model before anything changes

The model is changed in place: every matched ``nn.Linear`` gets its adapter (:mod:`.base`:
state-dict keys stay the base's plus ``<layer>.adapter.*``), every parameter outside the
adapters and ``modules_to_save`` is frozen (``requires_grad=False``), and :meth:`AdapterSet.remove`
undoes all of it. Bad input (a pattern matching nothing or a non-Linear module, an unknown
method or parameter, a model that already has adapters) raises ``ValueError`` before any change.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from sparsity_core.targets import Target

from . import dsee, lora, pst, snell  # noqa: F401  (register the methods in METHODS)
from .base import METHODS, Adapter, attach_adapter, detach_adapter, is_adapted
from .matching import match_linear, match_modules

Patterns = Union[str, Sequence[str]]


@dataclass
class AdapterConfig:
    """What to inject: ``method`` (``"lora"``, ``"snell"``, ``"pst"``, ``"dsee"``), the layers
    (``target_modules``: regular expressions matched in full against qualified module names),
    modules trained in full and saved with the adapter (``modules_to_save``, e.g. a new
    classifier head) and the method's own parameters (``params``)."""

    method: str
    target_modules: Patterns
    modules_to_save: Optional[Patterns] = None
    params: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        as_list = (lambda p: None if p is None else ([p] if isinstance(p, str) else list(p)))
        return {"method": self.method, "target_modules": as_list(self.target_modules),
                "modules_to_save": as_list(self.modules_to_save), "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdapterConfig":
        keys = {"method", "target_modules", "modules_to_save", "params"}
        if not isinstance(data, Mapping) or not {"method", "target_modules"} <= set(data) or set(data) - keys:
            raise ValueError(f"an adapter config has keys {sorted(keys)} (method and target_modules required), "
                             f"got {sorted(data) if isinstance(data, Mapping) else type(data).__name__}")
        return cls(method=data["method"], target_modules=data["target_modules"],
                   modules_to_save=data.get("modules_to_save"), params=dict(data.get("params") or {}))


def build_adapters(model: nn.Module, config: AdapterConfig, init: bool = True
                   ) -> Tuple[Dict[str, Tuple[nn.Linear, Adapter]], Dict[str, nn.Module]]:
    """The adapters ``config`` asks for, built but not attached (the model is not changed):
    ``({layer name: (layer, adapter)}, {name: module to save})``."""
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"expected an AdapterConfig, got {type(config).__name__}")
    present = [n for n, m in model.named_modules() if is_adapted(m)]
    if present:
        raise ValueError(f"the model already has adapters in {present[:4]}; remove them first (AdapterSet.remove())")
    cls = METHODS.get(config.method)
    layers = match_linear(model, config.target_modules)
    saved = match_modules(model, config.modules_to_save, "modules_to_save") if config.modules_to_save else []
    clash = sorted({n for n, _ in layers} & {n for n, _ in saved})
    if clash:
        raise ValueError(f"{clash} are both adapted and saved in full: remove them from one of target_modules / "
                         "modules_to_save")
    if not isinstance(config.params, Mapping):
        raise ValueError(f"params must be a mapping of the method's parameters, got {config.params!r}")
    out = {}
    for name, layer in layers:
        try:
            out[name] = (layer, cls(layer.weight.detach(), init=init, **config.params))
        except TypeError as err:
            raise ValueError(f"bad parameters for {config.method!r} adapters: {err}") from None
    return out, dict(saved)


def inject_adapters(model: nn.Module, config: Optional[AdapterConfig] = None, **kwargs: Any) -> "AdapterSet":
    """Adapt ``model`` in place; ``config`` or keywords ``method=..., target_modules=...,
    modules_to_save=..., <method parameters>``. Returns the :class:`AdapterSet`."""
    if config is None:
        if "method" not in kwargs or "target_modules" not in kwargs:
            raise ValueError("inject_adapters needs a config or method=... and target_modules=...")
        base = {k: kwargs.pop(k) for k in ("method", "target_modules", "modules_to_save") if k in kwargs}
        config = AdapterConfig(**base, params=kwargs)
    elif kwargs:
        raise ValueError(f"pass either a config or keywords, not both (got {sorted(kwargs)})")
    built, saved = build_adapters(model, config)
    return AdapterSet.attach(model, config, built, saved)


class AdapterSet:
    """The adapters of one model (see the module doc); built by :func:`inject_adapters` or
    :func:`~.persist.load_adapters`."""

    def __init__(self, model: nn.Module, config: AdapterConfig, adapters: Dict[str, Adapter],
                 saved_modules: Dict[str, nn.Module], flags: List[Tuple[nn.Parameter, bool]]) -> None:
        self.model, self.config = model, config
        self.adapters, self.saved_modules = adapters, saved_modules
        self._flags = flags
        self.removed = False

    @classmethod
    def attach(cls, model: nn.Module, config: AdapterConfig, built: Dict[str, Tuple[nn.Linear, Adapter]],
               saved: Dict[str, nn.Module]) -> "AdapterSet":
        flags = [(p, p.requires_grad) for p in model.parameters()]
        done: List[nn.Linear] = []
        try:
            for name, (layer, adapter) in built.items():
                attach_adapter(layer, adapter, name)
                done.append(layer)
        except Exception:
            for layer in done:
                detach_adapter(layer)
            raise
        for p, _ in flags:
            p.requires_grad_(False)
        for _, adapter in built.values():
            adapter.requires_grad_(True)
        for module in saved.values():
            module.requires_grad_(True)
        return cls(model, config, {n: a for n, (_, a) in built.items()}, saved, flags)

    # -- state of the set ----------------------------------------------------------------
    def _live(self) -> "AdapterSet":
        if self.removed:
            raise RuntimeError("these adapters were removed from the model")
        return self

    @property
    def merged(self) -> bool:
        return any(a.merged for a in self.adapters.values())

    def merge(self) -> None:
        """Write every adapter's effective weight into its layer (float64 sum, original kept)."""
        for a in self._live().adapters.values():
            a.merge()

    def unmerge(self) -> None:
        """Restore every merged layer's original weight exactly."""
        for a in self._live().adapters.values():
            a.unmerge()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model's behaviour inside the block (adapters bypassed, not removed)."""
        self._live()
        before = {n: a.enabled for n, a in self.adapters.items()}
        try:
            for a in self.adapters.values():
                a.enabled = False
            yield
        finally:
            for n, a in self.adapters.items():
                a.enabled = before[n]

    def set_sparsity(self, sparsity: float) -> None:
        """Set the sparsity of every adapter with a keep rule (SNELL, PST)."""
        sparse = [a for a in self._live().adapters.values() if a.has_sparsity]
        if not sparse:
            raise ValueError(f"{self.config.method} adapters have no sparsity to set")
        for a in sparse:
            a.sparsity = sparsity

    # -- parameters ----------------------------------------------------------------------
    def trainable_parameters(self) -> Dict[str, nn.Parameter]:
        """Adapter parameters and those of ``modules_to_save``, by their name in the model."""
        own = {id(p) for a in self.adapters.values() for p in a.parameters()}
        own |= {id(p) for m in self.saved_modules.values() for p in m.parameters()}
        return {n: p for n, p in self.model.named_parameters() if id(p) in own}

    def count(self) -> Dict[str, float]:
        """``trainable`` (parameters with ``requires_grad``), ``total`` and ``fraction``."""
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}

    def summary(self) -> str:
        c = self.count()
        return f"trainable params: {c['trainable']:,} || all params: {c['total']:,} || trainable%: {100 * c['fraction']:.4f}"

    def targets(self) -> List[Target]:
        """The core targets of every adapter (computed tensors: ΔW, PST's W′)."""
        return [t for a in self._live().adapters.values() for t in a.targets()]

    # -- adapter-only state --------------------------------------------------------------
    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        """``{key in model.state_dict(): tensor}`` of the adapters and ``modules_to_save`` (copies)."""
        self._live()
        out = {}
        for name, adapter in self.adapters.items():
            out.update({f"{name}.adapter.{k}": v.detach().clone() for k, v in adapter.state_dict().items()})
        for name, module in self.saved_modules.items():
            out.update({f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
        return out

    def check_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` unless ``state`` has exactly this set's keys and shapes."""
        mine = {k: tuple(v.shape) for k, v in self.adapter_state_dict().items()}
        missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        if missing or extra:
            raise ValueError(f"adapter state does not fit this model: missing {missing[:6]}, unexpected {extra[:6]}")
        bad = [f"{k}: saved {tuple(state[k].shape)}, model {mine[k]}" for k in mine if tuple(state[k].shape) != mine[k]]
        if bad:
            raise ValueError(f"adapter state shapes differ from this model's: {'; '.join(bad[:6])}")

    @torch.no_grad()
    def load_adapter_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state`` into the adapters (checked in full first; the layers must be unmerged)."""
        if self.merged:
            raise ValueError("unmerge the adapters before loading a state into them")
        self.check_state(state)
        live = self.model.state_dict(keep_vars=True)
        for k, v in state.items():
            live[k].copy_(v)

    def save(self, directory: str, format: str = "auto") -> Dict[str, str]:
        """Adapter-only state and config JSON in ``directory`` (:func:`~.persist.save_adapters`)."""
        from .persist import save_adapters

        return save_adapters(self, directory, format=format)

    # -- undo ----------------------------------------------------------------------------
    def remove(self) -> nn.Module:
        """Unmerge, take the adapters out, restore ``requires_grad``; returns the model."""
        for adapter in self._live().adapters.values():
            detach_adapter(adapter.layer)
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self.removed = True
        return self.model

    def merge_and_unload(self) -> nn.Module:
        """Merge for good (the base weights become ``W_eff``) and remove the adapters."""
        for adapter in self._live().adapters.values():
            adapter.merge()
            adapter.forget_original()
        return self.remove()

    def __repr__(self) -> str:
        return f"AdapterSet(method={self.config.method!r}, layers={len(self.adapters)}, merged={self.merged})"
