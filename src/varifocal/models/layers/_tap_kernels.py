"""Forward and backward of the fast CPU star deformable conv (``impl='fast'``, spec §2.3).

Split out of :mod:`varifocal.models.layers.star_deform_conv`, whose
:func:`~varifocal.models.layers.star_deform_conv.star_deform_conv2d` calls :func:`_apply_fast`.
The reads, their weights and the sparse patterns come from :mod:`._star_geometry`, the thread
counts and scratch buffers from :mod:`._cpu_threads`.

* Forward (float32/float64): sampling is linear and commutes with the channel mixing, so
  ``out = Σ_k S_k (x W_k)``. One GEMM ``taps = x_hwc @ [W_0 … W_8]`` [HW, 9·O] (the FLOPs of
  the plain conv; x is read in its own layout, no transpose), then every output row sums its
  25 reads of ``taps`` with their weights (``F.embedding_bag`` with per-sample weights). Only
  the [HW, O] output is written, not a 9·C-wide column matrix. ``taps`` lives in a reused
  scratch buffer (see :func:`~._cpu_threads.release_workspace`): a fresh 150 MB tensor would
  cost its page faults, about half a convolution on a VM. Without autograd, the geometry uses
  scratch buffers too.
* Forward (float16/bfloat16): the reads form a sparse matrix ``S`` [9·HW, HW] with 25
  non-zeros per location; ``cols = S @ x_hwc`` [HW, 9·C] (an MKL CSR product through
  ``torch.addmm``) runs in float32, then ``cols @ W`` [9·C, O] in 16 bits, in chunks of ≤ 8k
  locations with reused buffers.
* Backward: ``grad_cols = grad_out @ Wᵀ`` (GEMM), ``grad_x = Sᵀ @ grad_cols`` (sparse, with
  Sᵀ built by one sort of the non-zeros), and ``grad_W = grad_outᵀ @ cols`` (GEMM, with the
  columns recomputed per chunk). The distance gradient applies the analytic derivative of the
  bilinear weights (torchvision's one-sided one) to ``<grad_cols, x[neighbour]>``, computed
  with ``torch.sparse.sampled_addmm``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ._cpu_threads import _Threads, _workspace
from ._star_geometry import _NNZ, _chunk_pattern, _Geometry, _transposed_chunks

# Most elements of a per-chunk [L, 9·C] column buffer (backward and the 16-bit forward):
# L ≤ 8192 locations at C = 256 (75 MB in float32), so P3 of an 800×1216 image runs as 2
# chunks. Few, big GEMMs hold up much better than many small ones on a CPU shared with other
# busy processes (each GEMM call ends in barriers). On an idle CPU the chunk size hardly
# matters once the buffers are reused.
_CHUNK_ELEMS = 9 * 8192 * 256


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


def _sddmm(pattern: Tensor, grad_cols: Tensor, x_img: Tensor, rows_pat: Tensor, cols: Tensor) -> Tensor:
    """Per non-zero (r, q) of ``pattern``: <grad_cols[r], x_img[q]> ([nnz] values)."""
    if 9 * x_img.shape[0] >= _NNZ:
        return torch.sparse.sampled_addmm(pattern, grad_cols, x_img.t(), beta=0.0).values()
    # sampled_addmm fails when a pattern holds more non-zeros (with duplicates) than it has
    # entries, i.e. for maps of 1 or 2 locations: gather instead.
    rows = rows_pat[: cols.numel()].long()
    return (grad_cols[rows] * x_img[cols.long()]).sum(1)


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


def _to_hwc(t: Tensor, dtype: torch.dtype, threads: _Threads) -> Tensor:
    """[N, C, H, W] (any strides) → contiguous [N·H·W, C] in ``dtype`` (a view when possible)."""
    n, c, h, w = t.shape
    nhwc = t.permute(0, 2, 3, 1)
    if nhwc.dtype == dtype and nhwc.is_contiguous():
        return nhwc.reshape(n * h * w, c)
    out = torch.empty((n, h, w, c), dtype=dtype, device=t.device)
    with threads.sparse("copy", t.numel()):  # memory-bound: thread count tuned like sparse ops
        out.copy_(nhwc)
    return out.view(n * h * w, c)


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


def _tap_gemm(x: Tensor, im: int, w9: Tensor, out: Tensor, threads: _Threads) -> None:
    """``out`` [H·W, 9·oc] = x[im] as [H·W, C] (a view for NCHW and channels-last) @ ``w9``."""
    c, h, w = x.shape[1:]
    x_img = x[im].reshape(c, h * w).t()
    with threads.gemm(h * w * c * w9.shape[1]):
        torch.mm(x_img, w9, out=out)


def _tap_gather(index: Tensor, vals: Tensor, taps: Tensor, oc: int, threads: _Threads) -> Tensor:
    """[L, oc]: row p = Σ_e vals[p, e] · taps-row index[p, e] (``taps`` viewed as [·, oc])."""
    with threads.sparse("gather", index.numel() * oc):
        return F.embedding_bag(index, taps.view(-1, oc), per_sample_weights=vals, mode="sum")


def _forward_taps(x: Tensor, geo: _Geometry, weight: Tensor, threads: _Threads) -> Tensor:
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


def _forward_columns(x: Tensor, geo: _Geometry, weight: Tensor, threads: _Threads) -> Tensor:
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


def _star_forward(x: Tensor, distances: Tensor, weight: Tensor, scratch: bool) -> tuple[Tensor, _Geometry]:
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
        ctx.x_channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
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
                            st = _csr(t_crow[im * nch + j], t_rows[p0:p1], t_vals[p0:p1], (hw, 9 * ln))
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


def _apply_fast(x: Tensor, distances: Tensor, weight: Tensor) -> Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or distances.requires_grad or weight.requires_grad):
        return _StarDeformConvFn.apply(x, distances, weight)
    return _star_forward(x, distances, weight, scratch=True)[0]  # inference: no autograd state
