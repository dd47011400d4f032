"""Learned block gates: the dense targets by hand, valid gate distributions, top-k / threshold
selection, TDMA's value alignment, equality with the masked dense reference in the model, and
argument errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from sparsity_plugins.video.dynamic import safe_mask
from sparsity_plugins.video.gates import (DynamicMaskGate, SeerAttention, SeerGate, TrainableDynamicMask,
                                          block_recall, dense_block_targets)
from sparsity_plugins.video.kernel import masked_attention
from sparsity_plugins.video.layout import TokenLayout
from sparsity_plugins.video.processors import install

from .helpers import model_and_inputs, run


def test_dense_targets_of_two_blocks_by_hand():
    # 4 tokens, blocks of 2, D = 1, scale 1: queries 0, 1 score keys [0, ln 3, 0, 0] -> [1/6, 1/2, 1/6, 1/6];
    # queries 2, 3 are zero -> uniform 1/4. Tile maxima [[1/2, 1/6], [1/4, 1/4]], rows normalised.
    q = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 4, 1)
    k = torch.tensor([0.0, math.log(3.0), 0.0, 0.0]).view(1, 1, 4, 1)
    tiles, mass = dense_block_targets(q, k, 1.0, 2)
    assert torch.allclose(tiles[0, 0], torch.tensor([[0.75, 0.25], [0.5, 0.5]]), atol=1e-6)
    # column sums [5/6, 3/2, 5/6, 5/6] over 4 queries, per key block: [7/3, 5/3] / 4
    assert torch.allclose(mass[0, 0], torch.tensor([7 / 12, 5 / 12]), atol=1e-6)


def test_dense_targets_in_small_chunks_equal_one_chunk_with_a_short_tail():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 11, 4), torch.randn(2, 3, 11, 4)
    full = dense_block_targets(q, k, 0.7, 3)
    small = dense_block_targets(q, k, 0.7, 3, max_elements=1)  # one query block per chunk
    a = torch.softmax(q @ k.transpose(-1, -2) * 0.7, -1)  # 11 tokens: blocks 3, 3, 3, 2 (zero-padded max pool)
    ref = F.max_pool2d(F.pad(a, (0, 1, 0, 1)).flatten(0, 1), 3).unflatten(0, (2, 3))
    assert torch.allclose(full[0], ref / ref.sum(-1, keepdim=True), atol=1e-6)
    for x, y in zip(full, small):
        assert torch.allclose(x, y, atol=1e-6)
    assert torch.allclose(full[1].sum(-1), torch.ones(2, 3), atol=1e-6)


def test_gates_output_distributions():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    p = SeerGate(3, 8, gate_dim=4)(q, k, v, 4)
    assert p.shape == (2, 3, 3, 3) and bool((p > 0).all())
    assert torch.allclose(p.sum(-1), torch.ones(2, 3, 3), atol=1e-6)
    p = DynamicMaskGate(3, 8)(None, None, v, 4)
    assert p.shape == (2, 3, 3) and bool((p > 0).all())
    assert torch.allclose(p.sum(-1), torch.ones(2, 3), atol=1e-6)


def test_seer_selects_the_requested_top_k_or_threshold():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    layout = TokenLayout(1, 5, 8)
    method = SeerAttention(1, 2, 8, density=0.3)
    p = method.predict(0, q, k, v, 4)  # 10 blocks: keep 3 per query block
    m = method.select(0, q, k, v, None, layout, 4)
    assert (m.sum(-1) == 3).all()
    assert (p.masked_fill(~m, math.inf).amin(-1) >= p.masked_fill(m, -math.inf).amax(-1)).all()
    method = SeerAttention(1, 2, 8, threshold=0.1)
    assert torch.equal(method.select(0, q, k, v, None, layout, 4), method.predict(0, q, k, v, 4) > 0.1)


def test_tdma_picks_the_key_block_whose_values_align_with_w():
    method = TrainableDynamicMask(1, 2, 4, density=0.25)  # 4 blocks: one per head
    gate = method.gates[0]
    with torch.no_grad():
        gate.w.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    v = torch.zeros(1, 2, 16, 4)
    v[0, 0, 8:12, 0] = 5.0  # head 0: block 2 aligned with w_0
    v[0, 1, 4:8, 3] = 5.0  # head 1: block 1 aligned with w_1
    v[0, 1, 8:12, 0] = 5.0  # ... and block 2 aligned with head 0's w only
    m = method.select(0, v, v, v, None, TokenLayout(1, 4, 4), 4)
    assert m[0, 0].all(0).tolist() == [False, False, True, False] and not m[0, 0, :, [0, 1, 3]].any()
    assert m[0, 1].all(0).tolist() == [False, True, False, False] and not m[0, 1, :, [0, 2, 3]].any()


def test_seer_keeping_every_block_equals_the_dense_model():
    model, x = model_and_inputs("wan")
    ref = run(model, x)
    method = SeerAttention(2, 2, 8, density=1.0)
    with install(model, block_size=4, method=method):
        out = run(model, x)
    assert method.stats["calls"] == 2 and method.stats["density"] == 1.0
    assert torch.allclose(out, ref, atol=1e-5)


class Recording:
    """Mixin keeping the safe masks each call chose."""

    def select(self, layer, q, k, v, scale, layout, block_size):
        m = super().select(layer, q, k, v, scale, layout, block_size)
        self.masks.append(safe_mask(m, layout, block_size))
        return m


class RecordingSeer(Recording, SeerAttention):
    pass


class RecordingTDMA(Recording, TrainableDynamicMask):
    pass


@pytest.mark.parametrize("cls", [RecordingSeer, RecordingTDMA])
def test_installed_method_equals_the_masked_dense_reference(cls):
    model, x = model_and_inputs("wan")
    method = cls(2, 2, 8, density=0.25)
    method.masks = []
    with install(model, block_size=4, method=method):
        out = run(model, x)
    assert method.stats["calls"] == 2 and method.stats["density"] < 0.5
    masks = iter(method.masks)

    def reference(layer, q, k, v, scale):
        m = next(masks)
        return torch.stack([torch.cat([masked_attention(q[b:b + 1, h:h + 1], k[b:b + 1, h:h + 1],
                                                        v[b:b + 1, h:h + 1], m[b, h], 4, scale)
                                       for h in range(q.shape[1])], 1)[0] for b in range(q.shape[0])])
    with install(model, block_size=4) as s:
        s.observer = reference
        ref = run(model, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, run(model, x), atol=1e-3)  # the masks did drop blocks


def test_tdma_bias_adds_z_to_the_logits():
    model, x = model_and_inputs("wan")
    ref = run(model, x)
    method = TrainableDynamicMask(2, 2, 8, density=1.0, bias=True)
    for g in method.gates:
        torch.nn.init.zeros_(g.w)  # z = ln 2 · A for every key: a constant shift, softmax unchanged
    with install(model, block_size=4, method=method):
        assert torch.allclose(run(model, x), ref, atol=1e-5)
        for g in method.gates:
            torch.nn.init.normal_(g.w)
        assert not torch.allclose(run(model, x), ref, atol=1e-3)
    assert method.stats["density"] == 1.0


def test_block_recall():
    target = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    assert block_recall(target, target, 2) == 1.0
    assert block_recall(torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]]), target, 1) == 0.0


def test_bad_arguments_name_themselves():
    for density in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="density"):
            SeerAttention(2, 2, 8, density=density)
        with pytest.raises(ValueError, match="density"):
            TrainableDynamicMask(2, 2, 8, density=density)
    with pytest.raises(ValueError, match="threshold"):
        SeerAttention(2, 2, 8, threshold=-0.1)
    with pytest.raises(ValueError, match="threshold"):
        SeerAttention(2, 2, 8, density=0.5, threshold=0.1)
    with pytest.raises(ValueError, match="layers"):
        SeerAttention(0, 2, 8)
    model, x = model_and_inputs("wan")
    with pytest.raises(ValueError, match="layers"):
        SeerAttention(3, 2, 8).check_model(model)
    with pytest.raises(ValueError, match="heads"):
        TrainableDynamicMask(2, 4, 8).check_model(model)
    before = dict(model.attn_processors)
    with pytest.raises(ValueError, match="layers: seer has 1 gates, WanTransformer3DModel has 2"):
        install(model, block_size=4, method=SeerAttention(1, 2, 8))  # a gate for layer 0 only
    assert dict(model.attn_processors) == before  # refused before any processor changed
    method = SeerAttention(2, 2, 8)
    with install(model, block_size=4, method=method):
        method.gates = method.gates[:1]  # shrunk after install: the call names the missing layer
        with pytest.raises(ValueError, match="called for layer 1"):
            run(model, x)
