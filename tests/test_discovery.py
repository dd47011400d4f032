import pytest
import torch
from torch import nn

from sparsity_core.discovery import classifier_heads, discover_targets
from sparsity_core.targets import Target


def test_defaults_skip_bias_norm_head(tiny_net):
    names = [t.name for t in discover_targets(tiny_net)]
    assert names == ["conv.weight", "fc.weight"]


def test_embeddings_and_container_params_are_skipped():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.pos = nn.Parameter(torch.zeros(1, 5, 4))
            self.ln = nn.LayerNorm(4)
            self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
            self.proj = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

    names = [t.name for t in discover_targets(M())]
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "proj.weight"]


def test_timm_head_found_by_get_classifier():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.classifier = nn.Linear(4, 2)
            self.extra = nn.Linear(2, 2)  # last Linear, but not the classifier

        def get_classifier(self):
            return self.classifier

    assert classifier_heads(M()) == {"classifier"}
    assert [t.name for t in discover_targets(M())] == ["fc.weight", "extra.weight"]


def test_include_exclude_regex(tiny_net):
    assert [t.name for t in discover_targets(tiny_net, include="^fc")] == ["fc.weight"]
    assert [t.name for t in discover_targets(tiny_net, exclude=["conv"])] == ["fc.weight"]
    assert [t.name for t in discover_targets(tiny_net, skip_head=False, include="head")] == ["head.weight"]


def test_include_matching_nothing_is_an_error(tiny_net):
    with pytest.raises(ValueError, match="'attn' matches no prunable module. Candidates: conv, fc"):
        discover_targets(tiny_net, include="attn")


def test_excluding_everything_is_an_error(tiny_net):
    with pytest.raises(ValueError, match="no prunable weights"):
        discover_targets(tiny_net, exclude=".*")


def test_bad_regex_is_an_error(tiny_net):
    with pytest.raises(ValueError, match="not a valid regular expression"):
        discover_targets(tiny_net, include="(")


def test_nm_layout_validated_at_discovery(tiny_net):
    # conv has 1 input channel: not divisible by 4
    with pytest.raises(ValueError, match="'conv.weight': input dimension 1 is not divisible by M=4"):
        discover_targets(tiny_net, layout="2:4")
    targets = discover_targets(tiny_net, layout="2:4", include="fc")
    assert targets[0].layout.fixed_keep(targets[0].shape) == 144 * 8 // 2


def test_costs_per_unit(tiny_net):
    ts = {t.name: t for t in discover_targets(tiny_net, example_input=torch.randn(2, 1, 8, 8))}
    assert ts["conv.weight"].params_per_unit == 1 and ts["conv.weight"].macs_per_unit == 36  # 6x6 outputs
    assert ts["fc.weight"].macs_per_unit == 1
    ch = {t.name: t for t in discover_targets(tiny_net, layout="channel", example_input=torch.randn(2, 1, 8, 8))}
    assert ch["conv.weight"].num_units == 4 and ch["conv.weight"].params_per_unit == 9
    assert ch["conv.weight"].macs_per_unit == 9 * 36
    assert ch["fc.weight"].params_per_unit == 144


def test_flat_target_without_param_can_resize():
    t = Target("edges", shape=(10,))
    assert t.num_units == 10 and t.params_per_unit == 0
    t.resize(12)
    assert t.num_units == 12
    with pytest.raises(ValueError, match=">= 0"):
        t.resize(-1)


def test_target_shape_must_match_param():
    with pytest.raises(ValueError, match="does not match"):
        Target("w", shape=(2, 2), param=nn.Parameter(torch.zeros(3, 2)))
