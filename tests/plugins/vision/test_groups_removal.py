"""Channel groups: masks zero exactly the coupled slices; removal equals masking; the
optimizer follows the removal; budgets are exact."""
import pytest
import torch
from torch import nn

from sparsity_core.controller import SparsityController
from sparsity_core.masks import MaskSet
from sparsity_plugins.vision import (GroupMask, GroupTraceError, channel_budget, discover_channel_groups,
                                     prune_channels, pruning_record, remove_channels)
from sparsity_plugins.vision.enforcement import masked_layer_norm

from .models import example, randomize_norms, timm, tiny

MODELS = ["resnet", "convnext", "vit", "densenet"]


def build(name, sparsity=0.5, measure="units", round_to=1, criterion="random"):
    model = tiny(name)
    randomize_norms(model)
    groups = discover_channel_groups(model, example())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    model(example()).square().mean().backward()
    opt.step()
    opt.zero_grad()
    ctrl = SparsityController(groups.targets, schedule=sparsity, criterion=criterion,
                              allocator=channel_budget("uniform", groups, round_to=round_to),
                              enforcement=GroupMask(), measure=measure, model=model, optimizers=[opt])
    ctrl.update(0, force=True)
    return model, groups, ctrl, opt


@pytest.mark.parametrize("name", MODELS)
def test_removed_model_equals_masked_model(name):
    model, groups, ctrl, opt = build(name)
    model.eval()
    x = example(3)
    with torch.no_grad():
        masked = model(x)
    params_predicted = ctrl.allocator.cost_model.cost_of_masks(ctrl.masks)["params"]
    ctrl.enforcement.remove_hooks()  # the pruned LayerNorms see only kept channels anyway
    remove_channels(groups, ctrl.masks, [opt])
    with torch.no_grad():
        removed = model(x)
    assert torch.allclose(masked, removed, atol=1e-5), (masked - removed).abs().max()
    assert sum(p.numel() for p in model.parameters()) == round(params_predicted)


def test_mask_zeroes_exactly_the_coupled_slices():
    model, groups, ctrl, _ = build("resnet", sparsity=0.0)
    target = next(t for t in groups.targets if len(t.slices) > 6)  # a residual group
    mask = torch.ones(target.num_units, dtype=torch.bool)
    mask[[1, 4]] = False
    masks = ctrl.masks.copy()
    masks[target.name] = mask
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctrl.replace_masks(masks, step=1)
    touched = set()
    for s in target.slices:
        t = target.tensors[s.tensor]
        pruned = s.index[~mask[s.unit]]
        assert pruned.numel() == 2 * s.index.numel() // target.num_units
        assert t.index_select(s.dim, pruned).abs().sum() == 0
        touched.add(s.tensor)
    for n, p in model.named_parameters():  # nothing outside the group's slices moved
        if n not in touched:
            assert torch.equal(p, before[n]), n
        else:
            assert p.count_nonzero() > 0


def test_optimizer_holds_new_parameters_and_kept_moments():
    model, groups, ctrl, opt = build("resnet")
    names = dict(model.named_parameters())
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in names.items()}
    record = remove_channels(groups, ctrl.masks, [opt])
    owned = [p for g in opt.param_groups for p in g["params"]]
    assert len(owned) == len(names)
    new = dict(model.named_parameters())
    assert all(any(p is q for q in owned) for p in new.values())
    conv = "conv1.0.weight"  # stem conv: output channels pruned by its group
    target = next(t for t in groups.targets if any(s.tensor == conv and s.dim == 0 for s in t.slices))
    kept = torch.tensor(record.kept[target.name])
    assert torch.equal(opt.state[new[conv]]["exp_avg"], moments[conv][kept])
    assert opt.state[new[conv]]["step"] == 1
    before = new[conv].detach().clone()
    model(example()).sum().backward()
    opt.step()  # a step on the rebound optimizer updates the live parameters
    assert not torch.equal(model.get_parameter(conv).detach(), before)
    assert opt.state[new[conv]]["step"] == 2


def test_vit_head_removal_keeps_attention_consistent():
    model, groups, ctrl, opt = build("vit")
    heads = {n: int(ctrl.masks[t].sum()) for n, t in groups.attention.items()}
    assert set(heads) == {"blocks.0.attn", "blocks.1.attn"} and set(heads.values()) == {2}
    remove_channels(groups, ctrl.masks, [opt])
    for name in heads:
        attn = model.get_submodule(name)
        assert attn.num_heads == 2 and attn.head_dim == 8 and attn.attn_dim == 16
        assert attn.qkv.out_features == 3 * 16 and attn.proj.in_features == 16
    for fused in (True, False):  # both attention paths agree with the pruned shapes
        for name in heads:
            model.get_submodule(name).fused_attn = fused
        assert model(example()).shape == (2, 4)


