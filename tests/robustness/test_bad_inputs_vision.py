"""Bad-input sweep over the vision plugin's entry points (issue 19, item 5)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning", reason="the vision extra (torch-pruning) is not installed")

from sparsity_plugins.vision import (
    ChannelPruning,
    GroupTraceError,
    RemovalError,
    discover_channel_groups,
    load_pruned,
    optimize_for_inference,
    prune_channels,
    remove_channels,
    save_pruned,
)

from sparsity_core import Host, UnknownNameError

from ._sweep import Case, params, run

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def pruned_cnn() -> nn.Sequential:
    model = cnn()
    prune_channels(model, X, 0.5, measure="units", round_to=1)
    return model


def groups():
    model = cnn()
    return {"model": model, "groups": discover_channel_groups(model, X)}


def _first(s):
    return s["groups"].targets[0]


def saved_dir(content=None) -> Path:
    path = Path(tempfile.mkdtemp(prefix="bad-inputs-")) / "pruned"
    save_pruned(pruned_cnn(), path)
    if content is not None:
        (path / "pruning.json").write_text(content)
    return path



def _load_case(id, content, exc, match, model=cnn, example=X):
    """The subject is the fresh model handed to load_pruned; the directory is written when the case runs."""
    return Case(id, lambda m: load_pruned(saved_dir(content), m, example), exc, match, build=model)


CASES = [
    # -- discover_channel_groups
    Case("discover-ignore-bad-regex", lambda m: discover_channel_groups(m, X, ignore=["(["]), ValueError,
         r"ignore pattern '\(\[' is not a valid regular expression", build=cnn),
    Case("discover-input-wrong-channels", lambda m: discover_channel_groups(m, torch.randn(2, 4, 8, 8)),
         GroupTraceError, r"forward pass failed in module '0' \(Conv2d\).*Nothing wa", build=cnn),
    Case("discover-time-limit-negative", lambda m: discover_channel_groups(m, X, graph_time_limit=-1), ValueError,
         r"graph_time_limit must be a positive number of seconds or None, got -1", build=cnn),
    # -- prune_channels
    Case("prune-sparsity-above-one", lambda m: prune_channels(m, X, 1.5), ValueError,
         r"sparsity must be a number in \[0, 1\), got 1.5", build=cnn),
    Case("prune-measure-unknown", lambda m: prune_channels(m, X, 0.5, measure="flops"), ValueError,
         r"measure must be one of units, params, macs; got 'flops'", build=cnn),
    Case("prune-round-to-zero", lambda m: prune_channels(m, X, 0.5, round_to=0), ValueError,
         r"round_to must be an int >= 1, got 0", build=cnn),
    Case("prune-allocator-unknown", lambda m: prune_channels(m, X, 0.5, allocator="nope"), UnknownNameError,
         r"unknown allocator 'nope'", build=cnn),
    Case("prune-retries-negative", lambda m: prune_channels(m, X, 0.5, retries=-1), ValueError,
         r"retries must be an int >= 0, got -1", build=cnn),
    Case("prune-taylor-without-loss", lambda m: prune_channels(m, X, 0.5, criterion="taylor"), ValueError,
         r"scores from gradients: one_shot_prune needs loss_fn", build=cnn),
    Case("prune-exclude-not-a-pattern", lambda m: prune_channels(m, X, 0.5, exclude=3), TypeError,
         r"exclude must be a regular expression string or a list of them, got 3", build=cnn),
    Case("prune-already-pruned", lambda m: prune_channels(m, X, 0.5, allow_repruning=False), ValueError,
         r"this model was already pruned .*allow_repruning=True", build=pruned_cnn),
    # -- ChannelPruning
    Case("channelpruning-hard-enforcement", lambda _: ChannelPruning(0.5, enforcement="hard"), TypeError,
         r"ChannelPruning needs a channel-group enforcement"),
    Case("channelpruning-round-to-zero", lambda _: ChannelPruning(0.5, round_to=0), ValueError,
         r"round_to must be an int >= 1, got 0"),
    Case("channelpruning-exclude-bad-regex", lambda _: ChannelPruning(0.5, exclude="(["), ValueError,
         r"exclude pattern '\(\[' is not a valid regular expression"),
    Case("channelpruning-sparsity-above-one", lambda _: ChannelPruning(1.5), ValueError,
         r"sparsity must be a number in \[0, 1\)"),
    Case("channelpruning-measure-unknown", lambda _: ChannelPruning(0.5, measure="flops"), ValueError,
         r"measure must be one of units, params, macs"),
    Case("channelpruning-time-limit-negative", lambda _: ChannelPruning(0.5, graph_time_limit=-1), ValueError,
         r"graph_time_limit must be a positive number of seconds or None, got -1"),
    Case("channelpruning-update-every-zero", lambda _: ChannelPruning(0.5, update_every=0), ValueError,
         r"update_every must be an int >= 1, got 0"),
    Case("channelpruning-attach-without-example", lambda m: ChannelPruning(0.5).attach(Host(m)), ValueError,
         r"ChannelPruning needs pl_module.example_input_array", build=cnn),
    # -- remove_channels
    Case("remove-unknown-group", lambda s: remove_channels(s["groups"], {"nope": torch.ones(3, dtype=torch.bool)}),
         RemovalError, r"masks name groups these channel groups do not have: \['nope'\]", build=groups),
    Case("remove-mask-wrong-shape",
         lambda s: remove_channels(s["groups"], {_first(s).name: torch.ones(3, dtype=torch.bool)}),
         RemovalError, r"mask for '3:out' has shape \(3,\), expected \(8,\)", build=groups),
    Case("remove-mask-empties-group",
         lambda s: remove_channels(s["groups"], {_first(s).name: torch.zeros(8, dtype=torch.bool)}),
         RemovalError, r"removes every unit of the group; keep at least one", build=groups),
    Case("remove-mask-float", lambda s: remove_channels(s["groups"], {_first(s).name: torch.full((8,), 0.5)}),
         RemovalError, r"mask for '3:out' must be a bool tensor \(True = kept\), got torch.float32", build=groups),
    # -- optimize_for_inference
    Case("optimize-memory-format-unknown", lambda m: optimize_for_inference(m, X, memory_format="nhwc"), ValueError,
         r"memory_format must be 'auto', 'contiguous' or 'channels_last', got 'nhwc'", build=cnn),
    Case("optimize-torchscript-string", lambda m: optimize_for_inference(m, X, torchscript="yes"), ValueError,
         r"torchscript must be True, False or 'auto', got 'yes'", build=cnn),
    Case("optimize-repeats-zero", lambda m: optimize_for_inference(m, X, repeats=0), ValueError,
         r"repeats must be an int >= 1, got 0", build=cnn),
    Case("optimize-input-wrong-channels",
         lambda m: optimize_for_inference(m, torch.randn(2, 4, 8, 8), memory_format="contiguous"), RuntimeError,
         r"expected input\[2, 4, 8, 8\] to have 3 channels", build=cnn),
    # -- load_pruned
    Case("load-directory-missing", lambda m: load_pruned(Path(tempfile.mkdtemp()) / "none", m, X), ValueError,
         r"has no pruning.json: not a directory written by save_pruned", build=cnn),
    Case("load-without-example", lambda m: load_pruned(saved_dir(), m), ValueError,
         r"load_pruned needs `example`", build=cnn),
    Case("load-without-model-or-trust", lambda _: load_pruned(saved_dir(), None, X), ValueError,
         r"load_pruned needs `model`.*trust_pickle=True"),
    _load_case("load-into-another-architecture", None, ValueError,
               r"the pruning record names groups this model does not have: \['3:out'\]",
               model=lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                           nn.Flatten(), nn.Linear(16, 4))),
    _load_case("load-malformed-json", "{not json", ValueError, r"pruning.json is not valid JSON"),
    _load_case("load-json-not-an-object", json.dumps([1, 2]), ValueError,
               r"pruning.json holds list, not the object save_pruned writes"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case) -> None:
    run(case)
