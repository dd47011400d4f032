"""Failure paths of channel pruning: the model is put back in place (same modules, parameters,
hooks), errors name the cause, groups that cannot be removed are skipped with a reason."""
import logging
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_core.controller import SparsityController
from sparsity_core.masks import MaskSet
from sparsity_core.program import Host
from sparsity_core.schedules.ramps import Linear
from sparsity_plugins.vision import (ChannelPruning, GroupMask, GroupTraceError, channel_budget,
                                     discover_channel_groups, prune_channels, pruning_record, remove_channels)
from sparsity_plugins.vision import removal as removal_module
from sparsity_plugins.vision import tracing, traversal_limits
from sparsity_plugins.vision.removal import RemovalError
from sparsity_plugins.vision.tracing import GraphTimeLimitError

from .models import TimmModule, example, image_loader, randomize_norms, timm, tiny


# -- what "unchanged, in place" means -----------------------------------------------------------
def state(model: nn.Module) -> dict:
    return {
        "modules": [(n, m) for n, m in model.named_modules()],
        "params": [(n, p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
        "buffers": [(n, b, b.clone()) for n, b in model.named_buffers()],
        "hooks": {n: {k: list(v.items()) for k, v in m.__dict__.items() if k.endswith("hooks") and isinstance(v, dict)}
                  for n, m in model.named_modules()},
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "attrs": {n: {k: v for k, v in vars(m).items() if isinstance(v, (int, float, tuple, str, bool))}
                  for n, m in model.named_modules()},
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    now = state(model)
    assert [(n, id(m)) for n, m in now["modules"]] == [(n, id(m)) for n, m in before["modules"]]
    assert [(n, id(p)) for n, p, _, _ in now["params"]] == [(n, id(p)) for n, p, _, _ in before["params"]]
    for (n, p, _, rg), (_, _, v, rg0) in zip(now["params"], before["params"]):
        assert p.dtype == v.dtype and torch.equal(p.detach(), v), n
        assert rg == rg0, n
    for (n, b, v), (_, b0, v0) in zip(now["buffers"], before["buffers"]):
        assert b is b0 and torch.equal(v, v0), n
    assert now["hooks"] == before["hooks"]
    assert now["modes"] == before["modes"]
    assert now["attrs"] == before["attrs"]
    for m in model.modules():
        assert not any(getattr(h, "__name__", "") == "_record_grad_fn" for h in m._forward_hooks.values())


def with_user_hooks(model: nn.Module):
    """A user's forward hook and pre-hook, and a submodule left in eval mode."""
    calls = []
    subs = [m for m in model.modules() if m is not model]
    h1 = subs[1].register_forward_hook(lambda *a: calls.append(1))
    h2 = subs[-1].register_forward_pre_hook(lambda *a: calls.append(2))
    subs[2].eval()
    return calls, (h1, h2)


# -- tiny models -----------------------------------------------------------------------------------
class FixedSplit(nn.Module):
    """Splits its features at a fixed size: removing channels of ``conv1`` breaks the forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.conv3 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        a, b = torch.split(F.relu(self.bn(self.conv1(x))), [4, 4], dim=1)
        return self.head(torch.cat([F.relu(self.conv2(a)), F.relu(self.conv3(b))], 1).mean((2, 3)))


class SplitAttention(nn.Module):
    """Separate q and kv (or q, k, v) projections; reshapes follow ``num_heads`` and
    ``head_dim`` (``uses_input_width``: the output is reshaped with the input width, as in
    timm's PVT-v2, Twins, CoaT, CaiT class attention and CrossViT)."""

    def __init__(self, dim, heads, kv=True, uses_input_width=False):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        if kv:
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.split_kv, self.uses_input_width = kv, uses_input_width

    def forward(self, x):
        B, N, C = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q(x).reshape(B, N, H, D).transpose(1, 2)
        if self.split_kv:
            k, v = self.kv(x).reshape(B, N, 2, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            k = self.k(x).reshape(B, N, H, D).transpose(1, 2)
            v = self.v(x).reshape(B, N, H, D).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C if self.uses_input_width else H * D))


class Block(nn.Module):
    def __init__(self, dim, heads, **kw):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SplitAttention(dim, heads, **kw)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyTransformer(nn.Module):
    def __init__(self, dim=16, heads=4, depth=2, **kw):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.pos_embed = nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.blocks = nn.Sequential(*[Block(dim, heads, **kw) for _ in range(depth)])
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.head(self.blocks(x).mean(1))


def tokens_input(n=2):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(4))


# -- restore in place after each failure class ------------------------------------------------------
def test_trace_failure_names_the_module_and_restores_hooks_in_place():
    model = tiny("resnet")
    head = model.get_classifier()
    calls, handles = with_user_hooks(model)
    before = state(model)
    with pytest.raises(GroupTraceError) as info:
        discover_channel_groups(model, torch.randn(2, 5, 32, 32))  # wrong number of input channels
    msg = str(info.value)
    assert "'conv1.0' (Conv2d)" in msg and "forward pass failed" in msg and "\n" not in msg
    assert_unchanged(model, before)  # Torch-Pruning's _record_grad_fn hooks are gone, ours stay
    assert model.get_classifier() is head
    model(example())
    assert sorted(set(calls)) == [1, 2]  # both user hooks still fire
    for h in handles:
        h.remove()  # the handles taken before still remove their hooks
    assert not any(len(m._forward_hooks) or len(m._forward_pre_hooks) for m in model.modules())


def test_forward_breaking_removal_is_undone_in_place_with_optimizer():
    torch.manual_seed(0)
    model = FixedSplit()
    x = torch.randn(2, 3, 8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()
    head = model.head
    calls, _ = with_user_hooks(model)
    groups = discover_channel_groups(model, x, probe=False)
    masks = {t.name: torch.arange(t.num_units) % 2 == 0 for t in groups.targets}
    before = state(model)
    params = [p for g in opt.param_groups for p in g["params"]]
    moments = {id(p): opt.state[p]["exp_avg"].clone() for p in params}
    with pytest.raises(RemovalError, match="breaks FixedSplit.*The model is unchanged") as info:
        remove_channels(groups, masks, [opt])
    assert "\n" not in str(info.value)
    assert_unchanged(model, before)
    assert model.head is head and head.in_features == 16 and head.weight.shape == (3, 16)
    assert [p for g in opt.param_groups for p in g["params"]] == params
    assert all(torch.equal(opt.state[p]["exp_avg"], moments[id(p)]) for p in params)
    assert pruning_record(model) is None


def test_probe_skips_the_group_that_breaks_and_prunes_the_rest():
    torch.manual_seed(0)
    model = FixedSplit()
    x = torch.randn(2, 3, 8, 8)
    before = state(model)
    groups = discover_channel_groups(model, x)
    assert_unchanged(model, before)  # probing puts the model back
    reasons = dict(groups.skipped)
    assert "conv1:out" in reasons and "forward failed" in reasons["conv1:out"]
    assert [t.name for t in groups.targets]  # the rest is prunable
    record = prune_channels(model, x, 0.5, measure="units", round_to=1)
    assert model.conv1.out_channels == 8 and model.head.in_features < 16
    assert model(x).shape == (2, 3)
    assert dict(record.skipped)["conv1:out"] == reasons["conv1:out"]


def test_failure_after_removal_in_the_attention_update_is_undone(monkeypatch):
    model = tiny("vit")
    groups = discover_channel_groups(model, example())
    masks = {t.name: torch.arange(t.num_units) % 2 == 0 for t in groups.targets}
    before = state(model)

    def broken(groups, attn_name, target, heads, names):
        raise removal_module._GroupFailure(target, "projections do not match")

    monkeypatch.setattr(removal_module, "_update_attention", broken)
    with pytest.raises(RemovalError, match="blocks.0.attn:heads.*projections do not match.*model is unchanged"):
        remove_channels(groups, masks)
    assert_unchanged(model, before)
    assert model.patch_embed.proj.weight.shape == (32, 3, 8, 8)


def test_interrupt_during_removal_restores_and_propagates(monkeypatch):
    model = tiny("resnet")
    groups = discover_channel_groups(model, example())
    masks = {t.name: torch.arange(t.num_units) % 2 == 0 for t in groups.targets}
    before = state(model)

    def interrupted(groups):
        raise KeyboardInterrupt

    monkeypatch.setattr(removal_module, "_verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        remove_channels(groups, masks)
    assert_unchanged(model, before)


def test_failed_remove_now_puts_back_values_hooks_and_masks():
    torch.manual_seed(0)
    model = FixedSplit()
    x = torch.randn(2, 3, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()
    prog = ChannelPruning(0.5, enforcement="mask_sparsity", measure="units", round_to=1, probe=False)
    host = Host(model, optimizers=[opt], example_input=x)
    prog.attach(host)
    prog.bind(host)
    prog.start(0)
    assert prog.controller.masks
    before = state(model)
    momentum = {n: opt.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="The model is unchanged"):
        prog.remove_now()
    assert_unchanged(model, before)  # finalize's zeroing undone too (mask_sparsity had not zeroed)
    for n, p in model.named_parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum[n]), n
    assert not prog.controller.finalized


# -- time limit -------------------------------------------------------------------------------------
def _slow(monkeypatch, seconds=0.01):
    from torch_pruning.dependency import group as tp_group

    original = tp_group.Group.has_pruning_op

    def slow(self, dep, idxs):
        time.sleep(seconds)
        return original(self, dep, idxs)

    monkeypatch.setattr(tp_group.Group, "has_pruning_op", slow)
    return tp_group.Group, slow


def test_time_limit_fires_on_a_slow_graph_build_and_changes_nothing(monkeypatch):
    model = tiny("resnet")
    cls, slow = _slow(monkeypatch, 0.05)  # 54 visited-checks of 50 ms: about 9 times the limit
    add_dep = cls.__dict__["add_dep"]
    before = state(model)
    t0 = time.monotonic()
    with pytest.raises(GraphTimeLimitError) as info:
        discover_channel_groups(model, example(), graph_time_limit=0.3)
    assert time.monotonic() - t0 < 20.0  # (generous: the trace before the enumeration runs on a busy CPU)
    msg = str(info.value)
    assert "time limit of 0.3 s" in msg and "ResNet" in msg and "graph_time_limit" in msg and "while" in msg
    assert_unchanged(model, before)
    assert cls.__dict__["has_pruning_op"] is slow and cls.__dict__["add_dep"] is add_dep  # patches gone


def test_time_limit_during_removal_restores_in_place(monkeypatch):
    model = tiny("resnet")
    groups = discover_channel_groups(model, example())
    masks = {t.name: torch.arange(t.num_units) % 2 == 0 for t in groups.targets}
    before = state(model)
    _slow(monkeypatch, 0.02)
    groups.time_limit = 0.2
    with pytest.raises(GraphTimeLimitError, match="time limit of 0.2 s.*while removing the masked units.*model is "
                                                  "unchanged"):
        remove_channels(groups, masks, check=False)  # fires half-way through the removal
    assert_unchanged(model, before)
    with pytest.raises(GraphTimeLimitError, match="checking the masks.*time limit of 0.2 s.*Nothing was changed"):
        remove_channels(groups, masks)  # fires in the check before any change
    assert_unchanged(model, before)


def test_runaway_traversal_skips_its_group_and_prunes_the_rest(monkeypatch):
    monkeypatch.setattr(traversal_limits, "MAX_GROUP_ITEMS", 6)
    model = tiny("resnet")
    groups = discover_channel_groups(model, example(), probe=False)
    runaway = [n for n, why in groups.skipped if "collected" in why]
    assert runaway and groups.targets


class Ghost(nn.Module):
    """A channel concatenated with a (depthwise) copy of itself, added to a convolution's
    output: that convolution's channels ``c`` and ``c + 4`` reach the same position."""

    def __init__(self):
        super().__init__()
        self.primary, self.cheap = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.conv, self.head = nn.Conv2d(8, 8, 1), nn.Linear(8, 2)

    def forward(self, x):
        y = self.primary(x)
        y = torch.cat([y, self.cheap(y)], 1)
        return self.head((self.conv(y) + y).mean((2, 3)))


def test_self_coupled_channels_are_tied_into_one_unit():
    torch.manual_seed(0)
    model = Ghost()
    x = torch.randn(2, 3, 6, 6)
    groups = discover_channel_groups(model, x)
    group = groups.target("conv:out")
    assert group.root_units.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    masks = {"conv:out": torch.tensor([True, False, True, False])}
    ctrl = SparsityController(groups.targets, schedule=0.0, allocator=channel_budget("uniform", groups, round_to=1),
                              enforcement=GroupMask(), model=model)
    ctrl.replace_masks(MaskSet(masks), step=0)
    with torch.no_grad():
        masked = model(x)
    remove_channels(groups, masks)
    assert model.conv.out_channels == 4 and model.primary.out_channels == 2
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-6)


# -- embedding dimension ---------------------------------------------------------------------------
def test_embed_guard_covers_head_groups_that_reach_the_embedding():
    # EVA-02 with separate q/v biases: Torch-Pruning couples the head group to pos_embed
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, num_classes=4, img_size=28, patch_size=14,
                              embed_dim=32, depth=1, num_heads=2)
    x = torch.randn(2, 3, 28, 28)
    before = state(model)
    with pytest.raises(ValueError, match="no prunable channel group") as info:
        prune_channels(model, x, 0.5, measure="units", round_to=1)
    assert "blocks.0.attn:heads: its head group reaches the transformer embedding dimension" in str(info.value)
    assert model.patch_embed.proj.weight.shape == (32, 3, 14, 14)
    assert_unchanged(model, before)


def test_embed_guard_covers_every_group_reaching_pos_embed():
    model = TinyTransformer()
    groups = discover_channel_groups(model, tokens_input())
    for t in groups.targets:
        assert not any(s.tensor in ("pos_embed", "stem.weight") for s in t.slices), t.name
    assert any("embedding dimension" in why for _, why in groups.skipped)


# -- attention forms ------------------------------------------------------------------------------
@pytest.mark.parametrize("kv", [True, False])
def test_split_attention_pruned_as_heads_equals_masked(kv):
    model = TinyTransformer(kv=kv)
    randomize_norms(model)
    x = tokens_input(3)
    groups = discover_channel_groups(model, x)
    heads = {t.name: t for t in groups.targets if t.kind == "head"}
    assert set(heads) == {"blocks.0.attn:heads", "blocks.1.attn:heads"}
    projections = ("q", "kv") if kv else ("q", "k", "v")
    for t in heads.values():
        covered = {s.tensor.rsplit(".", 2)[1] for s in t.slices if s.tensor.endswith(".weight")}
        assert covered == {"proj", *projections}
    masks = {t.name: torch.ones(t.num_units, dtype=torch.bool) for t in groups.targets}
    masks["blocks.0.attn:heads"] = torch.tensor([True, False, True, False])
    masks["blocks.1.attn:heads"] = torch.tensor([False, False, True, True])
    masks["blocks.0.fc1:out"][::3] = False
    ctrl = SparsityController(groups.targets, schedule=0.0, allocator=channel_budget("uniform", groups, round_to=1),
                              enforcement=GroupMask(), model=model)
    ctrl.replace_masks(MaskSet(masks), step=0)
    model.eval()
    with torch.no_grad():
        masked = model(x)
    ctrl.enforcement.remove_hooks()
    record = remove_channels(groups, masks)
    attn = model.blocks[0].attn
    assert attn.num_heads == 2 and attn.q.out_features == 8 and attn.proj.in_features == 8
    assert record.heads == {"blocks.0.attn": 2, "blocks.1.attn": 2}
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)


def test_attention_tied_to_its_input_width_is_skipped_with_its_reason():
    model = TinyTransformer(uses_input_width=True)
    x = tokens_input()
    groups = discover_channel_groups(model, x)
    reasons = dict(groups.skipped)
    for name in ("blocks.0.attn:heads", "blocks.1.attn:heads"):
        assert "removing it fails" in reasons[name] and "attention 'blocks" in reasons[name]
        assert "(SplitAttention)" in reasons[name]
    assert {t.name for t in groups.targets} == {"blocks.0.fc1:out", "blocks.1.fc1:out"}  # the rest is pruned
    prune_channels(model, x, 0.5, measure="units", round_to=1)
    assert model.blocks[0].fc1.out_features == 16 and model.blocks[0].attn.num_heads == 4
    assert model(x).shape == (2, 3)


# -- refused inputs -------------------------------------------------------------------------------
class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.conv(x)
        y = self.a(y) if x.mean() > 0 else self.b(y)
        return self.head(y.mean((2, 3)))


def test_data_dependent_control_flow_is_refused():
    torch.manual_seed(0)
    model = Branchy()
    x = torch.randn(2, 3, 4, 4)
    before = state(model)
    with pytest.raises(GroupTraceError, match="data-dependent control flow") as info:
        prune_channels(model, x, 0.5, round_to=1)
    assert ("'a' (Conv2d)" in str(info.value)) and ("'b' (Conv2d)" in str(info.value))
    assert_unchanged(model, before)


def test_dpn_trace_error_names_the_concat_index_mapping():
    torch.manual_seed(0)
    model = timm.create_model("dpn68", pretrained=False, num_classes=4)
    before = state(model)
    with pytest.raises(GroupTraceError) as info:
        discover_channel_groups(model, torch.randn(1, 3, 32, 32))
    msg = str(info.value)
    assert "update_concat_index_mapping" in msg and "forward pass ran" in msg and "TypeError" in msg
    assert "'flatten'" not in msg and "\n" not in msg and "Conv2d(" not in msg
    assert_unchanged(model, before)


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = tiny("resnet")

    def forward(self, x):
        return self.model(x)


def test_repruning_is_detected_in_a_submodule():
    wrapper = Wrapper()
    prune_channels(wrapper.model, example(), 0.3, round_to=1)
    shapes = {n: p.shape for n, p in wrapper.named_parameters()}
    with pytest.raises(ValueError, match="already pruned \\(module 'model' carries a pruning record\\)"):
        ChannelPruning(0.5).attach(Host(wrapper, example_input=example()))
    with pytest.raises(ValueError, match="already pruned"):
        prune_channels(wrapper, example(), 0.3, allow_repruning=False)
    assert {n: p.shape for n, p in wrapper.named_parameters()} == shapes
    record = prune_channels(wrapper, example(), 0.3, round_to=1)  # allowed: records compose, moved to the root
    assert record.rounds == 2 and pruning_record(wrapper.model) is None
    assert any(k.startswith("model.") for k in pruning_record(wrapper).kept)


def test_invalid_regex_names_the_argument():
    model = tiny("resnet")
    with pytest.raises(ValueError, match="ignore pattern '\\(' is not a valid regular expression"):
        discover_channel_groups(model, example(), ignore=["("])
    with pytest.raises(ValueError, match="exclude pattern"):
        prune_channels(model, example(), 0.5, exclude=["layer1", "("])
    with pytest.raises(ValueError, match="exclude pattern"):
        ChannelPruning(0.5, exclude="[")


# -- friction -------------------------------------------------------------------------------------
def test_update_every_follows_the_ramp():
    assert ChannelPruning(Linear(start_step=3, end_step=160, final_sparsity=0.5)).update_every == 16
    assert ChannelPruning(Linear(start_step=0, end_step=5, final_sparsity=0.5)).update_every == 1
    assert ChannelPruning(Linear(start_step=0, end_step=500, final_sparsity=0.5), update_every=7).update_every == 7
    assert ChannelPruning(0.5).update_every == 1
    assert ChannelPruning(lambda step: 0.5).update_every == 100  # no known end
    with pytest.raises(ValueError, match="remove_after_ramp needs a schedule with a known end_step"):
        ChannelPruning(lambda step: 0.5, remove_after_ramp=True)


def test_remove_after_ramp_removes_before_fine_tuning():
    from sparsity_core import SparsityCallback

    from ...lightning.helpers import trainer

    module = TimmModule("resnet")
    dense = sum(p.numel() for p in module.parameters())
    prog = ChannelPruning(Linear(start_step=1, end_step=3, final_sparsity=0.5), measure="params",
                          remove_after_ramp=True, finalize=False)
    sizes = []

    class Watch(__import__("pytorch_lightning").Callback):
        def on_train_batch_end(self, tr, pl_module, outputs, batch, batch_idx):
            sizes.append((tr.global_step, sum(p.numel() for p in pl_module.parameters())))

    tr = trainer(max_steps=6, callbacks=[SparsityCallback(programs=[prog]), Watch()])
    tr.fit(module, image_loader())
    assert prog.controller.finalized and prog.record is not None
    assert all(n == dense for step, n in sizes if step < 3)
    assert all(n < dense * 0.6 for step, n in sizes if step >= 3)  # steps 3..6 train the smaller model
    owned = {id(p) for g in tr.optimizers[0].param_groups for p in g["params"]}
    assert all(id(p) in owned for p in module.parameters())


def test_torch_pruning_warnings_are_silenced_and_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="sparsity_plugins.vision.tracing")
    tracing._UNWRAPPED_LOGGED.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            discover_channel_groups(tiny("vit"), example())
    assert not [w for w in seen if "nwrapped" in str(w.message) or "Unknown operation" in str(w.message)]
    lines = [r for r in caplog.records if "outside standard layers" in r.getMessage()]
    assert len(lines) == 1 and "pos_embed" in lines[0].getMessage() and "\n" not in lines[0].getMessage()
