"""Bad input is refused before any run starts, with the valid names listed."""
import pytest

from sparsity_core.sweep import SweepConfigError, load_config, run_sweep
from sparsity_core.sweep.methods import build_method

from .helpers import config


@pytest.fixture(autouse=True)
def _core_names_only(monkeypatch):
    """Unknown names would load the plugins (timm, PyG: seconds); these tests list the core's names."""
    from sparsity_core import registry

    monkeypatch.setattr(registry, "_plugins_loaded", True)


def _problems(cfg):
    with pytest.raises(SweepConfigError) as info:
        load_config(cfg)
    return str(info.value)


def test_unknown_method_and_parameters_are_listed_with_valid_names(tmp_path):
    cfg = config(tmp_path)
    cfg["grid"]["methods"] = ["gmp", "gmpp"]
    cfg["methods"]["gmp"]["critrion"] = "magnitude"
    cfg["methods"]["rand"]["criterion"] = "randm"
    cfg["methods"]["b"] = {"program": "chanels"}
    cfg["grid"]["methods"] += ["rand", "b"]
    text = _problems(cfg)
    assert "unknown method 'gmpp'. Did you mean 'gmp'? Valid: gmp, rand, b." in text
    assert "unknown parameter 'critrion'. Did you mean 'criterion'? Valid: allocator, criterion," in text
    assert "unknown criterion 'randm'. Did you mean 'random'?" in text and "magnitude" in text
    assert "unknown program 'chanels'" in text and "weights" in text


def test_unknown_schedule_component_task_and_keys(tmp_path):
    cfg = config(tmp_path, tasks=(("digit", "parit"),))
    cfg["methods"]["gmp"]["schedule"] = {"name": "cubic", "end_fractio": 0.5}
    cfg["methods"]["rand"]["allocator"] = {"name": "uniform", "min_keep": 1}
    cfg["grid"]["seeds"] = [0]
    cfg["metric"] = "acc"
    text = _problems(cfg)
    assert "unknown parameter 'end_fractio'. Did you mean 'end_fraction'?" in text
    assert "unknown parameter 'min_keep'" in text and "min_keep_fraction" in text
    assert "unknown task 'parit'. Did you mean 'parity'? Valid: digit, parity, ge5." in text
    assert "unknown grid key 'seeds'. Did you mean 'seed'?" in text
    assert "unknown top-level key 'metric'. Did you mean 'metrics'?" in text


def test_bad_values_fail_when_built_and_sparsity_comes_from_the_grid(tmp_path):
    cfg = config(tmp_path, sparsity=(0.5, 1.0))
    cfg["methods"]["gmp"]["update_every"] = 0
    cfg["methods"]["rand"]["schedule"] = {"name": "cubic", "final_sparsity": 0.3, "end_step": 10}
    text = _problems(cfg)
    assert "grid.sparsity: 1.0 is not a sparsity in [0, 1)" in text
    assert "update_every must be an int >= 1, got 0" in text
    assert "final_sparsity comes from the grid's sparsity" in text


def test_nothing_runs_when_the_config_is_bad(tmp_path):
    cfg = config(tmp_path / "out")
    cfg["methods"]["gmp"]["allocator"] = "globl"
    with pytest.raises(SweepConfigError, match="Did you mean 'global'"):
        run_sweep(cfg, workers=0, progress="none")
    assert not (tmp_path / "out").exists()


def test_yaml_file_and_quick_section(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: y\nrun: tests.sweep.fakes:fake_run\noutput: out\nmethods:\n  m: {criterion: magnitude}\n"
        "grid: {sparsity: [0.5, 0.8], seed: [0, 1, 2], tasks: [digit+parity]}\nquick: {grid: {seed: [0]}}\n")
    full = load_config(tmp_path / "s.yaml")
    quick = load_config(tmp_path / "s.yaml", quick=True)
    assert (len(full.runs()), len(quick.runs())) == (6, 2)
    assert quick.output == tmp_path / "out" and quick.task_sets == [("digit", "parity")]


def test_build_method_places_fractions_and_sparsity():
    program = build_method({"schedule": {"name": "cubic", "start_fraction": 0.1, "end_fraction": 0.5},
                            "allocator": {"name": "global", "min_keep_fraction": 0.02}}, 0.8, total_steps=200)
    assert (program.schedule.start_step, program.schedule.end_step, program.schedule.final_sparsity) == (20, 100, 0.8)
    assert build_method({}, 0.3).schedule.value(0) == 0.3  # default: one-shot at step 0
