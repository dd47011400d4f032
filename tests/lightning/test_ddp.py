import os
import subprocess
import sys

import torch

WORKER = os.path.join(os.path.dirname(__file__), "ddp_worker.py")


def test_two_process_ddp_ranks_hold_identical_masks(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PL_DISABLE_FORK="1")
    proc = subprocess.run([sys.executable, WORKER, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
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
