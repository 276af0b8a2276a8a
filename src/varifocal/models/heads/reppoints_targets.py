"""Target records of the RepPoints head's two stages and its VFL soft targets
(``../shared/docs/zoo_spec.md`` §6.3, §1.13 PseudoSampler, §6.8 / §8 RepPoints row).

:class:`~.reppoints_head.RepPointsHead` runs the assigners; this module turns their per-image
results on the valid points into the full-size records the loss and the parity tests read.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ...assigners.assign_result import AssignResult
from ...structures.boxes import bbox_overlaps

__all__ = ["StageTargets", "RepPointsTargets", "stage_targets", "vfl_iou_targets"]


class StageTargets(NamedTuple):
    """The targets of one stage (init or refine, §6.3) per image, over all points of the batch
    feature maps, levels concatenated P3 → P7, row-major within a level (the golden's
    ``assign_init`` / ``assign_refine`` records). Lists over images:

    - ``assigned_gt_inds [M]`` long: −2 point not valid for this image, −1 ignored (refine
      only), 0 negative, k ≥ 1 = gt k − 1;
    - ``labels [M]`` long: the gt class of positives, ``num_classes`` elsewhere;
    - ``label_weights [M]`` float: 1 on positives and negatives, 0 on ignored / invalid points;
    - ``bbox_gt [M, 4]`` float: the assigned gt box (xyxy pixels) of positives, 0 elsewhere;
    - ``bbox_weights [M]`` float: 1 on positives, else 0;
    - ``max_overlaps [M]`` float (refine: the highest IoU over the gts, −1 where invalid;
      init: zeros, −1 where invalid).

    ``num_pos``: positives per image; ``avg_factor``: Σ_img max(#pos_img, 1) (§1.13).
    """

    assigned_gt_inds: list[Tensor]
    labels: list[Tensor]
    label_weights: list[Tensor]
    bbox_gt: list[Tensor]
    bbox_weights: list[Tensor]
    max_overlaps: list[Tensor]
    num_pos: list[int]
    avg_factor: float


class RepPointsTargets(NamedTuple):
    """Both stages of a batch (§6.3): ``init`` and ``refine`` (:class:`StageTargets`),
    ``refine_proposals`` per image ``[M, 4]`` xyxy pixels (the boxes of the detached init
    points that the refine stage assigns), ``valid_flags`` per image ``[M]`` bool (from the
    image's ``pad_shape``)."""

    init: StageTargets
    refine: StageTargets
    refine_proposals: list[Tensor]
    valid_flags: list[Tensor]


def stage_targets(
    results: Sequence[tuple[Tensor, AssignResult]], gt_bboxes: Sequence[Tensor], num_points: int, num_classes: int
) -> StageTargets:
    """One stage's :class:`StageTargets` from its per-image assignments (PseudoSampler: the
    positives are ``gt_inds > 0``, the negatives ``gt_inds == 0``; invalid points are mapped
    back with ``gt_inds`` −2, background label and weight 0).

    Args:
        results: per image ``(valid [M] bool, assignment of the valid points)``.
        gt_bboxes: per image ``[K_i, 4]`` xyxy gt boxes, pixels.
        num_points: M, all points of the batch feature maps.
        num_classes: the background label.

    Returns:
        :class:`StageTargets`, ``avg_factor = Σ_img max(#pos_img, 1)``.
    """
    fields: dict[str, list] = {name: [] for name in StageTargets._fields if name != "avg_factor"}
    for (valid, result), boxes in zip(results, gt_bboxes, strict=True):
        device = valid.device
        gt_inds = torch.full((num_points,), -2, dtype=torch.long, device=device)
        gt_inds[valid] = result.gt_inds
        labels = torch.full((num_points,), num_classes, dtype=torch.long, device=device)
        labels[valid] = result.labels
        overlaps = torch.full((num_points,), -1.0, device=device)
        overlaps[valid] = result.max_overlaps.float()
        pos = gt_inds > 0
        bbox_gt = torch.zeros((num_points, 4), device=device)
        bbox_gt[pos] = boxes.to(device=device, dtype=torch.float32)[gt_inds[pos] - 1]
        fields["assigned_gt_inds"].append(gt_inds)
        fields["labels"].append(labels)
        fields["label_weights"].append((gt_inds >= 0).float())  # positives and negatives
        fields["bbox_gt"].append(bbox_gt)
        fields["bbox_weights"].append(pos.float())
        fields["max_overlaps"].append(overlaps)
        fields["num_pos"].append(int(pos.sum()))
    return StageTargets(**fields, avg_factor=float(sum(max(n, 1) for n in fields["num_pos"])))


def vfl_iou_targets(
    cls_score: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, labels: Tensor, num_classes: int
) -> Tensor:
    """IoU-aware classification targets of one level (§6.8, §8 RepPoints row).

    ``T[i, c] = IoU(pred_boxes_i detached, gt_boxes_i)`` (aligned, eps 1e-6, **not clamped**:
    a positive whose pseudo-box misses its gt gets 0, i.e. becomes a VFL negative) at the
    positives i with refine label c, 0 elsewhere.

    Args:
        cls_score: ``[P, C]`` logits (only the shape and device are used).
        pred_boxes: ``[P, 4]`` xyxy pseudo-boxes of the refined points, pixels.
        gt_boxes: ``[P, 4]`` xyxy refine-stage gt boxes, pixels (meaningful at positives).
        labels: ``[P]`` long refine labels, ``num_classes`` = background.
        num_classes: C.

    Returns:
        ``[P, C]`` float32 targets in [0, 1], no gradient.
    """
    targets = torch.zeros(cls_score.shape, dtype=torch.float32, device=cls_score.device)
    pos = torch.nonzero((labels >= 0) & (labels < num_classes), as_tuple=False).squeeze(1)
    if pos.numel() > 0:
        with torch.no_grad():
            iou = bbox_overlaps(pred_boxes[pos].detach().float(), gt_boxes[pos].float(), is_aligned=True)
        targets[pos, labels[pos]] = iou
    return targets
