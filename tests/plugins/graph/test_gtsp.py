"""GTSP on GPSConv: head/layer/token gates, exact FLOPs, greedy budget, finalize equals the
gated model, bad input before any change, and a short Lightning fit with resume."""
import math

import pytest
import torch
from torch import nn

pyg = pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from torch.nn.utils import parametrize  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402
from torch_geometric.nn import GINConv, GINEConv, GPSConv, global_add_pool  # noqa: E402

from sparsity_core import SparsityCallback  # noqa: E402
from sparsity_core.schedules import Cubic, Linear  # noqa: E402
from sparsity_plugins.graph.attention_buckets import bucket_attention  # noqa: E402
from sparsity_plugins.graph.gtsp import GTSPConfig, GTSPController  # noqa: E402
from sparsity_plugins.graph.gtsp_attention import PrunedAttention  # noqa: E402
from sparsity_plugins.graph.gtsp_flops import LayerCost, attention_flops, count_flops  # noqa: E402
from sparsity_plugins.graph.gtsp_gates import GTSPLayer, HeadGate, PrunedGPSLayer, SkipLayer  # noqa: E402
from sparsity_plugins.graph.gtsp_plan import GTSPPlan, Limits, allocate  # noqa: E402
from sparsity_plugins.graph.gtsp_tokens import induced_subgraph, topk_per_graph  # noqa: E402

from ...lightning.helpers import trainer  # noqa: E402

C = 8


def mlp(c=C):
    return nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))


class TinyGPS(nn.Module):
    """node Linear(4→8) → GPS layers (GINE local + 2-head attention) → add pool → Linear(8→2)."""

    def __init__(self, layers=2, heads=2, attn_type="multihead"):
        super().__init__()
        self.emb, self.edge_emb = nn.Linear(4, C), nn.Linear(3, C)
        self.convs = nn.ModuleList([GPSConv(C, GINEConv(mlp()), heads=heads, attn_type=attn_type)
                                    for _ in range(layers)])
        self.head = nn.Linear(C, 2)

    def forward(self, x, edge_index, batch, edge_attr):
        x, e = self.emb(x), self.edge_emb(edge_attr)
        for conv in self.convs:
            x = conv(x, edge_index, batch, edge_attr=e)
        return self.head(global_add_pool(x, batch))


