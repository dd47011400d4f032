"""CFSP on tiny timm and BERT models: exact fine scores, block importances and allocation,
physical removal equal to zeroing, bad input refused before any change."""
import math

import pytest
import torch
from torch import nn

from sparsity_core.calibration.cfsp import (CFSPBlocks, angular_distance, cfsp_prune, channel_target, find_ffns,
                                            fine_scores, relative_importance)
from sparsity_core.targets import Target


def tiny_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=3, num_heads=2, mlp_ratio=2.0,
                             num_classes=3).eval()


def images(n=2, batch=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(n)]


def test_relative_importance_and_fine_scores_by_hand():
    w = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    # row sums 4, 4; column sums 3, 5
    assert torch.allclose(relative_importance(w), torch.tensor([[1 / 4 + 1 / 3, 3 / 4 + 3 / 5], [2 / 4 + 2 / 3, 2 / 4 + 2 / 5]],
                                                               dtype=torch.float64))
    ffn = find_ffns(nn.ModuleDict({"mlp": nn.ModuleDict({"fc1": nn.Linear(2, 2), "fc2": nn.Linear(2, 2)})}))[0]
    with torch.no_grad():
        ffn.inp.weight.copy_(w)
        ffn.out.weight.copy_(w)
    ri = relative_importance(w)
    expected = (ri.sum(1) + ri.sum(0)) * torch.tensor([4.0, 9.0], dtype=torch.float64).sqrt()
    assert torch.allclose(fine_scores(ffn, torch.tensor([4.0, 9.0]), exponent=0.5).double(), expected, atol=1e-6)


def test_angular_distance_of_identical_orthogonal_and_opposite_tokens():
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert torch.allclose(angular_distance(h, out), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


def test_allocation_keeps_more_of_the_more_important_blocks_and_spends_the_budget():
    targets = [Target(f"b{i}", shape=(10,)) for i in range(3)]
    alloc = CFSPBlocks({"b0": 0.1, "b1": 0.3, "b2": 0.2})
    from sparsity_core.allocators.budget import Budget

    keep = alloc.allocate(targets, {t.name: torch.rand(10) for t in targets}, Budget(sparsity=0.5))
    assert sum(keep.values()) == 15
    assert keep["b1"] > keep["b2"] > keep["b0"]
    shares = {k: 1 / (1 + math.exp(-z)) for k, z in zip(("b0", "b1", "b2"), (-math.sqrt(1.5), math.sqrt(1.5), 0.0))}
    assert alloc.last_shares == pytest.approx(shares)  # σ of the standardised importances


def test_pruning_removes_exactly_the_masked_channels():
    model = tiny_vit()
    x = images()
    reference = tiny_vit()
    result = cfsp_prune(reference, x, 0.5, remove=False)
    kept = sum(result.keep.values())
    assert kept == 3 * 32 // 2 and result.report["channel_sparsity"] == 0.5
    # zero the pruned channels of an identical model: the same function as removing them
    with torch.no_grad():
        for ffn in find_ffns(model):
            t = channel_target(ffn)
            mask = result.masks[t.name]
            ffn.inp.weight[~mask] = 0
            ffn.inp.bias[~mask] = 0
            ffn.out.weight[:, ~mask] = 0
    result2 = cfsp_prune(reference, x, 0.5)
    assert result2.keep == result.keep
    assert [f.inp.out_features for f in find_ffns(reference)] == [result.keep[f"blocks.{i}.ffn"] for i in range(3)]
    probe = images(1, 3)[0]
    with torch.no_grad():
        torch.testing.assert_close(reference(probe), model(probe), atol=1e-5, rtol=0)
    assert result2.removed_params == (96 - kept) * (16 + 16 + 1)


def test_sparsity_zero_keeps_the_model_and_bert_is_supported():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=16)).eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"input_ids": torch.randint(0, 40, (3, 7), generator=g)} for _ in range(2)]
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    result = cfsp_prune(bert, batches, 0.0)
    assert result.keep == {"encoder.layer.0.ffn": 32, "encoder.layer.1.ffn": 32}
    assert all(torch.equal(v, bert.state_dict()[k]) for k, v in before.items())
    assert all(0 < v < 1 for v in result.importance.values())
    cfsp_prune(bert, batches, 0.25)
    assert sum(f.inp.out_features for f in find_ffns(bert)) == 48
    assert bert(**batches[0]).last_hidden_state.shape == (3, 7, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 1.0}, "sparsity"),
    ({"batches": []}, "no batches"),
    ({"batches": [torch.randn(2, 3, 8, 8)]}, "does not fit the model"),
])
def test_bad_input_leaves_the_model_unchanged(kwargs, message):
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"batches": images(), "sparsity": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        cfsp_prune(model, args.pop("batches"), **args)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in model.modules())


def test_a_model_without_feed_forward_networks_is_refused():
    with pytest.raises(ValueError, match="no feed-forward network"):
        cfsp_prune(nn.Sequential(nn.Linear(4, 4)), [torch.randn(2, 4)], 0.5)
