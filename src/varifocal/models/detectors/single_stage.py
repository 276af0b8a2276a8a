"""The generic single-stage detector (backbone → neck → dense head) and the contracts that
every dense head and every detector implement (``../shared/docs/architecture.md`` §2).

VFNet, RetinaNet, FCOS and ATSS are all this one class with another head; the detector never
unpacks a head's outputs itself. The module names ``backbone``, ``neck`` and ``bbox_head`` make
``state_dict()`` keys equal to MMDetection's checkpoint keys.

Under a bfloat16/float16 autocast (``varifocal.utils.precision``) the backbone, neck and head
convs run in 16 bits, but the head's outputs are cast to float32 and its ``loss`` / ``predict``
run with autocast off: box decoding at 1333 px needs more than bf16's 8-bit mantissa (a
coordinate near 1024 would be rounded to a multiple of 8 px), and so do the losses (issue 12).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from ..preprocess import Preprocessor

__all__ = ["DenseHead", "Detector", "SingleStageDetector", "float32_outputs"]


@runtime_checkable
class DenseHead(Protocol):
    """What a dense head implements (MMDetection's and torchvision's split of the work).

    - ``forward(feats)``: raw per-level outputs, NCHW, as a NamedTuple with MMDetection's
      names (e.g. ``RetinaOutputs(cls_scores, bbox_preds)``), each a list over levels.
    - ``loss(outs, gt_bboxes, gt_labels, img_metas)``: the dict of MMDetection's loss terms.
    - ``predict(outs, img_metas, rescale=True)``: one ``{'boxes', 'scores', 'labels'}`` dict
      per image, boxes xyxy in original-image pixels when ``rescale``.

    Heads hold their test settings as ``test_cfg`` (:class:`~varifocal.models.postprocess.TestConfig`).
    """

    num_classes: int

    def __call__(self, feats: Sequence[Tensor]) -> Any: ...

    def loss(
        self, outs: Any, gt_bboxes: Sequence[Tensor], gt_labels: Sequence[Tensor], img_metas: Sequence[dict[str, Any]]
    ) -> dict[str, Tensor]: ...

    def predict(
        self, outs: Any, img_metas: Sequence[dict[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]: ...


@runtime_checkable
class Detector(Protocol):
    """What the training loop, the evaluator and the CLI use of any detector.

    ``preprocessor`` turns images into a batch; ``loss(batch, metas, gt_bboxes, gt_labels)`` and
    ``predict(batch, metas, rescale=True)`` work on that batch; ``class_names`` and
    ``num_classes`` describe the label space.
    """

    preprocessor: Preprocessor
    class_names: list[str] | None

    def loss(
        self,
        batch_inputs: Tensor,
        img_metas: Sequence[dict[str, Any]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> dict[str, Tensor]: ...

    def predict(
        self, batch_inputs: Tensor, img_metas: Sequence[dict[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]: ...


def float32_outputs(outs: Any) -> Any:
    """A head's outputs (NamedTuple / list / tensor, nested) with every 16-bit floating tensor
    cast to float32; float32 and float64 tensors are returned as they are (no copy)."""
    if isinstance(outs, Tensor):
        return outs.float() if outs.dtype in (torch.bfloat16, torch.float16) else outs
    if isinstance(outs, tuple) and hasattr(outs, "_fields"):
        return type(outs)(*(float32_outputs(v) for v in outs))
    if isinstance(outs, (list, tuple)):
        return type(outs)(float32_outputs(v) for v in outs)
    return outs


class SingleStageDetector(nn.Module):
    """Backbone → neck → dense head, with the torchvision detection contract.

    Args:
        backbone: returns the multi-scale maps the neck takes and has ``out_channels``.
        neck: e.g. :class:`~varifocal.models.necks.FPN`, returning one map per head level.
        bbox_head: a :class:`DenseHead`.
        preprocessor: resize/normalise/pad (:class:`Preprocessor`); replaceable.
        class_names: optional names of the ``num_classes`` classes (kept in checkpoints).

    Train mode: ``model(images, targets)`` → the head's loss dict.
    Eval mode: ``model(images)`` → one dict per image with ``boxes [k, 4]`` (xyxy, pixels of
    that original image), ``scores [k]`` and ``labels [k]``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        bbox_head: nn.Module,
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
        """``[N, 3, H, W]`` normalised, padded batch → neck levels ``[N, C, H/s, W/s]``."""
        return list(self.neck(self.backbone(batch_inputs)))

    def loss(
        self,
        batch_inputs: Tensor,
        img_metas: Sequence[dict[str, Any]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Losses for a preprocessed batch.

        Args:
            batch_inputs: ``[N, 3, H, W]`` normalised and padded (see :class:`Preprocessor`).
            img_metas: per image dicts with ``pad_shape`` (and ``img_shape``).
            gt_bboxes: per image ``[K_i, 4]`` xyxy in resized-image pixels, crowd boxes removed.
            gt_labels: per image ``[K_i]`` long labels in ``[0, num_classes)``.
        """
        outs = float32_outputs(self.bbox_head(self.extract_feat(batch_inputs)))
        with torch.autocast(batch_inputs.device.type, enabled=False):
            return self.bbox_head.loss(outs, gt_bboxes, gt_labels, img_metas)

    def predict(
        self, batch_inputs: Tensor, img_metas: Sequence[dict[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections for a preprocessed batch; see the head's ``predict``."""
        outs = float32_outputs(self.bbox_head(self.extract_feat(batch_inputs)))
        with torch.autocast(batch_inputs.device.type, enabled=False):
            return self.bbox_head.predict(outs, img_metas, rescale=rescale)

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
