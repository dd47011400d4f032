"""DSEE: ΔW = UV + S₂ with S₂ supported on the top-N of S from W ≈ L + S, then magnitude
pruning of the merged weights with the core's one-shot pruning."""
import pytest
import torch
from torch import nn

from sparsity_core.allocators.budget import kept_count
from sparsity_plugins.peft import DSEE, godec, inject_adapters, prune_merged

from .helpers import perturb
from .models import MLP


def low_rank_plus_spikes():
    g = torch.Generator().manual_seed(0)
    low = 0.3 * torch.randn(12, 2, generator=g) @ torch.randn(2, 10, generator=g)
    spikes = torch.zeros(120)
    where = torch.tensor([3, 17, 50, 77, 111])
    spikes[where] = torch.tensor([9.0, -8.0, 10.0, -7.5, 8.5])
    return low + spikes.reshape(12, 10), where


def test_godec_separates_a_low_rank_matrix_from_sparse_spikes():
    w, where = low_rank_plus_spikes()
    result = godec(w, rank=2, card=5, iterations=4)
    assert set(torch.nonzero(result.sparse.reshape(-1)).squeeze(1).tolist()) == set(where.tolist())
    assert all(b <= a + 1e-12 for a, b in zip(result.residuals, result.residuals[1:]))  # alternating projections
    assert result.residuals[-1] < 1e-2 and godec(w, 2, 5, iterations=40).residuals[-1] < 1e-6
    assert torch.linalg.matrix_rank(result.low_rank) == 2


def test_the_sparse_update_sits_on_the_decomposition_support_and_starts_at_zero():
    w, where = low_rank_plus_spikes()
    adapter = DSEE(w, r=2, n_sparse=5, iterations=4)
    assert adapter.support.tolist() == sorted(where.tolist())
    assert torch.equal(adapter.delta(), torch.zeros_like(w))  # U = 0 and S₂ = 0 at the start
    with torch.no_grad():
        adapter.values.copy_(torch.arange(1.0, 6.0))
        adapter.U.normal_()
    s2 = adapter.sparse_update()
    assert torch.equal(s2.reshape(-1)[adapter.support], torch.arange(1.0, 6.0))
    assert int((s2 != 0).sum()) == 5
    assert torch.allclose(adapter.delta(), adapter.U @ adapter.V + s2)
    assert sorted(adapter.state_dict()) == ["U", "V", "support", "values"]
    assert sorted(n for n, p in adapter.named_parameters()) == ["U", "V", "values"]


def test_prune_merged_makes_the_merged_weights_sparse_with_the_core():
    model, x = MLP(), torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    adapters = inject_adapters(model, method="dsee", target_modules=r"fc\d", r=2, n_sparse=4)
    perturb(adapters)
    with torch.no_grad():
        merged = {n: a.merged_weight(a.layer.weight) for n, a in adapters.adapters.items()}
    result = prune_merged(adapters, 0.5)
    assert type(model.fc1) is nn.Linear and not any(".adapter." in k for k in model.state_dict())
    total = model.fc1.weight.numel() + model.fc2.weight.numel()
    kept = int((model.fc1.weight != 0).sum() + (model.fc2.weight != 0).sum())
    assert kept == kept_count(total, 0.5) and result.report["global"] == 1 - kept / total
    everything = torch.cat([merged["fc1"].reshape(-1), merged["fc2"].reshape(-1)]).abs()
    threshold = everything.sort(descending=True).values[kept - 1]
    for name in ("fc1", "fc2"):  # the survivors are the merged weights of largest magnitude
        w = getattr(model, name).weight
        assert torch.equal(w[w != 0], merged[name][w != 0]) and bool((merged[name][w != 0].abs() >= threshold).all())
    assert model(x).shape == (4, 3)


@pytest.mark.parametrize("which", ["bert", "vit"])
def test_head_pruning_zeroes_every_entry_of_the_weakest_heads_ranked_globally(which):
    from sparsity_plugins.peft import head_targets

    from .models import BERT_LAYERS, VIT_LAYERS, bert_input, tiny_bert, tiny_vit, vit_input

    model, layers, x = ((tiny_bert(), BERT_LAYERS, bert_input()) if which == "bert"
                        else (tiny_vit(), VIT_LAYERS, vit_input()))
    adapters = inject_adapters(model, method="dsee", target_modules=layers, r=2, n_sparse=4)
    perturb(adapters)
    with torch.no_grad():
        merged = {f"{n}.weight": a.merged_weight(a.layer.weight) for n, a in adapters.adapters.items()}
    # the score of a head by hand: Σ|w| over every merged weight (and bias) entry it owns
    expected = {}
    for t in head_targets(model):
        values = {k: merged.get(k, v.detach()) for k, v in t.tensors.items()}
        expected[t.name] = torch.zeros(2)
        for s in t.slices:
            per_pos = values[s.tensor].abs().movedim(s.dim, 0).reshape(values[s.tensor].shape[s.dim], -1).sum(1)
            expected[t.name].index_add_(0, s.unit, per_pos[s.index])
    result = prune_merged(adapters, 0.25, structure="heads")
    flat = torch.cat(list(expected.values()))
    kept_by_hand = flat >= flat.sort(descending=True).values[2]  # the 3 best of 4 heads, ranked globally
    assert torch.equal(torch.cat([result.masks[n] for n in expected]), kept_by_hand)
    assert result.report["global"] == 0.25
    for t in head_targets(model):  # every entry of a pruned head is zero, kept heads keep the merged values
        for s in t.slices:
            w, m = t.tensor(s), result.weight_masks[s.tensor]
            assert (w[~m] == 0).all() and torch.equal(w[m], merged.get(s.tensor, w)[m])


def test_head_pruning_needs_attention_and_leaves_the_adapters_when_there_is_none():
    model = MLP()
    adapters = inject_adapters(model, method="dsee", target_modules=r"fc\d", r=2, n_sparse=4)
    with pytest.raises(ValueError, match="no attention module"):
        prune_merged(adapters, 0.5, structure="heads")
    assert not adapters.removed
    with pytest.raises(ValueError, match="structure must be"):
        prune_merged(adapters, 0.5, structure="rows")


def test_retune_program_keeps_the_pruned_entries_zero_while_training():
    from sparsity_core import SparsityController
    from sparsity_plugins.peft import retune_program
    from sparsity_core.program import Host

    from ...loops import train_steps

    model = MLP()
    adapters = inject_adapters(model, method="dsee", target_modules=r"fc\d", r=2, n_sparse=4)
    perturb(adapters)
    result = prune_merged(adapters, 0.6)
    program = retune_program(result.weight_masks)
    model.requires_grad_(True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    program.attach(Host(model=model, optimizers=[opt]))
    program.bind(Host(model=model, optimizers=[opt]))
    program.start(0)
    ctrl: SparsityController = program.controller
    for name, mask in result.weight_masks.items():
        assert torch.equal(ctrl.masks[name].reshape(mask.shape), mask)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, opt, ctrl, 3, (8, 6))
    for name, mask in result.weight_masks.items():
        w = model.get_parameter(name)
        assert (w[~mask] == 0).all() and not torch.equal(w[mask], before[name][mask])
