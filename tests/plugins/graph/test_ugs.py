"""UGS graph lottery tickets: edge masks through PyG's explain masks (exact messages and
gradients), per-group round rates, rounds with rewinding inside Trainer.fit, the ℓ₁
subgradient, state dicts of parametrized PyG layers, finalize, bad input."""
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from torch_geometric.data import Data  # noqa: E402
from torch_geometric.nn import SimpleConv  # noqa: E402

from sparsity_core import Iterative, SparsityCallback  # noqa: E402
from sparsity_core.allocators import Budget, GlobalRank, Grouped  # noqa: E402
from sparsity_core.targets import Target  # noqa: E402
from sparsity_plugins.graph import GCN, UGS, EdgeMask, node_datamodule, rate_for, sbm_graph  # noqa: E402

from ...lightning.helpers import trainer  # noqa: E402

# path 0-1-2 (both directions) and a self-loop on 2
PATH = torch.tensor([[0, 1, 1, 2, 2], [1, 0, 2, 1, 2]])
X = torch.tensor([[1.0], [10.0], [100.0]])


def test_edge_mask_has_one_unit_per_undirected_edge_and_leaves_self_loops_at_one():
    em = EdgeMask(PATH, 3, undirected=True)
    assert em.num_units == 2
    with torch.no_grad():
        em.mask.copy_(torch.tensor([0.25, 0.5]))
    assert em.edge_values().tolist() == [0.25, 0.25, 0.5, 0.5, 1.0]
    assert EdgeMask(PATH, 3, undirected=False).num_units == 4


def test_attached_mask_scales_messages_and_its_gradient_is_exact():
    conv = SimpleConv(aggr="sum")
    assert conv(X, PATH).flatten().tolist() == [10.0, 101.0, 110.0]
    em = EdgeMask(PATH, 3, undirected=True)
    assert em.attach(conv) == 1
    with torch.no_grad():
        em.mask[1] = 0.0  # the pair (1, 2)
    out = conv(X, PATH)
    assert out.flatten().tolist() == [10.0, 1.0, 100.0]  # 2 keeps its self-loop message
    out.sum().backward()
    # d/dm of the pair (0,1): x0 (into 1) + x1 (into 0); pair (1,2): x1 + x2
    assert em.mask.grad.tolist() == [11.0, 110.0]
    em.detach_from(conv)
    assert conv(X, PATH).flatten().tolist() == [10.0, 101.0, 110.0]


def test_round_rates_keep_each_group_at_its_own_density():
    """UGS's rounds: Iterative with per-group rates gives sub-budgets; Grouped applies them."""
    a = Target("a", shape=(100,))
    b1, b2 = Target("b1", shape=(50,)), Target("b2", shape=(50,))
    scores = {"a": torch.arange(100.0), "b1": torch.arange(50.0) + 100, "b2": torch.arange(50.0)}
    sched = Iterative(rounds=3, steps_per_round=10, rates={"edges": 0.2, "weights": 0.5})
    alloc = Grouped({"edges": "^a$", "weights": "^b"}, inner=GlobalRank(min_keep_units=0))
    two_rounds = Budget(sparsity=sched.value(20), groups=sched.group_values(20))
    keep = alloc.allocate([a, b1, b2], scores, two_rounds)
    assert keep == {"a": 64, "b1": 25, "b2": 0}  # 0.8² · 100; 0.5² · 100 ranked across b1, b2
    assert sched.group_values(5) == {"edges": 0.0, "weights": 0.0} and sched.value(20) == 0.75
    with pytest.raises(ValueError, match="is in no group"):
        Grouped({"edges": "^a$"}).allocate([a, b1], scores, two_rounds)
    with pytest.raises(ValueError, match="needs sub-budgets"):
        alloc.allocate([a, b1, b2], scores, Budget(sparsity=0.5))


def test_rate_for_reaches_the_sparsity_in_the_given_rounds():
    assert (1 - rate_for(0.7, 3)) ** 3 == pytest.approx(0.3, abs=1e-12)
    with pytest.raises(ValueError):
        rate_for(1.0, 3)


