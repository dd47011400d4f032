"""Training-FLOPs accounting that sees sparsity: weights, gradients and examples.

For every Linear / convolution l (found by the core's :class:`~sparsity_core.macs.MacCounter`,
F_l = its dense forward MACs per example) and every optimizer step that processed n examples
(current batch plus replayed ones, ``pl_module.examples_seen``; examples removed from the
loader are never processed and cost nothing), the step is charged

    forward           n · F_l · d_l
    input gradient    n · F_l · d_l        (∂L/∂x = Wᵀ ∂L/∂y: a product with the sparse weights)
    weight gradient   n · F_l · γ_l        (∂L/∂W = ∂L/∂y xᵀ, only at the entries kept)

with d_l the layer's weight density (fraction of its weights kept) and γ_l its gradient
density (fraction of its gradient entries computed: the gradient mask, which a hard weight
mask bounds by d_l). Dense: d = γ = 1, so backward = 2 × forward. Assumptions, stated:

- unstructured sparsity is charged as if a kernel skipped every zero exactly (an upper bound
  on what hardware gains; a MAC ratio, never a speedup);
- the input gradient of the first layer is charged like any other (autograd does not compute
  it; the error is at most one layer's F_l·d_l per example);
- elementwise work (activations, losses, biases, the optimizer update) and evaluation are
  not charged; replay forwards are charged at full backward cost (their loss is trained on).

Densities come from ``sources``: objects with ``densities() -> {weight name: (d, γ)}`` (the
TDM program); a weight no source names is dense. Totals are MACs (FLOPs = 2 × MACs), kept per
task (``datamodule.task``) next to the dense count of the same examples. Densities are read
when the step's gradients are final (``on_before_optimizer_step``): list this callback after
the ``SparsityCallback`` so the step's gradient mask is in place.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import pytorch_lightning as pl

from sparsity_core.macs import count_macs


def step_macs(layers: Dict[str, float], densities: Dict[str, Tuple[float, float]],
              examples: int) -> Tuple[float, float]:
    """``(sparse, dense)`` training MACs of one step over ``examples`` examples; ``layers`` maps
    weight names to forward MACs per example (see the module for the formula)."""
    sparse = dense = 0.0
    for name, f in layers.items():
        d, g = densities.get(name, (1.0, 1.0))
        sparse += examples * f * (2.0 * d + g)
        dense += examples * f * 3.0
    return sparse, dense


class TrainingFlops(pl.Callback):
    """Counts training MACs per task (see the module). ``sources``: objects with
    ``densities()``; ``example_input``: an input batch for the MAC count (default: the module's
    ``example_input_array``)."""

    def __init__(self, sources: Sequence[Any] = (), example_input: Any = None) -> None:
        super().__init__()
        for s in sources:
            if not callable(getattr(s, "densities", None)):
                raise ValueError(f"a FLOPs source needs a densities() method, got {type(s).__name__}")
        self.sources, self.example_input = list(sources), example_input
        self.layers: Dict[str, float] = {}
        self.sparse: Dict[int, float] = {}
        self.dense: Dict[int, float] = {}
        self.examples: Dict[int, int] = {}

    def layer_macs(self, pl_module: "pl.LightningModule") -> Dict[str, float]:
        """``{weight name: forward MACs per example}`` of every Linear / convolution."""
        example = self.example_input if self.example_input is not None else pl_module.example_input_array
        if example is None:
            raise ValueError("TrainingFlops needs an example input (example_input= or example_input_array)")
        per_module = count_macs(pl_module, example)
        modules = dict(pl_module.named_modules())
        names = {id(p): n for n, p in pl_module.named_parameters()}
        return {names[id(modules[m].weight)]: f for m, f in per_module.items()}

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self.layers:
            self.layers = self.layer_macs(pl_module)

    def densities(self) -> Dict[str, Tuple[float, float]]:
        out: Dict[str, Tuple[float, float]] = {}
        for s in self.sources:
            out.update(s.densities())
        return out

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", optimizer: Any) -> None:
        self._step_densities = self.densities()  # what this step's forward and backward used

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        n = int(getattr(pl_module, "examples_seen", 0)) or int(batch[0].shape[0])
        task = int(getattr(trainer.datamodule, "task", 0) or 0)
        densities = self.__dict__.pop("_step_densities", None)
        sparse, dense = step_macs(self.layers, self.densities() if densities is None else densities, n)
        self.sparse[task] = self.sparse.get(task, 0.0) + sparse
        self.dense[task] = self.dense.get(task, 0.0) + dense
        self.examples[task] = self.examples.get(task, 0) + n

    def total(self, dense: bool = False) -> float:
        return sum((self.dense if dense else self.sparse).values())

    def report(self) -> Dict[str, float]:
        out = {"macs": self.total(), "dense_macs": self.total(dense=True),
               "examples": float(sum(self.examples.values()))}
        for task in sorted(self.sparse):
            out[f"task{task}/macs"] = self.sparse[task]
            out[f"task{task}/dense_macs"] = self.dense[task]
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"layers": dict(self.layers), "sparse": {str(k): v for k, v in self.sparse.items()},
                "dense": {str(k): v for k, v in self.dense.items()},
                "examples": {str(k): v for k, v in self.examples.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if set(state) != {"layers", "sparse", "dense", "examples"}:
            raise ValueError(f"not a TrainingFlops state: keys {sorted(state)}")
        self.layers = {str(k): float(v) for k, v in state["layers"].items()}
        self.sparse = {int(k): float(v) for k, v in state["sparse"].items()}
        self.dense = {int(k): float(v) for k, v in state["dense"].items()}
        self.examples = {int(k): int(v) for k, v in state["examples"].items()}
