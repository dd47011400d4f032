import pytest
import torch
from torch import nn

from sparsity_core.calibration import PerRowElements, check_calibration, checked_forward
from sparsity_core.discovery import discover_targets
from sparsity_core.layouts import build_layout
from sparsity_core.targets import Target


# -- calibration data checks ------------------------------------------------------------------
def test_samples_are_counted_for_tensors_tuples_and_mappings():
    assert check_calibration([torch.ones(3, 2), torch.ones(2, 2)], "m") == 5
    assert check_calibration([(torch.ones(4, 2), torch.zeros(4))], "m") == 4
    assert check_calibration([{"attention_mask": torch.ones(2, 7), "input_ids": torch.ones(3, 7)}], "m") == 3


@pytest.mark.parametrize("batches, kwargs, match", [
    (None, {}, "needs calibration batches"),
    ([], {}, "no batches"),
    ([torch.ones(2, 3)], dict(min_samples=8), r"has 2 samples in 1 batches; at least 8 are needed"),
    (iter([torch.ones(2, 3)]), {}, "re-iterable"),
    (["text"], {}, "no tensor with a sample dimension"),
    ([torch.ones(2, 3)], dict(min_samples=0), "min_samples must be an int >= 1"),
])
def test_bad_calibration_data_is_named(batches, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_calibration(batches, "method", **kwargs)


def test_a_batch_that_does_not_fit_the_model_is_a_value_error_with_its_shape():
    forward = checked_forward(None, "method")
    model = nn.Linear(3, 2)
    assert forward(model, torch.ones(1, 3)).shape == (1, 2)
    with pytest.raises(ValueError, match=r"method: a calibration batch \(shapes \(1, 4\)\) does not fit the model"):
        forward(model, torch.ones(1, 4))
    assert checked_forward(None, "m")(nn.Bilinear(2, 3, 1), (torch.ones(1, 2), torch.ones(1, 3))).shape == (1, 1)


# -- the per-row comparison group ----------------------------------------------------------
SCORES = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.1, 0.4, 0.3, 0.2], [9.0, 8.0, 7.0, 6.0]])


def test_per_row_keeps_the_best_of_every_row():
    mask = PerRowElements().select(SCORES.reshape(-1), 6, (3, 4))
    assert mask.tolist() == [[True, False, True, False], [False, True, True, False], [True, True, False, False]]
    # the whole layer competing would have taken row 2 entirely and nothing of row 1
    whole = build_layout("element").select(SCORES.reshape(-1), 6, (3, 4))
    assert whole.sum(dim=1).tolist() == [2, 0, 4]


def test_the_remainder_goes_to_the_rows_with_the_best_next_score():
    mask = PerRowElements().select(SCORES.reshape(-1), 8, (3, 4))  # 2 per row + 2 extra
    assert mask.sum(dim=1).tolist() == [3, 2, 3]  # third-best scores: row 0: 2, row 1: 0.2, row 2: 7
    assert int(mask.sum()) == 8
    assert PerRowElements().select(SCORES.reshape(-1), 0, (3, 4)).sum() == 0
    assert PerRowElements().select(SCORES.reshape(-1), 12, (3, 4)).all()
    with pytest.raises(ValueError, match="keep must be in"):
        PerRowElements().select(SCORES.reshape(-1), 13, (3, 4))


def test_per_row_is_a_registered_element_layout():
    assert isinstance(build_layout("per_row"), PerRowElements)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    targets = discover_targets(model, layout="per_row", skip_head=False)
    assert [t.num_units for t in targets] == [12, 6]
    with pytest.raises(ValueError, match="needs a 2-D or larger weight"):
        Target("b", layout=PerRowElements(), param=nn.Parameter(torch.ones(3)))
