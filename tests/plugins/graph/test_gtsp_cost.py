"""GTSP's analytic FLOPs model behind the core's cost-model protocol."""
import pytest

pytest.importorskip("torch_geometric", reason="the graph extra (torch_geometric) is not installed")
from sparsity_plugins.graph.gtsp_flops import LayerCost, attention_flops  # noqa: E402
from sparsity_plugins.graph.gtsp_plan import GTSPPlan, PlanCost, total_flops  # noqa: E402


def layer():
    # 4 channels, 2 heads of 2; one calibration batch of two graphs (3 and 1 nodes, 4 edges)
    return LayerCost(4, 2, 2, node_flops=10.0, edge_flops=1.0, sizes=[[3, 1]], edges=[4])


def test_plan_cost_prices_layers_heads_and_tokens():
    model = PlanCost([layer(), layer()], other=5.0, scorer=False)
    per_layer = 10.0 * 4 + 1.0 * 4 + attention_flops(2, 3, 4, 2, 2)
    assert model.dense["flops"] == 5.0 + 2 * per_layer == total_flops(model.costs, GTSPPlan.dense([2, 2]), 5.0, False)
    assert model.dense["macs"] == model.dense["flops"] / 2 and model.dense["units"] == 6.0
    closed = model.cost({"1.layer": 0})
    assert closed["flops"] == 5.0 + per_layer and closed["units"] == 3.0
    one_head = model.cost({"0.heads": 1})["flops"]
    assert one_head == 5.0 + per_layer + 10.0 * 4 + 1.0 * 4 + attention_flops(2, 3, 4, 1, 2)
    half_tokens = model.cost({"0.tokens": 50})["flops"]  # ceil(3/2) = 2 and 1 nodes, a quarter of the edges
    assert half_tokens == 5.0 + per_layer + 10.0 * 3 + 1.0 * 1 + attention_flops(2, 2, 4, 2, 2)
    plan = GTSPPlan([True, False], [[True, False], [True, True]], [0.5, 1.0])
    assert model.flops(plan) == total_flops(model.costs, plan, 5.0, False)
