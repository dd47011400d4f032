"""Bucketed attention over padded batches of graphs: the buckets, equality with the padded
call (outputs and gradients), FLOPs counted per bucket by the counter and GTSP's cost model,
and bad input."""
import pytest
import torch
from torch import nn

pyg = pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from torch_geometric.utils import to_dense_batch  # noqa: E402

from sparsity_plugins.graph import GraphGPS  # noqa: E402
from sparsity_plugins.graph.attention_buckets import (BucketedAttention, attention_shapes,  # noqa: E402
                                                      bucket_attention, size_buckets)
from sparsity_plugins.graph.gtsp_attention import PrunedAttention  # noqa: E402
from sparsity_plugins.graph.gtsp_flops import LayerCost, attention_flops, count_flops  # noqa: E402

SIZES = [3, 50, 7, 7, 20, 1, 33]


def test_buckets_grow_while_the_padded_score_count_stays_within_the_slack():
    # sorted sizes 1 3 7 7 20 33 50; only the two 7s share a run at slack 0.25
    # (adding 3 to [1]: 2·9 = 18 > 1.25·10; adding 20 to [7, 7]: 3·400 > 1.25·498)
    assert size_buckets(SIZES, 0.25) == [[5], [0], [2, 3], [4], [6], [1]]
    assert size_buckets(SIZES, 0.0) == [[5], [0], [2, 3], [4], [6], [1]]
    # slack 1: [1, 3] (2·9 = 18 <= 2·10); 7 closes it (3·49 > 2·59); [7, 7] (+20: 3·400 > 2·498);
    # [20, 33] (2·1089 <= 2·1489), + 50 (3·2500 = 7500 <= 2·3989)
    assert size_buckets(SIZES, 1.0) == [[5, 0], [2, 3], [4, 6, 1]]
    assert size_buckets(SIZES, 1e9) == [[5, 0, 2, 3, 4, 6, 1]]
    assert size_buckets([], 0.25) == []


def padded(seed=0, c=8):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
    x = torch.randn(batch.numel(), c, generator=g)
    h, mask = to_dense_batch(x, batch)
    return h, mask


@pytest.mark.parametrize("train", [False, True])
def test_bucketed_attention_equals_the_padded_call_and_its_gradients(train):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    bucketed = BucketedAttention.from_attention(mha, slack=0.25)
    assert [id(p) for p in bucketed.parameters()] == [id(p) for p in mha.parameters()]
    assert list(bucketed.state_dict()) == list(mha.state_dict())
    mha.train(train), bucketed.train(train)
    h, mask = padded()
    h.requires_grad_(True)
    ref = mha(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
    (g_ref,) = torch.autograd.grad(ref[mask].square().sum(), h)
    out, weights = bucketed(h, h, h, key_padding_mask=~mask, need_weights=False)
    (g_out,) = torch.autograd.grad(out[mask].square().sum(), h)
    assert weights is None
    assert torch.allclose(out[mask], ref[mask], atol=1e-5)
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    assert torch.allclose(g_out, g_ref, atol=1e-5)


def test_calls_that_cannot_be_bucketed_run_as_plain_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    bucketed = BucketedAttention.from_attention(mha)
    h, mask = padded()
    holes = (~mask).clone()
    holes[1, 0] = True  # padding not at the end of the row
    for kwargs in ({"key_padding_mask": holes, "need_weights": False}, {"key_padding_mask": ~mask}):
        a, b = mha(h, h, h, **kwargs), bucketed(h, h, h, **kwargs)
        assert torch.allclose(a[0], b[0], atol=1e-6)
        assert attention_shapes(bucketed, h, h, h, **kwargs) == [(7, 50, 50)]
    assert attention_shapes(bucketed, h, h, h, key_padding_mask=~mask, need_weights=False) == [
        (1, 1, 1), (1, 3, 3), (2, 7, 7), (1, 20, 20), (1, 33, 33), (1, 50, 50)]


def test_pruned_attention_keeps_the_buckets_and_its_fused_path_equals_the_explicit_one():
    torch.manual_seed(0)
    mha = BucketedAttention.from_attention(nn.MultiheadAttention(8, 4, batch_first=True), slack=0.25).eval()
    pruned = PrunedAttention.from_gated(mha, torch.tensor([True, False, True, True])).eval()
    assert pruned.bucket_slack == 0.25
    h, mask = padded()
    fused = pruned(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
    explicit = pruned(h, h, h, key_padding_mask=~mask, need_weights=True)[0]
    assert torch.allclose(fused[mask], explicit[mask], atol=1e-5)


def test_counted_flops_follow_the_buckets_and_match_the_cost_model():
    from torch_geometric.data import Batch, Data
    torch.manual_seed(0)
    data = []
    for n in SIZES:
        ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
        data.append(Data(x=torch.randn(n, 5), edge_index=torch.cat([ring, ring.flip(0)], 1),
                         edge_attr=torch.randn(2 * n, 2)))
    b = Batch.from_data_list(data)
    args = (b.x, b.edge_index, b.batch, b.edge_attr)
    padded_net = GraphGPS(5, 2, 3, channels=8, layers=1, heads=2, bucket_slack=None).eval()
    bucketed_net = GraphGPS(5, 2, 3, channels=8, layers=1, heads=2, bucket_slack=0.25).eval()
    bucketed_net.load_state_dict(padded_net.state_dict())
    with torch.no_grad():
        assert torch.allclose(bucketed_net(*args), padded_net(*args), atol=1e-5)
    attn_padded = count_flops(padded_net, *args).by_part["attention"]
    attn_bucketed = count_flops(bucketed_net, *args).by_part["attention"]
    assert attn_padded == attention_flops(7, 50, 8, 2, 4)
    expected = sum(attention_flops(len(run), SIZES[run[-1]], 8, 2, 4) for run in size_buckets(SIZES, 0.25))
    assert attn_bucketed == expected
    assert LayerCost(8, 2, 4, sizes=[SIZES], edges=[0], bucket_slack=0.25).flops() == expected
    assert LayerCost(8, 2, 4, sizes=[SIZES], edges=[0]).flops() == attn_padded
    assert bucket_attention(bucketed_net, None) == 1  # back to the single padded call
    assert count_flops(bucketed_net, *args).by_part["attention"] == attn_padded


def test_bad_input_is_refused_before_any_change():
    mha = nn.MultiheadAttention(8, 2)  # sequence first
    with pytest.raises(ValueError, match="batch_first=False"):
        BucketedAttention.from_attention(mha)
    with pytest.raises(ValueError, match="slack"):
        BucketedAttention.from_attention(nn.MultiheadAttention(8, 2, batch_first=True), slack=-1.0)
    net = GraphGPS(5, 2, 3, channels=8, layers=1, heads=2, bucket_slack=None)
    before = net.convs[0].attn
    with pytest.raises(ValueError, match="slack"):
        bucket_attention(net, slack=-0.5)
    assert net.convs[0].attn is before
