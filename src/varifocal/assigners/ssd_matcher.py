"""SSD / RefineDet matching: a greedy bipartite step, then per-prediction matching at IoU ≥ 0.5
(Caffe ``MatchBBox`` with ``PER_PREDICTION``, ``overlap_threshold 0.5``; ``refinedet_spec.md`` §7)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..structures.boxes import bbox_overlaps
from .assign_result import AssignResult

__all__ = ["SSDMatcher"]


class SSDMatcher:
    """Match reference boxes (tiled anchors for the ARM, refined anchors for the ODM) to gt.

    1. IoU of every (reference, gt) pair; IoU ≤ ``min_overlap`` (1e-6) counts as no overlap.
    2. Bipartite step: repeatedly take the globally largest IoU among unmatched references and
       unused gts and match that pair, until every gt is used or no overlapping pair is left;
       so each gt owns its best still-free reference *whatever* the IoU (> 1e-6). Greedy by
       global maximum, not per gt in index order (§17 item 4).
    3. Per-prediction step: every still-unmatched reference whose best IoU is ≥ ``pos_iou_thr``
       goes to its argmax gt (ties to the lower gt index).
    4. The rest are negatives (there are no ignored references).

    Args:
        pos_iou_thr: IoU of the per-prediction step (0.5).
        min_overlap: IoUs at or below this are "no overlap" (Caffe's 1e-6).

    Raises:
        ValueError: ``pos_iou_thr`` not in (0, 1].
    """

    def __init__(self, pos_iou_thr: float = 0.5, min_overlap: float = 1e-6) -> None:
        if not 0.0 < pos_iou_thr <= 1.0:
            raise ValueError(f"ssd_matcher.py: pos_iou_thr must be in (0, 1], got {pos_iou_thr}")
        self.pos_iou_thr = float(pos_iou_thr)
        self.min_overlap = float(min_overlap)

    def __repr__(self) -> str:
        return f"SSDMatcher(pos_iou_thr={self.pos_iou_thr})"

    @torch.no_grad()
    def assign(self, references: Tensor, gt_bboxes: Tensor, gt_labels: Tensor, num_classes: int) -> AssignResult:
        """Match one image.

        Args:
            references: ``[M, 4]`` xyxy (pixels; detached).
            gt_bboxes: ``[K, 4]`` xyxy in the same units.
            gt_labels: ``[K]`` long in ``[0, num_classes)``.
            num_classes: the background label of the result.

        Returns:
            :class:`AssignResult` with ``gt_inds`` 0 (negative) or ``k + 1``, ``max_overlaps``
            the best IoU of each reference over all gts (0 without gt) and ``labels``.
        """
        m, k = references.shape[0], gt_bboxes.shape[0]
        device = references.device
        gt_inds = torch.zeros(m, dtype=torch.long, device=device)
        labels = torch.full((m,), num_classes, dtype=torch.long, device=device)
        if k == 0 or m == 0:
            return AssignResult(gt_inds, references.new_zeros(m), labels)
        overlaps = bbox_overlaps(references.float(), gt_bboxes.float())  # [M, K]
        max_overlaps, argmax_gt = overlaps.max(dim=1)
        # Bipartite step: at most K rounds, each taking the global maximum of what is left.
        free = overlaps.clone()
        for _ in range(k):
            best = torch.argmax(free)
            ref, gt = divmod(int(best), k)
            if float(free[ref, gt]) <= self.min_overlap:
                break
            gt_inds[ref] = gt + 1
            free[ref, :] = -1.0
            free[:, gt] = -1.0
        # Per-prediction step on the references the bipartite step left.
        extra = (gt_inds == 0) & (max_overlaps >= self.pos_iou_thr)
        gt_inds[extra] = argmax_gt[extra] + 1
        pos = gt_inds > 0
        labels[pos] = gt_labels[gt_inds[pos] - 1]
        return AssignResult(gt_inds, max_overlaps, labels)
