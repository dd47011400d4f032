"""The table: exact mean ± sample std on known inputs, counts, and the plots."""
import pytest

from sparsity_core.sweep import aggregate, format_cell, markdown_report, mean_std


def rec(method, sparsity, seed, value, task_set="a+b", status="ok"):
    return {"run_id": f"{method}-{sparsity}-{seed}-{task_set}", "method": method, "sparsity": sparsity, "seed": seed,
            "tasks": task_set.split("+"), "task_set": task_set, "status": status,
            "metrics": {"acc/a": value, "acc/b": 1 - value} if status == "ok" else {},
            "error": None if status == "ok" else "RuntimeError: boom\ntraceback"}


def test_mean_and_sample_std():
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2))
    assert format_cell([0.5, 0.7, 0.9]) == "0.7000 ± 0.2000"
    assert format_cell([1.0, 2.0], expected=3, digits=2) == "1.50 ± 0.71 (n=2/3)"
    assert format_cell([0.25]) == "0.2500" and format_cell([]) == "—"


def test_markdown_report_on_known_inputs():
    records = [rec("m1", 0.5, 0, 0.5), rec("m1", 0.5, 1, 0.7), rec("m1", 0.5, 2, 0.9),
               rec("m1", 0.9, 0, 0.2), rec("m1", 0.9, 1, 0.4),
               rec("m2", 0.5, 0, 0.6), rec("m2", 0.5, 1, 0.6), rec("m2", 0.5, 2, 0.6),
               rec("m1", 0.9, 2, 0.0, status="failed")]
    text = markdown_report(records, ["acc"], title="T", methods=["m1", "m2"], sparsities=[0.5, 0.9],
                           expected_seeds=3, grid_size=12, missing=["m2-0.9-0-a+b", "m2-0.9-1-a+b", "m2-0.9-2-a+b"])
    assert ("### acc — task set `a+b`, task `a`\n\n| method | 0.5 | 0.9 |\n|---|---:|---:|\n"
            "| m1 | 0.7000 ± 0.2000 | 0.3000 ± 0.1414 (n=2/3) |\n| m2 | 0.6000 ± 0.0000 | — |") in text
    assert "| m1 | 0.3000 ± 0.2000 | 0.7000 ± 0.1414 (n=2/3) |" in text  # task b = 1 - a
    assert "Counted: 8 finished runs of 12 in the grid; 1 failed; 3 not run yet" in text
    assert "- `m1-0.9-2-a+b`: RuntimeError: boom" in text


def test_aggregate_by_task_set_and_task():
    agg = aggregate([rec("m", 0.5, 0, 0.5), rec("m", 0.5, 0, 0.8, task_set="a")], ["acc"])
    assert agg["acc"]["a+b"]["a"]["m"][0.5] == [0.5] and agg["acc"]["a"]["a"]["m"][0.5] == [0.8]
    assert list(agg["acc"]["a"]) == ["a", "b"]  # the run's tasks first, then other keys of the metric


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: the sweep writes no plots without it")
    from sparsity_core.sweep.plots import plot_aggregate

    agg = aggregate([rec("m1", s, seed, 0.5 + 0.1 * seed - s / 2) for s in (0.5, 0.9) for seed in (0, 1)]
                    + [rec("m2", 0.5, 0, 0.4)], ["acc"])
    paths = plot_aggregate(agg, tmp_path / "plots", ["m1", "m2"])
    assert [p.name for p in paths] == ["acc__a+b.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 5000
