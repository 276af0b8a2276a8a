"""Forward and backward of the fast CPU deformable convs: the star conv and the generic DCN.

Both layers are ``out[p] = Σ_k W_k · sample_k(x, p)`` where every sample is a weighted sum of a
few reads of ``x``; they differ only in where the reads come from (the *geometry*):
:class:`~._star_geometry._Geometry` (the star: 25 reads per location, spec §2.3) and
:class:`~._deform_geometry._DeformGeometry` (any offsets: 4 reads per tap, times a DCNv2 mask).
This module holds the one kernel they share; :mod:`._cpu_threads` holds the thread policy and
the scratch buffers.

A geometry gives, for ``N`` images of ``in_hw`` input and ``out_hw`` output locations each and
``taps`` kernel taps with ``tap_nnz[k]`` reads by tap k (``nnz`` per location in all):
``vals`` [N·out_hw·nnz] read weights (location-major, grouped by tap), ``cols`` [same] int32
the flat input location read (within its image), ``tap_index`` [same] int32
``(image·in_hw + q)·taps + k``, ``out_shape`` (H_out, W_out), and ``input_grad(dots)``, the
gradients of its own inputs from ``dots`` [N·out_hw, nnz] = ∂L/∂(read weight).

* Forward (float32/float64): sampling is linear and commutes with the channel mixing, so
  ``out = Σ_k S_k (x W_k)``. One GEMM ``taps = x_hwc @ [W_0 … W_K-1]`` [HW, K·O] (the FLOPs of
  the plain conv; x is read in its own layout, no transpose), then every output row sums its
  reads of ``taps`` with their weights (``F.embedding_bag`` with per-sample weights). Only
  the [HW, O] output is written, not a K·C-wide column matrix. ``taps`` lives in a reused
  scratch buffer (see :func:`~._cpu_threads.release_workspace`): a fresh 150 MB tensor would
  cost its page faults, about half a convolution on a VM.
* Forward (float16/bfloat16): the reads form a sparse matrix ``S`` [K·L, HW] (L output
  locations); ``cols = S @ x_hwc`` [L, K·C] (an MKL CSR product through ``torch.addmm``) runs
  in float32, then ``cols @ W`` [K·C, O] in 16 bits, in chunks with reused buffers.
* Backward: ``grad_cols = grad_out @ Wᵀ`` (GEMM), ``grad_x = Sᵀ @ grad_cols`` (sparse, with
  Sᵀ built by one sort of the non-zeros), and ``grad_W = grad_outᵀ @ cols`` (GEMM, with the
  columns recomputed per chunk). ``dots`` = ``<grad_cols[row], x[read]>`` per non-zero comes
  from ``torch.sparse.sampled_addmm``; the geometry turns it into its inputs' gradients.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._cpu_threads import _Threads, _workspace

# Most elements of a per-chunk [L, K·C] column buffer (backward and the 16-bit forward):
# L ≤ 8192 locations at C = 256 and K = 9 (75 MB in float32), so P3 of an 800×1216 image runs
# as 2 chunks. Few, big GEMMs hold up much better than many small ones on a CPU shared with
# other busy processes (each GEMM call ends in barriers). On an idle CPU the chunk size hardly
# matters once the buffers are reused.
_CHUNK_ELEMS = 9 * 8192 * 256

# Most elements of the forward's tap-product buffer [H·W, K·O'] (O' ≤ O output channels per
# pass): 9·256·16800 (P3 of a 1333×800 input, 155 MB in float32) runs in one pass.
_TAPS_ELEMS = 9 * 256 * 16800


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


_pattern_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def _chunk_pattern(chunk: int, tap_nnz: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Row pointers and local row of each non-zero of ``S`` for a chunk of ``chunk`` locations.

    Returns ``(crow [K·chunk + 1] int32, rows [nnz·chunk] int32)``. The rows of ``S`` are
    (location, tap) pairs, location-major; tap k has ``tap_nnz[k]`` non-zeros. A prefix of the
    pattern serves a shorter chunk.
    """
    key = (chunk, tap_nnz, device)
    hit = _pattern_cache.get(key)
    if hit is None:
        k = len(tap_nnz)
        counts = torch.tensor(tap_nnz, dtype=torch.int32, device=device).repeat(chunk)
        crow = torch.zeros(k * chunk + 1, dtype=torch.int32, device=device)
        crow[1:] = counts.cumsum(0)
        rows = torch.repeat_interleave(torch.arange(k * chunk, dtype=torch.int32, device=device), counts)
        hit = (crow, rows)
        if len(_pattern_cache) > 16:
            _pattern_cache.clear()
        _pattern_cache[key] = hit
    return hit


