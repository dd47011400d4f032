"""The controller's state: what a checkpoint holds, checked whole before anything is assigned."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from .masks import MaskSet

#: Keys of :meth:`SparsityController.state_dict`; a state missing one is refused before any change.
STATE_KEYS = ("targets", "masks", "step", "last_update_step", "current_sparsity", "history", "criterion",
              "enforcement", "snapshot", "generator", "finalized", "task", "task_offset", "scopes")


class ControllerState:
    """Mixed into :class:`~sparsity_core.controller.SparsityController`: ``state_dict``,
    ``check_state`` and ``load_state_dict`` (plain tensors and numbers)."""

    def state_dict(self) -> Dict[str, Any]:
        return {
            "targets": {t.name: list(t.mask_shape) for t in self.targets},
            "masks": self.masks.state_dict(),
            "step": self.step,
            "last_update_step": self.last_update_step,
            "current_sparsity": self.current_sparsity,
            "history": [dict(h) for h in self.history],
            "criterion": self.criterion.state_dict(),
            "enforcement": self.enforcement.state_dict(),
            "snapshot": None if self.snapshot is None else {k: v.cpu().clone() for k, v in self.snapshot.items()},
            "generator": self.generator.get_state(),
            "finalized": self.finalized,
            "task": self.task,
            "task_offset": self.task_offset,
            "scopes": {task: dict(scope) for task, scope in self.scopes.items()},
        }

    def check_state(self, state: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if ``state`` was saved for other targets."""
        saved = {k: tuple(v) for k, v in state.get("targets", {}).items()}
        ours = {t.name: tuple(t.mask_shape) for t in self.targets}
        missing, unexpected = sorted(set(ours) - set(saved)), sorted(set(saved) - set(ours))
        reshaped = sorted(n for n in set(ours) & set(saved) if ours[n] != saved[n])
        if missing or unexpected or reshaped:
            parts = []
            if missing:
                parts.append(f"missing targets {missing[:5]}")
            if unexpected:
                parts.append(f"unexpected targets {unexpected[:5]}")
            if reshaped:
                parts.append(f"shape mismatch for {[(n, saved[n], ours[n]) for n in reshaped[:5]]}")
            raise ValueError("sparsity state does not match the model's targets: " + "; ".join(parts))
        for name, mask in state.get("masks", {}).items():
            if name not in ours or tuple(mask.shape) != ours[name]:
                raise ValueError(f"saved mask for {name!r} has shape {tuple(mask.shape)}, expected {ours.get(name)}")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The whole state is checked first (keys, targets, mask
        shapes, criterion and enforcement state); on any error nothing has changed."""
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"sparsity controller state is missing {missing}; it was not written by this "
                             "version's SparsityController.state_dict()")
        self.check_state(state)
        tmap = self.target_map
        masks = MaskSet()
        for name, mask in state["masks"].items():
            dev = tmap[name].param.device if tmap[name].param is not None else None
            masks[name] = mask.to(dev)
        generator = torch.Generator()
        generator.set_state(state["generator"])  # raises on a malformed RNG state, before any change
        saved_criterion, saved_enforcement = self.criterion.state_dict(), self.enforcement.state_dict()
        try:
            self.criterion.load_state_dict(state["criterion"])
            self.enforcement.load_state_dict(state["enforcement"])
        except Exception:
            self.criterion.load_state_dict(saved_criterion)
            self.enforcement.load_state_dict(saved_enforcement)
            raise
        self.masks = masks
        self.step = int(state["step"])
        self.last_update_step = state["last_update_step"]
        self.current_sparsity = float(state["current_sparsity"])
        self.history = [dict(h) for h in state["history"]]
        self.snapshot = state["snapshot"]
        self.generator.set_state(state["generator"])
        self.finalized = bool(state["finalized"])
        self.task, self.task_offset = str(state["task"]), int(state["task_offset"])
        self.scopes = {str(task): dict(scope) for task, scope in state["scopes"].items()}
        self.to_devices()

