"""PackNet: each task's weights are pruned and frozen at the end of its fit; a later task
leaves earlier tasks' masks, weights and task-incremental outputs unchanged."""
import torch

from sparsity_core import Host, SparsityCallback
from sparsity_plugins.continual import FREE, PackNet, StreamEvaluation, run_stream

from .helpers import module, stream, trainer


def test_earlier_tasks_are_unchanged_after_a_later_task():
    s = stream(tasks=((0, 1), (2, 3)), scenario="task")
    m = module(method="none", task_aware=True, hidden=(16, 16))
    packnet = PackNet(keep=0.5)
    ev = StreamEvaluation(task_context=packnet.use_task)
    cb = SparsityCallback(programs=[packnet])
    trainer([cb, ev], max_epochs=2).fit(m, datamodule=s)
    mask0 = {k: v.clone() for k, v in packnet.task_mask(0).items()}
    weights0 = {t.name: t.param.detach().clone() for t in packnet.targets}
    with packnet.use_task(0):
        logits0 = m(s.test_set(0)[0])[:, :2].clone()
    # 8x16 and 16x16 weights: half of each kept by task 0, the rest zero and free
    assert {k: int(v.sum()) for k, v in mask0.items()} == {"net.1.weight": 64, "net.3.weight": 128}
    for t in packnet.targets:
        assert torch.equal(t.param.detach() != 0, mask0[t.name])
    s.set_task(1)
    trainer([cb, ev], max_epochs=2).fit(m, datamodule=s)
    for t in packnet.targets:
        assert torch.equal(packnet.task_mask(0)[t.name], mask0[t.name])
        assert torch.equal(t.param.detach()[mask0[t.name]], weights0[t.name][mask0[t.name]])
        owned1 = packnet.owner[t.name] == 1
        assert int(owned1.sum()) == int(mask0[t.name].sum()) // 2 and not (owned1 & mask0[t.name]).any()
        assert not torch.equal(t.param.detach()[owned1], weights0[t.name][owned1])  # task 1 did train
    with packnet.use_task(0):
        assert torch.equal(m(s.test_set(0)[0])[:, :2], logits0)
    assert ev.task_il.rows[1][0] == ev.task_il.rows[0][0]  # no forgetting, by construction
    assert packnet.report() == {"free": 0.25, "tasks": 2.0}


def test_state_is_bit_packed_and_restores_owners(tmp_path):
    s = stream(scenario="task")
    m = module(method="none", task_aware=True)
    packnet = PackNet(keep=0.25)
    run_stream(m, s, lambda: trainer([SparsityCallback(programs=[packnet])], max_epochs=1))
    state = packnet.state_dict()
    assert state["closed"] == 1 and all(b.dtype == torch.uint8 for v in state["masks"].values() for b in v)
    assert [b.numel() for b in state["masks"]["net.1.weight"]] == [16, 16]  # 128 bits each
    torch.save(state, tmp_path / "packnet.pt")
    other = PackNet(keep=0.25)
    other.attach(Host(model=m))
    other.load_state_dict(torch.load(tmp_path / "packnet.pt", weights_only=True))
    assert all(torch.equal(other.owner[k], packnet.owner[k]) for k in packnet.owner)
    assert int((other.owner["net.1.weight"] == FREE).sum()) == 128 - 32 - 24


def test_gradients_are_charged_for_free_weights_only():
    s = stream(scenario="task")
    packnet = PackNet(keep=0.5)
    trainer([SparsityCallback(programs=[packnet])], max_epochs=1).fit(module(method="none", task_aware=True),
                                                                      datamodule=s)
    assert packnet.densities() == {"net.1.weight": (1.0, 0.5)}
