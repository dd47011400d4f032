"""Bad-input sweep over the video plugin's entry points (issue 19, item 5)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from torch import nn

pytest.importorskip("diffusers", reason="the video extra (diffusers) is not installed")

from sparsity_plugins.video import (
    AttentionPlan,
    PatternSearch,
    TokenLayout,
    install,
    tiny_model,
)

from sparsity_core import Host

from ._sweep import Case, params, run


def model():
    return tiny_model("cogvideox")


def installed():
    m = model()
    return {"model": m, "session": install(m, block_size=4)}


def plan_file(content: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="bad-plan-")) / "plan.json"
    path.write_text(content)
    return path


def plan(layers: int, model_name: str = "CogVideoXTransformer3DModel") -> AttentionPlan:
    return AttentionPlan.uniform(model_name, TokenLayout(frames=2, height=4, width=4), layers=layers, heads=2,
                                 block_size=4)


CASES = [
    # -- PatternSearch options
    Case("patternsearch-block-size-zero", lambda _: PatternSearch(block_size=0), ValueError,
         r"block_size must be an int >= 1, got 0"),
    Case("patternsearch-block-size-string", lambda _: PatternSearch(block_size="64"), ValueError,
         r"block_size must be an int >= 1, got '64'"),
    Case("patternsearch-error-budget-zero", lambda _: PatternSearch(error_budget=0), ValueError,
         r"error_budget must be a number in \(0, 1\], got 0"),
    Case("patternsearch-sparsity-one", lambda _: PatternSearch(sparsity=1.0), ValueError,
         r"sparsity must be a number in \[0, 1\), got 1.0"),
    Case("patternsearch-dense-fraction-one", lambda _: PatternSearch(dense_fraction=1.0), ValueError,
         r"dense_fraction must be a number in \[0, 1\), got 1.0"),
    Case("patternsearch-candidate-unknown", lambda _: PatternSearch(candidates=["bogus(h=2)"]), ValueError,
         r"unknown attention pattern 'bogus' in 'bogus\(h=2\)'"),
    Case("patternsearch-candidates-empty", lambda _: PatternSearch(candidates=[]), ValueError,
         r"candidates must name at least one attention pattern"),
    Case("patternsearch-transformer-not-a-name", lambda _: PatternSearch(transformer=3), ValueError,
         r"transformer must be a submodule name \(a string\), got 3"),
    Case("patternsearch-attach-missing-submodule", lambda m: PatternSearch(transformer="nope").attach(Host(m)),
         ValueError, r"the host's model has no submodule 'nope'", build=model),
    Case("patternsearch-attach-model-without-attention",
         lambda m: PatternSearch().attach(Host(m)), ValueError,
         r"sparse attention does not support Sequential", build=lambda: nn.Sequential(nn.Linear(4, 4))),
    # -- install
    Case("install-model-without-attention", lambda m: install(m, block_size=4), ValueError,
         r"sparse attention does not support Sequential; supported model classes",
         build=lambda: nn.Sequential(nn.Linear(4, 4))),
    Case("install-without-plan-or-block-size", lambda m: install(m), ValueError,
         r"install needs a plan or a block_size", build=model),
    Case("install-block-size-zero", lambda m: install(m, block_size=0), ValueError,
         r"block_size must be an int >= 1, got 0", build=model),
    Case("install-twice", lambda s: install(s["model"], block_size=4), ValueError,
         r"sparse attention is already installed on this model; uninstall it first", build=installed),
    Case("install-plan-wrong-layers", lambda m: install(m, plan(5)), ValueError,
         r"the attention plan has 5 layers × 2 heads, CogVideoXTransformer3DModel has 2 × 2", build=model),
    Case("install-plan-of-another-model", lambda m: install(m, plan(2, "WanTransformer3DModel")), ValueError,
         r"the attention plan was made for WanTransformer3DModel, not CogVideoXTransformer3DModel", build=model),
    Case("install-plan-block-size-differs", lambda m: install(m, plan(2), block_size=8), ValueError,
         r"block_size 8 differs from the plan's 4", build=model),
    # -- AttentionPlan loading
    Case("plan-load-malformed-json", lambda _: AttentionPlan.load(plan_file("{bad")), ValueError,
         r"plan.json is not valid JSON .*not a video attention plan"),
    Case("plan-load-json-list", lambda _: AttentionPlan.load(plan_file("[1]")), ValueError,
         r"not a video attention plan \(expected format"),
    Case("plan-load-wrong-version", lambda _: AttentionPlan.load(plan_file(json.dumps(
        {**plan(2).to_dict(), "version": 99}))), ValueError, r"unsupported plan version 99"),
    Case("plan-load-unknown-key", lambda _: AttentionPlan.load(plan_file(json.dumps(
        {**plan(2).to_dict(), "extra": 1}))), ValueError, r"unknown plan keys \['extra'\]"),
    Case("plan-load-ragged-heads", lambda _: AttentionPlan.load(plan_file(json.dumps(
        {**plan(2).to_dict(), "patterns": [["dense", "dense"], ["dense"]], "density": None}))), ValueError,
        r"every layer needs the same number of heads, got \[2, 1\]"),
    Case("plan-load-missing-file", lambda _: AttentionPlan.load(Path(tempfile.mkdtemp()) / "none.json"),
         FileNotFoundError, r"No such file or directory"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case) -> None:
    run(case)