def graph(seed=0):
    data = sbm_graph((12, 12, 12), 0.4, 0.05, num_features=6, seed=seed)
    n = data.num_nodes
    idx = torch.arange(n)
    data.train_mask, data.val_mask, data.test_mask = idx % 3 == 0, idx % 3 == 1, idx % 3 == 2
    return data


class NodeModule(pl.LightningModule):
    def __init__(self, d_in=6, classes=3, zero_loss=False, opt="adam"):
        super().__init__()
        torch.manual_seed(0)
        self.gnn = GCN(d_in, classes, hidden=8, dropout=0.0)
        self.zero_loss, self.opt = zero_loss, opt

    def forward(self, x, edge_index):
        return self.gnn(x, edge_index)

    def training_step(self, batch, batch_idx):
        out = self(batch.x, batch.edge_index)
        loss = F.cross_entropy(out[batch.train_mask], batch.y[batch.train_mask])
        return loss * 0.0 if self.zero_loss else loss

    def configure_optimizers(self):
        if self.opt == "sgd":
            return torch.optim.SGD(self.parameters(), lr=1.0)
        if self.opt == "gnn-only":
            return torch.optim.Adam(self.gnn.parameters(), lr=0.01)
        return torch.optim.Adam(self.parameters(), lr=0.01)


def fit(module, cb, steps, data=None):
    tr = trainer(max_steps=steps, callbacks=[SparsityCallback(programs=[cb])])
    tr.fit(module, datamodule=node_datamodule(data if data is not None else graph()))
    return tr


def test_rounds_prune_nested_masks_at_the_set_rates_and_rewind_to_initialization():
    data = graph()
    module = NodeModule()
    init = {k: v.clone() for k, v in module.gnn.state_dict().items()}
    cb = UGS(rounds=3, steps_per_round=4, edge_rate=0.2, weight_rate=0.3)
    kept_per_round = []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cb.controller.masks:
                kept_per_round.append(cb.controller.masks["ugs_edge_mask.mask"].clone())

    tr = trainer(max_steps=12, callbacks=[SparsityCallback(programs=[cb]), Spy()])
    tr.fit(module, datamodule=node_datamodule(data))
    pairs = cb.edge_mask.num_units
    weights = sum(t.num_units for t in cb.controller.targets[1:])
    report = cb.sparsity_report()
    assert report["edges"] == pytest.approx(1 - math.floor(0.8 ** 3 * pairs + 1e-9) / pairs, abs=1e-12)
    assert report["weights"] == pytest.approx(1 - math.floor(0.7 ** 3 * weights + 1e-9) / weights, abs=1e-12)
    for earlier, later in zip(kept_per_round, kept_per_round[1:]):
        assert not (later & ~earlier).any()  # an edge once pruned never returns
    # max_steps ends at the last round: everything was just rewound to step 0
    for name in ("conv1", "conv2"):
        lin = getattr(module.gnn, name).lin
        keep = cb.controller.masks[f"gnn.{name}.lin.parametrizations.weight.0.mask"]
        assert torch.equal(lin.parametrizations.weight.original, init[f"{name}.lin.weight"])
        assert torch.equal(lin.parametrizations.weight[0].mask, keep.float())  # kept masks rewound to 1
    assert torch.equal(cb.edge_mask.mask.detach(), cb.controller.masks["ugs_edge_mask.mask"].float())
    # symmetric ticket: every kept edge has its reverse
    kept = {tuple(e) for e in cb.kept_edge_index().t().tolist()}
    assert kept and all((j, i) in kept for i, j in kept)
    assert tr.global_step == 12


def test_l1_subgradient_is_added_to_the_mask_gradients():
    module = NodeModule(zero_loss=True, opt="sgd")
    cb = UGS(rounds=1, steps_per_round=100, edge_rate=0.1, weight_rate=0.1, edge_l1=0.125, weight_l1=0.25,
             mask_noise=0.0)  # exact values: no re-initialisation noise
    fit(module, cb, steps=1)
    assert torch.all(cb.edge_mask.mask == 1 - 0.125)
    assert torch.all(module.gnn.conv1.lin.parametrizations.weight[0].mask == 1 - 0.25)


