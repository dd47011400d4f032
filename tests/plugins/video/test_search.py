"""The per-head pattern search program on the denoising clock."""
import io

import pytest
import torch

from sparsity_plugins.video.search import PatternSearch, head_targets

from sparsity_core.program import Host, build_program

from .helpers import model_and_inputs, run


def calibrate(search, model, x, steps=(900.0, 600.0, 300.0)):
    search.attach(Host(model))
    for i, t in enumerate(steps):
        run(model, dict(x, timestep=torch.tensor([t])))
        search.after_optimizer_step(i + 1)
    return search


def test_program_protocol_and_registry():
    p = build_program({"program": "pattern_search", "block_size": 16, "error_budget": 0.1})
    assert isinstance(p, PatternSearch) and p.clock == "denoising"
    model, _ = model_and_inputs("wan")
    targets = head_targets(model)
    assert [t.name for t in targets] == ["blocks.0.attn1.heads", "blocks.1.attn1.heads"]
    assert all(t.param is None and t.num_units == 2 for t in targets)


def test_loose_budget_takes_cheapest_and_strict_budget_stays_dense():
    model, x = model_and_inputs("wan")
    before = dict(model.attn_processors)
    ref = run(model, x)
    loose = calibrate(PatternSearch(block_size=16, error_budget=1.0, measure=False), model, x)
    plan = loose.finalize()
    costs = loose.cost.relative
    cheapest = min(costs, key=costs.get)
    assert all(p == cheapest for row in plan.patterns for p in row)
    assert all(model.attn_processors[k] is before[k] for k in before)  # observers removed
    assert torch.equal(run(model, x), ref)
    strict = calibrate(PatternSearch(block_size=16, error_budget=1e-9, measure=False), model, x).finalize()
    assert all(p == "dense" for row in strict.patterns for p in row)


def test_global_budget_split_by_sensitivity():
    model, x = model_and_inputs("wan", heads=4)
    search = calibrate(PatternSearch(block_size=16, error_budget=0.3, sparsity=0.3, measure=False), model, x)
    plan = search.finalize()
    d = torch.tensor(plan.densities())
    assert d.mean() <= 0.7 + 1e-9
    # the heads left dense are the most sensitive ones
    dense = d == 1.0
    assert 0 < int(dense.sum()) < d.numel()


def test_dense_fraction_and_errors_within_budget():
    model, x = model_and_inputs("wan")
    search = calibrate(PatternSearch(block_size=16, error_budget=0.5, dense_fraction=0.34, measure=False), model, x,
                       steps=(900.0, 700.0, 500.0, 300.0))
    plan = search.finalize()
    assert plan.dense_steps == 2
    assert search.err.shape[0] == 4


def test_state_is_plain_tensors():
    model, x = model_and_inputs("wan")
    search = calibrate(PatternSearch(block_size=16, measure=False), model, x)
    buf = io.BytesIO()
    torch.save(search.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = PatternSearch(block_size=16, measure=False)
    other.load_state_dict(state)
    assert torch.equal(other.err, search.err)
    search.detach()


@pytest.mark.parametrize("kw,match", [
    (dict(error_budget=0.0), "error_budget"), (dict(error_budget=1.5), "error_budget"),
    (dict(sparsity=1.0), "sparsity"), (dict(candidates=["nope"]), "unknown attention pattern"),
    (dict(allocator="globl"), "global"),
])
def test_bad_configuration(kw, match):
    with pytest.raises(ValueError, match=match):
        PatternSearch(**kw)


def test_measured_cost_model_runs():
    from sparsity_plugins.video.cost import measure_costs
    from sparsity_plugins.video.layout import TokenLayout
    c = measure_costs(["stripe", "diagonal"], TokenLayout(4, 8, 8), 32, head_dim=16, repeats=1)
    assert c.measured and set(c.relative) == {"stripe", "diagonal"} and c.dense_seconds > 0


@pytest.mark.parametrize("kind", ["cogvideox", "hunyuan", "ltx", "mochi"])
def test_search_then_install_on_other_models(kind, tmp_path):
    from sparsity_plugins.video.plan import AttentionPlan
    from sparsity_plugins.video.processors import install
    model, x = model_and_inputs(kind)
    search = calibrate(PatternSearch(block_size=8, error_budget=0.5, sparsity=0.3, measure=False), model, x)
    plan = search.finalize()
    plan.save(tmp_path / "p.json")
    plan = AttentionPlan.load(tmp_path / "p.json")
    assert plan.model == type(model).__name__ and plan.mean_density() <= 0.7 + 1e-9
    ref = run(model, x)
    with install(model, plan) as s:
        out = run(model, x)
        assert s.calls["sparse"] == plan.layers
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_transformer_inside_a_wrapper_module():
    model, x = model_and_inputs("wan")
    holder = torch.nn.Module()
    holder.transformer = model
    search = PatternSearch(block_size=16, measure=False, transformer="transformer")
    search.attach(Host(holder))
    run(model, x)
    assert search.err is not None
    search.detach()
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        PatternSearch(block_size=16, transformer="nope").attach(Host(holder))
    with pytest.raises(ValueError, match="supported model classes"):
        PatternSearch(block_size=16).attach(Host(holder))
