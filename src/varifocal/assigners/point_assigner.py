"""RepPoints' init-stage assigner: one positive point per gt, on the pyramid level that the gt's
size selects (``../shared/docs/zoo_spec.md`` §1.12, §6.3 item 3, pitfalls §6.10 item 6).

The level arithmetic (float32 ``log2`` of the size over ``scale``, mean of the two axes, ``int()``
truncation toward zero, clamp) is MMDetection's ``PointAssigner`` operation by operation, so that
gts whose mean log-size falls on a level boundary pick the same level (golden parity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .assign_result import AssignResult

__all__ = ["PointAssignResult", "PointAssigner"]


@dataclass
class PointAssignResult(AssignResult):
    """An :class:`AssignResult` of the :class:`PointAssigner` (zoo §1.12).

    Attributes:
        gt_inds: ``[M]`` long, 0 = negative, ``k + 1`` = positive of gt ``k``. There is no
            ignore state (no ``-1``).
        max_overlaps: ``[M]`` float32 zeros (the assigner computes no IoU; MMDetection stores
            ``None``).
        labels: ``[M]`` long, the gt's class on positives, ``num_classes`` elsewhere.
        distances: ``[M]`` float32, the normalised centre distance
            ``‖(p − c_gt) / (w_gt, h_gt)‖₂`` (unitless) of the gt that holds the point, ``inf``
            on negatives.
    """

    distances: Tensor


class PointAssigner:
    """Nearest-point assignment (zoo_spec §1.12).

    For points ``(x, y, s)`` (pixels; s the stride of the point's level):

    1. point level ``int(log2 s)`` (3…7 for strides 8…128);
    2. gt level ``int((log2(w / scale) + log2(h / scale)) / 2)`` with w, h clamped ≥ 1e-6,
       ``int()`` truncating toward zero, clamped to the lowest…highest point level present
       (``[3, 7]`` for the full P3-P7 pyramid);
    3. for each gt, the ``pos_num`` points of its level nearest to its centre, distances
       normalised per axis by the gt's width and height; a point goes to the gt with the
       **smallest** such distance (ties: the lower gt index, i.e. the first one recorded, since
       a later gt must be strictly nearer to take a point over);
    4. everything else is negative.

    Two cases the spec leaves open, decided here (a project choice; MMDetection's ``topk``
    raises in both): a gt whose level has no point at all (a level missing between the lowest
    and highest present) gets no positive, and one whose level has fewer than ``pos_num``
    points gets them all. Within a gt, equally distant points are taken lowest index first
    (zoo_spec §12 item 8: ties may differ from MMDetection's ``topk``).

    Args:
        scale: base size of level 0, pixels (4, RepPoints' ``point_base_scale``).
        pos_num: positives per gt (1).

    Raises:
        ValueError: ``scale <= 0`` or ``pos_num < 1``.
    """

    def __init__(self, scale: float = 4.0, pos_num: int = 1) -> None:
        if not float(scale) > 0:
            raise ValueError(f"point_assigner.py: scale must be > 0, got {scale}")
        if int(pos_num) < 1:
            raise ValueError(f"point_assigner.py: pos_num must be >= 1, got {pos_num}")
        self.scale = float(scale)
        self.pos_num = int(pos_num)

    def gt_levels(self, gt_bboxes: Tensor, lvl_min: int = 3, lvl_max: int = 7) -> Tensor:
        """Pyramid level of each gt (class docstring, step 2).

        Args:
            gt_bboxes: ``[G, 4]`` xyxy, pixels.
            lvl_min, lvl_max: the clamp range (the levels of the points).

        Returns:
            ``[G]`` int32 levels, e.g. 3 for a 32×32 box (log2 8 = 3) and still 3 for 63×63
            (log2 15.75 = 3.98, truncated).
        """
        wh = (gt_bboxes[:, 2:] - gt_bboxes[:, :2]).clamp(min=1e-6)
        mean_log = (torch.log2(wh[:, 0] / self.scale) + torch.log2(wh[:, 1] / self.scale)) / 2
        return mean_log.int().clamp(min=int(lvl_min), max=int(lvl_max))

    @torch.no_grad()
    def assign(self, points: Tensor, gt_bboxes: Tensor, gt_labels: Tensor, num_classes: int) -> PointAssignResult:
        """Assign the points of one image (class docstring).

        Args:
            points: ``[M, 3]`` ``(x, y, stride)``, pixels: the *valid* points of all levels.
            gt_bboxes: ``[G, 4]`` xyxy gt boxes, resized-image pixels (G may be 0).
            gt_labels: ``[G]`` integer classes in ``0..num_classes-1``.
            num_classes: number of foreground classes; the background label.

        Returns:
            :class:`PointAssignResult` of ``[M]`` tensors on ``points.device``; all negative
            when ``G = 0`` or ``M = 0``.

        Raises:
            ValueError: ``points`` is not ``[M, 3]``, ``gt_bboxes`` not ``[G, 4]`` or
                ``gt_labels`` not ``[G]``.
        """
        if points.dim() != 2 or points.size(-1) != 3:
            raise ValueError(f"point_assigner.py: points must be [M, 3] (x, y, stride), got {tuple(points.shape)}")
        if gt_bboxes.dim() != 2 or gt_bboxes.size(-1) != 4 or gt_labels.shape != gt_bboxes.shape[:1]:
            raise ValueError(
                f"point_assigner.py: gt boxes must be [G, 4] with labels [G], got {tuple(gt_bboxes.shape)} "
                f"and {tuple(gt_labels.shape)}"
            )
        device = points.device
        num_points, num_gts = points.size(0), gt_bboxes.size(0)
        gt_inds = torch.zeros(num_points, dtype=torch.long, device=device)
        distances = torch.full((num_points,), float("inf"), dtype=torch.float32, device=device)
        labels = torch.full((num_points,), num_classes, dtype=torch.long, device=device)
        result = PointAssignResult(gt_inds, torch.zeros(num_points, device=device), labels, distances)
        if num_gts == 0 or num_points == 0:
            return result

        points = points.float()
        boxes = gt_bboxes.to(device=device, dtype=torch.float32)
        point_lvl = torch.log2(points[:, 2]).int()  # [M]
        gt_lvl = self.gt_levels(boxes, int(point_lvl.min()), int(point_lvl.max()))  # [G]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-6)

        # Candidate (gt, point, distance) triples, level by level.
        cand_gt, cand_pt, cand_dist = [], [], []
        for lvl in torch.unique(gt_lvl).tolist():
            on_lvl = torch.nonzero(point_lvl == lvl, as_tuple=False).squeeze(1)  # [M_l]
            if on_lvl.numel() == 0:
                continue  # no point of this level: its gts stay unassigned (class docstring)
            gts = torch.nonzero(gt_lvl == lvl, as_tuple=False).squeeze(1)  # [G_l]
            xy = points[on_lvl, :2]
            dist = ((xy[None] - centres[gts, None]) / wh[gts, None]).norm(dim=-1)  # [G_l, M_l]
            k = min(self.pos_num, on_lvl.numel())
            if k == 1:  # the first minimum of each row
                near_dist, near = dist.min(dim=1, keepdim=True)
            else:
                near_dist, near = torch.sort(dist, dim=1, stable=True)
            cand_gt.append(gts[:, None].expand(-1, k).reshape(-1))
            cand_pt.append(on_lvl[near[:, :k]].reshape(-1))
            cand_dist.append(near_dist[:, :k].reshape(-1))
        if not cand_gt:
            return result
        g, p, d = torch.cat(cand_gt), torch.cat(cand_pt), torch.cat(cand_dist)
        # A contested point goes to the nearest gt, the lowest gt index on a tie: order the
        # triples by (point, distance, gt) and keep the first of each point.
        order = torch.argsort(g, stable=True)
        order = order[torch.argsort(d[order], stable=True)]
        order = order[torch.argsort(p[order], stable=True)]
        g, p, d = g[order], p[order], d[order]
        first = torch.ones_like(p, dtype=torch.bool)
        first[1:] = p[1:] != p[:-1]
        gt_inds[p[first]] = g[first] + 1
        distances[p[first]] = d[first]
        labels[p[first]] = gt_labels.to(device=device, dtype=torch.long)[g[first]]
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, pos_num={self.pos_num})"
