"""A plugin written against the program protocol, as a plugin author would: it prunes the
input features of one Linear layer, a target with no parameter behind it. Units are scored by
how much signal the training batches put through them (Σ|x| per feature), the core allocates
the budget, and a forward pre-hook applies the mask. Resume, DDP synchronisation, logging
and finalize come from the core."""
from typing import Dict, List, Optional

import torch
from torch import nn

from sparsity_core import Host, MaskProgram, Target
from sparsity_core.criteria.base import AccumulatingCriterion


class InputUsage(AccumulatingCriterion):
    """Mean over optimizer steps of Σ|x_j| of the training inputs of feature j."""

    observes = "forward"

    def __init__(self) -> None:
        super().__init__()
        self.pending: Optional[torch.Tensor] = None  # filled by the program's hook

    def statistic(self, target, context):
        stat, self.pending = self.pending, None
        return stat

    def score(self, target, context):
        return self.accumulated(target)


class FeatureMask(MaskProgram):
    name = "features"

    def __init__(self, schedule, module: str, update_every: int = 2) -> None:
        super().__init__(schedule=schedule, criterion=InputUsage(), allocator="global", enforcement="masks",
                         update_every=update_every)
        self.module = module
        self.handle = None

    def discover(self, host: Host) -> List[Target]:
        layer = host.model.get_submodule(self.module)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"{self.module!r} is not a Linear layer")
        self.target = Target(name=f"{self.module}.inputs", shape=(layer.in_features,))  # no parameter
        self.handle = layer.register_forward_pre_hook(self._hook)
        return [self.target]

    def _hook(self, layer: nn.Module, args):
        x = args[0]
        if layer.training:
            usage = x.detach().abs().reshape(-1, x.shape[-1]).sum(0)
            crit = self.criterion
            crit.pending = usage if crit.pending is None else crit.pending + usage
        ctrl = self.controller
        if ctrl is not None and ctrl.masks:
            return (x * ctrl.masks[self.target.name].to(x.dtype),) + tuple(args[1:])

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
        super().detach()

    def removed_params(self):
        return None  # features are not parameters

    def kept(self) -> Dict[str, int]:
        return {name: int(m.sum()) for name, m in self.require().masks.items()}