def graphs(n=6, seed=0):
    """Small random graphs (4–8 nodes, undirected rings plus chords), MUTAG-like labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        k = 4 + i % 5
        ring = torch.stack([torch.arange(k), (torch.arange(k) + 1) % k])
        ei = torch.cat([ring, ring.flip(0)], 1)
        out.append(Data(x=torch.randn(k, 4, generator=g), edge_index=ei,
                        edge_attr=torch.randn(ei.size(1), 3, generator=g), y=torch.tensor([i % 2])))
    return out


def inputs(data):
    b = Batch.from_data_list(data)
    return b.x, b.edge_index, b.batch, b.edge_attr


def randomize_gates(ctrl, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, gate in zip(ctrl.layers, ctrl.head_gates):
            layer.layer_logit.copy_(torch.randn((), generator=g))
            gate.logits.copy_(torch.randn(gate.logits.shape, generator=g))


# -- gates ---------------------------------------------------------------------------------
def test_closed_head_contributes_zero_and_gradients_reach_the_gate_logits():
    mha = nn.MultiheadAttention(C, 2, batch_first=True)
    gate = HeadGate(2, 4)
    parametrize.register_parametrization(mha.out_proj, "weight", gate)
    x = torch.randn(2, 5, C)
    with torch.no_grad():
        gate.mask[0] = False
        w = mha.out_proj.parametrizations.weight.original.clone()
    out = mha(x, x, x, need_weights=False)[0]
    # the same attention without head 0's output block (and with head 0's V rows scrambled)
    ref = nn.MultiheadAttention(C, 2, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(mha.in_proj_weight)
        ref.in_proj_bias.copy_(mha.in_proj_bias)
        ref.in_proj_weight[2 * C:2 * C + 4] = torch.randn(4, C)
        ref.out_proj.weight.copy_(w)
        ref.out_proj.weight[:, :4] = 0
        ref.out_proj.bias.copy_(mha.out_proj.bias)
    assert torch.allclose(out, ref(x, x, x, need_weights=False)[0], atol=1e-6)
    out.square().sum().backward()
    assert gate.logits.grad[0] == 0 and gate.logits.grad[1] != 0
    taylor = gate.take_taylor()
    assert taylor[0] == 0 and taylor[1] != 0 and gate.taylor.abs().sum() == 0


def test_layer_gate_zero_is_the_identity_and_open_gates_start_as_the_plain_layer():
    torch.manual_seed(0)
    gps = GPSConv(C, GINConv(mlp()), heads=2).eval()
    x, ei = torch.randn(5, C), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    ref = gps(x, ei)
    layer = GTSPLayer(gps, tokens=True).eval()
    assert torch.allclose(layer(x, ei), ref, atol=1e-6)  # θ = 0: g = 2σ(0) = 1, all tokens kept
    layer.layer_open.fill_(False)
    assert torch.equal(layer(x, ei), x)
    assert isinstance(SkipLayer()(x, ei, None, edge_attr=None), torch.Tensor)


# -- tokens --------------------------------------------------------------------------------
def test_token_topk_keeps_the_best_nodes_per_graph_and_drops_incident_edges():
    # graph 0: nodes 0-3 (path 0-1-2-3), graph 1: nodes 4-6 (path 4-5-6); both directions
    pairs = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6)]
    ei = torch.tensor([[a for a, b in pairs] + [b for a, b in pairs], [b for a, b in pairs] + [a for a, b in pairs]])
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    score = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.2, 0.3, 0.1])
    keep, rank = topk_per_graph(score, 0.5, batch)
    # graph 0 keeps ⌈0.5·4⌉ = 2: node 1, then node 2 (tie with 3, broken by order); graph 1 keeps ⌈1.5⌉ = 2
    assert keep.tolist() == [False, True, True, False, True, True, False]
    assert rank.tolist() == [3, 0, 1, 2, 1, 0, 2]
    assert topk_per_graph(score, 0.01, batch)[0].tolist() == [False, True, False, False, False, True, False]
    attr = torch.arange(ei.size(1)).float()[:, None]
    idx, sub_ei, sub_batch, sub_edges, mask = induced_subgraph(keep, ei, batch, {"edge_attr": attr})
    assert idx.tolist() == [1, 2, 4, 5] and sub_batch.tolist() == [0, 0, 1, 1]
    kept_pairs = {tuple(e) for e in ei.t()[mask].tolist()}
    assert kept_pairs == {(1, 2), (2, 1), (4, 5), (5, 4)}  # every edge touching 0, 3 or 6 is gone
    assert sub_ei.t().tolist() == [[0, 1], [2, 3], [1, 0], [3, 2]]  # relabelled to 0..3
    assert sub_edges["edge_attr"].flatten().tolist() == [1.0, 3.0, 6.0, 8.0]


def test_dropped_tokens_pass_through_and_kept_ones_see_only_the_subgraph():
    torch.manual_seed(0)
    gps = GPSConv(C, GINConv(mlp()), heads=2).eval()
    layer = GTSPLayer(gps, tokens=True).eval()
    layer.token_keep.fill_(0.5)
    x = torch.randn(4, C)
    ei = torch.tensor([[0, 1, 2, 3, 1, 2], [1, 2, 3, 0, 0, 1]])
    keep = topk_per_graph(layer.token_scorer(x).squeeze(-1).detach(), 0.5)[0]
    out = layer(x, ei)
    idx = keep.nonzero().flatten()
    assert torch.equal(out[~keep], x[~keep])
    sub_ei = pyg.utils.subgraph(idx, ei, relabel_nodes=True, num_nodes=4)[0]
    assert torch.allclose(out[idx], gps(x[idx], sub_ei), atol=1e-6)


# -- FLOPs -----------------------------------------------------------------------------------
def test_flops_of_a_gps_layer_match_the_hand_count():
    torch.manual_seed(0)

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.gps = GPSConv(C, GINConv(nn.Linear(C, C)), heads=2)

        def forward(self, x, edge_index, batch):
            return self.gps(x, edge_index, batch)

    x = torch.randn(5, C)
    ei = torch.tensor([[0, 1, 3, 4], [1, 2, 4, 3]])  # graphs of 3 and 2 nodes, 4 edges
    batch = torch.tensor([0, 0, 0, 1, 1])
    report = count_flops(One().eval(), x, ei, batch)
    local = 4 * C + 2 * 5 * C * C  # aggregation E·C + GIN's Linear on N nodes
    # padded to B·n_max = 2·3 rows: Q, K, V and output projections; scores and weights·V on 2·3·3,
    # and the softmax with the padding mask, 5 FLOPs per score of the 2 heads
    attn = 2 * 6 * C * C + 2 * 6 * C * 2 * C + 2 * 2 * 2 * 3 * 3 * 4 * 2 + 5 * 2 * 2 * 3 * 3 + 2 * 6 * C * C
    mlp_ = 2 * 5 * C * 2 * C + 2 * 5 * 2 * C * C
    assert report.by_part == {"attention": attn, "local": local, "mlp": mlp_, "scorer": 0.0, "other": 0.0}
    assert report.total == local + attn + mlp_ == 6880 + 180
    assert attention_flops(2, 3, C, 2, 4) == attn
    # the budget's analytic model agrees with the measurement on its calibration batch
    model = One()
    ctrl = GTSPController(model, kinds=("heads", "layers"), flops=0.2)
    ctrl.calibrate(x, ei, batch)
    assert ctrl.costs[0].flops() == pytest.approx(report.total)
    half = ctrl.costs[0].flops(heads_kept=1)
    assert half == pytest.approx(report.total - attn + attention_flops(2, 3, C, 1, 4))


# -- budget ----------------------------------------------------------------------------------
def test_greedy_allocation_takes_the_least_important_units_per_flop():
    cost = LayerCost(C, 2, 4, node_flops=100.0, edge_flops=10.0, sizes=[[4, 4]], edges=[8])
    costs = [cost, cost]
    dense = 2 * cost.flops()
    head_share = (cost.flops() - cost.flops(heads_kept=1)) / dense
    imp = {"heads": [[5.0, 1.0], [0.5, 9.0]], "layers": [100.0, 100.0], "tokens": [100.0, 100.0]}
    plan = allocate(GTSPPlan.dense([2, 2]), costs, 0.0, imp, target=1.5 * head_share, limits=Limits())
    # two heads needed: the least important per FLOP first (layer 1 head 0, then layer 0 head 1)
    assert plan.head_keep == [[True, False], [False, True]] and all(plan.layer_open)
    assert plan.token_keep == [1.0, 1.0]
    # plans only grow: closed units stay closed even if their importance rises
    imp["heads"] = [[5.0, 99.0], [99.0, 9.0]]
    again = allocate(plan, costs, 0.0, imp, target=1.5 * head_share, limits=Limits())
    assert again == plan
    with pytest.raises(ValueError, match="infeasible"):
        allocate(GTSPPlan.dense([2, 2]), costs, 0.0, imp, target=0.9, limits=Limits(kinds=("heads",)))


# -- finalize --------------------------------------------------------------------------------
PLANS = {
    "heads": GTSPPlan([True, True], [[False, True], [True, True]], [1.0, 1.0]),
    "all_heads_of_one_layer": GTSPPlan([True, True], [[False, False], [True, True]], [1.0, 1.0]),
    "layers": GTSPPlan([True, False], [[True, True], [True, True]], [1.0, 1.0]),
    "tokens": GTSPPlan([True, True], [[True, True], [True, True]], [0.5, 0.7]),
    "everything": GTSPPlan([False, True], [[True, True], [True, False]], [1.0, 0.6]),
}


@pytest.mark.parametrize("slack", [None, 0.0], ids=["padded", "bucketed"])
@pytest.mark.parametrize("kind", sorted(PLANS))
def test_finalized_model_equals_the_gated_model_and_executes_fewer_flops(kind, slack):
    torch.manual_seed(0)
    model = TinyGPS()
    if slack is not None:
        assert bucket_attention(model, slack) == 2
    data = inputs(graphs())
    dense = count_flops(model.eval(), *data).total
    ctrl = GTSPController(model, GTSPConfig(flops=0.2))
    randomize_gates(ctrl)
    ctrl.apply_plan(PLANS[kind])
    model.eval()
    with torch.no_grad():
        gated = model(*data)
    ctrl.finalize()
    with torch.no_grad():
        final = model(*data)
    assert torch.allclose(final, gated, atol=1e-5)
    assert not any(isinstance(m, (GTSPLayer, HeadGate)) for m in model.modules())
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    plan = PLANS[kind]
    for conv, open_, keep, ratio in zip(model.convs, plan.layer_open, plan.head_keep, plan.token_keep):
        if not open_:
            assert isinstance(conv, SkipLayer)
            continue
        assert isinstance(conv, PrunedGPSLayer) and (conv.token_scorer is not None) == (ratio < 1)
        assert conv.gps.attn.num_heads == sum(keep)
        assert isinstance(conv.gps.attn, PrunedAttention) == (not all(keep))
        assert getattr(conv.gps.attn, "bucket_slack", None) == slack
    assert count_flops(model, *data).total < dense


def test_pruned_attention_matches_torch_attention_with_padding():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(C, 2, batch_first=True).eval()
    pruned = PrunedAttention.from_gated(mha, torch.tensor([True, True])).eval()
    x = torch.randn(2, 3, C)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    a = mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]
    b = pruned(x, x, x, key_padding_mask=pad, need_weights=False)[0]
    assert torch.allclose(a, b, atol=1e-6)
    none = PrunedAttention.from_gated(mha, torch.tensor([False, False]))
    assert torch.equal(none(x, x, x)[0], mha.out_proj.bias.expand(2, 3, C))


# -- bad input -------------------------------------------------------------------------------
def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kwargs, match", [
    ({"flops": 1.0}, r"\[0, 1\)"), ({"flops": -0.1}, r"\[0, 1\)"), ({"flops": 1.5}, r"\[0, 1\)"),
    ({"max_heads": 1.0}, "every head of every layer"), ({"kinds": ("heads", "edges")}, "kinds"),
    ({"flops": Linear(start_step=0, end_step=5, final_sparsity=0.3)}, "start at step >= 1"),
    ({"min_token_keep": 0.0}, "min_token_keep"),
])
def test_bad_configuration_is_a_value_error_before_any_change(kwargs, match):
    model = TinyGPS()
    before = state(model)
    with pytest.raises(ValueError, match=match):
        GTSPController(model, **kwargs)
    assert state(model).keys() == before.keys() and isinstance(model.convs[0], GPSConv)


def test_models_gtsp_cannot_handle_are_rejected_unchanged():
    with pytest.raises(ValueError, match="no torch_geometric.nn.GPSConv"):
        GTSPController(nn.Sequential(nn.Linear(4, 4)))
    performer = TinyGPS(attn_type="performer")
    with pytest.raises(ValueError, match="multihead"):
        GTSPController(performer)
    assert isinstance(performer.convs[0], GPSConv)
    GTSPController(performer, kinds=("tokens", "layers"))  # no head gates: fine
    with pytest.raises(ValueError, match="already attached"):
        GTSPController(performer)


def test_infeasible_budget_is_found_at_calibration_and_detach_restores_the_model():
    model = TinyGPS()
    data = inputs(graphs())
    ref = model.eval()(*data)
    keys = set(model.state_dict())
    ctrl = GTSPController(model, kinds=("heads",), flops=0.9)
    with pytest.raises(ValueError, match="infeasible"):
        ctrl.calibrate(*data)
    ctrl.detach()
    assert set(model.state_dict()) == keys and torch.allclose(model(*data), ref)


# -- training --------------------------------------------------------------------------------
def test_plain_loop_reaches_the_budget_and_the_measured_flops_follow():
    torch.manual_seed(0)
    model = TinyGPS(layers=3)
    data = graphs(8)
    x = inputs(data)
    y = torch.tensor([d.y.item() for d in data])
    dense = count_flops(model.eval(), *x).total
    ctrl = GTSPController(model, flops=Cubic(start_step=1, end_step=8, final_sparsity=0.3), update_every=2,
                          calibration_batches=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    plans = []
    for step in range(1, 11):
        loss = nn.functional.cross_entropy(model(*x), y)
        opt.zero_grad()
        loss.backward()
        ctrl.before_optimizer_step()
        opt.step()
        ctrl.after_optimizer_step(step)
        plans.append(ctrl.plan.copy())
    assert all(b.contains(a) for a, b in zip(plans, plans[1:]))  # monotone
    assert 0.3 <= ctrl.flops_removed() <= 0.35 + 1e-9
    opened = [layer for layer in ctrl.layers if bool(layer.layer_open)]
    assert all(layer.layer_logit.grad is not None for layer in opened)  # the gates train with the model
    model.eval()
    ctrl.finalize()
    measured = 1 - count_flops(model, *x).total / dense
    assert measured == pytest.approx(ctrl.history[-1]["flops_removed"], abs=0.03)


pl = pytest.importorskip("pytorch_lightning")


class GPSModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyGPS()
        self.example_input_array = inputs(graphs(2))

    def forward(self, x, edge_index, batch, edge_attr):
        return self.net(x, edge_index, batch, edge_attr)

    def training_step(self, b, idx):
        return nn.functional.cross_entropy(self(b.x, b.edge_index, b.batch, b.edge_attr), b.y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(module, cb, steps, **kwargs):
    fit_kwargs = kwargs.pop("fit_kwargs", {})
    tr = trainer(max_steps=steps, callbacks=[SparsityCallback(programs=[cb]), *kwargs.pop("callbacks", [])], **kwargs)
    tr.fit(module, DataLoader(graphs(12), batch_size=4), **fit_kwargs)
    return tr


def test_callback_prunes_weights_and_units_and_finalizes_at_the_end_of_fit():
    from sparsity_plugins.graph.gtsp_program import GTSP

    module = GPSModule()
    cb = GTSP(config=GTSPConfig(flops=Linear(start_step=1, end_step=4, final_sparsity=0.3), update_every=1),
              weights=Linear(start_step=1, end_step=4, final_sparsity=0.5), weight_update_every=1)
    fit(module, cb, steps=6)
    assert cb.finalized and cb.result["flops_removed"] >= 0.3
    assert not any(isinstance(m, GTSPLayer) for m in module.modules())
    assert cb.weights.controller.sparsity("params") == pytest.approx(0.5, abs=0.01)
    assert any(t.name.endswith("out_proj.parametrizations.weight.original") for t in cb.weights.controller.targets)
    w = module.net.convs[-1]
    if isinstance(w, PrunedGPSLayer):
        assert float((w.gps.mlp[0].weight == 0).float().mean()) > 0.2  # core magnitude pruning acted
    module.eval()
    assert module(*module.example_input_array).shape == (2, 2)


def test_callback_resume_restores_plan_importance_and_cost_model(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from sparsity_plugins.graph.gtsp_program import GTSP

    def make():
        return GTSP(config=GTSPConfig(flops=Linear(start_step=1, end_step=6, final_sparsity=0.3), update_every=2,
                                      calibration_batches=2), finalize=False)

    full = make()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    fit(GPSModule(), full, steps=6, callbacks=[ckpt], enable_checkpointing=True)
    path = next(tmp_path.glob("*step=3*.ckpt"))
    resumed = make()
    fit(GPSModule(), resumed, steps=6, fit_kwargs={"ckpt_path": str(path)})
    assert resumed.controller.plan == full.controller.plan and full.controller.plan != GTSPPlan.dense([2, 2])
    for a, b in zip(full.controller.importance["layers"], resumed.controller.importance["layers"]):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9)
    assert [c.state() for c in resumed.controller.costs] == [c.state() for c in full.controller.costs]
