"""TorchDistributedSync: the plain-loop (no Lightning) synchronisation, on 2 gloo processes."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsity_core.sync import LocalSync, TorchDistributedSync


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        sync = TorchDistributedSync()
        mean = sync.all_reduce_mean(torch.tensor([1.0, 2.0]) * (rank + 1))  # ranks: [1, 2] and [2, 4]
        obj = sync.broadcast({"rank": rank, "mask": torch.tensor([rank == 0, rank == 1])})
        torch.save({"world": sync.world_size, "mean": mean, "obj": obj}, os.path.join(out, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_torch_distributed_sync_averages_and_broadcasts_rank_zero(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        r = torch.load(tmp_path / f"r{rank}.pt", weights_only=True)
        assert r["world"] == 2
        assert torch.equal(r["mean"], torch.tensor([1.5, 3.0]))
        assert r["obj"]["rank"] == 0 and r["obj"]["mask"].tolist() == [True, False]


def test_without_a_process_group_it_is_the_local_no_op():
    sync = TorchDistributedSync()
    t = torch.tensor([3.0])
    assert sync.world_size == 1 and sync.all_reduce_mean(t) is t and sync.broadcast("x") == "x"
    assert LocalSync().broadcast(t) is t
