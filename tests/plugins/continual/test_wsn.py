"""WSN: a learned subnetwork per task; earlier tasks' masks, weights and outputs are unchanged
by a later task, and the state (bit-packed masks, dense weights) round-trips."""
import torch

from sparsity_core import Host, SparsityCallback
from sparsity_plugins.continual import WSN, StreamEvaluation

from .helpers import module, stream, trainer


def test_later_task_leaves_earlier_subnetworks_unchanged(tmp_path):
    s = stream(tasks=((0, 1), (2, 3)), scenario="task")
    m = module(method="none", task_aware=True, hidden=(16, 16))
    wsn = WSN(keep=0.5)
    ev = StreamEvaluation(task_context=wsn.use_task)
    cb = SparsityCallback(programs=[wsn])
    trainer([cb, ev], max_epochs=2).fit(m, datamodule=s)
    init = torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fresh = module(method="none", hidden=(16, 16))
    WSN(keep=0.5).attach(Host(model=fresh))
    assert torch.equal(fresh.wsn_scores["net__1__weight"].detach(), init)  # scores start here ...
    assert not torch.equal(m.wsn_scores["net__1__weight"].detach(), init)  # ... and were learned
    mask0 = wsn.task_mask(0)
    assert {k: int(v.sum()) for k, v in mask0.items()} == {"net.1.weight": 64, "net.3.weight": 128}
    dense0 = {k: v.clone() for k, v in wsn.dense.items()}
    with wsn.use_task(0):
        logits0 = m(s.test_set(0)[0])[:, :2].clone()
    s.set_task(1)
    trainer([cb, ev], max_epochs=2).fit(m, datamodule=s)
    for name, mask in mask0.items():
        assert torch.equal(wsn.task_mask(0)[name], mask)
        assert torch.equal(wsn.dense[name][mask], dense0[name][mask])
        assert torch.equal(wsn.used[name], mask | wsn.task_mask(1)[name])
    with wsn.use_task(0):
        assert torch.equal(m(s.test_set(0)[0])[:, :2], logits0)
    assert ev.task_il.rows[1][0] == ev.task_il.rows[0][0]
    torch.save(wsn.state_dict(), tmp_path / "wsn.pt")
    m2 = module(method="none", task_aware=True, hidden=(16, 16))
    other = WSN(keep=0.5)
    other.attach(Host(model=m2))
    other.load_state_dict(torch.load(tmp_path / "wsn.pt", weights_only=True))
    assert all(torch.equal(other.task_mask(1)[k], wsn.task_mask(1)[k]) for k in mask0)
    assert all(torch.equal(other.dense[k], wsn.dense[k]) for k in mask0)
