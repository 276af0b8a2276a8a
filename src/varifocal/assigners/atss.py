"""Adaptive Training Sample Selection (ATSS) for VFNet's virtual anchors (spec §3.1, §3.2).

The operations, their order and tensor layouts mirror MMDetection 3.x's ``ATSSAssigner`` so
that ``topk`` / ``max`` tie-breaking, and therefore the labels, agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..structures.boxes import bbox_overlaps
from .assign_result import AssignResult

__all__ = ["AssignResult", "ATSSAssigner"]


class ATSSAssigner:
    """ATSS assigner (spec §3.2, §10 item 11).

    For every gt: take, on each level, the ``min(topk, n_l)`` anchors whose centres are closest
    (Euclidean) to the gt centre; threshold their IoUs at mean + unbiased std; keep those with
    IoU ≥ threshold whose centre lies strictly inside the gt by more than ``center_margin``
    pixels. An anchor positive for several gts goes to the one with the highest IoU (on an exact
    tie, the lowest gt index).

    Args:
        topk: candidates per level and gt (9 in VFNet).
        center_margin: the centre-inside test is ``min(cx-x1, cy-y1, x2-cx, y2-cy) >
            center_margin`` (0.01 px in VFNet).

    Raises:
        ValueError: ``topk < 1``.
    """

    def __init__(self, topk: int = 9, center_margin: float = 0.01) -> None:
        if topk < 1:
            raise ValueError(f"atss.py: topk must be >= 1, got {topk}")
        self.topk = topk
        self.center_margin = center_margin

    @torch.no_grad()
    def assign(
        self,
        anchors: Tensor,
        num_level_anchors: Sequence[int],
        gt_bboxes: Tensor,
        gt_labels: Tensor,
        num_classes: int,
    ) -> AssignResult:
        """Assign anchors of one image to gts (spec §3.2).

        Args:
            anchors: ``[A, 4]`` xyxy valid anchors of all levels, concatenated level by level,
                pixels (8·s squares centred on the points, §3.1).
            num_level_anchors: number of anchors of each level, summing to ``A``.
            gt_bboxes: ``[K, 4]`` xyxy gt boxes, pixels (K may be 0).
            gt_labels: ``[K]`` long gt classes in ``0..num_classes-1``.
            num_classes: number of foreground classes; the background label.

        Returns:
            :class:`AssignResult` with ``[A]`` tensors on ``anchors.device``. With no gt or no
            anchor every anchor is background. If a gt has a single candidate in all (one
            anchor in total), its std is NaN and it gets no positive, as in MMDetection.

        Raises:
            ValueError: shapes are inconsistent or ``num_level_anchors`` does not sum to ``A``.
        """
        if anchors.dim() != 2 or anchors.size(-1) != 4:
            raise ValueError(f"atss.py: anchors must be [A, 4], got {tuple(anchors.shape)}")
        if gt_bboxes.dim() != 2 or gt_bboxes.size(-1) != 4:
            raise ValueError(f"atss.py: gt_bboxes must be [K, 4], got {tuple(gt_bboxes.shape)}")
        num_anchors, num_gt = anchors.size(0), gt_bboxes.size(0)
        if gt_labels.shape != (num_gt,):
            raise ValueError(f"atss.py: gt_labels must be [{num_gt}], got {tuple(gt_labels.shape)}")
        if sum(num_level_anchors) != num_anchors or any(n < 0 for n in num_level_anchors):
            raise ValueError(
                f"atss.py: num_level_anchors {list(num_level_anchors)} must be non-negative "
                f"and sum to the number of anchors {num_anchors}"
            )

        device = anchors.device
        overlaps = bbox_overlaps(anchors, gt_bboxes)  # [A, K]
        gt_inds = torch.zeros(num_anchors, dtype=torch.long, device=device)
        labels = torch.full((num_anchors,), num_classes, dtype=torch.long, device=device)
        if num_gt == 0 or num_anchors == 0:
            return AssignResult(gt_inds, anchors.new_zeros(num_anchors), labels)

        gt_cx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0
        gt_cy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0
        gt_points = torch.stack((gt_cx, gt_cy), dim=1)  # [K, 2]
        anchor_cx = (anchors[:, 0] + anchors[:, 2]) / 2.0
        anchor_cy = (anchors[:, 1] + anchors[:, 3]) / 2.0
        anchor_points = torch.stack((anchor_cx, anchor_cy), dim=1)  # [A, 2]
        distances = (anchor_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()  # [A, K]

        # Per level, the topk closest anchors of every gt (indices into all A anchors).
        candidate_list = []
        start = 0
        for n_level in num_level_anchors:
            end = start + n_level
            k = min(self.topk, n_level)
            _, idx = distances[start:end, :].topk(k, dim=0, largest=False)
            candidate_list.append(idx + start)
            start = end
        candidate_idxs = torch.cat(candidate_list, dim=0)  # [C, K]

        gt_arange = torch.arange(num_gt, device=device)
        candidate_overlaps = overlaps[candidate_idxs, gt_arange]  # [C, K]
        thr = candidate_overlaps.mean(0) + candidate_overlaps.std(0)  # unbiased std
        is_pos = candidate_overlaps >= thr[None, :]

        # Candidate anchor centre strictly inside its gt (by more than center_margin).
        cand_cx = anchor_cx[candidate_idxs]  # [C, K]
        cand_cy = anchor_cy[candidate_idxs]
        left = cand_cx - gt_bboxes[:, 0]
        top = cand_cy - gt_bboxes[:, 1]
        right = gt_bboxes[:, 2] - cand_cx
        bottom = gt_bboxes[:, 3] - cand_cy
        min_side = torch.stack([left, top, right, bottom], dim=1).min(dim=1)[0]  # [C, K]
        is_in_gts = min_side > self.center_margin
        is_pos = is_pos & is_in_gts

        # Highest-IoU gt wins. Gt-major flat layout [K * A], viewed [K, A] and transposed, so
        # that max(dim=1) sees the same layout (and breaks ties the same way) as the reference.
        flat_idxs = (candidate_idxs + gt_arange[None, :] * num_anchors).view(-1)
        pos_flat = flat_idxs[is_pos.view(-1)]
        overlaps_inf = torch.full((num_gt * num_anchors,), -float("inf"), dtype=overlaps.dtype, device=device)
        overlaps_inf[pos_flat] = overlaps.t().contiguous().view(-1)[pos_flat]
        overlaps_inf = overlaps_inf.view(num_gt, num_anchors).t()  # [A, K]

        max_overlaps, argmax = overlaps_inf.max(dim=1)
        assigned = max_overlaps != -float("inf")
        gt_inds[assigned] = argmax[assigned] + 1
        labels[assigned] = gt_labels[argmax[assigned]].to(torch.long)
        max_overlaps = torch.where(assigned, max_overlaps, torch.zeros_like(max_overlaps))
        return AssignResult(gt_inds, max_overlaps, labels)