def test_state_dict_of_parametrized_pyg_linear_round_trips():
    module = NodeModule()
    fit(module, UGS(rounds=1, steps_per_round=2, edge_rate=0.2, weight_rate=0.5), steps=3)
    state = module.state_dict()
    assert "gnn.conv1.lin.weight" not in state  # PyG's own copy of the parametrized weight is dropped
    module.load_state_dict(state)


def test_finalize_bakes_weights_and_keeps_the_function():
    data = graph()
    module = NodeModule()
    cb = UGS(rounds=2, steps_per_round=3, edge_rate=0.3, weight_rate=0.5, finalize=True)
    before = {}

    class Before(pl.Callback):  # runs before UGS's on_train_end (listed first)
        def on_train_end(self, trainer, pl_module):
            pl_module.eval()
            before["out"] = pl_module(data.x, data.edge_index).detach()

    trainer(max_steps=8, callbacks=[Before(), SparsityCallback(programs=[cb])]).fit(module, datamodule=node_datamodule(data))
    for conv in (module.gnn.conv1, module.gnn.conv2):
        assert not hasattr(conv.lin, "parametrizations") and isinstance(conv.lin.weight, torch.nn.Parameter)
    w = torch.cat([module.gnn.conv1.lin.weight.flatten(), module.gnn.conv2.lin.weight.flatten()])
    assert int((w == 0).sum()) == w.numel() - math.floor(0.25 * w.numel() + 1e-9)
    module.eval()
    assert torch.allclose(module(data.x, data.edge_index), before["out"], atol=1e-6)
    assert not cb.edge_mask.mask.requires_grad
    assert set(module.state_dict()) >= {"gnn.conv1.lin.weight", "ugs_edge_mask.mask"}


def test_mask_missing_from_the_optimizer_is_an_error_and_the_masks_come_off():
    module = NodeModule(opt="gnn-only")
    cb = UGS(rounds=1, steps_per_round=2, edge_rate=0.2, weight_rate=0.0)
    with pytest.raises(ValueError, match=r"trains \['ugs_edge_mask.mask'\] but no optimizer holds them"):
        fit(module, cb, steps=2)
    assert not hasattr(module, "ugs_edge_mask") and cb.controller is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(edge_rate=0.0, weight_rate=0.0), "nothing to prune"),
    (dict(edge_rate=1.0), "edge_rate"),
    (dict(weight_rate=-0.1), "weight_rate"),
    (dict(edge_l1=-1.0), "edge_l1"),
])
def test_bad_configuration_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UGS(**kwargs)


def test_bad_graphs_are_refused_before_the_model_changes():
    module = NodeModule()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    directed = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="directed"):
        fit(module, UGS(edge_index=directed, num_nodes=3, undirected=True), steps=1)
    with pytest.raises(ValueError, match="outside"):
        fit(module, UGS(edge_index=torch.tensor([[0, 5], [5, 0]]), num_nodes=3), steps=1)
    assert not hasattr(module, "ugs_edge_mask") and not hasattr(module.gnn.conv1.lin, "parametrizations")
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())

    class NoGraph(NodeModule):
        def __init__(self):
            super().__init__()
            self.gnn = torch.nn.Linear(6, 3)

        def forward(self, x, edge_index):
            return self.gnn(x)

    with pytest.raises(ValueError, match="MessagePassing"):
        trainer(max_steps=1, callbacks=[SparsityCallback(programs=[UGS()])]).fit(NoGraph(), datamodule=node_datamodule(graph()))


def test_a_datamodule_without_a_graph_needs_edge_index():
    from torch.utils.data import DataLoader

    data = Data(x=torch.randn(3, 6), edge_index=PATH)
    with pytest.raises(ValueError, match="needs the graph"):
        trainer(max_steps=1, callbacks=[SparsityCallback(programs=[UGS()])]).fit(NodeModule(), DataLoader([data], collate_fn=lambda b: b[0]))