_transpose_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def _transpose_pattern(out_hw: int, in_hw: int, chunk: int, tap_nnz: tuple[int, ...], device: torch.device):
    """For the non-zeros of one image: ``chunk index · in_hw`` and the local row, [out_hw·nnz].

    The chunk index times ``in_hw`` is the sort key of a non-zero, minus its column; the local
    row is its row within the chunk's S (location·K + tap). Cached (a few MB).
    """
    key = (out_hw, in_hw, chunk, tap_nnz, device)
    hit = _transpose_cache.get(key)
    if hit is None:
        nnz = sum(tap_nnz)
        loc = torch.arange(out_hw, device=device, dtype=torch.int64)
        base_key = ((loc // chunk) * in_hw).repeat_interleave(nnz)
        _, rows_pat = _chunk_pattern(chunk, tap_nnz, device)
        within = torch.arange(out_hw * nnz, device=device) % (chunk * nnz)
        nch = -(-out_hw // chunk)
        hit = (base_key.to(torch.int32 if nch * in_hw < 2**31 else torch.int64), rows_pat[within])
        if len(_transpose_cache) >= 8:
            _transpose_cache.clear()
        _transpose_cache[key] = hit
    return hit


def _transposed_chunks(geo, vals: Tensor, chunk: int):
    """Sᵀ of every chunk at once: the non-zeros sorted by (chunk, column).

    Returns ``(crow [N·nch, in_hw+1] int32, rows [N·out_hw·nnz] int32, vals [same])``. Chunk
    ``g`` (image ``g // nch``) is the CSR matrix [in_hw, K·len] made of ``crow[g]`` and of the
    entries ``rows/vals[nnz·start : nnz·end]``, where start and end are the chunk's global
    output locations.
    """
    dev = vals.device
    n, out_hw, in_hw, nnz = geo.n, geo.out_hw, geo.in_hw, geo.nnz
    nch = -(-out_hw // chunk)
    base_key, local_row = _transpose_pattern(out_hw, in_hw, chunk, geo.tap_nnz, dev)
    key_dtype = torch.int32 if n * nch * in_hw < 2**31 else torch.int64
    key = base_key.to(key_dtype) + geo.cols.view(n, out_hw * nnz)
    if n > 1:  # chunks of image i are numbered i·nch … i·nch + nch − 1
        key += torch.arange(n, device=dev, dtype=key_dtype).view(n, 1) * (nch * in_hw)
    key = key.view(-1)
    perm = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=n * nch * in_hw).view(n * nch, in_hw)
    t_crow = torch.zeros(n * nch, in_hw + 1, dtype=torch.int32, device=dev)
    torch.cumsum(counts, 1, out=t_crow[:, 1:])
    t_rows = local_row[perm % (out_hw * nnz) if n > 1 else perm]
    return t_crow, t_rows, vals[perm]


def _sddmm(pattern: Tensor, grad_cols: Tensor, x_img: Tensor, rows_pat: Tensor, cols: Tensor, taps: int, nnz: int):
    """Per non-zero (r, q) of ``pattern``: <grad_cols[r], x_img[q]> ([nnz] values)."""
    if taps * x_img.shape[0] >= nnz:
        return torch.sparse.sampled_addmm(pattern, grad_cols, x_img.t(), beta=0.0).values()
    # sampled_addmm fails when a pattern holds more non-zeros (with duplicates) than it has
    # entries, i.e. for maps of 1 or 2 locations: gather instead.
    rows = rows_pat[: cols.numel()].long()
    return (grad_cols[rows] * x_img[cols.long()]).sum(1)


def _chunk_len(hw: int, channels: int, taps: int) -> int:
    """Locations per chunk: at most ``_CHUNK_ELEMS / (K·channels)``, balanced over the image."""
    most = max(1, _CHUNK_ELEMS // (taps * max(channels, 1)))
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


def _tap_weight(weight: Tensor, o0: int, oc: int) -> Tensor:
    """Output channels ``o0 : o0 + oc`` of ``weight`` [O, C, kh, kw], tap-major: [C, K·oc].

    Column ``k·oc + o`` holds W_k[:, o0 + o] for tap k = kw·ky + kx. The copy (2.4 MB at 256
    channels) goes into a reused buffer, valid until the next call: a fresh tensor's page faults
    would cost more than the copy.
    """
    c, kh, kw = weight.shape[1:]
    w_taps = weight.permute(1, 2, 3, 0)[..., o0 : o0 + oc]  # [C, kh, kw, oc]
    buf = _workspace("w_taps", (c, kh, kw, oc), weight.dtype, weight.device)
    return buf.copy_(w_taps).view(c, kh * kw * oc)


def _tap_gemm(x: Tensor, im: int, w_taps: Tensor, out: Tensor, threads: _Threads) -> None:
    """``out`` [H·W, K·oc] = x[im] as [H·W, C] (a view for NCHW and channels-last) @ ``w_taps``."""
    c, h, w = x.shape[1:]
    x_img = x[im].reshape(c, h * w).t()
    with threads.gemm(h * w * c * w_taps.shape[1]):
        torch.mm(x_img, w_taps, out=out)


def _tap_gather(index: Tensor, vals: Tensor, taps: Tensor, oc: int, threads: _Threads) -> Tensor:
    """[L, oc]: row p = Σ_e vals[p, e] · taps-row index[p, e] (``taps`` viewed as [·, oc])."""
    with threads.sparse("gather", index.numel() * oc):
        return F.embedding_bag(index, taps.view(-1, oc), per_sample_weights=vals, mode="sum")


def _forward_taps(x: Tensor, geo, weight: Tensor, threads: _Threads) -> Tensor:
    """Forward as Σ_k S_k (x W_k): one GEMM, then a weighted gather. Returns [N·L, O].

    Sampling commutes with the channel mixing, so the GEMM comes first: ``taps = x_hwc @ W_taps``
    [H·W, K·O] holds x·W_k of every input location and tap, and output p sums its reads of that
    buffer with their weights (``embedding_bag`` with per-sample weights). The GEMM reads x in
    its own layout (NCHW or channels-last, no transpose) and has the FLOPs of the plain conv
    (stride 1). The gather writes only the [L, O] output, where sampling first would write a
    K·C-wide column buffer. O is split into passes when the buffer would exceed ``_TAPS_ELEMS``.
    """
    n = x.shape[0]
    o = weight.shape[0]
    k, hw, ll, nnz = geo.taps, geo.in_hw, geo.out_hw, geo.nnz
    index = geo.tap_index.view(n * ll, nnz)  # rows of the whole batch's buffer
    vals = geo.vals.view(n * ll, nnz).to(x.dtype)
    if n * hw * k * o <= _TAPS_ELEMS:  # the usual case: one buffer for the batch, one gather
        taps = _workspace("taps", (n * hw, k * o), x.dtype, x.device)
        w_taps = _tap_weight(weight, 0, o)
        for im in range(n):
            _tap_gemm(x, im, w_taps, taps[im * hw : (im + 1) * hw], threads)
        return _tap_gather(index, vals, taps, o, threads)  # [N·L, O]
    # Large maps: one image and at most `step` output channels per pass.
    step = max(1, min(o, _TAPS_ELEMS // (k * hw)))
    out = torch.empty(n * ll, o, dtype=x.dtype, device=x.device)
    for im in range(n):
        rows = slice(im * ll, (im + 1) * ll)
        idx = index[rows] - im * k * hw  # rows of this image's buffer
        for o0 in range(0, o, step):
            oc = min(step, o - o0)
            taps = _workspace("taps", (hw, k * oc), x.dtype, x.device)
            _tap_gemm(x, im, _tap_weight(weight, o0, oc), taps, threads)
            out[rows, o0 : o0 + oc] = _tap_gather(idx, vals[rows], taps, oc, threads)
    return out


def _weight_matrix(weight: Tensor) -> Tensor:
    """``weight`` [O, C, kh, kw] as [O, K·C], column k·C + c (the columns' layout)."""
    o, c = weight.shape[:2]
    k = weight.shape[2] * weight.shape[3]
    return weight.reshape(o, c, k).transpose(1, 2).reshape(o, k * c)


def _forward_columns(x: Tensor, geo, weight: Tensor, threads: _Threads) -> Tensor:
    """Forward as sampled columns, then a GEMM. Returns [N·L, O].

    For float16/bfloat16, and for strided convs (fewer output than input locations), where
    the tap GEMM of :func:`_forward_taps` would multiply every input location (4× the FLOPs of
    a stride-2 conv). The sampling (an MKL CSR product) runs in float32 (float64 for float64)
    and the GEMM in x's dtype, so the sample positions and read weights keep float32 precision.
    """
    n, c = x.shape[:2]
    o = weight.shape[0]
    k, hw, ll, nnz = geo.taps, geo.in_hw, geo.out_hw, geo.nnz
    dev = x.device
    vals = geo.vals
    wm = _weight_matrix(weight)  # [O, K·C]
    half = x.dtype in (torch.float16, torch.bfloat16)
    sdt = torch.float32 if half else x.dtype  # dtype of the sampling
    vals = vals.to(sdt)
    xt = _to_hwc(x, sdt, threads)  # [N·HW, C]
    out = torch.empty(n * ll, o, dtype=x.dtype, device=dev)
    chunk = _chunk_len(ll, c, k)
    crow, _ = _chunk_pattern(chunk, geo.tap_nnz, dev)
    buf = _workspace("cols", (k * chunk, c), sdt, dev)
    buf_h = _workspace("cols_h", (chunk, k * c), x.dtype, dev) if half else None
    for im in range(n):
        x_img = xt[im * hw : (im + 1) * hw]
        for s in range(0, ll, chunk):
            ln = min(chunk, ll - s)
            g0 = im * ll + s
            p0, p1 = g0 * nnz, (g0 + ln) * nnz
            sm = _csr(crow[: k * ln + 1], geo.cols[p0:p1], vals[p0:p1], (k * ln, hw))
            with threads.sparse("spmm", nnz * ln * c):
                cols = _spmm(sm, x_img, buf[: k * ln]).view(ln, k * c)  # [ln, K·C]
            if half:
                cols = buf_h[:ln].copy_(cols)
            with threads.gemm(ln * k * c * o):
                torch.mm(cols, wm.t(), out=out[g0 : g0 + ln])
    return out


def _tap_forward(x: Tensor, geo, weight: Tensor) -> Tensor:
    """``out`` [N, O, H_out, W_out] (channels-last) of the sampled conv; float32 positions."""
    n, c = x.shape[:2]
    o = weight.shape[0]
    h_out, w_out = geo.out_shape
    threads = _Threads(x.device)
    with threads.serial():
        if n * geo.out_hw * o == 0 or c == 0:
            out = torch.zeros(n * geo.out_hw, o, dtype=x.dtype, device=x.device)
        elif x.dtype in (torch.float16, torch.bfloat16) or 2 * geo.out_hw < geo.in_hw:
            out = _forward_columns(x, geo, weight, threads)
        else:
            out = _forward_taps(x, geo, weight, threads)
    return out.view(n, h_out, w_out, o).permute(0, 3, 1, 2)


def _tap_backward(ctx, grad_out: Tensor, need_x: bool, need_geo: bool, need_w: bool):
    """Gradients ``(grad_x, dots, grad_w)`` of the sampled conv (see the module docstring).

    ``ctx`` holds ``geo``, ``x_channels_last`` and the saved ``(x, weight)``. ``dots``
    [N·L, nnz] = ∂L/∂(read weight), for the geometry's ``input_grad``.
    """
    x, weight = ctx.saved_tensors
    geo = ctx.geo
    n, c, h, w = x.shape
    o = weight.shape[0]
    k, hw, ll, nnz = geo.taps, geo.in_hw, geo.out_hw, geo.nnz
    dt = x.dtype
    half = dt in (torch.float16, torch.bfloat16)
    sdt = torch.float32 if half else dt  # dtype of the sparse products
    dev = x.device
    threads = _Threads(dev)
    with threads.serial():
        vals = geo.vals.to(sdt)
        wm = _weight_matrix(weight)  # [O, K·C]
        xt = _to_hwc(x, sdt, threads)  # [N·HW, C]
        go = _to_hwc(grad_out, dt, threads)  # [N·L, O]; a view for a channels-last grad
        # The chunk loop writes every element of gx and dots (chunk 0 of each image overwrites
        # gx with beta = 0, rows that no read reaches included), unless there is nothing to
        # compute (C = 0 or O = 0).
        work = c and o
        alloc = torch.empty if work else torch.zeros
        gx = alloc(n * hw, c, dtype=sdt, device=dev) if need_x else None
        dots = alloc(n * ll * nnz, dtype=sdt, device=dev) if need_geo else None
        gw = torch.zeros(o, k * c, dtype=sdt, device=dev) if need_w else None  # like wm
        if n * ll and work:
            chunk = _chunk_len(ll, max(c, o), k)
            nch = -(-ll // chunk)
            crow, rows_pat = _chunk_pattern(chunk, geo.tap_nnz, dev)
            if need_x:
                t_crow, t_rows, t_vals = _transposed_chunks(geo, vals, chunk)
            gbuf = _workspace("grad_cols", (chunk, k * c), dt, dev)
            gbuf_s = _workspace("grad_cols_s", (k * chunk, c), sdt, dev) if half else None
            cbuf = _workspace("cols", (k * chunk, c), sdt, dev) if need_w else None
            cbuf_h = _workspace("cols_h", (chunk, k * c), dt, dev) if need_w and half else None
            for im in range(n):
                x_img = xt[im * hw : (im + 1) * hw]
                gx_img = gx[im * hw : (im + 1) * hw] if need_x else None
                for j, s in enumerate(range(0, ll, chunk)):
                    ln = min(chunk, ll - s)
                    g0 = im * ll + s
                    p0, p1 = g0 * nnz, (g0 + ln) * nnz
                    go_c = go[g0 : g0 + ln]
                    sm = _csr(crow[: k * ln + 1], geo.cols[p0:p1], vals[p0:p1], (k * ln, hw))
                    if need_x or need_geo:
                        with threads.gemm(ln * k * c * o):  # grad of the columns [ln, K·C]
                            gc = torch.mm(go_c, wm, out=gbuf[:ln])
                        if half:
                            gc = gbuf_s[: k * ln].view(ln, k * c).copy_(gc)
                        gc = gc.view(k * ln, c)
                    if need_geo:  # dots[e] = <grad_cols[row(e)], x[col(e)]>
                        with threads.sparse("sddmm", nnz * ln * c):
                            dots[p0:p1] = _sddmm(sm, gc, x_img, rows_pat, geo.cols[p0:p1], k, nnz)
                    if need_x:  # grad_x += Sᵀ · grad_cols
                        st = _csr(t_crow[im * nch + j], t_rows[p0:p1], t_vals[p0:p1], (hw, k * ln))
                        with threads.sparse("spmm_t", nnz * ln * c):
                            torch.addmm(gx_img, st, gc, beta=1.0 if j else 0.0, out=gx_img)
                    if need_w:  # grad_W += grad_outᵀ · cols, the columns recomputed
                        with threads.sparse("spmm", nnz * ln * c):
                            cols = _spmm(sm, x_img, cbuf[: k * ln]).view(ln, k * c)
                        if half:  # bf16/fp16 GEMM, accumulated over the chunks in float32
                            cols = cbuf_h[:ln].copy_(cols)
                            go_t = go_c.t().contiguous()
                            with threads.gemm(ln * k * c * o):
                                gw.add_(torch.mm(go_t, cols))
                        else:
                            with threads.gemm(ln * k * c * o):
                                gw.addmm_(go_c.t(), cols)

        grad_x = grad_w = None
        if need_x:
            gx = gx.to(dt)
            if ctx.x_channels_last:
                grad_x = gx.view(n, h, w, c).permute(0, 3, 1, 2)
            else:
                # Hand back x's own (NCHW) layout: an elementwise backward that mixes layouts
                # (e.g. the ReLU before this conv) costs more than this transpose.
                with threads.sparse("copy", gx.numel()):
                    grad_x = _rows_to_nchw(gx, n, c, h, w)
        if dots is not None:
            dots = dots.view(n * ll, nnz)
        if need_w:
            kh, kw = weight.shape[2:]
            grad_w = gw.view(o, k, c).transpose(1, 2).to(dt).reshape(o, c, kh, kw)
    return grad_x, dots, grad_w


class _TapConvFn(torch.autograd.Function):
    """out = Σ_k W_k · sample_k(x) for the geometry that ``make_geo(*geo_inputs)`` builds.

    ``apply(make_geo, x, weight, *geo_inputs)``; backward returns the gradients of ``x``,
    ``weight`` and, through ``geo.input_grad``, of every geometry input.
    """

    @staticmethod
    def forward(ctx, make_geo: Callable, x: Tensor, weight: Tensor, *geo_inputs: Tensor) -> Tensor:
        with _Threads(x.device).serial():  # the geometry's many small ops: calling thread only
            geo = make_geo(*geo_inputs, scratch=False)
        out = _tap_forward(x, geo, weight)
        geo.drop_tap_index()
        ctx.geo = geo
        ctx.n_geo = len(geo_inputs)
        ctx.x_channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        need = ctx.needs_input_grad
        need_x, need_w, need_geo = need[1], need[2], any(need[3:])
        grad_x, dots, grad_w = _tap_backward(ctx, grad_out, need_x, need_geo, need_w)
        geo_grads = ctx.geo.input_grad(dots) if need_geo else (None,) * ctx.n_geo
        geo_grads = tuple(g if need[3 + i] else None for i, g in enumerate(geo_grads))
        return (None, grad_x, grad_w, *geo_grads)


def _apply_tap_conv(make_geo: Callable, x: Tensor, weight: Tensor, *geo_inputs: Tensor) -> Tensor:
    """The sampled conv with autograd when anything needs a gradient, else without state."""
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or any(t.requires_grad for t in geo_inputs)
    ):
        return _TapConvFn.apply(make_geo, x, weight, *geo_inputs)
    with _Threads(x.device).serial():
        geo = make_geo(*geo_inputs, scratch=True)
    return _tap_forward(x, geo, weight)  # inference: no autograd state
