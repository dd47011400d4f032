"""UGS resumed from a checkpoint mid-way continues exactly as an uninterrupted run: edge and
weight masks, the rewind snapshot, the rounds' schedule position and the weights."""
import pytest
import torch

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from sparsity_core import SparsityCallback  # noqa: E402
from sparsity_plugins.graph import UGS, node_datamodule  # noqa: E402

from ...lightning.helpers import trainer  # noqa: E402
from .test_ugs import NodeModule, graph  # noqa: E402


def run(steps, ckpt_path=None, extra=(), **kw):
    program = UGS(rounds=3, steps_per_round=4, edge_rate=0.2, weight_rate=0.3)
    module = NodeModule()
    t = trainer(max_steps=steps, callbacks=[SparsityCallback(programs=[program]), *extra], **kw)
    t.fit(module, datamodule=node_datamodule(graph()), ckpt_path=ckpt_path)
    return program, module


def test_ugs_resume_is_bit_identical(tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    straight, module_a = run(12, extra=[saver], enable_checkpointing=True)
    resumed, module_b = run(12, ckpt_path=str(next(tmp_path.glob("*step=6*.ckpt"))))
    a, b = straight.controller, resumed.controller
    assert [h["step"] for h in a.history] == [h["step"] for h in b.history] == [4, 8, 12]
    for name, mask in a.masks.items():
        assert torch.equal(mask, b.masks[name]), name
    assert set(a.snapshot) == set(b.snapshot) and all(torch.equal(a.snapshot[k], b.snapshot[k]) for k in a.snapshot)
    for (name, p), (_, q) in zip(module_a.named_parameters(), module_b.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
