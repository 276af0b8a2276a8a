"""Timing, FLOP counting, the matmul limit and peak memory: the measuring parts of ``varifocal benchmark``
(issue 14) and of the scripts in ``benchmarks/``.

* :func:`run_rounds`: every case once per round, round-robin with a rotating start, so that a change
  of machine load hits all cases alike; untimed warm-up rounds first, then the timed ones (medians).
* :func:`count_flops` / :func:`model_flops`: ``torch.utils.flop_counter.FlopCounterMode`` (convs and
  matmuls, 2 FLOPs per multiply-add; elementwise ops, norms and NMS are not counted). The counter
  cannot see inside ``deform_conv2d`` and would count the fast kernels' sparse ``addmm`` as a
  dense one, so :func:`model_flops` replaces every deformable conv by its dense equivalent,
  2·(C_in/groups)·C_out·k_h·k_w·H_out·W_out·N, added analytically (benchmarks/bench_detectors.py item 6).
* :func:`matmul_case`: FLOP/s of an n×n @ n×n ``torch.mm`` (2·n³ FLOPs), the "matmul limit"
  that a model's FLOP/s is compared with.
* :func:`peak_rss_mib`: the peak resident set of this process (``VmHWM`` of ``/proc/self/status``;
  ``ru_maxrss`` where /proc is missing). Linux carries ``ru_maxrss`` over fork + exec, ``VmHWM``
  starts anew with the new image, so a child process's ``VmHWM`` is its own.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "Case",
    "run_rounds",
    "count_flops",
    "deform_conv_flops",
    "model_flops",
    "matmul_case",
    "peak_rss_mib",
    "cpu_model",
]


@dataclass
class Case:
    """One timed callable of :func:`run_rounds`.

    Attributes:
        name: a label (unique within one call).
        fn: the no-argument callable that is timed.
        before: called untimed right before every call of ``fn`` (e.g. ``torch.set_num_threads``).
        times: seconds of every timed call, filled by :func:`run_rounds`.
    """

    name: str
    fn: Callable[[], Any]
    before: Callable[[], Any] | None = None
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median of :attr:`times` in seconds.

        Raises:
            statistics.StatisticsError: nothing was timed yet.
        """
        return statistics.median(self.times)


def run_rounds(cases: list[Case], warmup: int, repeat: int, log: Callable[[str], None] | None = None) -> None:
    """Run ``warmup`` untimed then ``repeat`` timed rounds; each round calls every case once, the
    starting case rotating by one per round. Appends to each ``case.times`` (seconds, wall clock
    of ``fn`` alone, ``time.perf_counter``).

    Raises:
        ValueError: ``warmup < 0`` or ``repeat < 1``. Whatever a case raises.
    """
    if warmup < 0 or repeat < 1:
        raise ValueError(f"run_rounds needs warmup >= 0 and repeat >= 1, got {warmup} and {repeat}")
    total = warmup + repeat
    for rnd in range(total):
        start = time.perf_counter()
        k = rnd % len(cases) if cases else 0
        for case in cases[k:] + cases[:k]:
            if case.before is not None:
                case.before()
            t0 = time.perf_counter()
            case.fn()
            dt = time.perf_counter() - t0
            if rnd >= warmup:
                case.times.append(dt)
        if log is not None:
            kind = "warm-up" if rnd < warmup else "timed"
            log(f"  round {rnd + 1}/{total} ({kind}) {time.perf_counter() - start:.1f} s, load {_load():.2f}")


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not on every platform
        return float("nan")


