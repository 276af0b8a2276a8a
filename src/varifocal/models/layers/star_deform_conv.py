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
* ``'fast'`` (CPU): per location the star needs only 25 neighbour reads, whose indices and
  bilinear weights come from two small per-location tables (:mod:`._star_geometry`). The
  float32/float64 forward is one GEMM ``x_hwc @ [W_0 … W_8]`` followed by a weighted gather of
  the 25 reads; the float16/bfloat16 forward and the backward use sparse sampling matrices and
  GEMMs (:mod:`._tap_kernels`, the kernel it shares with the generic deformable conv of
  :mod:`.deform_conv`). Thread counts and the reused per-thread scratch buffers are
  in :mod:`._cpu_threads` (see :func:`release_workspace`).

``impl='auto'`` picks ``'fast'`` on CPU and ``'torchvision'`` on other devices, where the
generic kernel is the faster one. ``'fast'`` on CUDA is untested.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.ops import deform_conv2d

# Private helpers, re-exported for the tests and benchmarks/bench_star_conv.py. _TAPS_ELEMS is
# a copy for reading: patch varifocal.models.layers._tap_kernels._TAPS_ELEMS to change it.
from ._cpu_threads import _SparseThreadTuner, _Threads, _workspace, release_workspace  # noqa: F401
from ._star_geometry import _Geometry  # noqa: F401
from ._tap_kernels import _TAPS_ELEMS, _apply_tap_conv, _tap_gather, _tap_gemm, _tap_weight  # noqa: F401

__all__ = [
    "star_offsets",
    "star_deform_conv2d_reference",
    "star_deform_conv2d",
    "StarDeformConv2d",
    "release_workspace",
]

_IMPLS = ("auto", "fast", "torchvision")


# --------------------------------------------------------------------------------------------
# offsets and the reference implementation
# --------------------------------------------------------------------------------------------
def _check_distances(distances: Tensor, who: str) -> None:
    if distances.dim() != 4 or distances.shape[1] != 4:
        raise ValueError(f"{who}: distances must be [N, 4, H, W] (l, t, r, b), got {tuple(distances.shape)}")


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
            top,
            left,
            top,
            zero,
            top,
            right,
            zero,
            left,
            zero,
            zero,
            zero,
            right,
            bottom,
            left,
            bottom,
            zero,
            bottom,
            right,
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
        raise ValueError(f"{who}: weight must be [O, {c}, 3, 3] for x with {c} channels, got {tuple(weight.shape)}")
    if not (x.device == distances.device == weight.device):
        raise ValueError(
            f"{who}: x, distances and weight must be on one device, got {x.device}, {distances.device}, {weight.device}"
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
        raise ValueError(f"star_deform_conv2d: x ({x.dtype}) and weight ({weight.dtype}) must share a dtype")
    return _apply_fast(x, distances, weight)


class _StarGeometryFactory:
    """``make_geo(distances, scratch=...)`` of the shared kernel for an H×W map."""

    def __init__(self, height: int, width: int, pos_dtype: torch.dtype) -> None:
        self.height, self.width, self.pos_dtype = height, width, pos_dtype

    def __call__(self, distances: Tensor, scratch: bool = False) -> _Geometry:
        return _Geometry(distances, self.height, self.width, self.pos_dtype, scratch=scratch)


def _apply_fast(x: Tensor, distances: Tensor, weight: Tensor) -> Tensor:
    """The fast star conv: the star geometry on the shared tap kernel."""
    # Sample positions in float32 (float64 for float64 inputs), also for 16-bit x.
    pos_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    make_geo = _StarGeometryFactory(x.shape[2], x.shape[3], pos_dtype)
    return _apply_tap_conv(make_geo, x, weight, distances)


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
            raise ValueError(f"StarDeformConv2d: channel counts must be positive, got {in_channels} -> {out_channels}")
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
