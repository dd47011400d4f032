"""Bad-input sweep over the core's public entry points (issue 19, item 5): every case raises a
clear error of the expected type and leaves what it acted on unchanged."""
from __future__ import annotations

import pytest
import torch

from sparsity_core import (
    Budget,
    Constant,
    Cosine,
    Cubic,
    Exponential,
    GlobalRank,
    Linear,
    SparsityController,
    StepwiseNM,
    UnknownNameError,
    as_schedule,
    discover_targets,
    one_shot_prune,
)
from sparsity_core.calibration import (
    calibrate_cats,
    calibrate_prune,
    cfsp_prune,
    wanda_prune,
)
from sparsity_core.lightning import SparsityCallback
from sparsity_core.sparse_export import export_sparse

from ._sweep import Case, mlp, params, run


def _model_and_controller():
    model = mlp()
    return {"model": model, "controller": SparsityController(discover_targets(model), 0.5)}


def _masked_mlp():
    model = mlp()
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.weight[:, : m.in_features // 2] = 0
    return model


BATCHES = [torch.randn(4, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]


def _oneshot(model, **kw):
    args = {"batches": [torch.randn(2, 4)], "sparsity": 0.5}
    args.update(kw)
    return one_shot_prune(model, discover_targets(model), **args)


CB = SparsityCallback
CASES = [
    # -- SparsityCallback constructor and its options
    Case("callback-sparsity-negative", lambda _: CB(-0.1), ValueError, r"sparsity must be a number in \[0, 1\)"),
    Case("callback-sparsity-one", lambda _: CB(1.0), ValueError, r"sparsity must be a number in \[0, 1\)"),
    Case("callback-schedule-string", lambda _: CB("cubic"), TypeError, r"sparsity must be a Schedule"),
    Case("callback-criterion-unknown", lambda _: CB(0.5, criterion="nope"), UnknownNameError,
         r"unknown criterion 'nope'.*magnitude"),
    Case("callback-criterion-int", lambda _: CB(0.5, criterion=3), TypeError, r"criterion must be a name"),
    Case("callback-allocator-unknown", lambda _: CB(0.5, allocator="nope"), UnknownNameError,
         r"unknown allocator 'nope'.*global"),
    Case("callback-enforcement-unknown", lambda _: CB(0.5, enforcement="nope"), UnknownNameError,
         r"unknown enforcement 'nope'.*hard"),
    Case("callback-layout-unknown", lambda _: CB(0.5, layout="nope"), UnknownNameError, r"unknown unit layout 'nope'"),
    Case("callback-layout-n-over-m", lambda _: CB(0.5, layout="5:4"), ValueError, r"N:M needs 0 < N < M, got 5:4"),
    Case("callback-layout-zero-n", lambda _: CB(0.5, layout="0:4"), ValueError, r"N:M needs 0 < N < M"),
    Case("callback-include-bad-regex", lambda _: CB(0.5, include="(["), ValueError,
         r"include pattern '\(\[' is not a valid regular expression"),
    Case("callback-exclude-bad-regex", lambda _: CB(0.5, exclude=["*x"]), ValueError,
         r"exclude pattern '\*x' is not a valid regular expression"),
    Case("callback-include-not-a-pattern", lambda _: CB(0.5, include=3), TypeError,
         r"include must be a regular expression string or a list of them, got 3"),
    Case("callback-exclude-list-of-ints", lambda _: CB(0.5, exclude=["head", 7]), TypeError,
         r"exclude must be a regular expression string"),
    Case("callback-update-every-zero", lambda _: CB(0.5, update_every=0), ValueError,
         r"update_every must be an int >= 1, got 0"),
    Case("callback-update-every-float", lambda _: CB(0.5, update_every=1.5), ValueError,
         r"update_every must be an int >= 1, got 1.5"),
    Case("callback-measure-unknown", lambda _: CB(0.5, measure="flops"), ValueError,
         r"measure must be one of units, params, macs; got 'flops'"),
    Case("callback-program-unknown", lambda _: CB(programs=["nope"]), UnknownNameError, r"unknown program 'nope'"),
    Case("callback-program-dict-without-name", lambda _: CB(programs=[{"rounds": 3}]), ValueError,
         r"needs a 'program' key"),
    Case("callback-program-int", lambda _: CB(programs=[3]), TypeError, r"a program is a Program.*got int"),
    Case("callback-name-empty", lambda _: CB(0.5, name=""), ValueError, r"name must be a non-empty string"),
    Case("callback-weight-options-without-schedule", lambda _: CB(programs=["weights"], update_every=5),
         ValueError, r"update_every configure the weights, but no weight schedule was given"),
    # -- schedules
    Case("cubic-negative-start", lambda _: Cubic(start_step=-1, end_step=10, final_sparsity=0.5), ValueError,
         r"start_step must be an int >= 0, got -1"),
    Case("cubic-end-before-start", lambda _: Cubic(start_step=10, end_step=5, final_sparsity=0.5), ValueError,
         r"end_step \(5\) must be >= start_step \(10\)"),
    Case("cubic-empty-ramp", lambda _: Cubic(start_step=10, end_step=10, final_sparsity=0.5), ValueError,
         r"a ramp needs end_step > start_step"),
    Case("cubic-sparsity-above-one", lambda _: Cubic(start_step=0, end_step=5, final_sparsity=1.5), ValueError,
         r"final sparsity must be a number in \[0, 1\), got 1.5"),
    Case("cubic-sparsity-nan", lambda _: Cubic(start_step=0, end_step=5, final_sparsity=float("nan")), ValueError,
         r"final sparsity must be a number in \[0, 1\), got nan"),
    Case("linear-negative-sparsity", lambda _: Linear(start_step=0, end_step=5, final_sparsity=-0.5), ValueError,
         r"final sparsity must be a number"),
    Case("linear-end-before-start", lambda _: Linear(start_step=5, end_step=0, final_sparsity=0.5), ValueError,
         r"end_step \(0\) must be >= start_step \(5\)"),
    Case("exponential-sparsity", lambda _: Exponential(start_step=0, end_step=5, final_sparsity=1.2), ValueError,
         r"final sparsity must be a number"),
    Case("cosine-sparsity", lambda _: Cosine(start_step=0, end_step=5, final_sparsity=1.2), ValueError,
         r"final sparsity must be a number"),
    Case("constant-sparsity", lambda _: Constant(sparsity=2.0), ValueError, r"sparsity must be a number in \[0, 1\)"),
    Case("stepwise-nm-zero-steps", lambda _: StepwiseNM(m=8, n_stages=(4, 2, 1), steps_per_stage=0), ValueError,
         r"steps_per_stage must be an int >= 1, got 0"),
    Case("stepwise-nm-n-above-m", lambda _: StepwiseNM(m=8, n_stages=(9,), steps_per_stage=1), ValueError,
         r"N:M needs 0 < N < M, got 9:8"),
    Case("as-schedule-string", lambda _: as_schedule("linear"), TypeError, r"sparsity must be a Schedule"),
    # -- allocators and budgets
    Case("global-floor-above-one", lambda _: GlobalRank(min_keep_fraction=1.5), ValueError,
         r"min_keep_fraction must be a number in \[0, 1\], got 1.5"),
    Case("global-floor-negative", lambda _: GlobalRank(min_keep_fraction=-0.1), ValueError,
         r"min_keep_fraction must be a number in \[0, 1\], got -0.1"),
    Case("budget-sparsity-above-one", lambda _: Budget(1.5), ValueError, r"sparsity must be a number in \[0, 1\)"),
    Case("budget-measure-unknown", lambda _: Budget(0.5, measure="flops"), ValueError,
         r"budget measure must be one of units, params, macs; got 'flops'"),
    # -- discovery and SparsityController
    Case("discover-include-matches-nothing", lambda m: discover_targets(m, include=["nomatch"]), ValueError,
         r"include pattern 'nomatch' matches no prunable module", build=mlp),
    Case("discover-exclude-everything", lambda m: discover_targets(m, exclude=[".*"]), ValueError,
         r"no prunable weights selected: check include/exclude", build=mlp),
    Case("discover-nm-not-dividing", lambda m: discover_targets(m, layout="2:3"), ValueError,
         r"2:3 sparsity on '0.weight': input dimension 4 is not divisible by M=3", build=mlp),
    Case("controller-no-targets", lambda _: SparsityController([], 0.5), ValueError, r"needs at least one target"),
    Case("controller-sparsity-above-one", lambda m: SparsityController(discover_targets(m), 1.5), ValueError,
         r"sparsity must be a number in \[0, 1\)", build=mlp),
    Case("controller-update-every-zero", lambda m: SparsityController(discover_targets(m), 0.5, update_every=0),
         ValueError, r"update_every must be an int >= 1", build=mlp),
    Case("controller-criterion-unknown", lambda m: SparsityController(discover_targets(m), 0.5, criterion="nope"),
         UnknownNameError, r"unknown criterion 'nope'", build=mlp),
    Case("controller-update-negative-step", lambda s: s["controller"].update(-1), ValueError,
         r"step must be an int >= 0, got -1", build=_model_and_controller),
    Case("controller-load-bogus-state", lambda s: s["controller"].load_state_dict({"bogus": 1}), ValueError,
         r"sparsity controller state is missing", build=_model_and_controller),
    Case("controller-task-none", lambda s: s["controller"].set_task(None), ValueError,
         r"a task is named by a non-empty string, got None", build=_model_and_controller),
    # -- one_shot_prune
    Case("oneshot-sparsity-above-one", lambda m: _oneshot(m, sparsity=1.5), ValueError,
         r"sparsity must be a number in \[0, 1\)", build=mlp),
    Case("oneshot-no-targets", lambda m: one_shot_prune(m, [], None, 0.5), ValueError,
         r"needs at least one target", build=mlp),
    Case("oneshot-targets-of-another-model", lambda m: one_shot_prune(m, discover_targets(mlp()), None, 0.5),
         ValueError, r"target '0.weight' has no parameter of the model to zero", build=mlp),
    Case("oneshot-wanda-without-batches", lambda m: _oneshot(m, batches=None, criterion="wanda"), ValueError,
         r"observes 'calibration': one_shot_prune needs calibration batches", build=mlp),
    Case("oneshot-taylor-without-loss", lambda m: _oneshot(m, criterion="taylor"), ValueError,
         r"scores from gradients: one_shot_prune needs loss_fn", build=mlp),
    Case("oneshot-measure-unknown", lambda m: _oneshot(m, measure="flops"), ValueError,
         r"budget measure must be one of", build=mlp),
    Case("oneshot-allocator-unknown", lambda m: _oneshot(m, allocator="nope"), UnknownNameError,
         r"unknown allocator 'nope'", build=mlp),
    # a batch the model cannot run: the model's own error, with the observer's hooks gone
    Case("oneshot-wanda-batch-wrong-width", lambda m: _oneshot(m, batches=[torch.randn(2, 5)], criterion="wanda"),
         RuntimeError, r"shapes cannot be multiplied", build=mlp),
    # -- calibration entry points
    Case("wanda-sparsity-above-one", lambda m: wanda_prune(m, BATCHES, 1.5), ValueError,
         r"sparsity must be a number in \[0, 1\), got 1.5", build=mlp),
    Case("wanda-without-batches", lambda m: wanda_prune(m, None, 0.5), ValueError,
         r"calibrate_prune needs calibration batches, got None", build=mlp),
    Case("wanda-no-batches", lambda m: wanda_prune(m, [], 0.5), ValueError,
         r"calibrate_prune: the calibration data has no batches", build=mlp),
    Case("wanda-pattern-n-over-m", lambda m: wanda_prune(m, BATCHES, 0.5, pattern="5:4"), ValueError,
         r"N:M needs 0 < N < M, got 5:4", build=mlp),
    Case("wanda-group-unknown", lambda m: wanda_prune(m, BATCHES, 0.5, group="col"), ValueError,
         r"comparison group must be one of \('row', 'layer'\), got 'col'", build=mlp),
    Case("wanda-min-samples-zero", lambda m: wanda_prune(m, BATCHES, 0.5, min_samples=0), ValueError,
         r"min_samples must be an int >= 1, got 0", build=mlp),
    Case("wanda-too-few-samples", lambda m: wanda_prune(m, BATCHES, 0.5, min_samples=100), ValueError,
         r"the calibration data has 16 samples in 4 batches; at least 100 are needed", build=mlp),
    Case("wanda-refine-not-a-refiner", lambda m: wanda_prune(m, BATCHES, 0.5, refine="nope"), ValueError,
         r"refine must have a refine\(target, mask, stats\) method", build=mlp),
    Case("calibrate-criterion-unknown",
         lambda m: calibrate_prune(m, discover_targets(m), BATCHES, 0.5, criterion="nope"), UnknownNameError,
         r"unknown criterion 'nope'", build=mlp),
    Case("cats-unknown-activation", lambda m: calibrate_cats(m, ["nope"], BATCHES, 0.5), ValueError,
         r"calibrate_cats: 'nope' does not exist in the model", build=mlp),
    Case("cats-sparsity-above-one", lambda m: calibrate_cats(m, ["1"], BATCHES, 1.5), ValueError,
         r"sparsity must be a number in \[0, 1\)", build=mlp),
    Case("cfsp-model-without-ffn", lambda m: cfsp_prune(m, BATCHES, 0.5), ValueError,
         r"cfsp_prune: no feed-forward network found", build=mlp),
    # -- export_sparse
    Case("export-include-unknown-module", lambda m: export_sparse(m, torch.randn(2, 4), include=["nope"]),
         ValueError, r"include names modules the model does not have: \['nope'\]", build=_masked_mlp),
    Case("export-min-sparsity-above-one", lambda m: export_sparse(m, torch.randn(2, 4), min_sparsity=1.5),
         ValueError, r"min_sparsity must be a number in \[0, 1\]", build=_masked_mlp),
    Case("export-repeats-zero", lambda m: export_sparse(m, torch.randn(2, 4), repeats=0), ValueError,
         r"repeats must be an int >= 1, got 0", build=_masked_mlp),
    Case("export-min-speedup-negative", lambda m: export_sparse(m, torch.randn(2, 4), min_speedup=-1.0), ValueError,
         r"min_speedup", build=_masked_mlp),
    Case("export-input-wrong-width", lambda m: export_sparse(m, torch.randn(2, 5), min_sparsity=0.3), RuntimeError,
         r"shapes cannot be multiplied", build=_masked_mlp),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case) -> None:
    run(case)
