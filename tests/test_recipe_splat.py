"""The splat budget recipe end to end on a few lego views (tiny run) and its argument checks."""
import json
import os

import pytest

pytest.importorskip("gsplat", reason="the splat extra (gsplat) is not installed")

from .shared_data import SHARED_DATA as SHARED
LEGO = os.path.join(SHARED, "nerf_synthetic_lego", "lego")


from .recipes import load_recipe  # noqa: E402


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("splat_budget.py")


def test_bad_arguments_exit_with_a_message(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["--steps", "3"])
    assert "--steps >= 10" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir(LEGO), reason="../shared/data is not present")
def test_tiny_run_respects_the_budget_and_saves_renders(recipe, tmp_path):
    report = recipe.main(["--data", LEGO, "--size", "24", "--steps", "12", "--points", "200", "--budget", "250",
                          "--test-views", "2", "--output", str(tmp_path)])
    assert report["budgeted"]["num_gaussians"] <= 250
    assert json.loads((tmp_path / "report.json").read_text())["budget"] == 250
    assert len(list((tmp_path / "budgeted").glob("*.png"))) == 2 and len(list((tmp_path / "default").glob("*.png"))) == 2
