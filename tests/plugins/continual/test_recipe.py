"""The continual recipe runs end to end on a slice of real Split-MNIST."""
import os

import pytest

from tests.recipes import load_recipe
from tests.shared_data import SHARED_DATA

MNIST = os.path.join(SHARED_DATA, "mnist") if SHARED_DATA else ""


@pytest.mark.skipif(not MNIST or not os.path.isdir(os.path.join(MNIST, "MNIST", "raw")),
                    reason="../shared/data/mnist is absent")
def test_recipe_compares_dense_and_sparcl(tmp_path, capsys):
    recipe = load_recipe("continual_sparse.py")
    report = recipe.main(["--train-limit", "1500", "--test-limit", "500", "--epochs", "1", "--sparsities", "0.9",
                          "--threads", "1", "--data", MNIST, "--output", str(tmp_path / "report.json")])
    labels = [r["label"] for r in report["runs"]]
    assert labels == ["dense DER++", "SparCL+DER++ 90%"]
    dense, sparse = report["runs"]
    assert len(sparse["matrix"]) == 5 and len(sparse["matrix"][-1]) == 5
    assert dense["macs"] / sparse["macs"] > 5  # 90% weights, DGM, DDR: far fewer MACs
    out = capsys.readouterr().out
    assert "FLOPs ratio" in out and "average accuracy" in out
    assert (tmp_path / "report.json").is_file()


def test_recipe_refuses_bad_arguments():
    recipe = load_recipe("continual_sparse.py")
    with pytest.raises(SystemExit):
        recipe.arguments(["--buffer", "0"])
    with pytest.raises(SystemExit):
        recipe.arguments(["--sparsities", "1.5"])
