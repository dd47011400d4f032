"""Bad input is refused with a ValueError before any training; the split itself is exact."""
import pytest
import torch

from sparsity_core import SparsityCallback
from sparsity_plugins.continual import (ContinualModule, DynamicDataRemoval, PackNet, TaskAwareDynamicMasks,
                                        check_tasks, mlp, split_classes)

from .helpers import blobs, module, stream, trainer


def test_split_classes_and_stream_indices_are_exact():
    assert split_classes(10, 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    s = stream()
    assert s.train_size(0) == 48 and s.train_size(1) == 48
    assert torch.equal(s.train_y[s.train_index[1]].unique(), torch.tensor([2, 3]))
    s.set_task(1)
    x, y, pos = next(iter(s.train_dataloader()))
    assert torch.equal(y, s.train_y[s.train_index[1][pos]]) and set(y.tolist()) <= {2, 3}


def test_overlapping_classes_in_a_class_incremental_split_are_refused():
    with pytest.raises(ValueError, match="class 1 is in task 0 and task 1"):
        stream(tasks=((0, 1), (1, 2)))
    assert stream(tasks=((0, 1), (1, 2)), scenario="task").num_tasks == 2  # task-incremental may repeat classes


@pytest.mark.parametrize("tasks, message", [(((0, 1), ()), "task 1 is empty"),
                                            (((0, 1), (2, 7)), r"no training example of class\(es\) \[7\]"),
                                            ((), "non-empty list")])
def test_empty_tasks_are_refused(tasks, message):
    with pytest.raises(ValueError, match=message):
        check_tasks([list(t) for t in tasks], blobs()[1], "class")


def test_replay_with_an_empty_buffer_is_refused():
    for method in ("er", "derpp"):
        with pytest.raises(ValueError, match="buffer_size must be an int >= 1"):
            ContinualModule(mlp(8, (4,), 4), 4, (8,), method=method, buffer_size=0)
    assert ContinualModule(mlp(8, (4,), 4), 4, (8,), method="none", buffer_size=0).buffer is None


def test_inverted_sparsity_bounds_are_refused():
    with pytest.raises(ValueError, match="sparsity bounds inverted"):
        TaskAwareDynamicMasks(sparsity=0.9, prune_sparsity=0.8)
    with pytest.raises(ValueError, match="sparsity bounds inverted"):
        TaskAwareDynamicMasks(sparsity=0.9, prune_sparsity=0.9)
    with pytest.raises(ValueError):
        PackNet(keep=0.0)
    with pytest.raises(ValueError):
        DynamicDataRemoval(fraction=1.0)


def test_data_removal_without_a_task_stream_fails_before_training():
    m = module()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*blobs()), batch_size=8)
    with pytest.raises(ValueError, match="needs a TaskStream"):
        trainer([SparsityCallback(programs=[DynamicDataRemoval()])]).fit(m, loader)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_data_removal_needs_a_module_that_reports_presentations():
    from tests.lightning.helpers import TinyModule

    with pytest.raises(ValueError, match="`presented`"):
        trainer([SparsityCallback(programs=[DynamicDataRemoval()])]).fit(TinyModule(), datamodule=stream())
