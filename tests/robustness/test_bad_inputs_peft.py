"""Bad-input sweep over the peft plugin's entry points (issue 19, item 5)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from sparsity_plugins.peft import (
    SubnetworkTuning,
    inject_adapters,
    load_adapters,
    save_adapters,
    select_subnetwork,
)
from torch import nn

from sparsity_core import UnknownNameError

from ._sweep import Case, params, run

T = r"blocks\.\d+\.(qkv|proj)"


class Net(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([nn.ModuleDict({"qkv": nn.Linear(width, width), "proj": nn.Linear(width, width)})
                                     for _ in range(2)])
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b["proj"](b["qkv"](x))
        return self.head(x)


class Other(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(16, 16)])


def adapted():
    model = Net()
    return {"model": model, "adapters": inject_adapters(model, method="lora", target_modules=T, r=2)}


def saved(config_text=None) -> Path:
    path = Path(tempfile.mkdtemp(prefix="bad-adapter-"))
    save_adapters(adapted()["adapters"], str(path))
    if config_text is not None:
        (path / "adapter_config.json").write_text(config_text)
    return path


def inject(**kw):
    args = {"method": "lora", "target_modules": T}
    args.update(kw)
    return lambda m: inject_adapters(m, **args)


CASES = [
    # -- inject_adapters
    Case("inject-regex-matches-nothing", inject(target_modules="nomatch"), ValueError,
         r"target_modules pattern 'nomatch' matches no module name in full", build=Net),
    Case("inject-bad-regex", inject(target_modules="(["), ValueError,
         r"target_modules pattern '\(\[' is not a valid regular expression", build=Net),
    Case("inject-method-unknown", inject(method="nope"), UnknownNameError,
         r"unknown adapter method 'nope'. Valid names: dsee, lora, pst, snell", build=Net),
    Case("inject-without-target-modules", lambda m: inject_adapters(m, method="lora"), ValueError,
         r"inject_adapters needs a config or method=\.\.\. and target_modules=", build=Net),
    Case("inject-matches-a-container", inject(target_modules=r"blocks\.0\.qkv|blocks"), ValueError,
         r"match modules that cannot take an adapter: 'blocks' \(a ModuleList, not an nn.Linear\)", build=Net),
    Case("inject-modules-to-save-matches-nothing", inject(modules_to_save="nomatch"), ValueError,
         r"modules_to_save pattern 'nomatch' matches no module name in full", build=Net),
    Case("inject-lora-rank-zero", inject(r=0), ValueError, r"r must be an int >= 1, got 0", build=Net),
    Case("inject-lora-unknown-parameter", inject(rank=4), ValueError,
         r"bad parameters for 'lora' adapters: .*unexpected keyword argument 'rank'", build=Net),
    Case("inject-lora-dropout-above-one", inject(dropout=1.5), ValueError,
         r"dropout must be a number in \[0, 1\), got 1.5", build=Net),
    Case("inject-snell-sparsity-above-one", inject(method="snell", sparsity=1.5), ValueError,
         r"sparsity must be a number in \[0, 1\), got 1.5", build=Net),
    Case("inject-snell-kernel-unknown", inject(method="snell", kernel="nope"), ValueError,
         r"SNELL kernel must be one of \['distance', 'linear'\], got 'nope'", build=Net),
    Case("inject-pst-sparsity-one", inject(method="pst", sparsity=1.0), ValueError,
         r"sparsity must be a number in \[0, 1\), got 1.0", build=Net),
    Case("inject-pst-score-rank-zero", inject(method="pst", r_score=0), ValueError,
         r"r_score must be an int >= 1, got 0", build=Net),
    Case("inject-dsee-too-many-sparse-entries", inject(method="dsee", n_sparse=10 ** 6), ValueError,
         r"n_sparse must be an int >= 0 <= 256, got 1000000", build=Net),
    Case("inject-twice", lambda s: inject_adapters(s["model"], method="lora", target_modules=T), ValueError,
         r"the model already has adapters in \['blocks.0.qkv'.*remove them first", build=adapted),
    # -- load_adapters
    Case("load-adapter-of-another-width", lambda m: load_adapters(m, str(saved())), ValueError,
         r"the saved adapter does not fit this model: 'blocks.0.proj' is \[out, in\] = \[8, 8\] here but \[16, 16\]",
         build=lambda: Net(width=8)),
    Case("load-adapter-of-another-model", lambda m: load_adapters(m, str(saved())), ValueError,
         r"the saved adapter does not fit this model: 'blocks.0.proj' is not a module of this model", build=Other),
    Case("load-adapter-directory-missing", lambda m: load_adapters(m, str(Path(tempfile.mkdtemp()) / "nope")),
         FileNotFoundError, r"no adapter_config.json in", build=Net),
    Case("load-adapter-malformed-json", lambda m: load_adapters(m, str(saved("{bad"))), ValueError,
         r"adapter_config.json' is not valid JSON", build=Net),
    Case("load-adapter-wrong-format", lambda m: load_adapters(m, str(saved('{"format": "x"}'))), ValueError,
         r"adapter_config.json' is not a .* config", build=Net),
    # -- subnetwork tuning
    Case("select-trainable-above-one", lambda m: select_subnetwork(m, trainable=1.5), ValueError,
         r"trainable must be a number in \(0, 1\], got 1.5", build=Net),
    Case("select-changed-without-reference", lambda m: select_subnetwork(m, trainable=0.1, select="changed"),
         ValueError, r"select='changed' needs reference=", build=Net),
    Case("subnetwork-trainable-zero", lambda _: SubnetworkTuning(trainable=0), ValueError,
         r"trainable must be a number in \(0, 1\], got 0"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_input(case: Case) -> None:
    run(case)