def test_masked_layer_norm_equals_layer_norm_of_kept_channels():
    x = torch.randn(2, 5, 3, 3)
    keep = torch.tensor([1.0, 0, 1, 1, 0])
    w, b = torch.rand(5) * keep, torch.randn(5) * keep
    y = masked_layer_norm(x * keep.reshape(1, -1, 1, 1), keep, w, b, 1e-6, dim=1)
    kept = keep.bool()
    ref = nn.functional.layer_norm(x[:, kept].permute(0, 2, 3, 1), (3,), w[kept], b[kept], 1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(y[:, kept], ref, atol=1e-6)
    assert y[:, ~kept].abs().max() == 0


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_macs_budget_is_met_exactly(name):
    model, groups, ctrl, _ = build(name, sparsity=0.5, measure="macs", round_to=1)
    cost = ctrl.allocator.cost_model
    kept = cost.cost_of_masks(ctrl.masks)["macs"] / cost.dense["macs"]
    assert 0.45 <= kept <= 0.5


def test_round_to_makes_channel_counts_multiples():
    _, groups, ctrl, _ = build("resnet", sparsity=0.3, round_to=8)
    for t in groups.targets:
        k = int(ctrl.masks[t.name].sum())
        assert k % 8 == 0 or k == t.num_units, (t.name, k)


def test_budget_that_would_empty_a_group_keeps_the_floor_and_reports_it():
    _, groups, ctrl, _ = build("densenet", sparsity=0.99, round_to=1)
    assert all(int(ctrl.masks[t.name].sum()) >= 1 for t in groups.targets)
    assert ctrl.allocator.last_floored  # reported


def test_mask_that_removes_a_whole_group_is_refused_before_any_change():
    model, groups, ctrl, opt = build("resnet", sparsity=0.0)
    masks = {t.name: torch.ones(t.num_units, dtype=torch.bool) for t in groups.targets}
    masks[groups.targets[0].name][:] = False
    before = {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="removes every unit"):
        remove_channels(groups, masks, [opt])
    assert {n: p.shape for n, p in model.named_parameters()} == before


def test_removal_leaves_a_record_and_records_compose():
    model, groups, ctrl, opt = build("resnet")
    first = remove_channels(groups, ctrl.masks, [opt])
    assert pruning_record(model).kept == first.kept
    groups2 = discover_channel_groups(model, example())
    name = groups.targets[0].name
    t2 = groups2.target(name)
    mask = torch.ones(t2.num_units, dtype=torch.bool)
    mask[0] = False
    second = remove_channels(groups2, {name: mask}, [opt])
    assert second.rounds == 2
    assert second.kept[name] == first.kept[name][1:]


def test_untraceable_model_names_the_module_and_changes_nothing():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bad = nn.Conv2d(4, 8, 3)  # expects 4 channels, gets 8

        def forward(self, x):
            return self.bad(self.conv(x))

    model = Broken()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(GroupTraceError, match="'bad'"):
        discover_channel_groups(model, torch.randn(1, 3, 8, 8))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.training


def test_ignored_modules_and_the_classifier_keep_their_outputs():
    model = tiny("resnet")
    groups = discover_channel_groups(model, example(), ignore=[r"^layer4\."])
    out_slices = {(s.tensor, s.dim) for t in groups.targets for s in t.slices}
    assert not any(name.startswith("layer4.") and dim == 0 and name.endswith("conv2.weight")
                   for name, dim in out_slices)
    assert ("fc.weight", 0) not in out_slices and ("fc.bias", 0) not in out_slices
    assert any(name.startswith("layer3.") for name, _ in out_slices)  # the rest is still pruned


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1, groups=2)  # 4 input channels per group
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.conv2(torch.relu(self.conv1(x))).mean((2, 3)))


def test_grouped_convolution_ties_channel_c_of_every_group():
    torch.manual_seed(0)
    model = GroupedNet()
    groups = discover_channel_groups(model, torch.randn(1, 3, 4, 4))
    g1 = groups.target("conv1:out")
    assert g1.num_units == 4 and g1.root_units.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    g2 = groups.target("conv2:out")  # 3 outputs per group: tied the same way
    assert g2.root_units.tolist() == [0, 1, 2, 0, 1, 2]
    x = torch.randn(2, 3, 4, 4)
    masks = {g1.name: torch.tensor([True, False, True, False]), g2.name: torch.tensor([True, True, False])}
    ctrl = SparsityController(groups.targets, schedule=0.0, allocator=channel_budget("uniform", groups, round_to=1),
                              enforcement=GroupMask(), model=model)
    ctrl.replace_masks(MaskSet(masks), step=0)
    with torch.no_grad():
        masked = model(x)
    remove_channels(groups, masks)
    assert model.conv1.out_channels == 4 and model.conv2.weight.shape == (4, 2, 3, 3)
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-6)


def test_removal_that_breaks_the_model_is_undone_and_reported():
    # Torch-Pruning resolves Swin's window-attention couplings inconsistently (it fails on
    # Swin on its own too); the forward check after removal catches it. (Without the probe:
    # with it, discovery skips those groups and the rest is pruned.)
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=4, img_size=32,
                              window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    params = list(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    modules = dict(model.named_modules())
    with pytest.raises(ValueError, match="The model is unchanged"):
        prune_channels(model, x, 0.5, measure="units", round_to=1, probe=False, retries=0)
    assert all(m is modules[n] for n, m in model.named_modules()) and len(modules) == len(dict(model.named_modules()))
    assert [(n, id(p)) for n, p in model.named_parameters()] == [(n, id(p)) for n, p in params]
    assert all(any(p is q for q in opt.param_groups[0]["params"]) for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), ref)
