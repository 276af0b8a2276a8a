"""Modulated deformable convolution (DCNv2) on top of :func:`.deform_conv.deform_conv2d`.

The op is the project's generic deformable conv: the fast kernel on CPU (equal to
``torchvision.ops.deform_conv2d`` to float rounding), torchvision's elsewhere.

Implements spec §8.3: the layer owns a plain ``weight`` (and optionally ``bias``) plus a small
regular convolution ``conv_offset`` that predicts, per output location, 2·k·k sampling offsets and
k·k modulation masks. The 3·k·k output channels of ``conv_offset`` are split exactly like mmcv's
``ModulatedDeformConv2dPack``: three equal chunks ``(o1, o2, m)``; ``cat(o1, o2)`` is the offset
tensor in torchvision's (Δy, Δx)-pair layout and ``sigmoid(m)`` is the mask. With that split the
checkpoint keys ``weight``, ``conv_offset.weight`` and ``conv_offset.bias`` of the official mdconv
models load verbatim.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn

from .deform_conv import _IMPLS, deform_conv2d

__all__ = ["ModulatedDeformConv2d"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer: a k×k convolution whose taps are moved and scaled by a learned offset conv.

    Spec §8.3 (backbone mdconv variants, §6.3) and the checkpoint key layout of spec §8.

    Args:
        in_channels: channels C_in of the input.
        out_channels: channels C_out of the output.
        kernel_size: k (int or (kh, kw)); default 3.
        stride: stride of both the deformable conv and the offset conv; default 1.
        padding: zero padding (pixels) of both convs; default 1.
        dilation: dilation of both convs; default 1.
        groups: weight groups (ResNeXt cardinality); C_in and C_out must be divisible by it.
        deform_groups: offset/mask groups; C_in must be divisible by it.
        bias: whether the main conv has a ``bias`` parameter (default False, as in mmcv's backbone
            and head DCNs).
        impl: ``'auto'`` | ``'fast'`` | ``'torchvision'`` (:func:`.deform_conv.deform_conv2d`;
            ``'auto'``: the fast CPU kernel for one group, torchvision's otherwise).

    Parameters / state_dict keys (exactly):
        ``weight`` [C_out, C_in/groups, kh, kw]; ``bias`` [C_out] only when ``bias=True``;
        ``conv_offset.weight`` [deform_groups·3·kh·kw, C_in, kh, kw];
        ``conv_offset.bias`` [deform_groups·3·kh·kw].

    ``conv_offset`` starts at zero, so a fresh layer samples the regular grid with every mask
    equal to sigmoid(0) = 0.5, i.e. it equals ``0.5 * F.conv2d(x, weight, bias=None)`` plus the
    bias (mmcv behaves the same).

    Raises:
        ValueError: when the channel counts are not divisible by ``groups`` / ``deform_groups``, or
            on an unknown ``impl``.
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
        deform_groups: int = 1,
        bias: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if impl not in _IMPLS:
            raise ValueError(f"ModulatedDeformConv2d: impl must be one of {_IMPLS}, got {impl!r}")
        self.impl = impl
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"ModulatedDeformConv2d: in_channels={in_channels} and out_channels={out_channels} "
                f"must be divisible by groups={groups}"
            )
        if in_channels % deform_groups:
            raise ValueError(
                f"ModulatedDeformConv2d: in_channels={in_channels} must be divisible by deform_groups={deform_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups

        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * 3 * kh * kw,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform ``weight`` (as ``nn.Conv2d``), uniform ``bias``, zero ``conv_offset``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        self.init_offset()

    def init_offset(self) -> None:
        """Zero ``conv_offset`` (regular sampling grid, masks 0.5); call after any re-init."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offset_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the sampling offsets and masks from ``x``.

        Args:
            x: [N, C_in, H, W].

        Returns:
            ``offset`` [N, 2·dg·kh·kw, H_out, W_out] in input pixels, (Δy, Δx) pairs per tap (the
            torchvision layout); ``mask`` [N, dg·kh·kw, H_out, W_out] in (0, 1).
        """
        out = self.conv_offset(x)
        o1, o2, m = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the modulated deformable convolution.

        Args:
            x: [N, C_in, H, W], any floating dtype.

        Returns:
            [N, C_out, H_out, W_out] with the usual conv output size, in ``x.dtype``.

        Mixed precision: ``deform_conv2d`` needs all operands in one dtype and its CPU kernel has no
        bfloat16 implementation. Under ``torch.autocast`` the deformable part therefore runs in
        float32 (what torchvision's own CUDA autocast rule does too); outside autocast it runs in
        ``x.dtype`` except bfloat16 on CPU, which is computed in float32. The result is cast back
        to ``x.dtype``.
        """
        offset, mask = self.offset_and_mask(x)
        dev = x.device.type
        autocast_on = _autocast_enabled(dev)
        if x.dtype == torch.float64:
            compute = torch.float64
        elif autocast_on or (dev == "cpu" and x.dtype == torch.bfloat16):
            compute = torch.float32
        else:
            compute = x.dtype
        bias = self.bias.to(compute) if self.bias is not None else None
        if autocast_on:
            guard = torch.autocast(device_type=dev, enabled=False)
        else:
            guard = contextlib.nullcontext()
        with guard:
            y = deform_conv2d(
                x.to(compute),
                offset.to(compute),
                self.weight.to(compute),
                bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=mask.to(compute),
                impl=self.impl,
            )
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}, "
            f"bias={self.bias is not None}"
        )


def _autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is active for ``device_type`` (False for unknown types)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (RuntimeError, TypeError, ValueError):
        return False
