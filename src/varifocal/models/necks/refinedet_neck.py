"""RefineDet's source maps: the backbone's stride-8/16/32 maps, L2Norm on the first two, and an
extra stride-64 level (``refinedet_spec.md`` §2.2, §2.3, §2.4 res6, §15.2)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Sequence

from torch import Tensor, nn

from ..layers.init import caffe_xavier_
from ..layers.l2norm import L2Norm
from ..layers.refinedet_blocks import ProjectionBottleneck

__all__ = ["RefineDetNeck"]


class RefineDetNeck(nn.Module):
    """Stride-8/16/32 backbone maps → the four ARM source maps at strides 8, 16, 32, 64.

    - ``norms.{0,1}``: :class:`L2Norm` on levels 0 and 1 when ``l2norm_scales`` gives a scale
      (VGG: 10 and 8, §2.2; ``None`` entries are identities: ResNet and Lite0 by default).
    - ``extra``: the stride-64 level from the stride-32 map: ``'vgg'`` = conv6_1 (1×1 → 256,
      ReLU) + conv6_2 (3×3/2 pad 1 → 512, ReLU), Caffe-xavier init (§2.3, and §15.2 for Lite0);
      ``'res6'`` = one projection bottleneck 128-128-512 with stride 2 (§2.4).

    Args:
        in_channels: channels of the three backbone maps (VGG 512, 512, 1024; ResNet-101 512,
            1024, 2048; Lite0 40, 112, 320).
        extra: ``'vgg'`` or ``'res6'``.
        l2norm_scales: initial L2Norm scale of levels 0 and 1, or ``None`` for none.

    Attributes:
        out_channels: the four maps' channels (e.g. ``[512, 512, 1024, 512]``).

    Raises:
        ValueError: not three input maps, or an unknown ``extra``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        extra: Literal["vgg", "res6"] = "vgg",
        l2norm_scales: Sequence[float | None] = (None, None),
    ) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"refinedet_neck.py: expected three backbone maps (strides 8, 16, 32), got {in_channels}")
        if extra not in ("vgg", "res6"):
            raise ValueError(f"refinedet_neck.py: extra must be 'vgg' or 'res6', got {extra!r}")
        scales = list(l2norm_scales) + [None] * (2 - len(l2norm_scales))
        self.norms = nn.ModuleList(
            [nn.Identity() if s is None else L2Norm(int(c), float(s)) for c, s in zip(in_channels[:2], scales[:2])]
        )
        last = int(in_channels[2])
        if extra == "vgg":
            self.extra = nn.Sequential(
                OrderedDict(
                    conv6_1=nn.Conv2d(last, 256, 1),
                    relu6_1=nn.ReLU(inplace=True),
                    conv6_2=nn.Conv2d(256, 512, 3, stride=2, padding=1),
                    relu6_2=nn.ReLU(inplace=True),
                )
            )
            caffe_xavier_(self.extra)
        else:
            self.extra = ProjectionBottleneck(last, 128, 512, stride=2)
        self.out_channels = [int(c) for c in in_channels] + [512]

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """``[C3, C4, C5]`` (strides 8, 16, 32) → ``[S0, S1, S2, S3]`` (strides 8…64); S3 is
        ``ceil(H/64)`` high for a C5 of height ``H/32``."""
        c3, c4, c5 = feats
        return [self.norms[0](c3), self.norms[1](c4), c5, self.extra(c5)]
