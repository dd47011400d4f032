"""The hash-grid pruning recipe end to end: its command line and a tiny run on a lego view."""
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse")
pytest.importorskip("PIL", reason="the lego view is read with pillow")

from .shared_data import SHARED_DATA

from .recipes import load_recipe  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

SHARED = Path(SHARED_DATA)
VIEW = SHARED / "nerf_synthetic_lego" / "lego" / "train" / "r_0.png"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("hashgrid_prune.py")


def test_help_lists_every_group_of_options(recipe, capsys):
    with pytest.raises(SystemExit) as exit_:
        recipe.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.log2_table_size", "--model.levels", "--data.view", "--data.size", "--data.test_points",
                   "--pruning.keep", "--pruning.rho", "--pruning.saliency_resolution", "--baseline",
                   "--trainer.max_steps", "--output"):
        assert option in out, option
    assert "--> model.max_resolution" in out  # the image size sets the finest level


@pytest.mark.skipif(not VIEW.exists(), reason=f"lego view not found at {VIEW}")
def test_tiny_run_writes_report_and_a_loadable_compacted_field(recipe, tmp_path, capsys):
    report = recipe.main(["--data.root", str(SHARED), "--data.size", "32", "--data.batch_size", "256", "--data.test_points", "512",
                          "--model.levels", "4", "--model.log2_table_size", "8", "--model.base_resolution", "4",
                          "--model.hidden", "16", "--pruning.keep", "0.4", "--pruning.saliency_resolution", "5",
                          "--trainer.max_steps", "40", "--threads", str(torch.get_num_threads()),
                          "--output", str(tmp_path)])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["storage"]["kept_fraction"] == pytest.approx(0.4, abs=0.01)
    assert saved["storage"]["params_kept"] < saved["dense_hash_params"]
    assert 5 < saved["dense_psnr"] < 60 and 5 < saved["pruned_psnr"] < 60
    assert report["pruned_psnr"] == saved["pruned_psnr"]
    for name in ("config.yaml", "dense.png", "pruned.png"):
        assert (tmp_path / name).exists(), name
    field = recipe.ImageField(levels=4, log2_table_size=8, base_resolution=4, max_resolution=32, hidden=16,
                              saliency_resolution=5)
    field.load_state_dict(torch.load(tmp_path / "pruned_state_dict.pt", weights_only=True))
    assert sum(t.numel() for t in field.encoding.tables) == saved["storage"]["params_kept"]
    data = recipe.LegoImage(size=32, test_points=512, root=str(SHARED))
    data.setup()
    assert field.psnr(*data.test) == pytest.approx(saved["pruned_psnr"], abs=1e-4)
    assert "summary: PSNR change" in capsys.readouterr().out
