"""The vision channel-pruning recipe end to end: its command line and a tiny run on digits."""
import json

import pytest
import torch

pytest.importorskip("timm", reason="the vision extra (timm) is not installed")
pytest.importorskip("torch_pruning", reason="the vision extra (torch-pruning) is not installed")
pytest.importorskip("jsonargparse", reason="the vision extra (jsonargparse) is not installed")
pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (dev extra)")

from .recipes import load_recipe  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")



@pytest.fixture(scope="module")
def recipe():
    return load_recipe("vision_channel_pruning.py")


def test_help_lists_every_group_of_options(recipe, capsys):
    with pytest.raises(SystemExit) as exit_:
        recipe.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.model_name", "--model.patch_size", "--data.dataset", "--data.train_subset",
                   "--pruning.sparsity", "--pruning.measure", "--pruning.criterion", "--pruning.enforcement",
                   "--pruning.prune_epochs", "--pruning.finetune_epochs", "--trainer.accelerator", "--output"):
        assert option in out, option
    assert "--> trainer.max_epochs" in out  # the phases set the epochs


def test_tiny_run_on_digits_writes_report_and_a_loadable_pruned_model(recipe, tmp_path, capsys):
    recipe.main(["--data.train_subset", "64", "--data.test_subset", "32", "--data.batch_size", "16",
                 "--pruning.dense_epochs", "1", "--pruning.prune_epochs", "1", "--pruning.finetune_epochs", "1",
                 "--report.batches", "[1, 2]", "--threads", str(torch.get_num_threads()), "--output", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["macs"]["ratio"] > 1.5 and report["params"]["ratio"] > 1
    assert set(report["latency_ms"]) == {"batch1", "batch2"}
    assert 0.0 <= report["accuracy"]["after"] <= 1.0
    model = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    meta = json.loads((tmp_path / "model" / "pruning.json").read_text())
    assert meta["record"]["kept"] and meta["parameters"] == sum(p.numel() for p in model.parameters())
    assert (tmp_path / "config.yaml").exists()
    assert "summary: test accuracy" in capsys.readouterr().out


def test_vit_loses_heads_and_mlp_channels(recipe, tmp_path):
    report = recipe.main(["--model.model_name", "vit_tiny_patch16_224", "--model.model_kwargs", '{"depth": 2}',
                          "--data.train_subset", "32", "--data.test_subset", "16", "--data.batch_size", "16",
                          "--pruning.dense_epochs", "0", "--pruning.prune_epochs", "1", "--pruning.finetune_epochs",
                          "0", "--pruning.verbose", "false", "--report.batches", "[1]",
                          "--threads", str(torch.get_num_threads()), "--output", str(tmp_path)])
    assert report["macs"]["ratio"] > 1.5
    record = json.loads((tmp_path / "model" / "pruning.json").read_text())["record"]
    assert set(record["heads"]) == {"net.blocks.0.attn", "net.blocks.1.attn"}
    assert sum(record["heads"].values()) < 2 * 3  # vit_tiny has 3 heads per block
    assert any(k.endswith("mlp.fc1:out") for k in record["kept"])
    model = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