# ------------------------------------------------------------------------------ FLOPs
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as ``FlopCounterMode`` counts them (2 per multiply-add of convs,
    matmuls, ``addmm``/``bmm``; nothing for elementwise ops, norms, NMS or custom ops)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _dense_conv_flops(mod: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    """2·(C_in/groups)·C_out·k_h·k_w·H_out·W_out·N of a deformable conv (its dense equivalent)."""
    n, _, h_out, w_out = out.shape
    weight = mod.weight
    c_out, c_in_per_group, kh, kw = weight.shape
    return 2 * c_in_per_group * c_out * kh * kw * h_out * w_out * n


def _conv_out_shape(mod: nn.Module, x: torch.Tensor) -> tuple[int, int, int, int]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = mod.kernel_size, mod.stride, mod.padding, mod.dilation
    h_out = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return x.shape[0], mod.out_channels, h_out, w_out


@contextmanager
def deform_conv_flops(model: nn.Module, counted: list[int]) -> Iterator[None]:
    """Within this block the deformable convs of ``model`` append their dense-equivalent FLOPs to
    ``counted`` and stay invisible to ``FlopCounterMode``: each is replaced by a shape-preserving
    stub without counted ops (the fast CPU kernels' sparse ``addmm`` would be counted as a dense
    one):

    * ``StarDeformConv2d`` (VFNet's star conv, spec §2.3): ``x·1 + 0·Σdistances``;
    * ``ModulatedDeformConv2d`` (DCNv2): its offset conv runs (a plain conv, counted), then zeros
      of the output shape;
    * ``DeformConv2d`` (RepPoints): zeros of the output shape.

    The stubbed model's outputs are wrong (only their shapes are right): use it for counting only.
    """
    from ..models.layers.dcn import ModulatedDeformConv2d
    from ..models.layers.deform_conv import DeformConv2d
    from ..models.layers.star_deform_conv import StarDeformConv2d

    stubbed: list[nn.Module] = []

    def star_stub(mod: StarDeformConv2d) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
            if x.shape[1] != mod.out_channels:
                raise RuntimeError("the FLOP-counting stub of StarDeformConv2d needs C_in == C_out")
            counted.append(_dense_conv_flops(mod, x, x))
            return x * 1.0 + distances.sum() * 0.0

        return forward

    def dcn_stub(mod: nn.Module) -> Callable[..., torch.Tensor]:
        def forward(x: torch.Tensor, *offsets: torch.Tensor) -> torch.Tensor:
            if isinstance(mod, ModulatedDeformConv2d):
                offsets = mod.offset_and_mask(x)
            out = x.new_zeros(_conv_out_shape(mod, x)) + sum(t.sum() for t in offsets if t is not None) * 0.0
            counted.append(_dense_conv_flops(mod, x, out))
            return out

        return forward

    for mod in model.modules():
        if isinstance(mod, StarDeformConv2d):
            mod.forward = star_stub(mod)  # an instance attribute shadows the class's method
            stubbed.append(mod)
        elif isinstance(mod, (ModulatedDeformConv2d, DeformConv2d)):
            mod.forward = dcn_stub(mod)
            stubbed.append(mod)
    try:
        yield
    finally:
        for mod in stubbed:
            del mod.forward


def model_flops(model: nn.Module, fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (which runs ``model``): :func:`count_flops` with every deformable
    conv of ``model`` counted as its dense equivalent (:func:`deform_conv_flops`)."""
    extra: list[int] = []
    with deform_conv_flops(model, extra):
        total = count_flops(fn)
    return total + sum(extra)


# ------------------------------------------------------------------------------ matmul limit
def matmul_case(n: int, dtype: torch.dtype = torch.float32) -> Case:
    """A :class:`Case` timing ``torch.mm`` of two n×n ``dtype`` matrices (N(0, 1), seed 3) into a
    preallocated output. Its FLOPs are 2·n³, so the matmul limit is 2·n³ / ``case.median`` FLOP/s
    once the case has been timed (e.g. by :func:`run_rounds`, beside the models).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"matmul size must be >= 1, got {n}")
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return Case(f"matmul {n}^3 {dtype}", lambda: torch.mm(a, b, out=out))


# ------------------------------------------------------------------------------ memory
def peak_rss_mib() -> tuple[float | None, float]:
    """``(VmHWM or None without /proc, ru_maxrss)`` of this process, MiB (Linux reports KiB)."""
    hwm = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if platform.system() == "Darwin":  # bytes there
        ru /= 1024.0
    return hwm, ru / 1024.0


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()`` or ``'unknown'``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
