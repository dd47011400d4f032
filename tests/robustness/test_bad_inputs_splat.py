"""Bad-input sweep over the 3D plugin's entry points (issue 19, item 5)."""
from __future__ import annotations

import pytest
import torch
from sparsity_plugins.splat import (
    BudgetedStrategy,
    HashEncoding,
    HashGridPruning,
    prune_to_budget,
    random_splats,
)
from torch import nn

from sparsity_core import Host

from ._sweep import Case, params, run


def scene():
    """20 Gaussians with one Adam per parameter and a strategy state."""
    splats = nn.ParameterDict({k: nn.Parameter(v) for k, v in random_splats(20, 1.0).items()})
    optimizers = {k: torch.optim.Adam([splats[k]], lr=1e-3) for k in splats}
    strategy = BudgetedStrategy(budget=30, refine_start_iter=0, refine_stop_iter=10)
    return {"params": splats, "optimizers": optimizers, "state": strategy.initialize_state(1.0),
            "strategy": strategy}


def scene_with_nan():
    s = scene()
    with torch.no_grad():
        s["params"]["means"][0] = float("nan")
    return s


def encoding(saliency=4):
    torch.manual_seed(0)
    return nn.Sequential(HashEncoding(levels=2, log2_table_size=6, base_resolution=2, max_resolution=8,
                                      saliency_resolution=saliency))


def _without_opacities(s):
    keep = [k for k in s["params"] if k != "opacities"]
    s["strategy"].check_sanity({k: s["params"][k] for k in keep}, {k: s["optimizers"][k] for k in keep})


CASES = [
    # -- BudgetedStrategy options
    Case("budgeted-budget-zero", lambda _: BudgetedStrategy(budget=0), ValueError, r"budget must be an int >= 1, got 0"),
    Case("budgeted-refine-window-inverted", lambda _: BudgetedStrategy(refine_start_iter=100, refine_stop_iter=50),
         ValueError, r"need 0 <= refine_start_iter < refine_stop_iter, got 100, 50"),
    Case("budgeted-mode-unknown", lambda _: BudgetedStrategy(mode="fast"), ValueError,
         r"mode must be 'taming' or 'turbo', got 'fast'"),
    Case("budgeted-prune-fraction-one", lambda _: BudgetedStrategy(prune_fraction=1.0), ValueError,
         r"prune_fraction must be a number in \[0, 1\), got 1.0"),
    Case("budgeted-appearance-quantile-one", lambda _: BudgetedStrategy(appearance_quantile=1.0), ValueError,
         r"appearance_quantile must be a number in \(0, 1\), got 1.0"),
    Case("budgeted-score-prior-unknown", lambda _: BudgetedStrategy(score_weights={"nope": 1.0}), ValueError,
         r"unknown score prior\(s\) \['nope'\]"),
    Case("budgeted-score-weight-negative", lambda _: BudgetedStrategy(score_weights={"opacity": -1.0}), ValueError,
         r"score weights must be numbers >= 0"),
    Case("budgeted-prune-opa-negative", lambda _: BudgetedStrategy(prune_opa=-1), ValueError, r"prune_opa must be a number in \[0, 1\), got -1"),
    Case("budgeted-pause-after-reset-negative", lambda _: BudgetedStrategy(pause_refine_after_reset=-1), ValueError,
         r"pause_refine_after_reset must be an int >= 0, got -1"),
    Case("budgeted-turbo-fast-negative", lambda _: BudgetedStrategy(turbo_fast=-1), ValueError, r"turbo_fast must be a number > 0, got -1"),
    Case("budgeted-turbo-slow-zero", lambda _: BudgetedStrategy(turbo_slow=0.0), ValueError,
         r"turbo_slow must be a number > 0, got 0.0"),
    Case("budgeted-grow-grad-nan", lambda _: BudgetedStrategy(grow_grad2d=float("nan")), ValueError,
         r"grow_grad2d must be a number >= 0, got nan"),
    Case("budgeted-gradient-key-unknown", lambda _: BudgetedStrategy(key_for_gradient="nope"), ValueError,
         r"key_for_gradient must be one of \('means2d', 'gradient_2dgs'\), got 'nope'"),
    Case("budgeted-sanity-missing-parameter", _without_opacities, ValueError,
         r"params needs 'opacities'; has \['colors', 'means', 'quats', 'scales'\]", build=scene),
    Case("budgeted-sanity-nan", lambda s: s["strategy"].check_sanity(s["params"], s["optimizers"]), ValueError,
         r"params\['means'\] has NaN/Inf entries", build=scene_with_nan),
    Case("prune-to-budget-zero", lambda s: prune_to_budget(s["params"], s["optimizers"], s["state"], 0), ValueError,
         r"budget must be an int >= 1, got 0", build=scene),
    # -- hash-grid pruning
    Case("hashgrid-sparsity-above-one", lambda _: HashGridPruning(1.5), ValueError,
         r"sparsity must be a number in \[0, 1\), got 1.5"),
    Case("hashgrid-rho-negative", lambda _: HashGridPruning(rho=-1), ValueError, r"rho must be a number > 0, got -1"),
    Case("hashgrid-update-every-zero", lambda _: HashGridPruning(update_every=0), ValueError,
         r"update_every must be an int >= 1, got 0"),
    Case("hashgrid-admm-every-zero", lambda _: HashGridPruning(admm_every=0), ValueError,
         r"admm_every must be an int >= 1, got 0"),
    Case("hashgrid-encoding-not-a-name", lambda _: HashGridPruning(encoding=3), ValueError, r"encoding must be the module name of a HashEncoding \(a str\) or None, got 3"),
    Case("hashgrid-attach-without-encoding", lambda m: HashGridPruning().attach(Host(m)), ValueError,
         r"expected exactly one HashEncoding in Sequential, found none", build=lambda: nn.Sequential(nn.Linear(3, 3))),
    Case("hashgrid-attach-without-saliency-grid", lambda m: HashGridPruning().attach(Host(m)), ValueError,
         r"HashGridPruning needs a saliency grid on '0'", build=lambda: encoding(saliency=None)),
    Case("hashgrid-attach-unknown-encoding", lambda m: HashGridPruning(encoding="nope").attach(Host(m)), ValueError,
         r"no HashEncoding named 'nope'; the module has \['0'\]", build=encoding),
    Case("hash-encoding-levels-zero", lambda _: HashEncoding(levels=0), ValueError,
         r"levels must be an int >= 1, got 0"),
    Case("hash-encoding-resolutions-inverted", lambda _: HashEncoding(base_resolution=32, max_resolution=16),
         ValueError, r"max_resolution \(16\) must be >= base_resolution \(32\)"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case) -> None:
    run(case)
