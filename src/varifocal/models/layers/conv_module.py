"""Small building blocks of the heads: ConvModule (conv → GroupNorm → ReLU) and Scale.

The attribute names (``conv``, ``gn``, ``scale``) reproduce MMDetection's so that checkpoint
keys such as ``bbox_head.cls_convs.0.conv.weight`` and ``bbox_head.scales.0.scale`` load
verbatim (spec §8.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dcn import ModulatedDeformConv2d

__all__ = ["ConvModule", "Scale"]


class ConvModule(nn.Module):
    """3×3 conv (stride 1, pad 1) → GroupNorm → ReLU, as in spec §2.1; or, with
    ``num_groups=None``, conv (with bias) → ReLU (RetinaNet's towers, zoo_spec §2.1).

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out; must be divisible by ``num_groups``.
        num_groups: GroupNorm groups (32 in every config), eps 1e-5, affine; ``None``: no norm.
        use_dcn: replace the plain conv by a modulated deformable conv (DCNv2) that learns
            its own offsets (``dcn_on_last_conv``, spec §2.1 and §8.3). The checkpoint keys
            then gain ``conv.conv_offset.{weight,bias}``.
        bias: conv bias; ``None`` (MMDetection's ``'auto'``) = only without a norm.

    Keys: ``conv.weight`` (``conv.bias``), ``gn.weight``, ``gn.bias``.
    Shapes: ``[N, C_in, H, W] → [N, C_out, H, W]``.

    Raises:
        ValueError: if ``out_channels`` is not divisible by ``num_groups``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_groups: int | None = 32,
        use_dcn: bool = False,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        if num_groups is not None and out_channels % num_groups:
            raise ValueError(f"out_channels={out_channels} is not divisible by num_groups={num_groups}")
        with_bias = num_groups is None if bias is None else bool(bias)
        if use_dcn:
            self.conv: nn.Module = ModulatedDeformConv2d(in_channels, out_channels, 3, padding=1, bias=with_bias)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=with_bias)
        self.gn = nn.GroupNorm(num_groups, out_channels, eps=1e-5) if num_groups is not None else None
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        return self.activate(x)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level), initialised to ``init_value``.

    The parameter is 0-dim, like MMDetection's ``Scale.scale`` (spec §8.4), so official
    checkpoints load without reshaping. Shapes: any tensor → same shape.
    """

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale
