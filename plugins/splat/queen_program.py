"""QUEEN's residual gates as a core program.

    frame = FrameModule(...)                       # holds one or more ResidualGate modules
    trainer = pl.Trainer(callbacks=[SparsityCallback(programs=[ResidualGating()])])

The program drives what a training loop would otherwise call by hand: before each optimizer
step it adds the gradient of the budget penalty ``λ·ρ`` to every gate's ``log α`` (so the
user's loss stays the task loss), after it the dual ascent ``λ ← max(0, λ + η (ρ − ρ*))``,
and at the end of fit :meth:`~.queen.ResidualGate.finalize` keeps the ``⌊ρ*·N⌋`` most useful
residuals of every gate. The gates' own state (``λ``, kept rows, ``finalized``) lives in the
model's ``state_dict``, so checkpoints need nothing more.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from sparsity_core.discovery import Patterns, as_patterns
from sparsity_core.program import Host, Program
from sparsity_core.registry import PROGRAMS

from .queen import ResidualGate


@PROGRAMS.register("queen")
class ResidualGating(Program):
    """Budgeted residual gates (QUEEN) of a model.

    Args:
        include: regular expressions of the gate modules' names (default: every ResidualGate).
        add_penalty: add ``∂(λ·ρ)/∂ log α`` to the gates' gradients (``False`` when the loss
            already holds ``gate.penalty()``).
        finalize: keep the top ``⌊ρ*·N⌋`` residuals of every gate at the end of fit.
    """

    name = "queen"

    def __init__(self, include: Patterns = None, add_penalty: bool = True, finalize: bool = True,
                 name: Optional[str] = None) -> None:
        self.patterns = as_patterns(include, "include")
        self.include = include
        self.add_penalty = bool(add_penalty)
        self.finalize_at_end = bool(finalize)
        if name is not None:
            self.name = name
        self.gates: List[Tuple[str, ResidualGate]] = []
        self.densities: Dict[str, float] = {}

    def state_id(self) -> str:
        return f"{self.name}(include={self.include!r})"

    def attach(self, host: Host) -> None:
        found = [(n, m) for n, m in host.model.named_modules() if isinstance(m, ResidualGate)
                 and (not self.patterns or any(p.search(n) for p in self.patterns))]
        if not found:
            raise ValueError(f"{type(host.model).__name__} has no ResidualGate"
                             + (f" matching {self.include!r}" if self.patterns else ""))
        self.gates = found

    def detach(self) -> None:
        self.gates = []

    def trained_parameters(self) -> Dict[str, nn.Parameter]:
        out = {}
        for name, gate in self.gates:
            if not gate.finalized:
                out[f"{name}.log_alpha"] = gate.log_alpha
                out[f"{name}.residual"] = gate.residual
        return out

    def before_optimizer_step(self, optimizer: Any) -> None:
        if not self.add_penalty:
            return
        owned = {id(p) for g in optimizer.param_groups for p in g["params"]}
        for _, gate in self.gates:
            if gate.finalized or id(gate.log_alpha) not in owned or float(gate.lam) == 0.0:
                continue
            (grad,) = torch.autograd.grad(gate.penalty(), gate.log_alpha)
            if gate.log_alpha.grad is None:
                gate.log_alpha.grad = grad
            else:
                gate.log_alpha.grad.add_(grad)

    def after_optimizer_step(self, step: int) -> None:
        for name, gate in self.gates:
            if not gate.finalized:
                self.densities[name] = gate.dual_step()

    def report(self) -> Dict[str, float]:
        open_gates = [g for _, g in self.gates if not g.finalized]
        out = {"stored_fraction": sum(g.stored_parameters() for _, g in self.gates)
               / sum(g.residual.numel() for _, g in self.gates)}
        if open_gates:
            out["density"] = float(torch.stack([g.expected_density().detach() for g in open_gates]).mean())
            out["lambda"] = float(torch.stack([g.lam for g in open_gates]).mean())
        return out

    def finalize(self) -> None:
        for _, gate in self.gates:
            gate.finalize()

    @property
    def finalized(self) -> bool:
        return bool(self.gates) and all(g.finalized for _, g in self.gates)

    def state_dict(self) -> Dict[str, Any]:
        return {"gates": [n for n, _ in self.gates]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        names = [n for n, _ in self.gates]
        if list(state.get("gates", [])) != names:
            raise ValueError(f"QUEEN state was saved for gates {state.get('gates')}, this model has {names}")

    def __repr__(self) -> str:
        return f"ResidualGating(include={self.include!r}, add_penalty={self.add_penalty}, name={self.name!r})"
