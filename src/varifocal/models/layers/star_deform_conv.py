"""Star-shaped deformable 3×3 convolution of the VFNet head (spec §2.2–2.3), fast on CPU.

VFNet runs two deformable 3×3 convolutions (256→256, stride 1, padding 1, dilation 1, one
deform group, no bias) per FPN level. Their nine taps sit on the "star" of the predicted box:
with per-location distances (l, t, r, b) in feature-map cells, tap k = 3·ky + kx samples at

    k0 (-t,-l)  k1 (-t, 0)  k2 (-t,+r)
    k3 ( 0,-l)  k4 ( 0, 0)  k5 ( 0,+r)
    k6 (+b,-l)  k7 (+b, 0)  k8 (+b,+r)        (dy, dx) relative to the location.

Samples use bilinear interpolation with zero padding, as ``torchvision.ops.deform_conv2d`` does:
each of a sample's 4 neighbours contributes only if it lies inside the map.

Two implementations give the same numbers (to float rounding):

* ``'torchvision'``: ``deform_conv2d(x, star_offsets(distances), weight, padding=1)``. This is
  the generic op, and the one used on CUDA.
* ``'fast'`` (CPU). Per location the star needs only 25 neighbour reads: 4 corner taps × 4
  neighbours, 4 edge taps × 2 neighbours (they move along one axis only), and 1 read for the
  centre tap. They are all pairs of 5 row sources (floor and floor+1 of the top and bottom
  rows, the own row) and 5 column sources, so their indices and bilinear weights come from two
  small per-location tables (:class:`_Geometry`).
  - Forward (float32/float64): sampling is linear and commutes with the channel mixing, so
    ``out = Σ_k S_k (x W_k)``. One GEMM ``taps = x_hwc @ [W_0 … W_8]`` [HW, 9·O] (the FLOPs of
    the plain conv; x is read in its own layout, no transpose), then every output row sums its
    25 reads of ``taps`` with their weights (``F.embedding_bag`` with per-sample weights). Only
    the [HW, O] output is written, not a 9·C-wide column matrix. ``taps`` lives in a reused
    scratch buffer (see :func:`release_workspace`): a fresh 150 MB tensor would cost its page
    faults, about half a convolution on a VM. Without autograd, the geometry uses scratch
    buffers too.
  - Forward (float16/bfloat16): the reads form a sparse matrix ``S`` [9·HW, HW] with 25
    non-zeros per location; ``cols = S @ x_hwc`` [HW, 9·C] (an MKL CSR product through
    ``torch.addmm``) runs in float32, then ``cols @ W`` [9·C, O] in 16 bits, in chunks of ≤ 8k
    locations with reused buffers.
  - Backward: ``grad_cols = grad_out @ Wᵀ`` (GEMM), ``grad_x = Sᵀ @ grad_cols`` (sparse, with
    Sᵀ built by one sort of the non-zeros), and ``grad_W = grad_outᵀ @ cols`` (GEMM, with the
    columns recomputed per chunk). The distance gradient applies the analytic derivative of the
    bilinear weights (torchvision's one-sided one) to ``<grad_cols, x[neighbour]>``, computed
    with ``torch.sparse.sampled_addmm``.
  - Threads: the dense GEMMs use all intra-op threads (tiny P7-sized ones use 1). The small
    index/weight ops run on the calling thread. The sparse products, the weighted gather and
    the big layout copies use 1 or all threads, whichever measures faster at run time; this
    does not change the numbers. The op then stays fast both on an idle CPU and on one shared
    with other busy processes (see ``_SERIAL_NON_GEMM``).

``impl='auto'`` picks ``'fast'`` on CPU and ``'torchvision'`` on other devices, where the
generic kernel is the faster one. ``'fast'`` on CUDA is untested.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d

__all__ = [
    "star_offsets",
    "star_deform_conv2d_reference",
    "star_deform_conv2d",
    "StarDeformConv2d",
    "release_workspace",
]

# Non-zeros (neighbour reads) of each tap k = 0..8: corners 4, edge taps 2, centre 1.
_TAP_NNZ = (4, 2, 4, 2, 1, 2, 4, 2, 4)
_NNZ = sum(_TAP_NNZ)  # 25 per location
_IMPLS = ("auto", "fast", "torchvision")
# Most elements of a per-chunk [L, 9·C] column buffer (backward and the 16-bit forward):
# L ≤ 8192 locations at C = 256 (75 MB in float32), so P3 of an 800×1216 image runs as 2 chunks. Few, big GEMMs hold up much better
# than many small ones on a CPU shared with other busy processes (each GEMM call ends in
# barriers). On an idle CPU the chunk size hardly matters once the buffers are reused.
_CHUNK_ELEMS = 9 * 8192 * 256


# --------------------------------------------------------------------------------------------
# offsets and the reference implementation
# --------------------------------------------------------------------------------------------
def _check_distances(distances: Tensor, who: str) -> None:
    if distances.dim() != 4 or distances.shape[1] != 4:
        raise ValueError(
            f"{who}: distances must be [N, 4, H, W] (l, t, r, b), got {tuple(distances.shape)}"
        )


def star_offsets(distances: Tensor) -> Tensor:
    """Offsets of the star-shaped 3×3 deformable conv (spec §2.3).

    Args:
        distances: [N, 4, H, W] distances (l, t, r, b) from every location to the left, top,
            right and bottom box edges, in feature-map cells, i.e. already divided by the
            stride. Any real values are allowed: zero, negative, or reaching outside the map.

    Returns:
        [N, 18, H, W] offsets in the torchvision / mmcv layout. Channel 2k is Δy_k and channel
        2k+1 is Δx_k for tap k = 3·ky + kx. Each offset is Δ = target − (ky−1, kx−1), so the
        taps land on (−t,−l), (−t,0), (−t,r), (0,−l), (0,0), (0,r), (b,−l), (b,0), (b,r). The
        result has the dtype and device of ``distances`` and is differentiable with respect to
        them.

    Raises:
        ValueError: if ``distances`` is not [N, 4, H, W].
    """
    _check_distances(distances, "star_offsets")
    l, t, r, b = distances.unbind(1)
    top, bottom = 1 - t, b - 1  # Δy of rows ky = 0 and ky = 2
    left, right = 1 - l, r - 1  # Δx of columns kx = 0 and kx = 2
    zero = torch.zeros_like(l)
    return torch.stack(
        [
            top, left, top, zero, top, right,
            zero, left, zero, zero, zero, right,
            bottom, left, bottom, zero, bottom, right,
        ],
        dim=1,
    )


def _check_inputs(x: Tensor, distances: Tensor, weight: Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{who}: x must be [N, C, H, W], got {tuple(x.shape)}")
    _check_distances(distances, who)
    n, c, h, w = x.shape
    if distances.shape[0] != n or distances.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"{who}: distances {tuple(distances.shape)} do not match x {tuple(x.shape)} "
            "(expected [N, 4, H, W] with the same N, H, W)"
        )
    if weight.dim() != 4 or weight.shape[1] != c or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(
            f"{who}: weight must be [O, {c}, 3, 3] for x with {c} channels, "
            f"got {tuple(weight.shape)}"
        )
    if not (x.device == distances.device == weight.device):
        raise ValueError(
            f"{who}: x, distances and weight must be on one device, got "
            f"{x.device}, {distances.device}, {weight.device}"
        )


def star_deform_conv2d_reference(x: Tensor, distances: Tensor, weight: Tensor) -> Tensor:
    """Star deformable conv through the generic ``torchvision.ops.deform_conv2d`` (spec §2.3).

    Args:
        x: [N, C, H, W] features.
        distances: [N, 4, H, W] (l, t, r, b) in feature-map cells.
        weight: [O, C, 3, 3] convolution weight (no bias).

    Returns:
        [N, O, H, W] = ``deform_conv2d(x, star_offsets(distances), weight, padding=1)``, with
        stride 1, dilation 1 and one deform group. The offsets are cast to ``x``'s dtype
        because torchvision wants a single dtype. On CPU with bfloat16 inputs or an active CPU
        autocast, the op runs in float32 and the result is cast back to ``x``'s dtype
        (torchvision's CPU kernel has no bfloat16 version).

    Raises:
        ValueError: on inconsistent shapes or devices.
    """
    _check_inputs(x, distances, weight, "star_deform_conv2d_reference")
    bf16 = torch.bfloat16 in (x.dtype, weight.dtype)
    if x.device.type == "cpu" and (bf16 or torch.is_autocast_enabled("cpu")):
        # torchvision's CPU kernel has no bfloat16 version and no CPU autocast rule: run it in
        # float32 (as its CUDA autocast rule does) and hand back x's dtype.
        with torch.autocast("cpu", enabled=False):
            offsets = star_offsets(distances.float())
            out = deform_conv2d(x.float(), offsets, weight.float(), padding=1)
        return out.to(x.dtype)
    offsets = star_offsets(distances).to(x.dtype)
    return deform_conv2d(x, offsets, weight, padding=1)


# --------------------------------------------------------------------------------------------
# fast implementation
# --------------------------------------------------------------------------------------------
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


def _workspace(
    slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
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
    """Free the scratch buffers that :func:`star_deform_conv2d` keeps for the calling thread."""
    _tls.buffers = {}


_csr_warned = False


def _csr(crow: Tensor, col: Tensor, val: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR tensor without invariant checks. The "beta" warning is silenced once."""
    global _csr_warned
    if _csr_warned:
        return torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.sparse_csr_tensor(crow, col, val, size, check_invariants=False)
    _csr_warned = True
    return out


def _spmm(sparse: Tensor, dense: Tensor, out: Tensor) -> Tensor:
    """``out = sparse @ dense`` written straight into ``out`` (contiguous).

    ``torch.mm(sparse, dense, out=out)`` would first build a zero-filled temporary and then copy
    it. ``addmm`` with ``beta=0`` and ``self is out`` hands ``out`` to the sparse kernel directly,
    and with ``beta=0`` the kernel ignores the old contents.
    """
    return torch.addmm(out, sparse, dense, beta=0.0, out=out)


def _sddmm(
    pattern: Tensor, grad_cols: Tensor, x_img: Tensor, rows_pat: Tensor, cols: Tensor
) -> Tensor:
    """Per non-zero (r, q) of ``pattern``: <grad_cols[r], x_img[q]> ([nnz] values)."""
    if 9 * x_img.shape[0] >= _NNZ:
        return torch.sparse.sampled_addmm(pattern, grad_cols, x_img.t(), beta=0.0).values()
    # sampled_addmm fails when a pattern holds more non-zeros (with duplicates) than it has
    # entries, i.e. for maps of 1 or 2 locations: gather instead.
    rows = rows_pat[: cols.numel()].long()
    return (grad_cols[rows] * x_img[cols.long()]).sum(1)


_pattern_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def _chunk_pattern(chunk: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row pointers and local row of each non-zero, for a chunk of ``chunk`` locations.

    Returns ``(crow [9·chunk + 1] int32, rows [25·chunk] int32)``. The rows of ``S`` are
    (location, tap) pairs, location-major. A prefix of the pattern serves a shorter chunk.
    """
    key = (chunk, device)
    hit = _pattern_cache.get(key)
    if hit is None:
        counts = torch.tensor(_TAP_NNZ, dtype=torch.int32, device=device).repeat(chunk)
        crow = torch.zeros(9 * chunk + 1, dtype=torch.int32, device=device)
        crow[1:] = counts.cumsum(0)
        rows = torch.repeat_interleave(
            torch.arange(9 * chunk, dtype=torch.int32, device=device), counts
        )
        hit = (crow, rows)
        if len(_pattern_cache) > 16:
            _pattern_cache.clear()
        _pattern_cache[key] = hit
    return hit


# The 25 neighbour reads of a location combine 10 "sources", each a row or a column:
#   0 / 4: floor / floor+1 of the top row    y = i − t     (taps k0, k1, k2)
#   1 / 5: floor / floor+1 of the bottom row y = i + b     (taps k6, k7, k8)
#   2 / 6: floor / floor+1 of the left column  x = j − l   (taps k0, k3, k6)
#   3 / 7: floor / floor+1 of the right column x = j + r   (taps k2, k5, k8)
#   8: the location's own row i;  9: its own column j      (k1/k7 columns, k3/k5 rows, k4)
# Read e (0..24) is (row source _ROW_SRC[e], column source _COL_SRC[e]). Reads are grouped by
# tap k0..k8 (4, 2, 4, 2, 1, 2, 4, 2, 4 reads), in (row, column) order within a tap.
_ROW_SRC = (0, 0, 4, 4, 0, 4, 0, 0, 4, 4, 8, 8, 8, 8, 8, 1, 1, 5, 5, 1, 5, 1, 1, 5, 5)
_COL_SRC = (2, 6, 2, 6, 9, 9, 3, 7, 3, 7, 2, 6, 9, 3, 7, 2, 6, 2, 6, 9, 9, 3, 7, 3, 7)


def _one_hot(src: tuple[int, ...]) -> Tensor:
    sel = torch.zeros(10, _NNZ, dtype=torch.float64)
    sel[list(src), list(range(_NNZ))] = 1.0
    return sel


_SEL_ROW = _one_hot(_ROW_SRC)  # [10, 25]: read e takes row source _ROW_SRC[e]
_SEL_COL = _one_hot(_COL_SRC)
# Sums each read's ∂/∂(row or column coordinate) into ∂/∂(l, t, r, b). The signs come from
# y_top = i − t, y_bottom = i + b, x_left = j − l, x_right = j + r.
_TO_LTRB_ROW = torch.zeros(_NNZ, 4, dtype=torch.float64)
_TO_LTRB_COL = torch.zeros(_NNZ, 4, dtype=torch.float64)
for _e, (_rs, _cs) in enumerate(zip(_ROW_SRC, _COL_SRC)):
    if _rs < 8:
        _TO_LTRB_ROW[_e, 1 if _rs % 4 == 0 else 3] = -1.0 if _rs % 4 == 0 else 1.0
    if _cs < 8:
        _TO_LTRB_COL[_e, 0 if _cs % 4 == 2 else 2] = -1.0 if _cs % 4 == 2 else 1.0
del _e, _rs, _cs


# [12, 25] selections for offᵀ @ sel (row 10 of off is ones, row 11 the image's 9·H·W offset):
# q, and (image·H·W + q)·9 + k with k the tap of read e (the reads are grouped by tap, see
# above).
_SEL_READ = _SEL_ROW + _SEL_COL  # [10, 25]: the row and the column source of read e
_SEL_ROW_COL = torch.cat([_SEL_READ, torch.zeros(2, _NNZ, dtype=torch.float64)])
_SEL_TAP_INDEX = torch.cat([
    _SEL_READ * 9,
    torch.tensor([[k for k, nnz in enumerate(_TAP_NNZ) for _ in range(nnz)]], dtype=torch.float64),
    torch.ones(1, _NNZ, dtype=torch.float64),
])


def _fresh(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A new tensor (the allocator of geometry kept for backward); ``slot`` is ignored."""
    return torch.empty(shape, dtype=dtype, device=device)


def _scratch(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A reused per-thread buffer (the allocator of geometry that dies with the call).

    On CPU each fresh MB-sized tensor costs its page faults on first touch; on this VM that is
    ~0.4 ms per MB, as much as the arithmetic of the whole geometry.
    """
    return _workspace("geo_" + slot, shape, dtype, device)


def _source_table(
    distances: Tensor, height: int, width: int, pos_dtype: torch.dtype, alloc=_fresh
):
    """Flat offsets, bilinear weights and in-map masks of the 10 sources, [12/10/8, N·H·W].

    Returns ``(off, wts, inside)``. Offsets ``off`` [12, N·H·W] (float64, integral): row
    sources hold row·W and column sources the column, clamped into the map, so a read's flat
    index within its image is off[row source] + off[column source]; row 10 is all ones and row
    11 is image index · 9·H·W (bias rows for :attr:`_Geometry.tap_index`). Weights ``wts``
    [10, N·H·W] (pos_dtype): (1−f, f) for a floor/floor+1 pair, zeroed where that row or column
    lies outside the map (zero padding), and 1 for the location's own row or column. ``inside``
    [8, N·H·W] (bool) marks the pairs inside the map. A read's weight is w[row source]·w[column
    source]. That is exactly torchvision's bilinear_interpolate. Non-finite coordinates read
    nothing. ``alloc(slot, shape, dtype, device)`` provides the tensors (:func:`_fresh` or
    :func:`_scratch`).
    """
    d = distances.detach().to(pos_dtype)
    dev = d.device
    n = d.shape[0]
    p = n * height * width
    l, t, r, b = d.unbind(1)  # [N, H, W]
    iy = torch.arange(height, device=dev, dtype=pos_dtype).view(1, height, 1)
    jx = torch.arange(width, device=dev, dtype=pos_dtype).view(1, 1, width)
    # Same float ops as torchvision: (integer base of the tap) + offset from star_offsets.
    coord = alloc("coord", (4, n, height, width), pos_dtype, dev)
    torch.sub(1, t, out=coord[0]).add_(iy - 1)  # y_top
    torch.sub(b, 1, out=coord[1]).add_(iy + 1)  # y_bottom
    torch.sub(1, l, out=coord[2]).add_(jx - 1)  # x_left
    torch.sub(r, 1, out=coord[3]).add_(jx + 1)  # x_right
    coord = coord.view(4, p)
    torch.nan_to_num_(coord, nan=-2.0, posinf=2.0 * max(height, width) + 2.0, neginf=-2.0)
    floor = alloc("floor", (4, p), pos_dtype, dev)
    lo = alloc("lo", (4, p), pos_dtype, dev)
    hi = alloc("hi", (4, p), pos_dtype, dev)
    inside = alloc("inside", (8, p), torch.bool, dev)
    wts = alloc("wts", (10, p), pos_dtype, dev)
    off = alloc("off", (12, p), torch.float64, dev)
    # Rows (y_top, y_bottom) and columns (x_left, x_right), with scalar bounds per group.
    for pair, size, mult in ((slice(0, 2), height, width), (slice(2, 4), width, 1)):
        c = coord[pair].clamp_(-2.0, size + 1.0)
        f0 = torch.floor(c, out=floor[pair])
        frac = c.sub_(f0)
        torch.clamp(f0, 0, size - 1, out=lo[pair])  # floor, clamped into the map
        torch.add(f0, 1, out=hi[pair])
        torch.eq(lo[pair], f0, out=inside[pair])
        torch.eq(hi[pair].clamp(0, size - 1), hi[pair], out=inside[4:][pair])
        hi[pair].clamp_(0, size - 1)  # floor + 1, clamped
        torch.sub(1, frac, out=wts[pair]).masked_fill_(~inside[pair], 0)
        wts[4:8][pair].copy_(frac).masked_fill_(~inside[4:][pair], 0)
        torch.mul(lo[pair], mult, out=off[pair])
        torch.mul(hi[pair], mult, out=off[4:8][pair])
    wts[8:] = 1
    off[8].view(n, height, width).copy_(iy * width)  # own row · W
    off[9].view(n, height, width).copy_(jx)  # own column
    off[10] = 1
    img = torch.arange(n, device=dev, dtype=torch.float64).view(n, 1) * (9 * height * width)
    off[11].view(n, height * width).copy_(img.expand(n, height * width))
    return off, wts, inside


class _Geometry:
    """The 25 neighbour reads per location (indices, weights) and the distance gradient.

    Attributes: ``vals`` [N·H·W·25] bilinear weights of the reads (location-major, grouped by
    tap); ``tap_index`` and ``cols`` (computed on first use) [N·H·W·25] int32:
    ``(image·H·W + q)·9 + k`` and ``q`` for the read of neighbour q (flat within its image) by
    tap k. With ``scratch=True`` all of them live in reused per-thread buffers and are valid
    only until the next call on the thread (for no-grad forwards); otherwise they are fresh
    tensors, kept for backward.
    """

    def __init__(
        self,
        distances: Tensor,
        height: int,
        width: int,
        pos_dtype: torch.dtype,
        scratch: bool = False,
    ):
        self.alloc = alloc = _scratch if scratch else _fresh
        off, wts, inside = _source_table(distances, height, width, pos_dtype, alloc)
        dev = off.device
        p = off.shape[1]
        self.shape = (distances.shape[0], height, width)
        self.sel_row = _SEL_ROW.to(dev, pos_dtype)
        self.sel_col = _SEL_COL.to(dev, pos_dtype)
        wts_t = wts.t()
        row_w = torch.mm(wts_t, self.sel_row, out=alloc("row_w", (p, _NNZ), pos_dtype, dev))
        col_w = torch.mm(wts_t, self.sel_col, out=alloc("col_w", (p, _NNZ), pos_dtype, dev))
        self.vals = row_w.mul_(col_w).view(-1)
        self._off, self._wts, self._inside = off, wts, inside
        self._cols: Tensor | None = None
        self._tap_index: Tensor | None = None

    def _gather(self, slot: str, sel: Tensor) -> Tensor:
        """[N·H·W·25] int32 = offᵀ @ sel: an exact float64 matmul with one-hot columns."""
        dev = self._off.device
        p = self._off.shape[1]
        acc = self.alloc(slot + "64", (p, _NNZ), torch.float64, dev)
        torch.mm(self._off.t(), sel.to(dev), out=acc)
        return self.alloc(slot, (p, _NNZ), torch.int32, dev).copy_(acc).view(-1)

    @property
    def cols(self) -> Tensor:
        if self._cols is None:
            self._cols = self._gather("cols", _SEL_ROW_COL)
        return self._cols

    @property
    def tap_index(self) -> Tensor:
        if self._tap_index is None:
            self._tap_index = self._gather("tap_index", _SEL_TAP_INDEX)
        return self._tap_index

    def drop_tap_index(self) -> None:
        """Free ``tap_index`` (the forward's; backward reads ``cols``)."""
        self._tap_index = None

    def distance_grad(self, dots: Tensor) -> Tensor:
        """∂L/∂(l,t,r,b) [N,4,H,W] from ``dots`` [N·H·W, 25] = <grad_cols[(p,k)], x[read]>."""
        dt = self._wts.dtype
        dots = dots.to(dt)
        dev = dots.device
        # ∂weight/∂coordinate of each source: −1 / +1 for a floor / floor+1 inside the map, and
        # 0 for the own row and column (torchvision's one-sided derivative).
        der = torch.zeros(10, self._wts.shape[1], device=dev, dtype=dt)
        der[:4] = self._inside[:4]
        der[:4].neg_()
        der[4:8] = self._inside[4:]
        wts_t, der_t = self._wts.t(), der.t()
        # ∂weight/∂(row coordinate) and ∂weight/∂(column coordinate) of every read.
        d_row = torch.mm(der_t, self.sel_row) * torch.mm(wts_t, self.sel_col)
        d_col = torch.mm(wts_t, self.sel_row) * torch.mm(der_t, self.sel_col)
        g = torch.mm(d_row * dots, _TO_LTRB_ROW.to(dev, dt))
        g.addmm_(d_col * dots, _TO_LTRB_COL.to(dev, dt))  # [N·H·W, 4]
        n, h, w = self.shape
        return g.view(n, h, w, 4).permute(0, 3, 1, 2)


_transpose_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def _transpose_pattern(hw: int, chunk: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For the non-zeros of one image: ``chunk index · HW`` and the local row, [HW·25] int32.

    The chunk index times HW is the sort key of a non-zero, minus its column; the local row is
    its row within the chunk's S (location·9 + tap). Cached per (HW, chunk) (a few MB).
    """
    key = (hw, chunk, device)
    hit = _transpose_cache.get(key)
    if hit is None:
        loc = torch.arange(hw, device=device, dtype=torch.int64)
        base_key = ((loc // chunk) * hw).repeat_interleave(_NNZ)
        _, rows_pat = _chunk_pattern(chunk, device)
        within = torch.arange(hw * _NNZ, device=device) % (chunk * _NNZ)
        hit = (base_key.to(torch.int32 if hw * hw < 2**31 else torch.int64), rows_pat[within])
        if len(_transpose_cache) >= 8:
            _transpose_cache.clear()
        _transpose_cache[key] = hit
    return hit


def _chunk_len(hw: int, channels: int) -> int:
    """Locations per chunk: at most ``_CHUNK_ELEMS / (9·channels)``, balanced over the image."""
    most = max(1, _CHUNK_ELEMS // (9 * max(channels, 1)))
    pieces = -(-hw // most)
    return max(1, -(-hw // pieces))


def _rows_to_nchw(rows: Tensor, n: int, c: int, h: int, w: int) -> Tensor:
    """[N·H·W, C] rows → a contiguous [N, C, H, W] tensor (2-D transposes, one per image)."""
    hw = h * w
    out = torch.empty(n, c, hw, dtype=rows.dtype, device=rows.device)
    for im in range(n):
        out[im].copy_(rows[im * hw : (im + 1) * hw].t())
    return out.view(n, c, h, w)


def _to_hwc(t: Tensor, dtype: torch.dtype, threads: "_Threads") -> Tensor:
    """[N, C, H, W] (any strides) → contiguous [N·H·W, C] in ``dtype`` (a view when possible)."""
    n, c, h, w = t.shape
    nhwc = t.permute(0, 2, 3, 1)
    if nhwc.dtype == dtype and nhwc.is_contiguous():
        return nhwc.reshape(n * h * w, c)
    out = torch.empty((n, h, w, c), dtype=dtype, device=t.device)
    with threads.sparse("copy", t.numel()):  # memory-bound: thread count tuned like sparse ops
        out.copy_(nhwc)
    return out.view(n * h * w, c)


def _transposed_chunks(geo: "_Geometry", vals: Tensor, n: int, hw: int, chunk: int):
    """Sᵀ of every chunk at once: the non-zeros sorted by (chunk, column).

    Returns ``(crow [n·nch, HW+1] int32, rows [N·HW·25] int32, vals [N·HW·25])``. Chunk ``g``
    (image ``g // nch``) is the CSR matrix [HW, 9·len] made of ``crow[g]`` and of the entries
    ``rows/vals[25·start : 25·end]``, where start and end are the chunk's global locations.
    """
    dev = vals.device
    nch = -(-hw // chunk)
    base_key, local_row = _transpose_pattern(hw, chunk, dev)
    key_dtype = torch.int32 if n * nch * hw < 2**31 else torch.int64
    key = base_key.to(key_dtype) + geo.cols.view(n, hw * _NNZ)
    if n > 1:  # chunks of image i are numbered i·nch … i·nch + nch − 1
        key += torch.arange(n, device=dev, dtype=key_dtype).view(n, 1) * (nch * hw)
    key = key.view(-1)
    perm = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=n * nch * hw).view(n * nch, hw)
    t_crow = torch.zeros(n * nch, hw + 1, dtype=torch.int32, device=dev)
    torch.cumsum(counts, 1, out=t_crow[:, 1:])
    t_rows = local_row[perm % (hw * _NNZ) if n > 1 else perm]
    return t_crow, t_rows, vals[perm]


# Most elements of the forward's tap-product buffer [H·W, 9·O'] (O' ≤ O output channels per
# pass): 9·256·16800 (P3 of a 1333×800 input, 155 MB in float32) runs in one pass.
_TAPS_ELEMS = 9 * 256 * 16800


def _tap_weight(weight: Tensor, o0: int, oc: int) -> Tensor:
    """Output channels ``o0 : o0 + oc`` of ``weight`` [O, C, 3, 3], tap-major: [C, 9·oc].

    Column ``k·oc + o`` holds W_k[:, o0 + o] for tap k = 3·ky + kx. The copy (2.4 MB at 256
    channels) goes into a reused buffer, valid until the next call: a fresh tensor's page faults
    would cost more than the copy.
    """
    c = weight.shape[1]
    w_taps = weight.permute(1, 2, 3, 0)[..., o0 : o0 + oc]  # [C, 3, 3, oc]
    buf = _workspace("w_taps", (c, 3, 3, oc), weight.dtype, weight.device)
    return buf.copy_(w_taps).view(c, 9 * oc)


def _tap_gemm(x: Tensor, im: int, w9: Tensor, out: Tensor, threads: "_Threads") -> None:
    """``out`` [H·W, 9·oc] = x[im] as [H·W, C] (a view for NCHW and channels-last) @ ``w9``."""
    c, h, w = x.shape[1:]
    x_img = x[im].reshape(c, h * w).t()
    with threads.gemm(h * w * c * w9.shape[1]):
        torch.mm(x_img, w9, out=out)


def _tap_gather(index: Tensor, vals: Tensor, taps: Tensor, oc: int, threads: "_Threads") -> Tensor:
    """[L, oc]: row p = Σ_e vals[p, e] · taps-row index[p, e] (``taps`` viewed as [·, oc])."""
    with threads.sparse("gather", index.numel() * oc):
        return F.embedding_bag(index, taps.view(-1, oc), per_sample_weights=vals, mode="sum")


def _forward_taps(x: Tensor, geo: _Geometry, weight: Tensor, threads: "_Threads") -> Tensor:
    """Forward as Σ_k S_k (x W_k): one GEMM, then a weighted gather. Returns [N·H·W, O].

    Sampling commutes with the channel mixing, so the GEMM comes first: ``taps = x_hwc @ W9``
    [H·W, 9·O] holds x·W_k of every location and tap, and output p sums its 25 reads of that
    buffer with their bilinear weights (``embedding_bag`` with per-sample weights). The GEMM
    reads x in its own layout (NCHW or channels-last, no transpose) and has the FLOPs of the
    plain conv. The gather writes only the [H·W, O] output, where sampling first would write a
    9·C-wide column buffer. O is split into passes when the buffer would exceed ``_TAPS_ELEMS``.
    """
    n, c, h, w = x.shape
    o = weight.shape[0]
    hw = h * w
    index = geo.tap_index.view(n * hw, _NNZ)  # rows of the whole batch's buffer
    vals = geo.vals.view(n * hw, _NNZ).to(x.dtype)
    if n * hw * 9 * o <= _TAPS_ELEMS:  # the usual case: one buffer for the batch, one gather
        taps = _workspace("taps", (n * hw, 9 * o), x.dtype, x.device)
        w9 = _tap_weight(weight, 0, o)
        for im in range(n):
            _tap_gemm(x, im, w9, taps[im * hw : (im + 1) * hw], threads)
        return _tap_gather(index, vals, taps, o, threads)  # [N·HW, O]
    # Large maps: one image and at most `step` output channels per pass.
    step = max(1, min(o, _TAPS_ELEMS // (9 * hw)))
    out = torch.empty(n * hw, o, dtype=x.dtype, device=x.device)
    for im in range(n):
        rows = slice(im * hw, (im + 1) * hw)
        idx = index[rows] - im * 9 * hw  # rows of this image's buffer
        for o0 in range(0, o, step):
            oc = min(step, o - o0)
            taps = _workspace("taps", (hw, 9 * oc), x.dtype, x.device)
            _tap_gemm(x, im, _tap_weight(weight, o0, oc), taps, threads)
            out[rows, o0 : o0 + oc] = _tap_gather(idx, vals[rows], taps, oc, threads)
    return out


def _forward_columns(x: Tensor, geo: _Geometry, weight: Tensor, threads: "_Threads") -> Tensor:
    """Forward as sampled columns, then a GEMM (float16/bfloat16). Returns [N·H·W, O].

    The sampling (an MKL CSR product) runs in float32 and the GEMM in x's dtype, so the sample
    positions and bilinear weights keep float32 precision.
    """
    n, c, h, w = x.shape
    o = weight.shape[0]
    hw = h * w
    dev = x.device
    vals = geo.vals
    wm = weight.reshape(o, c, 9).transpose(1, 2).reshape(o, 9 * c)  # [O, 9C], columns k·C + c
    xt = _to_hwc(x, torch.float32, threads)  # [N·HW, C]
    out = torch.empty(n * hw, o, dtype=x.dtype, device=dev)
    chunk = _chunk_len(hw, c)
    crow, _ = _chunk_pattern(chunk, dev)
    buf = _workspace("cols", (9 * chunk, c), torch.float32, dev)
    buf_h = _workspace("cols_h", (chunk, 9 * c), x.dtype, dev)
    for im in range(n):
        x_img = xt[im * hw : (im + 1) * hw]
        for s in range(0, hw, chunk):
            ln = min(chunk, hw - s)
            g0 = im * hw + s
            p0, p1 = g0 * _NNZ, (g0 + ln) * _NNZ
            sm = _csr(crow[: 9 * ln + 1], geo.cols[p0:p1], vals[p0:p1], (9 * ln, hw))
            with threads.sparse("spmm", _NNZ * ln * c):
                cols = _spmm(sm, x_img, buf[: 9 * ln]).view(ln, 9 * c)  # [ln, 9C] float32
            cols = buf_h[:ln].copy_(cols)
            with threads.gemm(ln * 9 * c * o):
                torch.mm(cols, wm.t(), out=out[g0 : g0 + ln])
    return out


def _star_forward(
    x: Tensor, distances: Tensor, weight: Tensor, scratch: bool
) -> tuple[Tensor, _Geometry]:
    """Forward of the fast path: ``(out [N, O, H, W] channels-last, geometry)``.

    ``scratch=True`` (no backward will follow) keeps the geometry in reused buffers.
    """
    n, c, h, w = x.shape
    o = weight.shape[0]
    threads = _Threads(x.device)
    with threads.serial():
        # Sample positions in float32 (float64 for float64 inputs), also for 16-bit x.
        pos_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        geo = _Geometry(distances, h, w, pos_dtype, scratch=scratch)
        if n * h * w * o == 0 or c == 0:
            out = torch.zeros(n * h * w, o, dtype=x.dtype, device=x.device)
        elif x.dtype in (torch.float16, torch.bfloat16):
            out = _forward_columns(x, geo, weight, threads)
        else:
            out = _forward_taps(x, geo, weight, threads)
    return out.view(n, h, w, o).permute(0, 3, 1, 2), geo


class _StarDeformConvFn(torch.autograd.Function):
    """out = Σ_k W_k · sample_k(x); forward by :func:`_forward_taps` (or columns for 16-bit)."""

    @staticmethod
    def forward(ctx, x: Tensor, distances: Tensor, weight: Tensor) -> Tensor:
        out, geo = _star_forward(x, distances, weight, scratch=False)
        geo.drop_tap_index()
        ctx.geo = geo
        ctx.dist_dtype = distances.dtype
        ctx.x_channels_last = not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last
        )
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        geo: _Geometry = ctx.geo
        n, c, h, w = x.shape
        o = weight.shape[0]
        hw = h * w
        need_x, need_d, need_w = ctx.needs_input_grad[:3]
        dt = x.dtype
        half = dt in (torch.float16, torch.bfloat16)
        sdt = torch.float32 if half else dt  # dtype of the sparse products
        dev = x.device
        threads = _Threads(dev)
        with threads.serial():
            vals = geo.vals.to(sdt)
            wm = weight.reshape(o, c, 9).transpose(1, 2).reshape(o, 9 * c)  # [O, 9C]
            xt = _to_hwc(x, sdt, threads)  # [N·HW, C]
            go = _to_hwc(grad_out, dt, threads)  # [N·HW, O]; a view for a channels-last grad
            # The chunk loop writes every element of gx and dots (chunk 0 of each image
            # overwrites gx with beta = 0), unless there is nothing to compute (C = 0 or O = 0).
            alloc = torch.empty if c and o else torch.zeros
            gx = alloc(n * hw, c, dtype=sdt, device=dev) if need_x else None
            dots = alloc(n * hw * _NNZ, dtype=sdt, device=dev) if need_d else None
            gw = torch.zeros(o, 9 * c, dtype=sdt, device=dev) if need_w else None  # like wm
            if n * hw and c and o:
                chunk = _chunk_len(hw, max(c, o))
                nch = -(-hw // chunk)
                crow, rows_pat = _chunk_pattern(chunk, dev)
                if need_x:
                    t_crow, t_rows, t_vals = _transposed_chunks(geo, vals, n, hw, chunk)
                gbuf = _workspace("grad_cols", (chunk, 9 * c), dt, dev)
                gbuf_s = _workspace("grad_cols_s", (9 * chunk, c), sdt, dev) if half else None
                cbuf = _workspace("cols", (9 * chunk, c), sdt, dev) if need_w else None
                cbuf_h = _workspace("cols_h", (chunk, 9 * c), dt, dev) if need_w and half else None
                for im in range(n):
                    x_img = xt[im * hw : (im + 1) * hw]
                    gx_img = gx[im * hw : (im + 1) * hw] if need_x else None
                    for j, s in enumerate(range(0, hw, chunk)):
                        ln = min(chunk, hw - s)
                        g0 = im * hw + s
                        p0, p1 = g0 * _NNZ, (g0 + ln) * _NNZ
                        go_c = go[g0 : g0 + ln]
                        sm = _csr(crow[: 9 * ln + 1], geo.cols[p0:p1], vals[p0:p1], (9 * ln, hw))
                        if need_x or need_d:
                            with threads.gemm(ln * 9 * c * o):  # grad of the columns [ln, 9C]
                                gc = torch.mm(go_c, wm, out=gbuf[:ln])
                            if half:
                                gc = gbuf_s[: 9 * ln].view(ln, 9 * c).copy_(gc)
                            gc = gc.view(9 * ln, c)
                        if need_d:  # dots[e] = <grad_cols[row(e)], x[col(e)]>
                            with threads.sparse("sddmm", _NNZ * ln * c):
                                dots[p0:p1] = _sddmm(sm, gc, x_img, rows_pat, geo.cols[p0:p1])
                        if need_x:  # grad_x += Sᵀ · grad_cols
                            st = _csr(
                                t_crow[im * nch + j], t_rows[p0:p1], t_vals[p0:p1], (hw, 9 * ln)
                            )
                            with threads.sparse("spmm_t", _NNZ * ln * c):
                                torch.addmm(gx_img, st, gc, beta=1.0 if j else 0.0, out=gx_img)
                        if need_w:  # grad_W += grad_outᵀ · cols, the columns recomputed
                            with threads.sparse("spmm", _NNZ * ln * c):
                                cols = _spmm(sm, x_img, cbuf[: 9 * ln]).view(ln, 9 * c)
                            if half:  # bf16/fp16 GEMM, accumulated over the chunks in float32
                                cols = cbuf_h[:ln].copy_(cols)
                                go_t = go_c.t().contiguous()
                                with threads.gemm(ln * 9 * c * o):
                                    gw.add_(torch.mm(go_t, cols))
                            else:
                                with threads.gemm(ln * 9 * c * o):
                                    gw.addmm_(go_c.t(), cols)

            grad_x = grad_d = grad_w = None
            if need_x:
                gx = gx.to(dt)
                if ctx.x_channels_last:
                    grad_x = gx.view(n, h, w, c).permute(0, 3, 1, 2)
                else:
                    # Hand back x's own (NCHW) layout: an elementwise backward that mixes
                    # layouts (e.g. the ReLU before this conv) costs more than this transpose.
                    with threads.sparse("copy", gx.numel()):
                        grad_x = _rows_to_nchw(gx, n, c, h, w)
            if need_d:
                grad_d = geo.distance_grad(dots.view(n * hw, _NNZ)).to(ctx.dist_dtype)
            if need_w:
                grad_w = gw.view(o, 9, c).transpose(1, 2).to(dt).reshape(o, c, 3, 3)
        return grad_x, grad_d, grad_w


def star_deform_conv2d(x: Tensor, distances: Tensor, weight: Tensor, impl: str = "auto") -> Tensor:
    """Star-shaped deformable 3×3 conv (stride 1, padding 1, no bias) of spec §2.2–2.3.

    Args:
        x: [N, C, H, W] features (float32/float64, or float16/bfloat16).
        distances: [N, 4, H, W] (l, t, r, b) in feature-map cells (already divided by the
            stride). Any real values work: zero, negative, or reaching outside the map. Samples
            outside the map read 0.
        weight: [O, C, 3, 3] weight.
        impl: ``'fast'`` (sparse sampling + GEMM, see the module docstring), ``'torchvision'``
            (:func:`star_deform_conv2d_reference`) or ``'auto'``. ``'auto'`` picks ``'fast'``
            on CPU, where it is several times faster than the generic op, and ``'torchvision'``
            on other devices, where the generic kernel is the faster one.

    Returns:
        [N, O, H, W]. Both implementations agree to float rounding, and both are differentiable
        w.r.t. ``x``, ``weight`` and ``distances`` (first order). The 'fast' path reproduces
        torchvision's one-sided gradient at integer sample positions.

    Notes on ``'fast'``:
        * The result is in channels-last memory format. The values are the same; call
          ``.contiguous()`` if NCHW strides are needed. A following conv runs as fast or faster
          on it, and its gradient then arrives channels-last with no copy. ``grad_x`` comes
          back in ``x``'s own layout. A channels-last ``x`` saves a transpose in each direction.
        * Under autocast, ``x`` and ``weight`` are cast to the autocast dtype and the GEMMs run
          in it. The sample positions and the sparse sampling stay in float32. (The torchvision
          op computes in float32 under autocast.)
        * Memory: saves x (no copy) plus ~0.4 kB per location for backward. Each thread keeps
          scratch buffers between calls: the forward's tap products (≤ 9·256·16800 elements,
          155 MB in float32, the size for P3 of a 1333×800 input; larger maps split O into
          passes), the geometry of no-grad calls (~0.7 kB per location), and for backward two
          column buffers of up to 9·8192·max(C, O) elements (≤ 75 MB each at 256 channels).
          :func:`release_workspace` frees them.

    Raises:
        ValueError: on bad shapes, mixed devices or an unknown ``impl``.
    """
    if impl not in _IMPLS:
        raise ValueError(f"star_deform_conv2d: impl must be one of {_IMPLS}, got {impl!r}")
    _check_inputs(x, distances, weight, "star_deform_conv2d")
    if impl == "auto":
        impl = "fast" if x.device.type == "cpu" else "torchvision"
    if impl == "torchvision":
        return star_deform_conv2d_reference(x, distances, weight)
    dev_type = x.device.type
    if torch.is_autocast_enabled(dev_type):
        dtype = torch.get_autocast_dtype(dev_type)
        x, weight = x.to(dtype), weight.to(dtype)
        distances = distances.float()
        with torch.autocast(dev_type, enabled=False):
            return _apply_fast(x, distances, weight)
    if weight.dtype != x.dtype:
        raise ValueError(
            f"star_deform_conv2d: x ({x.dtype}) and weight ({weight.dtype}) must share a dtype"
        )
    return _apply_fast(x, distances, weight)


def _apply_fast(x: Tensor, distances: Tensor, weight: Tensor) -> Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or distances.requires_grad
                                    or weight.requires_grad):
        return _StarDeformConvFn.apply(x, distances, weight)
    return _star_forward(x, distances, weight, scratch=True)[0]  # inference: no autograd state


class StarDeformConv2d(nn.Module):
    """The star deformable 3×3 conv as a layer: ``vfnet_reg_refine_dconv`` / ``vfnet_cls_dconv``.

    Spec §2.1 (layer table), §2.3 (offsets), §2.4 (init) and §8 (checkpoint keys).

    Args:
        in_channels: C.
        out_channels: O.
        impl: ``'auto'`` | ``'fast'`` | ``'torchvision'`` (see :func:`star_deform_conv2d`).

    Parameters / state_dict keys: only ``weight`` [O, C, 3, 3] (no bias, as in mmcv's
    ``DeformConv2d`` with ``bias=False``). It starts as N(0, 0.01²), the authors'
    initialisation (spec §2.4).

    ``forward(x [N, C, H, W], distances [N, 4, H, W] in feature cells) -> [N, O, H, W]``.

    Raises:
        ValueError: on an unknown ``impl`` or non-positive channel counts.
    """

    def __init__(self, in_channels: int, out_channels: int, impl: str = "auto") -> None:
        super().__init__()
        if impl not in _IMPLS:
            raise ValueError(f"StarDeformConv2d: impl must be one of {_IMPLS}, got {impl!r}")
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(
                f"StarDeformConv2d: channel counts must be positive, got "
                f"{in_channels} -> {out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.01²) weights (spec §2.4)."""
        nn.init.normal_(self.weight, mean=0.0, std=0.01)

    def forward(self, x: Tensor, distances: Tensor) -> Tensor:
        return star_deform_conv2d(x, distances, self.weight, impl=self.impl)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=3, impl={self.impl!r}"
