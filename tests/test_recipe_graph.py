"""The graph sparsification recipe end to end: its command line and tiny runs on a
generated graph (TEDDY + projected-ℓ₀ weights, and UGS)."""
import json
import os

import pytest
import torch

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse")

from .recipes import load_recipe  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

from .shared_data import SHARED_DATA as SHARED


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("graph_sparsify.py")


def test_unknown_task_prints_usage(recipe):
    with pytest.raises(SystemExit, match="usage: graph_sparsify.py"):
        recipe.main(["nodes"])


def test_node_help_lists_the_options(recipe, capsys):
    with pytest.raises(SystemExit) as exit_:
        recipe.main(["node", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--data.sparsifier", "--data.edge_sparsity", "--model.arch", "--weights.sparsity",
                   "--ugs.rounds", "--baseline", "--trainer.max_epochs"):
        assert option in out, option


def test_teddy_run_keeps_the_budget_and_writes_the_report(recipe, tmp_path):
    report = recipe.main(["node", "--data.dataset", "sbm", "--data.edge_sparsity", "0.5", "--weights.sparsity", "0.75",
                          "--trainer.max_epochs", "5", "--baseline", "false", "--output", str(tmp_path)])
    pairs_total = report["edges_total"] // 2
    assert report["edges_kept"] == 2 * (pairs_total // 2)  # ⌊half⌋ of the undirected pairs, both directions
    assert report["weight_sparsity"] == pytest.approx(0.75, abs=0.01)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["test_acc"] == report["test_acc"] and 0.0 <= saved["test_acc"] <= 1.0
    assert torch.load(tmp_path / "edge_index.pt", weights_only=True).shape == (2, report["edges_kept"])


def test_ugs_run_with_baseline_and_distillation(recipe, tmp_path):
    report = recipe.main(["node", "--data.dataset", "sbm", "--data.sparsifier", "ugs", "--data.edge_sparsity", "0.3",
                          "--ugs.rounds", "2", "--ugs.steps_per_round", "3", "--weights.sparsity", "0.5",
                          "--model.distill_weight", "0.5", "--trainer.max_epochs", "3", "--output", str(tmp_path)])
    assert "dense_test_acc" in report
    assert report["edges_kept"] / report["edges_total"] == pytest.approx(0.7, abs=0.01)
    assert report["weight_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_distillation_without_baseline_is_refused(recipe, tmp_path):
    with pytest.raises(ValueError, match="teacher"):
        recipe.main(["node", "--data.dataset", "sbm", "--baseline", "false", "--model.distill_weight", "1.0",
                     "--trainer.max_epochs", "1", "--output", str(tmp_path)])


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "tudataset", "MUTAG")), reason="../shared/data is not present")
def test_gtsp_run_removes_flops_and_writes_the_report(recipe, tmp_path):
    report = recipe.main(["gtsp", "--data.root", SHARED, "--data.cache_dir", str(tmp_path / "data"),
                          "--trainer.max_epochs", "2", "--model.channels", "16", "--model.heads", "2",
                          "--model.layers", "2", "--gtsp.flops", "0.3", "--output", str(tmp_path)])
    assert report["gtsp_mflops_per_graph"] <= 0.7 * report["dense_mflops_per_graph"] + 1e-9
    assert 0.0 <= report["gtsp_acc"] <= 1.0 and "dense_acc" in report
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["gtsp"]["layers"] == 2
    assert (tmp_path / "gtsp_state_dict.pt").is_file()


def test_gtsp_help_lists_its_options(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["gtsp", "--help"])
    out = capsys.readouterr().out
    for option in ("--gtsp.flops", "--gtsp.weights", "--gtsp.kinds", "--model.heads", "--data.batch_size"):
        assert option in out, option
