"""Geometry of the fast star deformable conv: the 25 neighbour reads of every location.

Split out of :mod:`varifocal.models.layers.star_deform_conv` (spec §2.3); used by
:mod:`._tap_kernels`. Per location the star needs only 25 neighbour reads: 4 corner taps × 4
neighbours, 4 edge taps × 2 neighbours (they move along one axis only), and 1 read for the
centre tap. They are all pairs of 5 row sources (floor and floor+1 of the top and bottom rows,
the own row) and 5 column sources, so their indices and bilinear weights come from two small
per-location tables (:func:`_source_table`, :class:`_Geometry`). Here are also the constant
selection tables of the 25 reads and the analytic distance gradient. :class:`_Geometry` is a
geometry of the shared kernel of :mod:`._tap_kernels`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._cpu_threads import _workspace

# Non-zeros (neighbour reads) of each tap k = 0..8: corners 4, edge taps 2, centre 1.
_TAP_NNZ = (4, 2, 4, 2, 1, 2, 4, 2, 4)
_NNZ = sum(_TAP_NNZ)  # 25 per location


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
_SEL_TAP_INDEX = torch.cat(
    [
        _SEL_READ * 9,
        torch.tensor([[k for k, nnz in enumerate(_TAP_NNZ) for _ in range(nnz)]], dtype=torch.float64),
        torch.ones(1, _NNZ, dtype=torch.float64),
    ]
)


def _fresh(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A new tensor (the allocator of geometry kept for backward); ``slot`` is ignored."""
    return torch.empty(shape, dtype=dtype, device=device)


def _scratch(slot: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A reused per-thread buffer (the allocator of geometry that dies with the call).

    On CPU each fresh MB-sized tensor costs its page faults on first touch; on this VM that is
    ~0.4 ms per MB, as much as the arithmetic of the whole geometry.
    """
    return _workspace("geo_" + slot, shape, dtype, device)


def _source_table(distances: Tensor, height: int, width: int, pos_dtype: torch.dtype, alloc=_fresh):
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

    Attributes (the geometry protocol of :mod:`._tap_kernels`): ``n``, ``in_hw`` = ``out_hw``
    = H·W, ``out_shape``, ``taps`` 9, ``tap_nnz`` (4, 2, 4, 2, 1, 2, 4, 2, 4), ``nnz`` 25;
    ``vals`` [N·H·W·25] bilinear weights of the reads (location-major, grouped by
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
        # The geometry protocol of ._tap_kernels: stride 1, output grid = input grid.
        self.n = distances.shape[0]
        self.in_hw = self.out_hw = height * width
        self.out_shape = (height, width)
        self.taps, self.tap_nnz, self.nnz = 9, _TAP_NNZ, _NNZ
        self.dist_dtype = distances.dtype
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

    def input_grad(self, dots: Tensor) -> tuple[Tensor]:
        """``(∂L/∂distances,)`` from ``dots`` (the kernel's geometry protocol)."""
        return (self.distance_grad(dots).to(self.dist_dtype),)

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
