import os

import torch

from .helpers import run_ddp_worker

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def test_two_process_ddp_ranks_hold_identical_masks(tmp_path):
    r0, r1 = run_ddp_worker(WORKER, tmp_path)
    # the ranks' own scores differ ...
    assert not torch.equal(r0["raw"]["conv.weight"], r1["raw"]["conv.weight"])
    assert r0["regrow_steps"] == r1["regrow_steps"] == [2, 4, 6, 8]
    # ... but after averaging scores and broadcasting masks they hold the same masks and weights
    assert set(r0["masks"]) == {"conv.weight", "fc.weight"}
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
        assert 0.6 < 1 - r0["masks"][name].float().mean() < 0.8
    for k in r0["weights"]:
        assert torch.equal(r0["weights"][k], r1["weights"][k]), k
