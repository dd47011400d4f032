"""Accuracy-matrix metrics and the reservoir buffer, on hand-made values."""
import pytest
import torch

from sparsity_plugins.continual import AccuracyMatrix, ReservoirBuffer, pack_bits, unpack_bits


def test_accuracy_matrix_metrics_by_hand():
    m = AccuracyMatrix()
    m.add([0.9])
    m.add([0.6, 0.8])
    m.add([0.5, 0.7, 1.0])
    assert m.average_accuracy() == pytest.approx((0.5 + 0.7 + 1.0) / 3)
    assert m.forgetting() == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    assert m.backward_transfer() == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    with pytest.raises(ValueError, match="row 3 needs 4"):
        m.add([1.0])
    copy = AccuracyMatrix()
    copy.load_state_dict(m.state_dict())
    assert copy.rows == m.rows


def test_reservoir_fills_in_order_then_samples_every_example_with_equal_chance():
    buf = ReservoirBuffer(4, (1,), 2, seed=0)
    x = torch.arange(3.0).reshape(3, 1)
    buf.add(x, torch.tensor([0, 1, 0]), torch.zeros(3, 2), task=0)
    assert len(buf) == 3 and buf.x[:3, 0].tolist() == [0.0, 1.0, 2.0]
    counts = torch.zeros(100)
    for seed in range(400):  # the stored set over seeds: each of 100 examples kept ~ 4/100 of the time
        b = ReservoirBuffer(4, (1,), 2, seed=seed)
        for i in range(0, 100, 10):
            b.add(torch.arange(i, i + 10.0).reshape(10, 1), torch.zeros(10, dtype=torch.long), torch.zeros(10, 2), 0)
        counts[b.x[:, 0].long()] += 1
    assert counts.sum() == 1600
    assert counts.max() <= 32 and counts.min() >= 4  # mean 16; far from a "keep the first/last" rule
    assert counts[:10].sum() < 320 and counts[-10:].sum() < 320


def test_buffer_draws_are_reproducible_from_its_counters():
    a = ReservoirBuffer(5, (2,), 3, seed=7)
    a.add(torch.randn(9, 2), torch.arange(9) % 3, torch.randn(9, 3), task=1)
    b = ReservoirBuffer(5, (2,), 3, seed=7)
    b.load_state_dict(a.state_dict())
    xa, ya, za = a.sample(3)
    xb, yb, zb = b.sample(3)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(za, zb)
    assert int(a.draws) == 1 and xa.shape == (3, 2)


def test_bit_packing_round_trips_and_uses_one_bit_per_entry():
    mask = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    packed = pack_bits(mask)
    assert packed.tolist() == [0b10111000, 0b10000000]
    assert torch.equal(unpack_bits(packed, (3, 3)), mask)
    with pytest.raises(ValueError):
        unpack_bits(packed, (4, 5))
