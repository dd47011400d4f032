"""UGS's mask options: plain SGD on the masks (``mask_optimizer="sgd"``), per-round mask
re-initialisation (``mask_noise``), resume with both, bad values refused at construction."""
import pytest
import pytorch_lightning as pl
import torch

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")

from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from sparsity_core import SparsityCallback  # noqa: E402
from sparsity_plugins.graph import UGS, node_datamodule  # noqa: E402

from ...lightning.helpers import trainer  # noqa: E402
from .test_ugs import NodeModule, fit, graph  # noqa: E402


def test_sgd_moves_the_masks_by_lr_times_gradient_and_the_model_optimizer_skips_them():
    module = NodeModule(zero_loss=True)  # Adam over every parameter, masks included
    cb = UGS(rounds=1, steps_per_round=100, edge_rate=0.1, weight_rate=0.1, edge_l1=0.125, weight_l1=0.25,
             mask_optimizer="sgd", mask_lr=0.5, mask_noise=0.0)
    tr = fit(module, cb, steps=2)
    # two SGD steps of the ℓ₁ subgradient alone; Adam would have moved them by ~lr = 0.01 a step
    assert torch.all(cb.edge_mask.mask == 1 - 2 * 0.5 * 0.125)
    assert torch.all(module.gnn.conv1.lin.parametrizations.weight[0].mask == 1 - 2 * 0.5 * 0.25)
    adam_state = tr.optimizers[0].state
    assert all(t.param not in adam_state for t in cb.controller.targets)
    assert cb.trained_parameters() == {}


def test_sgd_masks_need_not_be_in_the_model_optimizer():
    module = NodeModule(opt="gnn-only")  # the shared mode refuses this (test_ugs)
    cb = UGS(rounds=2, steps_per_round=3, edge_rate=0.2, weight_rate=0.0, mask_optimizer="sgd", mask_lr=0.1)
    fit(module, cb, steps=6)
    assert cb.sparsity_report()["edges"] > 0
    pruned = ~cb.controller.masks["ugs_edge_mask.mask"]
    assert pruned.any() and torch.all(cb.edge_mask.mask[pruned] == 0)  # SGD moved them; enforcement re-zeroed
    assert cb.edge_mask.mask.grad is None  # cleared after each step, nothing accumulates


class Spy(pl.Callback):
    """The edge mask after every step."""

    def __init__(self, cb):
        self.cb, self.masks = cb, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.masks.append(self.cb.edge_mask.mask.detach().clone())


def run_noisy(steps=9, noise=1e-3, **kw):
    module = NodeModule(zero_loss=True, opt="sgd")  # masks move only by ℓ₁ (all alike): every mask ties
    cb = UGS(rounds=3, steps_per_round=3, edge_rate=0.3, weight_rate=0.0, edge_l1=0.0, mask_noise=noise, **kw)
    spy = Spy(cb)
    trainer(max_steps=steps, callbacks=[SparsityCallback(programs=[cb]), spy]).fit(
        module, datamodule=node_datamodule(graph()))
    return cb, spy.masks


def test_mask_noise_reinitialises_every_round_but_the_ticket():
    cb, masks = run_noisy()
    c = 1e-3
    first = masks[0]  # round 1, after one step (zero gradient: the noise alone)
    assert first.min() >= 1 - c and first.max() <= 1 + c and first.unique().numel() > first.numel() // 2
    after_round_1 = masks[2]  # step 3: pruned, rewound, re-noised
    kept = cb.controller.history[0]
    assert kept["step"] == 3
    pruned = after_round_1 == 0
    survivors = after_round_1[~pruned]
    assert pruned.any() and survivors.unique().numel() > survivors.numel() // 2  # noisy again, not the rewound 1s
    assert not torch.equal(survivors, first[~pruned]) and (survivors - 1).abs().max() <= c  # fresh draws
    last = masks[-1]  # step 9: the last round's rewind, no noise on the ticket
    assert set(last.unique().tolist()) <= {0.0, 1.0}


def test_noise_breaks_ties_at_random_instead_of_by_position():
    plain, _ = run_noisy(steps=3, noise=0.0)
    noisy, _ = run_noisy(steps=3, noise=1e-3)
    kept_plain = plain.controller.masks["ugs_edge_mask.mask"]
    kept_noisy = noisy.controller.masks["ugs_edge_mask.mask"]
    n_pruned = int((~kept_plain).sum())
    assert n_pruned == int((~kept_noisy).sum()) > 0
    assert not kept_plain[:-n_pruned].logical_not().any()  # ties: the last units by position go
    assert kept_noisy[-n_pruned:].any()  # with noise, not just those


def test_noise_draws_are_reproducible():
    a, ma = run_noisy(steps=4)
    b, mb = run_noisy(steps=4)
    assert all(torch.equal(x, y) for x, y in zip(ma, mb))


def test_resume_with_sgd_and_noise_is_bit_identical(tmp_path):
    def run(steps, ckpt_path=None, extra=(), **kw):
        program = UGS(rounds=3, steps_per_round=4, edge_rate=0.2, weight_rate=0.3, mask_optimizer="sgd",
                      mask_lr=0.05, mask_noise=1e-3)
        module = NodeModule()
        t = trainer(max_steps=steps, callbacks=[SparsityCallback(programs=[program]), *extra], **kw)
        t.fit(module, datamodule=node_datamodule(graph()), ckpt_path=ckpt_path)
        return program, module

    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    straight, module_a = run(12, extra=[saver], enable_checkpointing=True)
    resumed, module_b = run(12, ckpt_path=str(next(tmp_path.glob("*step=6*.ckpt"))))
    for name, mask in straight.controller.masks.items():
        assert torch.equal(mask, resumed.controller.masks[name]), name
    for (name, p), (_, q) in zip(module_a.named_parameters(), module_b.named_parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_optimizer="adam"), r"mask_optimizer must be one of 'shared', 'sgd'"),
    (dict(mask_optimizer="sgd"), "mask_optimizer='sgd' needs mask_lr"),
    (dict(mask_optimizer="sgd", mask_lr=0.0), "mask_lr must be a number > 0"),
    (dict(mask_optimizer="sgd", mask_lr=True), "mask_lr must be a number > 0"),
    (dict(mask_lr=0.1), "mask_lr=0.1 is the step of mask_optimizer='sgd'"),
    (dict(mask_noise=1.0), r"mask_noise must be a number in \[0, 1\)"),
    (dict(mask_noise=-1e-5), "mask_noise"),
    (dict(mask_noise=True), "mask_noise"),
])
def test_bad_mask_options_are_refused_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UGS(**kwargs)


def test_defaults_are_the_reference_code_s():
    ugs = UGS()
    assert (ugs.mask_optimizer, ugs.mask_lr, ugs.mask_noise) == ("shared", None, 1e-5)


def test_repr_shows_the_mask_options():
    text = repr(UGS(mask_optimizer="sgd", mask_lr=0.1, mask_noise=1e-5))
    assert "mask_optimizer='sgd', mask_lr=0.1, mask_noise=1e-05" in text
