"""Bad-input sweep over the graph plugin's entry points (issue 19, item 5)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")

from sparsity_plugins.graph import (
    GTSP,
    TEDDY,
    UGS,
    GTSPConfig,
    teddy_edge_scores,
    teddy_mask,
)
from torch_geometric.data import Data

from sparsity_core import Host

from ._sweep import Case, params, run

RING = torch.tensor([list(range(10)) + [(i + 1) % 10 for i in range(10)],
                     [(i + 1) % 10 for i in range(10)] + list(range(10))])


def graph(nodes: int = 10, edge_index=None) -> Data:
    """A 10-node undirected ring (20 directed edges)."""
    torch.manual_seed(0)
    return Data(x=torch.randn(nodes, 3), edge_index=RING.clone() if edge_index is None else edge_index)


def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3))


CASES = [
    # -- UGS options
    Case("ugs-rounds-zero", lambda _: UGS(rounds=0), ValueError, r"rounds must be an int >= 1, got 0"),
    Case("ugs-steps-per-round-zero", lambda _: UGS(steps_per_round=0), ValueError,
         r"steps_per_round must be an int >= 1, got 0"),
    Case("ugs-edge-rate-above-one", lambda _: UGS(edge_rate=1.5), ValueError,
         r"edge_rate must be a number in \[0, 1\), got 1.5"),
    Case("ugs-weight-rate-negative", lambda _: UGS(weight_rate=-0.1), ValueError,
         r"weight_rate must be a number in \[0, 1\), got -0.1"),
    Case("ugs-edge-l1-negative", lambda _: UGS(edge_l1=-1), ValueError, r"edge_l1 must be a number >= 0, got -1"),
    Case("ugs-mask-optimizer-unknown", lambda _: UGS(mask_optimizer="nope"), ValueError,
         r"mask_optimizer must be one of 'shared', 'sgd'; got 'nope'"),
    Case("ugs-rewind-negative", lambda _: UGS(rewind_step=-1), ValueError,
         r"rewind_step \(before the first pruning round\) must be an int >= 0"),
    Case("ugs-exclude-bad-regex", lambda _: UGS(exclude="(["), ValueError,
         r"exclude pattern '\(\[' is not a valid regular expression"),
    Case("ugs-mask-noise-negative", lambda _: UGS(mask_noise=-1), ValueError,
         r"mask_noise must be a number in \[0, 1\), got -1"),
    Case("ugs-edge-index-wrong-shape", lambda _: UGS(edge_index=torch.zeros(3, 4, dtype=torch.long)), ValueError,
         r"edge_index must have shape \[2, num_edges\]"),
    Case("ugs-edge-index-outside-num-nodes", lambda _: UGS(edge_index=RING.clone(), num_nodes=5), ValueError,
         r"edge_index has node ids outside \[0, 5\)"),
    Case("ugs-num-nodes-zero", lambda _: UGS(edge_index=RING.clone(), num_nodes=0), ValueError,
         r"num_nodes must be an int >= 1, got 0"),
    Case("ugs-attach-model-without-message-passing", lambda m: UGS().attach(Host(m)), ValueError,
         r"Sequential has no torch_geometric MessagePassing layer to mask", build=linear),
    # -- TEDDY
    Case("teddy-sparsity-above-one", lambda _: TEDDY(1.5), ValueError, r"sparsity must be a number in \[0, 1\), got 1.5"),
    Case("teddy-sparsity-negative", lambda _: TEDDY(-0.1), ValueError, r"sparsity must be a number in \[0, 1\)"),
    Case("teddy-node-ids-outside-graph", lambda g: TEDDY(0.5)(g), ValueError,
         r"edge_index has node ids outside \[0, 5\)", build=lambda: graph(nodes=5)),
    Case("teddy-float-edge-index", lambda g: TEDDY(0.5)(g), ValueError,
         r"edge_index must have dtype torch.long, got torch.float32", build=lambda: graph(edge_index=RING.float())),
    Case("teddy-graph-without-edges", lambda g: TEDDY(0.5)(g), ValueError,
         r"TEDDY needs edges to sparsify: the Data has no edge_index", build=lambda: Data(x=torch.randn(10, 3))),
    Case("teddy-mask-edge-index-wrong-shape", lambda _: teddy_mask(torch.zeros(3, 4, dtype=torch.long), 0.5),
         ValueError, r"edge_index must have shape \[2, num_edges\], got \[3, 4\]"),
    Case("teddy-mask-negative-node-ids", lambda _: teddy_mask(-RING, 0.5), ValueError,
         r"edge_index has node ids outside"),
    Case("teddy-scores-num-nodes-too-small", lambda _: teddy_edge_scores(RING, num_nodes=3), ValueError,
         r"edge_index has node ids outside \[0, 3\)"),
    # -- GTSP options
    Case("gtsp-flops-and-config", lambda _: GTSP(flops=0.3, config=GTSPConfig()), ValueError,
         r"pass either config=GTSPConfig\(\.\.\.\) or flops=, not both"),
    Case("gtsp-flops-above-one", lambda _: GTSP(flops=1.5), ValueError,
         r"flops fraction to remove must be a number in \[0, 1\), got 1.5"),
    Case("gtsp-weights-above-one", lambda _: GTSP(weights=1.5), ValueError, r"sparsity must be a number in \[0, 1\)"),
    Case("gtsp-exclude-bad-regex", lambda _: GTSP(exclude="(["), ValueError,
         r"exclude pattern '\(\[' is not a valid regular expression"),
    Case("gtsp-weight-update-every-zero", lambda _: GTSP(weight_update_every=0), ValueError,
         r"weight_update_every must be an int >= 1, got 0"),
    Case("gtsp-config-kinds-unknown", lambda _: GTSPConfig(kinds=("nope",)), ValueError,
         r"kinds must be a non-empty subset of \('tokens', 'heads', 'layers'\)"),
    Case("gtsp-config-kinds-empty", lambda _: GTSPConfig(kinds=()), ValueError, r"kinds must be a non-empty subset"),
    Case("gtsp-config-max-heads-one", lambda _: GTSPConfig(max_heads=1.0), ValueError,
         r"max_heads .* must be a number in \[0, 1\), got 1.0"),
    Case("gtsp-config-min-token-keep-zero", lambda _: GTSPConfig(min_token_keep=0), ValueError,
         r"min_token_keep must be a number in \(0, 1\], got 0"),
    Case("gtsp-config-update-every-zero", lambda _: GTSPConfig(update_every=0), ValueError,
         r"update_every must be an int >= 1, got 0"),
    Case("gtsp-config-ema-one", lambda _: GTSPConfig(ema=1.0), ValueError, r"ema must be a number in \[0, 1\), got 1.0"),
    Case("gtsp-attach-model-without-gps", lambda m: GTSP().attach(Host(m)), ValueError,
         r"Sequential has no torch_geometric.nn.GPSConv layer", build=linear),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case) -> None:
    run(case)
