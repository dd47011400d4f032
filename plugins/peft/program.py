"""The adapters as a core :class:`~sparsity_core.program.Program`, for ``SparsityCallback``.

    SparsityCallback(programs=[SparseAdapters(r"model\\.blocks\\.\\d+\\.attn\\.qkv", method="pst", r=8,
                                              schedule=Cubic(start_step=0, end_step=500, final_sparsity=0.5))])

``attach`` (Lightning ``setup``, before ``configure_optimizers``) injects the adapters into the
LightningModule (patterns are full matches of names in it, e.g. ``model.blocks.0.attn.qkv``)
and freezes the rest, so the optimizer built from ``filter(lambda p: p.requires_grad,
self.parameters())`` (or from all parameters) holds them; the callback checks that it does
(``trained_parameters``). Adapter tensors live in the model's state dict, so checkpoints and
resume need nothing else; the program's own state is its sparsity. With ``schedule`` (a core
schedule, a float or ``step -> sparsity``) the sparsity of SNELL / PST adapters follows the
optimizer step (PST's cubic ramp). ``report()`` gives ``trainable`` (parameters),
``trainable_fraction`` and ``sparsity`` (fraction of the sparse tensors removed by the keep
rule); PST adapters mask their layer's weight, so they count in the callback's
``sparsity/global`` (``removed_params``) and no other program may mask those weights.
``finalize=True`` merges the adapters into the weights for good at the end of fit.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

from torch import nn

from sparsity_core.program import Host, Program, attached
from sparsity_core.registry import PROGRAMS
from sparsity_core.schedules.base import Schedule
from sparsity_core.schedules.function import as_schedule

from .base import METHODS
from .model import AdapterConfig, AdapterSet, Patterns, build_adapters


@PROGRAMS.register("sparse_adapters")
class SparseAdapters(Program):
    """Args: ``target_modules``, ``method``, ``modules_to_save`` and the method's parameters (as
    :func:`~.model.inject_adapters`), ``schedule`` (sparsity of SNELL / PST by step), ``finalize``
    (merge for good at the end of fit), ``name``."""

    name = "adapters"

    def __init__(self, target_modules: Patterns, method: str = "snell", modules_to_save: Optional[Patterns] = None,
                 schedule: Union[Schedule, float, Callable[[int], float], None] = None, finalize: bool = False,
                 name: Optional[str] = None, **params: Any) -> None:
        cls = METHODS.get(method)
        self.config = AdapterConfig(method=method, target_modules=target_modules, modules_to_save=modules_to_save,
                                    params=params)
        if schedule is not None and not cls.has_sparsity:
            raise ValueError(f"{method} adapters have no sparsity for a schedule to set")
        self.schedule = None if schedule is None else as_schedule(schedule)
        self.finalize_at_end = bool(finalize)
        if name is not None:
            self.name = name
        self.adapters: Optional[AdapterSet] = None
        self._finalized = False

    def state_id(self) -> str:
        return f"{self.name}(method={self.config.method!r}, target_modules={self.config.to_dict()['target_modules']!r})"

    def require(self) -> AdapterSet:
        return attached(self.adapters, type(self).__name__)

    # -- the program protocol ------------------------------------------------------------
    def attach(self, host: Host) -> None:
        if self.adapters is not None:
            if self.adapters.model is not host.model:
                raise ValueError(f"program {self.name!r} already adapts another model; use one program per model")
            return
        built, saved = build_adapters(host.model, self.config)  # raises before any change
        self.adapters = AdapterSet.attach(host.model, self.config, built, saved)

    def start(self, step: int) -> None:
        self._follow(step)

    def after_optimizer_step(self, step: int) -> None:
        self._follow(step)

    def _follow(self, step: int) -> None:
        if self.schedule is not None and not self._finalized:
            self.require().set_sparsity(self.schedule.value(step))

    def trained_parameters(self) -> Dict[str, nn.Parameter]:
        return {} if self._finalized else self.require().trainable_parameters()

    def _sparse(self):
        return [a for a in self.require().adapters.values() if a.has_sparsity]

    def report(self) -> Dict[str, float]:
        if self._finalized:
            return {}
        adapters = self.require()
        count = adapters.count()
        out = {"trainable": float(count["trainable"]), "trainable_fraction": float(count["fraction"])}
        sparse = self._sparse()
        if sparse:
            sizes = [a.out_features * a.in_features for a in sparse]
            out["sparsity"] = sum(a.removed_fraction() * n for a, n in zip(sparse, sizes)) / sum(sizes)
        return out

    def removed_params(self) -> Optional[Tuple[float, float]]:
        if self._finalized:
            return None
        masking = [a for a in self.require().adapters.values() if a.masks_base]
        if not masking:
            return None
        sizes = [a.out_features * a.in_features for a in masking]
        return sum(a.removed_fraction() * n for a, n in zip(masking, sizes)), float(sum(sizes))

    def masked_tensors(self) -> Dict[int, str]:
        if self.adapters is None or self._finalized:
            return {}
        return {id(a.layer.weight): f"{n}.weight" for n, a in self.adapters.adapters.items() if a.masks_base}

    def finalize(self) -> None:
        self.require().merge_and_unload()
        self._finalized = True

    @property
    def finalized(self) -> bool:
        return self._finalized

    def state_dict(self) -> Dict[str, Any]:
        sparse = [] if self._finalized else self._sparse()
        return {"sparsity": float(sparse[0].sparsity) if sparse else None, "finalized": self._finalized}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"sparsity", "finalized"}:
            raise ValueError(f"not a SparseAdapters state: {state!r}")
        if state["finalized"] and not self._finalized:
            raise ValueError("the checkpoint's adapters were merged for good; load its weights without this program")
        if state["sparsity"] is not None and not self._finalized:
            self.require().set_sparsity(state["sparsity"])

    def detach(self) -> None:
        if self.adapters is not None and not self.adapters.removed:
            self.adapters.remove()
        self.adapters = None
