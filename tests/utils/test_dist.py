"""reduce_mean and friends, single-process and with a real 2-process gloo group (spec §4.1)."""

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from varifocal.utils.dist import (
    get_rank,
    get_world_size,
    is_dist_avail_and_initialized,
    reduce_mean,
)


def test_single_process_is_identity_copy():
    assert not is_dist_avail_and_initialized()
    assert get_world_size() == 1 and get_rank() == 0
    x = torch.tensor([3.0, 0.5], requires_grad=True)
    y = reduce_mean(x)
    assert y.tolist() == [3.0, 0.5]
    assert y.data_ptr() != x.data_ptr()  # a copy: callers may modify it in place
    assert not y.requires_grad  # a normaliser is a constant


def test_rejects_non_float():
    with pytest.raises(TypeError, match="floating-point"):
        reduce_mean(torch.tensor(3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        reduce_mean(3.0)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=30))
    try:
        x = torch.tensor([rank + 1.0, 10.0 * (rank + 1)])
        mean = reduce_mean(x)
        # Zero positives on rank 0 must still take part in the collective (spec §10 item 10).
        count = reduce_mean(torch.tensor(0.0 if rank == 0 else 4.0))
        torch.save(
            {
                "init": is_dist_avail_and_initialized(),
                "world": get_world_size(),
                "rank": get_rank(),
                "mean": mean,
                "count": count,
                "x_after": x,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_two_process_gloo(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["init"] and r["world"] == 2 and r["rank"] == rank
        # ranks hold [1, 10] and [2, 20] -> mean [1.5, 15] on every rank.
        assert r["mean"].tolist() == [1.5, 15.0]
        # 0 and 4 -> 2.
        assert r["count"].item() == 2.0
        # the input is not modified in place
        assert r["x_after"].tolist() == [rank + 1.0, 10.0 * (rank + 1)]
