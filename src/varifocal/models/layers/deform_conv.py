"""Deformable convolution for any offsets (DCNv1) and modulated (DCNv2), fast on CPU.

:func:`deform_conv2d` has ``torchvision.ops.deform_conv2d``'s semantics: per tap k = kw·ky + kx
the offset channels 2k, 2k+1 are (Δy, Δx) in input pixels, samples are bilinear with zero
padding, an optional mask scales each tap (DCNv2). Two implementations give the same numbers
(to float rounding, forward and backward):

* ``'torchvision'``: ``torchvision.ops.deform_conv2d`` (the one used on CUDA, and for grouped
  weights or several deform groups).
* ``'fast'`` (CPU): sampling commutes with the channel mixing, so ``out = Σ_k S_k (x W_k)``:
  one GEMM of x with the K taps' weights (the FLOPs of the plain conv) and a weighted gather of
  4 reads per tap (:mod:`._deform_geometry`), on the kernel that the star conv of
  :mod:`.star_deform_conv` uses too (:mod:`._tap_kernels`, with its thread policy and scratch
  buffers in :mod:`._cpu_threads`). Backward: GEMMs plus sparse products with the sampling
  matrix.

``impl='auto'`` picks ``'fast'`` on CPU for one weight group and one deform group, else
``'torchvision'``. ``issue 9`` sets the bar: forward ≤ 1.6× a plain 3×3 conv and
forward+backward ≤ 1.8× at [1, 256, 100, 152] (``benchmarks/bench_deform_conv.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

from ._deform_geometry import _DeformGeometry
from ._tap_kernels import _apply_tap_conv

__all__ = ["deform_conv2d", "DeformConv2d"]

_IMPLS = ("auto", "fast", "torchvision")


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class _DeformGeometryFactory:
    """``make_geo(offset[, mask], scratch=...)`` of the shared kernel for one conv's settings."""

    def __init__(self, in_shape, kernel, stride, padding, dilation, pos_dtype, has_mask: bool) -> None:
        self.args = (in_shape, kernel, stride, padding, dilation, pos_dtype)
        self.has_mask = has_mask

    def __call__(self, *inputs: Tensor, scratch: bool = False) -> _DeformGeometry:
        offset, mask = (inputs[0], inputs[1]) if self.has_mask else (inputs[0], None)
        return _DeformGeometry(offset, mask, *self.args)


