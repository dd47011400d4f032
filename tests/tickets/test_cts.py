"""Concrete Ticket Search: the requested sparsity exactly, a model the search leaves alone,
the "cts" program by name (plain loop, resume, Lightning) and bad input."""
import io

import pytest
import torch

from sparsity_core import Host, SparsityCallback, discover_targets, one_shot_prune
from sparsity_core.program import build_program
from sparsity_core.tickets import (
    ConcreteTicketSearch,
    concrete_ticket_search,
    search_report,
)

from ..lightning.helpers import TinyModule, loader, trainer


def batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("sparsity", [0.8, 0.95])
def test_search_reaches_the_requested_sparsity_and_leaves_the_model_alone(tiny_net, sparsity):
    targets = discover_targets(tiny_net)
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    tiny_net.eval()
    scores = concrete_ticket_search(tiny_net, targets, batches(), sparsity, steps=80, lr=0.1, seed=1)
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())  # BN statistics too
    assert not tiny_net.training
    report = search_report(scores, sparsity)
    assert report["expected_density"] == pytest.approx(1 - sparsity, rel=0.1)  # GradBalance's band
    result = one_shot_prune(tiny_net, targets, None, sparsity, criterion=scores)
    total = sum(t.num_units for t in targets)
    assert result.report["global"] == pytest.approx(sparsity, abs=1 / total)
    kept = sum(int(m.sum()) for m in result.masks.values())
    assert abs(kept - (1 - sparsity) * total) < 1
    zeros = sum(int((t.param == 0).sum()) for t in targets)
    assert zeros == total - kept


def test_task_objective_and_hard_concrete_also_reach_it(tiny_net):
    targets = discover_targets(tiny_net)
    scores = concrete_ticket_search(tiny_net, targets, batches(), 0.7, steps=60, objective="task",
                                    stretch=(-0.1, 1.1), measure="params")
    assert search_report(scores, 0.7)["expected_density"] == pytest.approx(0.3, rel=0.15)


def test_program_by_name_prunes_at_start_and_resumes_without_searching_again(tiny_net):
    program = build_program({"program": "cts", "sparsity": 0.75, "steps": 20, "batches": batches()})
    assert isinstance(program, ConcreteTicketSearch)
    program.attach(Host(tiny_net))
    program.start(0)
    assert program.report()["global"] == pytest.approx(0.75, abs=1 / 300)
    masks = {k: v.clone() for k, v in program.masks.items()}
    buf = io.BytesIO()
    torch.save(program.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    class NoBatches(list):
        def __iter__(self):
            raise AssertionError("a resumed program must not search again")

    resumed = ConcreteTicketSearch(sparsity=0.75, steps=20, batches=NoBatches())
    resumed.attach(Host(tiny_net))
    resumed.load_state_dict(state)
    resumed.start(7)
    assert all(torch.equal(masks[k], v) for k, v in resumed.masks.items())
    assert torch.equal(resumed.criterion.logits["fc.weight"], program.criterion.logits["fc.weight"])


def test_program_in_lightning_searches_on_the_trainers_dataloader():
    module = TinyModule()
    cb = SparsityCallback(programs=[{"program": "cts", "sparsity": 0.6, "steps": 5}])
    trainer(max_steps=3, callbacks=[cb]).fit(module, loader(n=24, batch_size=8))
    program = cb.programs[0]
    assert program.report()["global"] == pytest.approx(0.6, abs=1 / 300)
    for t in program.controller.targets:  # hard masks held through training
        assert bool((t.param[~program.masks[t.name]] == 0).all())


@pytest.mark.parametrize("kwargs,msg", [
    (dict(sparsity=1.0), "sparsity"), (dict(objective="kl"), "reverse_kl, task"), (dict(steps=0), "steps"),
    (dict(lr=-1.0), "lr"), (dict(measure="macs"), "units"), (dict(init_density=1.0), "init_density"),
    (dict(stretch=(0.1, 1.1)), "stretch"), (dict(stretch="wide"), "stretch"),
])
def test_bad_input_is_an_error_before_anything_changes(tiny_net, kwargs, msg):
    targets = discover_targets(tiny_net)
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    args = dict(sparsity=0.5, steps=2)
    args.update(kwargs)
    sparsity = args.pop("sparsity")
    with pytest.raises(ValueError, match=msg):
        concrete_ticket_search(tiny_net, targets, batches(1), sparsity, **args)
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())
    with pytest.raises(ValueError, match=msg):
        ConcreteTicketSearch(sparsity=sparsity, **args)


def test_bad_batches_and_targets(tiny_net):
    targets = discover_targets(tiny_net)
    with pytest.raises(ValueError, match="labels"):
        concrete_ticket_search(tiny_net, targets, [torch.randn(4, 1, 8, 8)], 0.5, steps=1, objective="task")
    with pytest.raises(ValueError, match="no batches"):
        concrete_ticket_search(tiny_net, targets, [], 0.5, steps=1)
    other = discover_targets(type(tiny_net)())
    with pytest.raises(ValueError, match="not a parameter of the model"):
        concrete_ticket_search(tiny_net, other, batches(1), 0.5, steps=1)
