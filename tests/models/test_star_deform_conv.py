"""Tests for the star-shaped deformable conv (spec §2.2–2.3)."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

import varifocal.models.layers._cpu_threads as cpu_threads
import varifocal.models.layers._tap_kernels as kernels
import varifocal.models.layers.star_deform_conv as sdc
from varifocal.models.layers.star_deform_conv import (
    StarDeformConv2d,
    star_deform_conv2d,
    star_deform_conv2d_reference,
    star_offsets,
)


def _inputs(n=2, c=5, o=6, h=7, w=9, dtype=torch.float64, seed=0, lo=-1.5, hi=11.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(o, c, 3, 3, generator=g, dtype=dtype)
    # Fractional distances in [lo, hi) cells: negative ones, zero-ish ones, and many boxes that
    # reach far outside a 7×9 map.
    dist = torch.rand(n, 4, h, w, generator=g, dtype=dtype) * (hi - lo) + lo
    return x, dist, weight


def _grads(fn, x, dist, weight, gout):
    x, dist, weight = (t.detach().requires_grad_() for t in (x, dist, weight))
    out = fn(x, dist, weight)
    return (out, *torch.autograd.grad(out, (x, dist, weight), gout))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def small_chunks(monkeypatch):
    # 3 locations per chunk when C = O = 5/6: many chunks, a partial last one, and chunks
    # that do not divide H·W, which exercises the chunked fast path on tiny inputs. The
    # forward's tap products hold 4 output channels of a 7×9 map: O = 6 runs as 4 + 2.
    monkeypatch.setattr(kernels, "_CHUNK_ELEMS", 9 * 3 * 6)
    monkeypatch.setattr(kernels, "_TAPS_ELEMS", 9 * 63 * 4)


def test_offsets_match_spec_table():
    l, t, r, b = 1.5, 2.0, 3.25, 4.0
    d = torch.tensor([l, t, r, b]).view(1, 4, 1, 1)
    off = star_offsets(d).view(9, 2)
    expected = torch.tensor(
        [
            [1 - t, 1 - l],
            [1 - t, 0],
            [1 - t, r - 1],
            [0, 1 - l],
            [0, 0],
            [0, r - 1],
            [b - 1, 1 - l],
            [b - 1, 0],
            [b - 1, r - 1],
        ]
    )
    assert torch.equal(off, expected)
    # Targets = regular grid position + offset = the star.
    grid = torch.tensor([[ky - 1.0, kx - 1.0] for ky in range(3) for kx in range(3)])
    star = torch.tensor([[-t, -l], [-t, 0], [-t, r], [0, -l], [0, 0], [0, r], [b, -l], [b, 0], [b, r]])
    assert torch.equal(grid + off, star)


def test_reference_is_torchvision_with_star_offsets():
    x, d, w = _inputs(dtype=torch.float32)
    ref = deform_conv2d(x, star_offsets(d), w, padding=1)
    assert torch.equal(star_deform_conv2d_reference(x, d, w), ref)
    assert torch.equal(star_deform_conv2d(x, d, w, impl="torchvision"), ref)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_fast_matches_torchvision_forward_and_backward(dtype, tol, chunked, request):
    if chunked:
        request.getfixturevalue("small_chunks")
    x, d, w = _inputs(dtype=dtype)
    gout = torch.randn(2, 6, 7, 9, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref = _grads(lambda *a: star_deform_conv2d(*a, impl="torchvision"), x, d, w, gout)
    fast = _grads(lambda *a: star_deform_conv2d(*a, impl="fast"), x, d, w, gout)
    assert (fast[0] - ref[0]).abs().max().item() <= tol  # absolute, forward
    for name, a, b in zip(("x", "distances", "weight"), fast[1:], ref[1:]):
        assert _rel(a, b) <= tol, name


@pytest.mark.parametrize("chunked", [False, True])
def test_no_grad_forward_equals_autograd_forward_across_shapes(chunked, request):
    # Without autograd the geometry lives in per-thread scratch buffers that the next call
    # overwrites; results handed out earlier and later calls of other shapes stay correct.
    if chunked:
        request.getfixturevalue("small_chunks")
    shapes = [dict(n=2, h=7, w=9), dict(n=1, h=4, w=13, hi=20.0), dict(n=2, h=7, w=9, seed=5)]
    outs, refs = [], []
    for kw in shapes:
        x, d, w = _inputs(dtype=torch.float32, **kw)
        with torch.no_grad():
            outs.append(star_deform_conv2d(x, d, w, impl="fast"))
        with_grad = star_deform_conv2d(x, d, w.requires_grad_(), impl="fast")
        assert torch.equal(outs[-1], with_grad.detach())
        refs.append(star_deform_conv2d_reference(x, d, w.detach()))
    for out, ref in zip(outs, refs):
        assert (out - ref).abs().max().item() <= 1e-4


def test_tap_index_and_weights_by_hand():
    # One location at (1, 1) of a 3×4 map with (l, t, r, b) = (0.5, 1, 1.25, 0): taps k0..k2
    # sample row 0, k3..k5 and k6..k8 row 1; columns 0.5, 1 and 2.25.
    d = torch.tensor([0.5, 1.0, 1.25, 0.0]).view(1, 4, 1, 1).expand(1, 4, 3, 4).contiguous()
    geo = sdc._Geometry(d, 3, 4, torch.float64)
    p = 1 * 4 + 1
    idx = geo.tap_index.view(12, 25)[p]
    vals = geo.vals.view(12, 25)[p]
    reads = {}
    for i, v in zip(idx.tolist(), vals.tolist()):
        q, k = divmod(i, 9)
        reads[(k, q)] = reads.get((k, q), 0.0) + v
    expected = {}
    for ky, row in enumerate((0, 1, 1)):  # y: 1 − 1, 1 + 0 (centre), 1 + 0
        for kx, (c0, frac) in enumerate(((0, 0.5), (1, 0.0), (2, 0.25))):  # x: 0.5, 1, 2.25
            for col, wgt in ((c0, 1 - frac), (c0 + 1, frac)):
                key = (3 * ky + kx, row * 4 + col)
                expected[key] = expected.get(key, 0.0) + wgt
    got = {key: v for key, v in reads.items() if v != 0.0}
    want = {key: v for key, v in expected.items() if v != 0.0}
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12)
    assert torch.equal(geo.cols, geo.tap_index // 9)
    # A second image's reads point into its own part of the batch's buffer.
    geo2 = sdc._Geometry(torch.cat([d, d]), 3, 4, torch.float64)
    assert torch.equal(geo2.tap_index[: 12 * 25], geo.tap_index)
    assert torch.equal(geo2.tap_index[12 * 25 :], geo.tap_index + 9 * 12)
    assert torch.equal(geo2.cols, torch.cat([geo.cols, geo.cols]))


def test_fast_float32_at_head_like_width():
    # 32 channels in and out: float32 accumulation over 9·32 products per output.
    x, d, w = _inputs(n=1, c=32, o=32, h=12, w=16, dtype=torch.float32, hi=20.0)
    gout = torch.randn(1, 32, 12, 16, generator=torch.Generator().manual_seed(2))
    ref = _grads(star_deform_conv2d_reference, x, d, w, gout)
    fast = _grads(lambda *a: star_deform_conv2d(*a, impl="fast"), x, d, w, gout)
    assert (fast[0] - ref[0]).abs().max().item() <= 1e-4
    for name, a, b in zip(("x", "distances", "weight"), fast[1:], ref[1:]):
        assert _rel(a, b) <= 1e-4, name


def test_fast_on_integer_and_boundary_positions():
    # Integer distances put samples on pixel centres and exactly on the -1 / H / W borders, where
    # the zero padding switches on; fractional ones just inside and outside the border.
    x, _, w = _inputs(n=1, h=5, w=6)
    vals = torch.tensor([0.0, 1.0, 2.0, 5.0, 6.0, 0.5, -1.0, 5.999, 6.001, 7.0])
    d = vals[torch.randint(0, len(vals), (1, 4, 5, 6), generator=torch.Generator().manual_seed(3))]
    d = d.double()
    gout = torch.randn(1, 6, 5, 6, dtype=torch.float64)
    ref = _grads(star_deform_conv2d_reference, x, d, w, gout)
    fast = _grads(lambda *a: star_deform_conv2d(*a, impl="fast"), x, d, w, gout)
    for a, b in zip(fast, ref):
        assert _rel(a, b) <= 1e-10


def test_unit_distances_equal_plain_conv():
    # l = t = r = b = 1 puts every tap on the regular 3×3 grid: all offsets are 0.
    x, _, w = _inputs(dtype=torch.float64)
    d = torch.ones(2, 4, 7, 9, dtype=torch.float64)
    assert torch.count_nonzero(star_offsets(d)) == 0
    expected = F.conv2d(x, w, padding=1)
    for impl in ("fast", "torchvision"):
        out = star_deform_conv2d(x, d, w, impl=impl)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_zero_distances_equal_centre_1x1_conv():
    # l = t = r = b = 0: all 9 taps read the location itself, so the weight acts summed over taps.
    x, _, w = _inputs(dtype=torch.float64)
    d = torch.zeros(2, 4, 7, 9, dtype=torch.float64)
    expected = F.conv2d(x, w.sum((2, 3), keepdim=True))
    for impl in ("fast", "torchvision"):
        out = star_deform_conv2d(x, d, w, impl=impl)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_gradcheck_fast_float64():
    x, d, w = _inputs(n=1, c=2, o=2, h=2, w=3, lo=0.1, hi=2.9)
    # keep samples away from integer positions, where the bilinear weights have kinks
    d = torch.where((d - d.round()).abs() < 0.05, d + 0.1, d)
    args = tuple(t.requires_grad_() for t in (x, d, w))
    assert torch.autograd.gradcheck(lambda *a: star_deform_conv2d(*a, impl="fast"), args)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 1), (1, 1, 2), (2, 2, 1), (1, 3, 1), (3, 1, 4), (1, 5, 1)])
def test_tiny_maps_and_batches(shape):
    n, h, w = shape
    x, d, wt = _inputs(n=n, h=h, w=w)
    gout = torch.randn(n, 6, h, w, dtype=torch.float64)
    ref = _grads(star_deform_conv2d_reference, x, d, wt, gout)
    fast = _grads(lambda *a: star_deform_conv2d(*a, impl="fast"), x, d, wt, gout)
    for a, b in zip(fast, ref):
        assert (a - b).abs().max().item() <= 1e-10


def test_empty_batch_and_channels_last_layouts():
    x, d, w = _inputs(n=0)
    xr = x.requires_grad_()
    out = star_deform_conv2d(xr, d, w, impl="fast")
    assert out.shape == (0, 6, 7, 9)
    out.sum().backward()
    assert xr.grad.shape == x.shape
    # A channels-last x gets a channels-last grad, an NCHW x an NCHW one; values as torchvision.
    x, d, w = _inputs()
    gout = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    ref = _grads(star_deform_conv2d_reference, x, d, w, gout)
    for fmt in (torch.channels_last, torch.contiguous_format):
        xf = x.contiguous(memory_format=fmt).requires_grad_()
        out = star_deform_conv2d(xf, d, w, impl="fast")
        assert out.is_contiguous(memory_format=torch.channels_last)
        out.backward(gout)
        assert xf.grad.is_contiguous(memory_format=fmt)
        assert (out - ref[0]).abs().max().item() < 1e-10
        assert (xf.grad - ref[1]).abs().max().item() < 1e-10


@pytest.mark.parametrize("c,o", [(3, 0), (0, 2)])
def test_zero_channels(c, o):
    x, d, w = _inputs(n=1, c=c, o=o, h=3, w=4)
    x, d, w = (t.requires_grad_() for t in (x, d, w))
    out = star_deform_conv2d(x, d, w, impl="fast")
    assert out.shape == (1, o, 3, 4) and torch.count_nonzero(out) == 0
    gx, gd, gw = torch.autograd.grad(out.sum() + x.sum() * 0 + d.sum() * 0, (x, d, w))
    assert torch.count_nonzero(gx) == 0 and torch.count_nonzero(gd) == 0
    assert gw.shape == w.shape


def test_sparse_thread_modes_give_identical_numbers(monkeypatch):
    # The CPU path runs its sparse products on 1 or all threads (measured online); each output
    # value is computed by one thread in a fixed order, so the results must be bit-identical.
    monkeypatch.setattr(sdc._SparseThreadTuner, "min_work", 0)
    x, d, w = _inputs(n=2, c=16, o=8, h=9, w=11, dtype=torch.float32)
    gout = torch.randn(2, 8, 9, 11)

    def fast(*args):
        return star_deform_conv2d(*args, impl="fast")

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for mode in ("serial", "parallel", "auto", "auto", "auto"):
            monkeypatch.setattr(cpu_threads, "_SPARSE_THREADS", mode)
            results.append(_grads(fast, x, d, w, gout))
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_sparse_thread_tuner_picks_the_cheaper_count():
    tuner = sdc._SparseThreadTuner()
    work = 10 * tuner.min_work
    assert tuner.pick("k", 2, tuner.min_work - 1) == 1  # small calls: always 1 thread
    assert tuner.pick("k", 2, work) == 1  # unmeasured: try 1 thread, then all
    tuner.record("k", 1, 2.0, work)
    assert tuner.pick("k", 2, work) == 2
    tuner.record("k", 2, 1.0, work)
    picks = [tuner.pick("k", 2, work) for _ in range(2 * tuner.explore_every)]
    assert picks.count(1) == 2 and picks.count(2) == len(picks) - 2  # explores now and then
    for _ in range(10):  # 2 threads become slow (a loaded machine): switch to 1
        tuner.record("k", 2, 8.0, work)
    assert tuner.pick("k", 2, work) == 1


def test_only_some_inputs_require_grad():
    x, d, w = _inputs()
    gout = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    ref = _grads(star_deform_conv2d_reference, x, d, w, gout)
    for which in range(3):
        args = [x, d, w]
        args[which] = args[which].clone().requires_grad_()
        out = star_deform_conv2d(*args, impl="fast")
        (g,) = torch.autograd.grad(out, args[which], gout)
        assert _rel(g, ref[1 + which]) <= 1e-10


def test_non_finite_distances_read_zero():
    x, d, w = _inputs(n=1)
    d[0, :, 0, 0] = float("inf")
    d[0, 0, 1, 1] = float("-inf")
    d[0, 2, 2, 2] = 1e30
    out = star_deform_conv2d(x, d, w, impl="fast")
    assert torch.isfinite(out).all()
    finite = d.clone()
    finite[0, :, 0, 0] = 1e4
    finite[0, 0, 1, 1] = -1e4
    torch.testing.assert_close(out, star_deform_conv2d_reference(x, finite, w), rtol=0, atol=1e-12)


def test_bfloat16_autocast_close_to_float32():
    x, d, w = (t.requires_grad_() for t in _inputs(dtype=torch.float32))
    ref = star_deform_conv2d_reference(x, d, w)
    xr, dr, wr = (t.detach().clone().requires_grad_() for t in (x, d, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = star_deform_conv2d(xr, dr, wr, impl="fast")
    assert out.dtype == torch.bfloat16
    assert _rel(out.float(), ref.detach()) < 3e-2
    out.float().sum().backward()
    gref = torch.autograd.grad(ref.sum(), (x, d, w))
    for g, gr in zip((xr.grad, dr.grad, wr.grad), gref):
        assert g.dtype == torch.float32 and _rel(g, gr) < 5e-2


def test_module_state_dict_and_impls():
    torch.manual_seed(0)
    m = StarDeformConv2d(5, 6)
    assert list(m.state_dict()) == ["weight"]
    assert m.weight.shape == (6, 5, 3, 3)
    assert 0.005 < m.weight.std().item() < 0.015  # N(0, 0.01²), spec §2.4
    x, d, _ = _inputs(dtype=torch.float32)
    ref = star_deform_conv2d_reference(x, d, m.weight.detach())
    for impl in ("auto", "fast", "torchvision"):
        m.impl = impl
        torch.testing.assert_close(m(x, d), ref, rtol=0, atol=1e-5)


def test_bad_inputs_raise():
    x, d, w = _inputs()
    with pytest.raises(ValueError, match="impl"):
        star_deform_conv2d(x, d, w, impl="cuda")
    with pytest.raises(ValueError, match="distances"):
        star_deform_conv2d(x, d[:, :3], w)
    with pytest.raises(ValueError, match="distances"):
        star_deform_conv2d(x, d[..., :-1], w)
    with pytest.raises(ValueError, match="weight"):
        star_deform_conv2d(x, d, w[:, :4])
    with pytest.raises(ValueError, match="impl"):
        StarDeformConv2d(4, 4, impl="mmcv")
