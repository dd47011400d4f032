"""The multi-task recipe through the sweep: its YAML checks out, and a tiny grid runs on MNIST."""
import copy
from pathlib import Path

import pytest

from sparsity_core.sweep import SweepConfigError, load_config, run_sweep
from sparsity_core.sweep.config import read_yaml

from ..shared_data import SHARED_DATA

pytest.importorskip("pytorch_lightning")
pytest.importorskip("torchvision", reason="the recipe reads MNIST with torchvision (vision extra)")
YAML = Path(__file__).resolve().parents[2] / "recipes" / "multitask_pruning.yaml"


def test_the_yaml_and_its_quick_grid_are_valid():
    full, quick = load_config(YAML), load_config(YAML, quick=True)
    assert len(full.runs()) == 72 and len(quick.runs()) == 16
    assert ("digit", "parity", "ge5") in quick.task_sets and quick.output.name == "multitask_pruning_quick"


def test_bad_params_are_refused_before_any_run(tmp_path):
    raw = read_yaml(YAML)
    raw["params"]["model"]["widht"] = 8
    raw["params"]["trainer"]["callbacks"] = []
    raw["grid"]["tasks"] = ["digit+colour"]
    with pytest.raises(SweepConfigError) as info:
        load_config(raw, base_dir=YAML.parent)
    text = str(info.value)
    assert "unknown parameter 'widht'. Did you mean 'width'?" in text
    assert "params.trainer.callbacks is set by the recipe" in text
    assert "unknown task 'colour'" in text and "Valid: digit, parity, ge5, rotation, texture." in text


@pytest.mark.skipif(not SHARED_DATA, reason="MNIST (../shared/data/mnist) is not available")
def test_a_tiny_grid_runs_on_mnist(tmp_path):
    raw = copy.deepcopy(read_yaml(YAML))
    raw.pop("quick")
    raw.update(output=str(tmp_path / "out"), grid={"methods": ["gmp_global"], "sparsity": [0.5], "seed": [0],
                                                   "tasks": ["digit+parity"]})
    raw["params"] = {"model": {"width": 4, "hidden": 16}, "data": {"root": SHARED_DATA, "train_subset": 256,
                                                                   "test_subset": 200, "batch_size": 64},
                     "trainer": {"max_epochs": 1}}
    result = run_sweep(load_config(raw, base_dir=YAML.parent), workers=0, progress="none", plots=False)
    (rec,) = result.records.values()
    assert rec["status"] == "ok", rec["error"]
    assert set(rec["metrics"]) >= {"acc/digit", "acc/parity", "loss/digit", "sparsity"}
    assert rec["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01) and rec["metrics"]["steps"] == 4
    assert "### acc — task set `digit+parity`, task `parity`" in result.table


def test_rotation_task_turns_image_i_by_i_mod_4_quarter_turns():
    import torch

    from ..recipes import load_recipe

    recipe = load_recipe("multitask_pruning.py")
    x = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 1, 2, 2)
    out, turns = recipe.rotate_quarter_turns(x)
    assert turns.tolist() == [0, 1, 2, 3, 0]
    assert out[1, 0].tolist() == [[5.0, 7.0], [4.0, 6.0]]  # [[4, 5], [6, 7]] a quarter turn counter-clockwise
    assert torch.equal(out[2], x[2].flip(1).flip(2)) and torch.equal(out[0], x[0]) and torch.equal(out[4], x[4])
    with pytest.raises(ValueError, match="rotation labels come with the images"):
        recipe.task_labels("rotation", torch.zeros(2, dtype=torch.long))


def test_texture_task_draws_stripes_of_orientation_i_div_4_mod_4_under_the_ink():
    import torch

    from ..recipes import load_recipe

    recipe = load_recipe("multitask_pruning.py")
    raw = torch.zeros(16, 1, 4, 4)
    raw[4, 0, 3, 3] = 1.0  # a stroke of full ink where the stripe would be dark
    raw[12, 0, 0, 0] = 0.2  # faint ink under a lit stripe: the stripe shows
    x = (raw - recipe.MNIST_MEAN) / recipe.MNIST_STD
    out, labels = recipe.overlay_stripes(x, intensity=0.5, period=4)
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    got = out * recipe.MNIST_STD + recipe.MNIST_MEAN
    lit = {0: lambda r, c: c % 4 < 2, 1: lambda r, c: (r + c) % 4 < 2, 2: lambda r, c: r % 4 < 2,
           3: lambda r, c: (r - c) % 4 < 2}
    for i in (0, 4, 8, 12):
        want = torch.tensor([[0.5 if lit[i // 4](r, c) else 0.0 for c in range(4)] for r in range(4)])
        want = torch.maximum(want, raw[i, 0])
        assert torch.allclose(got[i, 0], want, atol=1e-6), (i, got[i, 0])
    assert got[4, 0, 3, 3].item() == pytest.approx(1.0) and got[12, 0, 0, 0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="texture labels come with the images"):
        recipe.task_labels("texture", torch.zeros(2, dtype=torch.long))
