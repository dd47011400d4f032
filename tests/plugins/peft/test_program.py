"""The adapters inside Lightning: the SparseAdapters program injects at set-up, the optimizer
holds the adapters, the base stays frozen, sparsity follows a core schedule and is logged."""
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsity_core import Linear, SparsityCallback
from sparsity_core.allocators.budget import kept_count
from sparsity_core.program import Host
from sparsity_plugins.peft import SparseAdapters

from .models import lit_mlp


def fit(program, steps=6):
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)),
                      batch_size=8)
    module = lit_mlp()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[SparsityCallback(programs=[program])])
    base = {k: v.clone() for k, v in module.state_dict().items()}
    trainer.fit(module, data)
    return trainer, module, base


def test_pst_program_follows_the_schedule_trains_only_adapters_and_logs():
    program = SparseAdapters(r"net\.fc\d", method="pst", modules_to_save=r"net\.head", r=2, r_score=2,
                             schedule=Linear(start_step=0, end_step=4, final_sparsity=0.5))
    trainer, module, base = fit(program)
    adapters = program.adapters
    assert sorted(adapters.adapters) == ["net.fc1", "net.fc2"]
    state = module.state_dict()
    frozen = [k for k in base if not k.startswith("net.head")]
    assert all(torch.equal(state[k], base[k]) for k in frozen)  # the base did not move ...
    assert not torch.equal(state["net.head.weight"], base["net.head.weight"])  # ... the saved head did
    assert all(a.sparsity == 0.5 for a in adapters.adapters.values())
    n = 8 * 6 + 8 * 8
    removed = (6 * 8 - kept_count(48, 0.5)) + (8 * 8 - kept_count(64, 0.5))
    metrics = trainer.callback_metrics
    assert float(metrics["sparsity/adapters/sparsity"]) == pytest.approx(removed / n)
    assert float(metrics["sparsity/adapters/trainable"]) == adapters.count()["trainable"]
    assert float(metrics["sparsity/global"]) == pytest.approx(removed / n)
    assert program.state_dict() == {"sparsity": 0.5, "finalized": False}
    assert set(program.masked_tensors().values()) == {"net.fc1.weight", "net.fc2.weight"}


def test_registered_by_name_and_finalize_merges_for_good():
    program = {"program": "sparse_adapters", "target_modules": r"net\.fc\d", "method": "snell", "r": 2,
               "sparsity": 0.5, "finalize": True}
    callback = SparsityCallback(programs=[program])
    (program,) = callback.programs
    assert isinstance(program, SparseAdapters)
    trainer, module, base = fit(program, steps=3)
    assert program.finalized and type(module.net.fc1) is nn.Linear
    assert set(module.state_dict()) == set(base)
    assert not torch.equal(module.net.fc1.weight, base["net.fc1.weight"])  # the update is in the weight now


def test_attach_errors_leave_the_model_unchanged_and_detach_restores_it():
    module = lit_mlp()
    keys = set(module.state_dict())
    with pytest.raises(ValueError, match="matches no module name in full"):
        SparseAdapters("fc1", method="lora").attach(Host(model=module))
    assert set(module.state_dict()) == keys
    with pytest.raises(ValueError, match="no sparsity"):
        SparseAdapters(r"net\.fc1", method="lora", schedule=0.5)
    program = SparseAdapters(r"net\.fc1", method="lora", r=2)
    program.attach(Host(model=module))
    assert set(program.trained_parameters()) == {"net.fc1.adapter.A", "net.fc1.adapter.B"}
    program.detach()
    assert set(module.state_dict()) == keys and all(p.requires_grad for p in module.parameters())
