"""Graph lottery tickets: unified GNN sparsification (UGS; Chen et al., 2021, "A Unified
Lottery Ticket Hypothesis for Graph Neural Networks").

UGS trains a mask ``m_g`` over the edges of the graph and a mask ``m_θ`` over the weights
together with the model, with an ℓ₁ penalty on both:

    L = CE(f(X, A ⊙ m_g; θ ⊙ m_θ)) + λ_g ‖m_g‖₁ + λ_θ ‖m_θ‖₁

and prunes iteratively: every round removes the fraction ``p_g`` of the remaining edges
and ``p_θ`` of the remaining weights with the smallest mask magnitudes, then rewinds the
weights (and the remaining masks) to their values at the rewind step (IMP with rewinding;
Frankle et al., 2020). After ``r`` rounds the edge density is ``(1 − p_g)^r`` and the weight
density ``(1 − p_θ)^r``; the last round's masks are the ticket.

Here the masks act without rewriting any layer: the edge mask reaches every
``MessagePassing`` layer through PyG's explain mechanism (messages multiplied by the mask;
layers that add self-loops give them weight 1, as for a GCN normalised once on the full
graph, the reference formulation), and the weight masks are ``torch.nn.utils.parametrize``
parametrizations ``W ↦ W ⊙ m_θ``. Rounds, rewinding, optimizer-moment masking and resumable
state come from the core (``Iterative`` schedule, magnitude criterion, hard enforcement);
the ℓ₁ subgradients are added to the mask gradients before every optimizer step, so the
user's loss stays unchanged.

Two options of the program concern how the masks learn (see :class:`~.ugs_program.UGS`):
``mask_noise`` re-initialises the masks at the start of every round, ``m ← m·(1 + c·u)`` with
``u ~ U(−1, 1)``, as UGS's reference code does (c = 1e-5, the default); ``mask_optimizer="sgd"``
steps the masks with plain SGD instead of the model's optimizer. In a transductive task the
masks of edges outside every training node's receptive field get no task gradient, only the
ℓ₁ pull, the same for all of them under either optimizer, while most edges that do get one
are held up by it: those masks tie and go first (bench/edge_sparsify, Cora: ~82 % of the
edges removed at 50 % lie outside the field, 49 % of all edges do; Adam and SGD alike).
Without noise the ties fall to the last edges by position; with it, at random.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn

from sparsity_core.validation import check_range

from ._deps import torch_geometric
from .teddy import check_edge_index, undirected_key

EDGE_MASK_NAME = "ugs_edge_mask"


class EdgeMask(nn.Module):
    """A learnable mask over the edges of one fixed graph, applied to every
    ``MessagePassing`` layer of a model through PyG's explain masks.

    One mask value per undirected edge when ``undirected`` (both directions share it), per
    directed edge otherwise; self-loops are not masked (value 1). ``mask`` starts at ones.
    """

    def __init__(self, edge_index: Tensor, num_nodes: int, undirected: bool) -> None:
        super().__init__()
        check_edge_index(edge_index, num_nodes)
        loop = edge_index[0] == edge_index[1]
        if undirected:
            is_undirected = torch_geometric("utils").is_undirected
            if not is_undirected(edge_index, num_nodes=num_nodes):
                raise ValueError("edge_index is directed but undirected=True: every edge (i, j) needs its (j, i)")
            key = undirected_key(edge_index, num_nodes)
            _, unit = torch.unique(key[~loop], return_inverse=True)
        else:
            unit = torch.arange(int((~loop).sum()))
        num_units = int(unit.max()) + 1 if unit.numel() else 0
        if num_units == 0:
            raise ValueError("the graph has only self-loops: no edge to mask")
        unit_of_edge = torch.full((edge_index.size(1),), num_units, dtype=torch.long)
        unit_of_edge[~loop] = unit
        self.undirected = undirected
        self.mask = nn.Parameter(torch.ones(num_units))
        self.register_buffer("edge_index", edge_index.clone(), persistent=False)
        self.register_buffer("unit_of_edge", unit_of_edge, persistent=False)
        self._hooks: List = []

    @property
    def num_units(self) -> int:
        return self.mask.numel()

    def edge_values(self) -> Tensor:
        """The mask value of every edge of ``edge_index`` (1 for self-loops)."""
        return torch.cat([self.mask, self.mask.new_ones(1)])[self.unit_of_edge]

    def kept(self) -> Tensor:
        """Boolean mask over ``edge_index``: edges whose mask value is non-zero."""
        return self.edge_values().detach() != 0

    def attach(self, model: nn.Module) -> int:
        """Apply the mask in every ``MessagePassing`` layer of ``model`` (those with
        ``explain=False`` excepted) before each of its forwards; returns how many."""
        MessagePassing = torch_geometric("nn").MessagePassing
        set_masks = torch_geometric("explain.algorithm.utils").set_masks
        layers = [m for m in model.modules() if isinstance(m, MessagePassing) and m.explain is not False]

        def hook(layer, args):
            set_masks(layer, self.edge_values(), self.edge_index, apply_sigmoid=False)

        self._hooks = [layer.register_forward_pre_hook(hook) for layer in layers]
        return len(layers)

    def detach_from(self, model: nn.Module) -> None:
        """Remove the hooks and PyG's explain masks from ``model``."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        torch_geometric("explain.algorithm.utils").clear_masks(model)

    def extra_repr(self) -> str:
        return f"units={self.num_units}, undirected={self.undirected}"


class WeightMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ m`` with a learnable ``m`` (ones at the start)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.mask = nn.Parameter(torch.ones(tuple(shape)))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def rate_for(removed: float, rounds: int) -> float:
    """Per-round rate that removes the fraction ``removed`` in ``rounds`` rounds."""
    removed = check_range(removed, "removed", high_open=True)
    return 1.0 - (1.0 - removed) ** (1.0 / rounds)
