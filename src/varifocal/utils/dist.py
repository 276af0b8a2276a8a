"""Distributed helpers that behave identically with and without ``torch.distributed``.

Used for the loss normalisers of spec §4.1 and §4.3: the positive count N̄ and the IoU-weight
sums Σw are averaged over processes. Spec §10 item 10: the collective must run on *every* rank
*every* iteration (also with zero positives), otherwise ranks wait on each other forever.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_dist_avail_and_initialized", "get_world_size", "get_rank", "reduce_mean"]


def is_dist_avail_and_initialized() -> bool:
    """True iff ``torch.distributed`` is built in and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group, or 1 without ``torch.distributed``."""
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    """Rank of this process in the default group, or 0 without ``torch.distributed``."""
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all processes (spec §4.1, §4.3, §4.5, §10 item 10).

    Without an initialised process group this returns a copy of ``tensor``. With one, every rank
    must call it (the all-reduce runs unconditionally, whatever the tensor holds). The order of
    operations follows MMDetection's ``reduce_mean``: each rank divides its copy by the world
    size, then the copies are summed with ``all_reduce(SUM)``. For a power-of-two world size
    this is bit-identical to summing first and dividing afterwards.

    The result is detached: it is meant for loss normalisers (counts, sums of detached IoU
    weights), which are constants for autograd, and ``all_reduce`` is not differentiable.

    Args:
        tensor: floating-point tensor of any shape, on a device the process group's backend
            supports (CPU for gloo, CUDA for nccl). Not modified.

    Returns:
        A new tensor, same shape/dtype/device, holding the element-wise mean over processes.

    Raises:
        TypeError: ``tensor`` is not a floating-point ``torch.Tensor`` (an integer mean would be
            truncated).
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"dist.py: reduce_mean needs a torch.Tensor, got {type(tensor).__name__}")
    if not torch.is_floating_point(tensor):
        raise TypeError(f"dist.py: reduce_mean needs a floating-point tensor, got {tensor.dtype}")
    out = tensor.detach().clone()
    if is_dist_avail_and_initialized():
        out.div_(dist.get_world_size())
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
