"""The tour: missing dependencies and data are skipped with the hint, a failing step is
reported and the tour goes on, recipe output goes to the step's log."""
import pytest

from .recipes import load_recipe


@pytest.fixture(scope="module")
def tour():
    return load_recipe("tour.py")


def test_every_step_names_an_existing_recipe_and_a_distinct_plugin(tour):
    names = [s.name for s in tour.STEPS]
    assert len(set(names)) == len(names)
    assert {"core", "vision", "graph", "splat", "video", "continual", "peft"} <= set(names)
    for step in tour.STEPS:
        assert (tour.REPO / "recipes" / step.recipe).is_file(), step.recipe


def test_missing_module_or_data_skips_with_the_install_hint(tour, tmp_path, monkeypatch):
    step = tour.Step("x", "a step", "quickstart_digits.py", lambda out, t: [], str, modules=("no_such_module_xyz",),
                     install="pip install 'sparsity-suite[x]'")
    assert tour.why_skipped(step) == "needs no_such_module_xyz: pip install 'sparsity-suite[x]'"
    result = tour.run_step(step, tmp_path, 1)
    assert result["status"] == "skipped" and "sparsity-suite[x]" in result["summary"]
    monkeypatch.setattr(tour, "SHARED", tmp_path)
    data_step = tour.Step("y", "a step", "quickstart_digits.py", lambda out, t: [], str, data=("missing_set",))
    assert tour.why_skipped(data_step).startswith(f"needs {tmp_path / 'missing_set'}")


def test_a_failing_step_is_reported_with_its_log_and_the_tour_goes_on(tour, tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "boom.py").write_text(
        "def main(argv):\n    print('recipe output', argv)\n    raise RuntimeError('bad thing')\n")
    (tmp_path / "recipes" / "fine.py").write_text("def main(argv):\n    print('fine output')\n    return {'v': 3}\n")
    monkeypatch.setattr(tour, "REPO", tmp_path)
    monkeypatch.setattr(tour, "STEPS", [
        tour.Step("boom", "fails", "boom.py", lambda out, t: ["--a", str(t)], str),
        tour.Step("fine", "works", "fine.py", lambda out, t: [], lambda r: f"v={r['v']}"),
    ])
    results = tour.main(["--threads", "1", "--output", str(tmp_path / "out")])
    assert results["boom"]["status"] == "failed" and "RuntimeError: bad thing" in results["boom"]["summary"]
    assert results["fine"] == {"status": "ok", "summary": "v=3", "seconds": results["fine"]["seconds"]}
    log = (tmp_path / "out" / "boom.log").read_text()
    assert "recipe output ['--a', '1']" in log and "Traceback" in log
    assert (tmp_path / "out" / "fine.log").read_text() == "fine output\n"
