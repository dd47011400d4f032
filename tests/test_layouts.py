import pytest
import torch

from sparsity_core.layouts import NM, Channels, Elements, Rows, parse_layout, top_k_mask
from sparsity_core.registry import UnknownNameError


def test_top_k_mask_breaks_ties_by_position():
    assert top_k_mask(torch.tensor([1.0, 3.0, 3.0, 0.0]), 2).tolist() == [False, True, True, False]
    assert top_k_mask(torch.tensor([2.0, 2.0, 2.0]), 2).tolist() == [True, True, False]
    assert top_k_mask(torch.tensor([2.0, 1.0]), 0).tolist() == [False, False]


def test_element_layout():
    e = Elements()
    assert e.num_units((2, 3)) == 6 and e.mask_shape((2, 3)) == (2, 3)
    m = e.select(torch.tensor([5.0, 1, 4, 2, 3, 0]), 3, (2, 3))
    assert m.tolist() == [[True, False, True], [False, True, False]]


def test_nm_keeps_exactly_n_per_group_along_input_dim():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0]])
    m = NM(2, 4).select(w.abs().reshape(-1), 0, w.shape)
    assert m.tolist() == [[False, True, True, False, True, True, False, False]]


def test_nm_on_conv_groups_input_channels():
    torch.manual_seed(0)
    w = torch.randn(3, 8, 2, 2)
    m = NM(1, 4).select(w.abs().reshape(-1), 0, w.shape)
    groups = m.movedim(1, -1).reshape(3, 2, 2, 2, 4)
    assert (groups.sum(-1) == 1).all()
    # the kept entry is the largest magnitude of its group
    mags = w.abs().movedim(1, -1).reshape(3, 2, 2, 2, 4)
    assert torch.equal(groups.float().argmax(-1), mags.argmax(-1))


@pytest.mark.parametrize("n,m", [(4, 4), (5, 4), (0, 4)])
def test_nm_rejects_n_not_below_m(n, m):
    with pytest.raises(ValueError, match="0 < N < M"):
        NM(n, m)


def test_nm_rejects_indivisible_input_dim():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        NM(2, 4).validate((8, 6), "fc.weight")


def test_channel_and_row_layouts():
    w = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    c = Channels()
    assert c.num_units(w.shape) == 2
    assert c.reduce_sum(w).tolist() == [w[0].sum().item(), w[1].sum().item()]
    assert c.expand(torch.tensor([True, False]), w.shape).shape == (2, 1, 1)
    r = Rows(dim=1)
    assert r.num_units(w.shape) == 3
    assert r.reduce_sum(w).tolist() == [w[:, i].sum().item() for i in range(3)]
    assert r.expand(torch.tensor([True, False, True]), w.shape).shape == (1, 3, 1)


def test_parse_layout():
    assert parse_layout("2:4") == NM(2, 4)
    assert parse_layout("channel") == Channels()
    with pytest.raises(ValueError, match="must look like"):
        parse_layout("2:x")
    with pytest.raises(UnknownNameError, match="Did you mean 'channel'"):
        parse_layout("chanel")