def _check(x, offset, weight, bias, mask, stride, padding, dilation) -> tuple[int, int]:
    """Validate shapes; returns the output size (H_out, W_out)."""
    who = "deform_conv2d"
    if x.dim() != 4 or weight.dim() != 4 or offset.dim() != 4:
        raise ValueError(
            f"{who}: x, offset and weight must be 4-D, got {tuple(x.shape)}, {tuple(offset.shape)}, {tuple(weight.shape)}"
        )
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if cg == 0 or c % cg:
        raise ValueError(f"{who}: weight {tuple(weight.shape)} does not fit x with {c} channels")
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    k2 = 2 * kh * kw
    if (
        offset.shape[0] != n
        or offset.shape[1] == 0
        or offset.shape[1] % k2
        or tuple(offset.shape[2:]) != (h_out, w_out)
    ):
        raise ValueError(
            f"{who}: offset must be [{n}, 2·dg·{kh * kw}, {h_out}, {w_out}] for x {tuple(x.shape)} and weight "
            f"{tuple(weight.shape)}, got {tuple(offset.shape)}"
        )
    dg = offset.shape[1] // k2
    if mask is not None and (mask.dim() != 4 or tuple(mask.shape) != (n, dg * kh * kw, h_out, w_out)):
        raise ValueError(f"{who}: mask must be [{n}, {dg * kh * kw}, {h_out}, {w_out}], got {tuple(mask.shape)}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"{who}: bias must be [{o}], got {tuple(bias.shape)}")
    return h_out, w_out


def deform_conv2d(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    """Deformable convolution, DCNv1 (``mask=None``) or modulated DCNv2.

    Args:
        x: [N, C, H, W].
        offset: [N, 2·dg·kh·kw, H_out, W_out], input pixels, (Δy, Δx) per tap k = kw·ky + kx
            (dg deform groups).
        weight: [O, C/groups, kh, kw].
        bias: [O] or None.
        stride, padding, dilation: as ``nn.Conv2d`` (int or pair).
        mask: [N, dg·kh·kw, H_out, W_out] modulation or None.
        impl: ``'auto'``, ``'fast'`` (CPU, one group and one deform group) or ``'torchvision'``.

    Returns:
        [N, O, H_out, W_out] in ``x``'s dtype; differentiable w.r.t. x, offset, mask, weight
        and bias. The fast path's result is channels-last in memory (same values).

    Mixed precision: under ``torch.autocast`` the fast path runs its GEMMs in the autocast
    dtype, with sample positions and weights in float32; torchvision's CPU kernel has no
    bfloat16 version, so its path computes in float32 there and casts back.

    Raises:
        ValueError: bad shapes, an unknown ``impl``, or ``'fast'`` where it does not apply.
    """
    if impl not in _IMPLS:
        raise ValueError(f"deform_conv2d: impl must be one of {_IMPLS}, got {impl!r}")
    stride, padding, dilation = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    _check(x, offset, weight, bias, mask, stride, padding, dilation)
    kh, kw = weight.shape[2:]
    simple = weight.shape[1] == x.shape[1] and offset.shape[1] == 2 * kh * kw
    if impl == "auto":
        impl = "fast" if x.device.type == "cpu" and simple else "torchvision"
    elif impl == "fast" and not simple:
        raise ValueError("deform_conv2d: impl='fast' needs groups=1 and one deform group")
    dev = x.device.type
    if impl == "torchvision":
        autocast = torch.is_autocast_enabled(dev)
        if dev == "cpu" and (autocast or torch.bfloat16 in (x.dtype, weight.dtype)):
            with torch.autocast(dev, enabled=False):
                f = torch.float32
                out = _tv_deform_conv2d(
                    x.to(f), offset.to(f), weight.to(f), None if bias is None else bias.to(f),
                    stride=stride, padding=padding, dilation=dilation, mask=None if mask is None else mask.to(f),
                )  # fmt: skip
            return out.to(x.dtype)
        return _tv_deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        with torch.autocast(dev, enabled=False):
            return deform_conv2d(
                x.to(dtype), offset.float(), weight.to(dtype), None if bias is None else bias.to(dtype),
                stride, padding, dilation, None if mask is None else mask.float(), impl="fast",
            )  # fmt: skip
    if weight.dtype != x.dtype:
        raise ValueError(f"deform_conv2d: x ({x.dtype}) and weight ({weight.dtype}) must share a dtype")
    pos_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    make_geo = _DeformGeometryFactory(
        tuple(x.shape[2:]), (kh, kw), stride, padding, dilation, pos_dtype, mask is not None
    )
    inputs = (offset,) if mask is None else (offset, mask)
    out = _apply_tap_conv(make_geo, x, weight, *inputs)
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, -1, 1, 1)
    return out


class DeformConv2d(nn.Module):
    """A k×k deformable convolution whose offsets (and optional mask) come from the caller.

    MMCV's ``DeformConv2d`` (RepPoints' ``reppoints_cls_conv`` / ``reppoints_pts_refine_conv``):
    the only parameters are ``weight`` [O, C/groups, kh, kw] and, with ``bias=True``, ``bias``
    [O], so MMDetection checkpoints load verbatim.

    Args:
        in_channels, out_channels: C and O.
        kernel_size, stride, padding, dilation: as ``nn.Conv2d`` (defaults 3, 1, 1, 1).
        groups: weight groups; C and O must be divisible by it.
        bias: add a learned bias (MMCV's default: none).
        impl: ``'auto'`` | ``'fast'`` | ``'torchvision'`` (see :func:`deform_conv2d`).

    Raises:
        ValueError: channel counts not divisible by ``groups``, or an unknown ``impl``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if impl not in _IMPLS:
            raise ValueError(f"DeformConv2d: impl must be one of {_IMPLS}, got {impl!r}")
        self.impl = impl
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"DeformConv2d: in_channels={in_channels} and out_channels={out_channels} "
                f"must be divisible by groups={groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform ``weight`` and uniform ``bias``, as ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` [N, C, H, W], ``offset`` [N, 2·dg·kh·kw, H_out, W_out] (Δy, Δx per tap, input
        pixels), ``mask`` [N, dg·kh·kw, H_out, W_out] or None → [N, O, H_out, W_out]."""
        return deform_conv2d(
            x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask, impl=self.impl
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )
