"""CPU thread policy and per-thread scratch buffers of the fast deformable convs.

Shared by the star conv (:mod:`varifocal.models.layers.star_deform_conv`, which re-exports
:func:`release_workspace`) and the generic one (:mod:`varifocal.models.layers.deform_conv`):
:mod:`._tap_kernels`, :mod:`._star_geometry` and :mod:`._deform_geometry` use what is here.

* Threads: the dense GEMMs use all intra-op threads (tiny P7-sized ones use 1). The small
  index/weight ops run on the calling thread. The sparse products, the weighted gather and
  the big layout copies use 1 or all threads, whichever measures faster at run time
  (:class:`_SparseThreadTuner`); this does not change the numbers. The op then stays fast both
  on an idle CPU and on one shared with other busy processes (see ``_SERIAL_NON_GEMM``).
* Scratch buffers (:func:`_workspace`): the big per-call tensors (tap products, column
  buffers, no-grad geometry) are reused per thread, per slot, dtype and device. A fresh 150 MB
  tensor would cost its page faults, about half a convolution on a VM.
  :func:`release_workspace` frees them.
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch
from torch import Tensor


@contextlib.contextmanager
def _num_threads(n: int):
    """Run the block with ``n`` intra-op threads on the calling thread, and restore after.

    ``torch.set_num_threads`` sets the OpenMP and MKL thread counts of the calling thread. It
    costs about 2 µs.
    """
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# Threading policy of the fast path on CPU. The dense GEMMs use all intra-op threads (except
# tiny ones). The small index/weight ops run on the calling thread. The MKL sparse products and
# the big layout copies pick 1 or all threads by measuring both (_SparseThreadTuner).
#
# Why: every intra-op parallel op is an OpenMP region that ends in a barrier. When the cores
# are shared with other busy processes (a 2-core box running other jobs), a descheduled worker
# stalls that barrier for a scheduler slice, milliseconds per op. The ~60 small ops of one call
# then cost more than the convolution; single-threaded they take ~3 ms. The sparse products
# (~20 calls per forward+backward at P3) gain ~1.5× from 2 threads on an idle machine. On a
# loaded one, 2 threads make them ~4× slower. Thread counts do not change the results: each
# output row or value is computed by one thread in a fixed order.
_SERIAL_NON_GEMM = True
# GEMMs below this many multiply-adds (~0.5 ms single-threaded on one core's fp32 limit) run on
# 1 thread, spared the barrier stalls: P7-sized ones. P5 (400 locations, 2.4e8 multiply-adds
# in the forward) measured 20 % faster on 2 threads than on 1 on an idle 2-core machine.
_GEMM_SERIAL_MACS = 1 << 25
_SPARSE_THREADS = "auto"  # "auto" (measured), "serial" or "parallel"


class _SparseThreadTuner:
    """Online choice of 1 vs all threads for each kind of sparse product (CPU).

    It keeps an exponential moving average of seconds per unit of work (non-zeros × channels)
    for each (kind, thread count), and uses the cheaper count. Every ``explore_every``-th call
    of a kind tries the other count, so a change in machine load is noticed within a few
    calls. Calls with little work always run on 1 thread.
    """

    explore_every = 24
    min_work = 1 << 21

    def __init__(self) -> None:
        self.cost: dict[tuple[str, int], float] = {}
        self.calls: dict[str, int] = {}

    def pick(self, kind: str, max_threads: int, work: int) -> int:
        if _SPARSE_THREADS == "serial" or max_threads == 1 or work < self.min_work:
            return 1
        if _SPARSE_THREADS == "parallel":
            return max_threads
        calls = self.calls[kind] = self.calls.get(kind, 0) + 1
        c1, cn = self.cost.get((kind, 1)), self.cost.get((kind, max_threads))
        if c1 is None:
            return 1
        if cn is None:
            return max_threads
        best, other = (1, max_threads) if c1 <= cn else (max_threads, 1)
        return other if calls % self.explore_every == 0 else best

    def record(self, kind: str, threads: int, seconds: float, work: int) -> None:
        key = (kind, threads)
        per_unit = seconds / max(work, 1)
        old = self.cost.get(key)
        self.cost[key] = per_unit if old is None else 0.7 * old + 0.3 * per_unit


_SPARSE_TUNER = _SparseThreadTuner()


class _Threads:
    """Thread-count contexts of one call: ``serial()``, ``gemm()`` and ``sparse()``."""

    def __init__(self, device: torch.device):
        self.active = device.type == "cpu" and _SERIAL_NON_GEMM
        self.gemm_threads = torch.get_num_threads()

    def serial(self):
        return _num_threads(1) if self.active else contextlib.nullcontext()

    def gemm(self, macs: int):
        """Around one dense GEMM of ``macs`` multiply-adds: all threads, unless it is tiny.

        The rule depends on shapes only, so the results stay deterministic. MKL's GEMM gives
        slightly different sums for different thread counts.
        """
        if self.active and macs >= _GEMM_SERIAL_MACS:
            return _num_threads(self.gemm_threads)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def sparse(self, kind: str, work: int):
        """Around one sparse product of ``work`` = non-zeros × channels (timed, see above)."""
        if not self.active:
            yield
            return
        threads = _SPARSE_TUNER.pick(kind, self.gemm_threads, work)
        with _num_threads(threads):
            t0 = time.perf_counter()
            yield
            _SPARSE_TUNER.record(kind, threads, time.perf_counter() - t0, work)


_tls = threading.local()


def _workspace(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A scratch buffer that is reused across calls (per thread, per slot, dtype and device).

    The per-chunk column buffers are tens of MB. A fresh allocation of that size comes from
    mmap, and every call would then pay the page faults of first touching it. Scratch contents
    never leave a call. Only CPU buffers are kept; CUDA has its caching allocator.
    """
    numel = 1
    for d in shape:
        numel *= d
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    cache = getattr(_tls, "buffers", None)
    if cache is None:
        cache = _tls.buffers = {}
    key = (slot, dtype, device)
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        cache.pop(key, None)  # release the old one first
        buf = cache[key] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


def release_workspace() -> None:
    """Free the scratch buffers that the fast deformable convs (star and generic) keep for the
    calling thread."""
    _tls.buffers = {}
