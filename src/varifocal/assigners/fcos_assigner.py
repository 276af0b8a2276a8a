"""FCOS point assignment: inside-box (or centre-sampling), inclusive regress ranges, minimum area
(``../shared/docs/zoo_spec.md`` §3.3, tie rule §3.10 item 4).

The operations mirror what ``FCOSHead`` computed before the assigner was split out, so that the
labels, gt indices and regression targets are bit-identical (golden parity, zoo_spec §3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .assign_result import AssignResult

__all__ = ["FCOSAssignResult", "FCOSAssigner"]

#: Area of a non-candidate (point, gt) pair; MMDetection's ``INF`` (zoo §3.3).
INF = 1e8


@dataclass
class FCOSAssignResult(AssignResult):
    """An :class:`AssignResult` of FCOS points (zoo §3.3) plus the gt each point regresses to.

    Attributes:
        gt_inds: ``[P]`` long, 0 = negative, ``k + 1`` = positive for gt ``k`` (FCOS never ignores
            a point: no ``-1``).
        max_overlaps: ``[P]`` float32 zeros: FCOS assigns by geometry, it computes no IoU.
        labels: ``[P]`` long, the winning gt's class, ``num_classes`` for negatives.
        target_gt_inds: ``[P]`` long, 0-based index of the gt whose (l, t, r, b) is the point's
            regression target: the winner for positives; for negatives the index the minimum
            over areas falls back to, gt 0 (every area is ``INF``), as in MMDetection. Those
            targets never enter a loss but are part of the head's returned targets.
    """

    target_gt_inds: Tensor


class FCOSAssigner:
    """FCOS assigner (zoo_spec §3.3): the gt of minimum area among the candidates of each point.

    Per point p of level l and gt g, with (l, t, r, b) = (px − x1, py − y1, x2 − px, y2 − py), g
    is a candidate of p when

    * p is strictly inside g (``min(l, t, r, b) > 0``), or, with ``center_sampling``, strictly
      inside g's centre box ``(cx, cy) ± center_sample_radius · s_l`` clipped to g;
    * **and** ``lo_l ≤ max(l, t, r, b) ≤ hi_l`` (both bounds inclusive).

    The candidate of minimum area ``(x2 − x1)(y2 − y1)`` wins, ties going to the lowest gt index;
    a point without candidates is negative. Points carry no valid flags (batch-padding points
    never fall inside a gt, zoo §3.3 item 5).

    Args:
        regress_ranges: per level ``(lo, hi)`` of the largest target distance, pixels, both
            inclusive (zoo §3.3 item 2).
        center_sampling: positives only inside the clipped centre box instead of the whole gt.
        center_sample_radius: half-side of the centre box in strides (1.5).

    Raises:
        ValueError: empty ``regress_ranges`` or a non-positive ``center_sample_radius``.
    """

    def __init__(
        self,
        regress_ranges: Sequence[tuple[float, float]],
        center_sampling: bool = False,
        center_sample_radius: float = 1.5,
    ) -> None:
        if len(regress_ranges) == 0:
            raise ValueError("fcos_assigner.py: regress_ranges must name at least one level")
        if center_sample_radius <= 0:
            raise ValueError(f"fcos_assigner.py: center_sample_radius must be > 0, got {center_sample_radius}")
        self.regress_ranges = tuple((float(lo), float(hi)) for lo, hi in regress_ranges)
        self.center_sampling = bool(center_sampling)
        self.center_sample_radius = float(center_sample_radius)

    def level_tensors(
        self, num_level_points: Sequence[int], strides: Sequence[float], like: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-point regress ranges ``[P, 2]`` and strides ``[P]`` (pixels), dtype/device of
        ``like``, from the point count and stride of each level.

        Raises:
            ValueError: ``num_level_points`` or ``strides`` do not have one entry per level of
                ``regress_ranges``, or a count is negative.
        """
        num_levels = len(self.regress_ranges)
        if len(num_level_points) != num_levels or len(strides) != num_levels:
            raise ValueError(
                f"fcos_assigner.py: {num_levels} regress_ranges but {len(num_level_points)} level sizes "
                f"and {len(strides)} strides"
            )
        if any(n < 0 for n in num_level_points):
            raise ValueError(f"fcos_assigner.py: num_level_points must be >= 0, got {list(num_level_points)}")
        ranges = torch.cat([like.new_tensor(r).expand(n, 2) for n, r in zip(num_level_points, self.regress_ranges)])
        point_strides = torch.cat([like.new_full((n,), float(s)) for n, s in zip(num_level_points, strides)])
        return ranges, point_strides

    @torch.no_grad()
    def assign(
        self,
        points: Tensor,
        num_level_points: Sequence[int],
        strides: Sequence[float],
        gt_bboxes: Tensor,
        gt_labels: Tensor,
        num_classes: int,
    ) -> FCOSAssignResult:
        """Assign the points of one image to its gts (zoo_spec §3.3).

        Args:
            points: ``[P, 2]`` (x, y) points of all levels, concatenated level by level, pixels.
            num_level_points: points of each level, summing to ``P``.
            strides: stride of each level, pixels (used by ``center_sampling`` only).
            gt_bboxes: ``[K, 4]`` xyxy gt boxes, pixels (K may be 0).
            gt_labels: ``[K]`` integer gt classes in ``0..num_classes-1``.
            num_classes: number of foreground classes; the background label.

        Returns:
            :class:`FCOSAssignResult` with ``[P]`` tensors on ``points.device``. With no gt every
            point is negative and ``target_gt_inds`` is 0 (there is no gt to index).

        Raises:
            ValueError: ``points`` is not ``[P, 2]``, ``gt_bboxes`` not ``[K, 4]``, ``gt_labels``
                has other than K entries, or the level sizes / strides do not match
                ``regress_ranges`` or do not sum to ``P``.
        """
        if points.dim() != 2 or points.size(-1) != 2:
            raise ValueError(f"fcos_assigner.py: points must be [P, 2], got {tuple(points.shape)}")
        if gt_bboxes.dim() != 2 or gt_bboxes.size(-1) != 4:
            raise ValueError(f"fcos_assigner.py: gt_bboxes must be [K, 4], got {tuple(gt_bboxes.shape)}")
        num_points, num_gts = points.shape[0], gt_bboxes.shape[0]
        if gt_labels.numel() != num_gts:
            raise ValueError(f"fcos_assigner.py: {num_gts} gt_bboxes but {gt_labels.numel()} gt_labels")
        if sum(num_level_points) != num_points:
            raise ValueError(
                f"fcos_assigner.py: num_level_points {list(num_level_points)} sum to {sum(num_level_points)}, "
                f"not to the {num_points} points"
            )
        ranges, point_strides = self.level_tensors(num_level_points, strides, points)
        device = points.device
        if num_gts == 0:
            zeros = torch.zeros((num_points,), dtype=torch.long, device=device)
            return FCOSAssignResult(
                gt_inds=zeros,
                max_overlaps=points.new_zeros((num_points,)),
                labels=torch.full((num_points,), num_classes, dtype=torch.long, device=device),
                target_gt_inds=zeros.clone(),
            )
        px, py = points[:, 0:1], points[:, 1:2]  # [P, 1]
        x1, y1, x2, y2 = (gt_bboxes[:, i][None, :] for i in range(4))  # [1, K]
        dist = torch.stack((px - x1, py - y1, x2 - px, y2 - py), dim=-1)  # [P, K, 4]

        if self.center_sampling:
            radius = (point_strides * self.center_sample_radius)[:, None]  # [P, 1]
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            cx1, cy1 = torch.maximum(cx - radius, x1), torch.maximum(cy - radius, y1)
            cx2, cy2 = torch.minimum(cx + radius, x2), torch.minimum(cy + radius, y2)
            centre_dist = torch.stack((px - cx1, py - cy1, cx2 - px, cy2 - py), dim=-1)
            inside = centre_dist.min(dim=-1).values > 0  # [P, K]
        else:
            inside = dist.min(dim=-1).values > 0  # [P, K]
        max_dist = dist.max(dim=-1).values  # [P, K]
        in_range = (max_dist >= ranges[:, 0:1]) & (max_dist <= ranges[:, 1:2])

        areas = ((x2 - x1) * (y2 - y1)).expand(num_points, num_gts)
        areas = torch.where(inside & in_range, areas, areas.new_tensor(INF))
        min_area = areas.min(dim=1).values  # [P]
        # Lowest gt index among the minimum-area candidates (explicit tie rule, zoo §3.10 item 4).
        gt_index = torch.arange(num_gts, device=device).expand(num_points, num_gts)
        winner = torch.where(areas == min_area[:, None], gt_index, num_gts).min(dim=1).values  # [P]
        positive = min_area < INF

        labels = torch.where(positive, gt_labels.reshape(-1).long()[winner], num_classes)
        return FCOSAssignResult(
            gt_inds=torch.where(positive, winner + 1, 0),
            max_overlaps=points.new_zeros((num_points,)),
            labels=labels,
            target_gt_inds=winner,
        )
