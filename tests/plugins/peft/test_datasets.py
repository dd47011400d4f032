"""read_sst2: the GLUE TSV layout, seeded subsets, clear errors."""
import pytest

from sparsity_plugins.peft.datasets import read_sst2


@pytest.fixture
def root(tmp_path):
    (tmp_path / "sst2").mkdir()
    rows = ["sentence\tlabel", 'a "quoted" film \t1', "dull\t0", "fine\t1", "bad\t0"]
    (tmp_path / "sst2" / "dev.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp_path


def test_reads_sentences_and_labels_as_written(root):
    sentences, labels = read_sst2(root, "dev")
    assert sentences == ['a "quoted" film', "dull", "fine", "bad"] and labels == [1, 0, 1, 0]


def test_a_limit_takes_the_same_seeded_subset_every_time(root):
    a, b = read_sst2(root, "dev", limit=2, seed=3), read_sst2(root, "dev", limit=2, seed=3)
    assert a == b and len(a[0]) == 2 and set(a[0]) <= {'a "quoted" film', "dull", "fine", "bad"}
    assert read_sst2(root, "dev", limit=10) == read_sst2(root, "dev")  # a limit above the size keeps all


def test_bad_split_and_missing_file_are_named(root):
    with pytest.raises(ValueError, match="split must be 'train' or 'dev', got 'test'"):
        read_sst2(root, "test")
    with pytest.raises(FileNotFoundError, match="SST-2 not found at .*train.tsv"):
        read_sst2(root, "train")
