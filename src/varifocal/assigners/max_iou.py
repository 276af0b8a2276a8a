"""Max-IoU assignment of priors to gt boxes (zoo_spec §1.10, §10 item 8).

Used by RetinaNet (0.5/0.4), RepPoints' refine stage (0.5/0.4), the RPN (0.7/0.3, min_pos_iou
0.3) and the RCNN stage of Faster R-CNN (0.5/0.5/0.5, no low-quality matching).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..structures.boxes import bbox_overlaps
from .assign_result import AssignResult

__all__ = ["MaxIoUAssigner"]

_EPS = 1e-6  # zoo_spec §1.9, the same clamp as bbox_overlaps' union


def _iof(priors: Tensor, boxes: Tensor, eps: float = _EPS) -> Tensor:
    """``[M, K]`` intersection over the *prior's* area, ``inter / max(area_prior, eps)`` (§1.9)."""
    lt = torch.max(priors[:, None, :2], boxes[None, :, :2])
    rb = torch.min(priors[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])
    return inter / torch.clamp(area, min=eps)[:, None]


class MaxIoUAssigner:
    """Assign every prior to the gt it overlaps most, with IoU thresholds (zoo_spec §1.10).

    With the IoU matrix ``O[G, M]`` (gts × priors, :func:`bbox_overlaps`, eps 1e-6):

    1. ``G = 0``: every prior is negative (gt_ind 0); ``M = 0``: empty result.
    2. If ``ignore_iof_thr > 0`` and ignore boxes are given, the columns of the priors whose
       max IoF (intersection / prior area) with an ignore box exceeds the threshold are set
       to −1 (such priors end up ignored).
    3. ``max_ov[m], argmax[m] = O[:, m].max()`` and ``gt_max[g] = O[g, :].max()`` (torch
       ``max``: the first index wins a tie).
    4. gt_ind starts at −1 (ignored); it becomes 0 where ``0 <= max_ov < neg_iou_thr`` (float
       threshold) or ``lo <= max_ov < hi`` (tuple), and ``argmax + 1`` where
       ``max_ov >= pos_iou_thr``.
    5. If ``match_low_quality``: for g = 0..G−1 in order, if ``gt_max[g] >= min_pos_iou``, the
       prior(s) with ``O[g, m] == gt_max[g]`` (all of them with ``gt_max_assign_all``,
       otherwise only ``argmax_m O[g, m]``) get ``g + 1``; a later gt overwrites an earlier one.
       This can make an ignored or negative prior positive at any IoU ≥ ``min_pos_iou``; with
       ``min_pos_iou = 0`` a gt that overlaps no prior at all claims every prior with IoU 0 for
       it (the reference behaves the same).
    6. labels = ``gt_labels[gt_ind - 1]`` for positives, ``num_classes`` otherwise.

    Step 5 is computed without a Python loop (the highest gt index among the matching gts of a
    prior wins, which is exactly "later gts overwrite earlier ones").

    Args:
        pos_iou_thr: IoU at or above which a prior is positive.
        neg_iou_thr: a float: priors with ``0 <= max IoU < thr`` are negative; a
            ``(lo, hi)`` tuple: priors with ``lo <= max IoU < hi`` are negative.
        min_pos_iou: lowest IoU a low-quality match may have.
        gt_max_assign_all: in step 5, assign every prior that ties for a gt's max IoU.
        match_low_quality: enable step 5.
        ignore_iof_thr: IoF threshold with the ignore boxes; ≤ 0 disables step 2.

    Raises:
        ValueError: ``neg_iou_thr`` is a tuple that does not have 2 entries.
    """

    def __init__(
        self,
        pos_iou_thr: float,
        neg_iou_thr: float | tuple[float, float],
        min_pos_iou: float = 0.0,
        gt_max_assign_all: bool = True,
        match_low_quality: bool = True,
        ignore_iof_thr: float = -1.0,
    ) -> None:
        if isinstance(neg_iou_thr, (tuple, list)):
            if len(neg_iou_thr) != 2:
                raise ValueError(f"max_iou.py: neg_iou_thr must be a float or a (lo, hi) pair, got {neg_iou_thr}")
            neg_iou_thr = (float(neg_iou_thr[0]), float(neg_iou_thr[1]))
        else:
            neg_iou_thr = float(neg_iou_thr)
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = float(min_pos_iou)
        self.gt_max_assign_all = gt_max_assign_all
        self.match_low_quality = match_low_quality
        self.ignore_iof_thr = float(ignore_iof_thr)

    @torch.no_grad()
    def assign(
        self,
        priors: Tensor,
        gt_bboxes: Tensor,
        gt_labels: Tensor,
        num_classes: int,
        gt_bboxes_ignore: Tensor | None = None,
    ) -> AssignResult:
        """Assign the priors of one image (zoo_spec §1.10 steps 1-6).

        Args:
            priors: ``[M, 4]`` xyxy priors (anchors, proposals, pseudo-boxes), pixels.
            gt_bboxes: ``[G, 4]`` xyxy gt boxes, pixels (G may be 0).
            gt_labels: ``[G]`` integer classes in ``0..num_classes-1``.
            num_classes: number of foreground classes; the background label.
            gt_bboxes_ignore: optional ``[K, 4]`` xyxy boxes to ignore (crowd regions).

        Returns:
            :class:`AssignResult` of ``[M]`` tensors on ``priors.device``: gt_inds in
            ``{-1, 0, 1..G}``, max_overlaps = the max IoU over the gts of every prior (float32,
            or float64 for float64 inputs; zeros when G = 0), labels.

        Raises:
            ValueError: a box tensor is not ``[*, 4]`` or ``gt_labels`` is not ``[G]``.
        """
        if priors.dim() != 2 or priors.size(-1) != 4:
            raise ValueError(f"max_iou.py: priors must be [M, 4], got {tuple(priors.shape)}")
        if gt_bboxes.dim() != 2 or gt_bboxes.size(-1) != 4:
            raise ValueError(f"max_iou.py: gt_bboxes must be [G, 4], got {tuple(gt_bboxes.shape)}")
        num_gts, num_priors = gt_bboxes.size(0), priors.size(0)
        if gt_labels.shape != (num_gts,):
            raise ValueError(f"max_iou.py: gt_labels must be [{num_gts}], got {tuple(gt_labels.shape)}")
        if gt_bboxes_ignore is not None and (gt_bboxes_ignore.dim() != 2 or gt_bboxes_ignore.size(-1) != 4):
            raise ValueError(f"max_iou.py: gt_bboxes_ignore must be [K, 4], got {tuple(gt_bboxes_ignore.shape)}")

        device = priors.device
        dtype = torch.promote_types(priors.dtype, gt_bboxes.dtype)
        dtype = torch.promote_types(dtype, torch.float32)  # fp16/bf16 -> fp32, fp64 stays
        priors = priors.to(dtype)
        gt_bboxes = gt_bboxes.to(device=device, dtype=dtype)
        labels = torch.full((num_priors,), num_classes, dtype=torch.long, device=device)

        # Step 1.
        if num_gts == 0 or num_priors == 0:
            gt_inds = torch.zeros(num_priors, dtype=torch.long, device=device)
            return AssignResult(gt_inds, priors.new_zeros(num_priors), labels)

        overlaps = bbox_overlaps(gt_bboxes, priors, eps=_EPS)  # [G, M]

        # Step 2 (inert in the zoo configs).
        if self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0:
            iof = _iof(priors, gt_bboxes_ignore.to(device=device, dtype=dtype))  # [M, K]
            ignored = iof.max(dim=1).values > self.ignore_iof_thr
            overlaps[:, ignored] = -1.0

        # Step 3.
        max_overlaps, argmax_overlaps = overlaps.max(dim=0)  # [M]
        gt_max_overlaps, gt_argmax_overlaps = overlaps.max(dim=1)  # [G]

        # Step 4.
        gt_inds = torch.full((num_priors,), -1, dtype=torch.long, device=device)
        if isinstance(self.neg_iou_thr, tuple):
            lo, hi = self.neg_iou_thr
            neg = (max_overlaps >= lo) & (max_overlaps < hi)
        else:
            neg = (max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)
        gt_inds[neg] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax_overlaps[pos] + 1

        # Step 5: match[g, m] says gt g claims prior m; the largest claiming g wins.
        if self.match_low_quality:
            allowed = gt_max_overlaps >= self.min_pos_iou  # [G]
            if self.gt_max_assign_all:
                match = overlaps == gt_max_overlaps[:, None]
            else:
                match = torch.zeros_like(overlaps, dtype=torch.bool)
                match[torch.arange(num_gts, device=device), gt_argmax_overlaps] = True
            match &= allowed[:, None]
            gt_rank = torch.arange(1, num_gts + 1, device=device)[:, None]  # g + 1
            winner = (match.long() * gt_rank).max(dim=0).values  # [M], 0 = no claim
            gt_inds = torch.where(winner > 0, winner, gt_inds)

        # Step 6.
        positive = gt_inds > 0
        labels[positive] = gt_labels.to(device=device, dtype=torch.long)[gt_inds[positive] - 1]
        return AssignResult(gt_inds, max_overlaps, labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pos_iou_thr={self.pos_iou_thr}, "
            f"neg_iou_thr={self.neg_iou_thr}, min_pos_iou={self.min_pos_iou}, "
            f"gt_max_assign_all={self.gt_max_assign_all}, "
            f"match_low_quality={self.match_low_quality}, ignore_iof_thr={self.ignore_iof_thr})"
        )
