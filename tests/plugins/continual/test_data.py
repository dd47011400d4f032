"""Image folders (the CIFAR-10 JPEG layout) become tensors in ImageFolder's class order."""
import numpy as np
import pytest
import torch

from sparsity_plugins.continual import TaskStream, cifar10_jpeg_tensors, split_classes


def test_image_folder_to_tensors(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for c, name in enumerate(["airplane", "cat"]):
        (tmp_path / name).mkdir()
        for i in range(2):
            pixels = np.full((4, 4, 3), 40 * c + 10 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    x, y = cifar10_jpeg_tensors(str(tmp_path))
    assert x.shape == (4, 3, 4, 4) and y.tolist() == [0, 0, 1, 1]
    assert torch.allclose(x[:, 0, 0, 0], torch.tensor([0, 10, 40, 50]) / 255.0)
    stream = TaskStream((x, y), (x, y), split_classes(2, 2))
    assert [stream.train_size(k) for k in range(2)] == [2, 2]
