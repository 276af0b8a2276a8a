"""FoveaBox point assignment: inclusive, overlapping scale ranges on √area, the shrunken "fovea"
region of each gt, painted from the largest gt to the smallest, and the log-space targets
(``../shared/docs/zoo_spec.md`` §5.3, pitfalls §5.10 items 3-5).

The arithmetic (÷ stride, half sizes, ``ceil``/``floor`` with the −0.5 cell-centre convention,
the ratios ÷ base edge, clamp, log) is MMDetection's operation by operation, so that the cell
boundaries and targets are bit-identical to its float32 results (golden parity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .assign_result import AssignResult

__all__ = ["FoveaAssignResult", "FoveaAssigner"]


@dataclass
class FoveaAssignResult(AssignResult):
    """An :class:`AssignResult` of the FoveaBox points of one image (zoo §5.3), all levels
    concatenated P3 → P7, row-major within a level.

    Attributes:
        gt_inds: ``[P]`` long, 0 = background, ``k + 1`` = painted by gt ``k`` (the gt painted
            last on the cell, i.e. the smallest of those whose fovea covers it). No ``-1``.
        max_overlaps: ``[P]`` float32 zeros (FoveaBox assigns by geometry, it computes no IoU).
        labels: ``[P]`` long, that gt's class, ``num_classes`` for background.
        bbox_targets: ``[P, 4]`` float32 ``log(clamp(d / B_l, lo, hi))``, d the (l, t, r, b)
            pixel distances of the cell's point to its gt; 0 (= log 1) on background cells.
    """

    bbox_targets: Tensor


class FoveaAssigner:
    """FoveaBox assigner (zoo_spec §5.3).

    For each level l (stride s_l, base edge B_l, range [lo_l, hi_l]) of one image:

    1. the gts with ``lo_l ≤ √((x2 − x1)(y2 − y1)) ≤ hi_l`` (both inclusive; the ranges overlap,
       so a gt can be positive on two levels) are sorted by descending √area (stable) and
       painted in that order, so a smaller gt overwrites a larger one where they overlap;
    2. a gt paints the cells of its :meth:`fovea_region` with its class and the ratios
       ``(px − x1, py − y1, x2 − px, y2 − py) / B_l`` (pixels, (px, py) the cell's point);
    3. then every ratio of the level is clamped to ``target_clamp`` and logged.

    There are no valid flags: padding cells are negatives unless a fovea region reaches them.

    Args:
        strides: s_l per level, pixels (8…128).
        base_edge_list: B_l per level, pixels (16…256).
        scale_ranges: ``(lo, hi)`` per level, pixels of the resized image.
        sigma: fovea shrink factor σ ∈ (0, 1] (0.4).
        target_clamp: ``(min, max)`` of the ratios before the log (1/16, 16).

    Raises:
        ValueError: the three per-level lists are empty or differ in length, a range has
            ``lo > hi``, ``sigma`` is outside (0, 1], or ``target_clamp`` is not ``0 < min ≤ max``.
    """

    def __init__(
        self,
        strides: Sequence[int],
        base_edge_list: Sequence[int],
        scale_ranges: Sequence[tuple[float, float]],
        sigma: float = 0.4,
        target_clamp: tuple[float, float] = (1.0 / 16, 16.0),
    ) -> None:
        if not 0 < len(strides) == len(base_edge_list) == len(scale_ranges):
            raise ValueError(
                f"fovea_assigner.py: {len(strides)} strides, {len(base_edge_list)} base edges and "
                f"{len(scale_ranges)} scale ranges must be as many (and at least one)"
            )
        if any(float(lo) > float(hi) for lo, hi in scale_ranges):
            raise ValueError(f"fovea_assigner.py: every scale range needs lo <= hi, got {tuple(scale_ranges)}")
        if not 0.0 < sigma <= 1.0:
            raise ValueError(f"fovea_assigner.py: sigma must be in (0, 1], got {sigma}")
        if not 0.0 < target_clamp[0] <= target_clamp[1]:
            raise ValueError(f"fovea_assigner.py: target_clamp must be 0 < min <= max, got {tuple(target_clamp)}")
        self.strides = tuple(int(s) for s in strides)
        self.base_edge_list = tuple(int(b) for b in base_edge_list)
        self.scale_ranges = tuple((float(lo), float(hi)) for lo, hi in scale_ranges)
        self.sigma = float(sigma)
        self.target_clamp = (float(target_clamp[0]), float(target_clamp[1]))

    def scale_assignment(self, gt_bboxes: Tensor) -> Tensor:
        """Which levels each gt is a candidate of (step 1): ``lo_l ≤ √(w·h) ≤ hi_l``.

        Args:
            gt_bboxes: ``[K, 4]`` xyxy, resized-image pixels.

        Returns:
            ``[K, L]`` bool; a gt may hit two levels, or none.
        """
        side = torch.sqrt((gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1]))  # [K]
        return torch.stack([(side >= lo) & (side <= hi) for lo, hi in self.scale_ranges], dim=1)

    def fovea_region(self, gt_bboxes: Tensor, stride: int, featmap_size: tuple[int, int]) -> Tensor:
        """The fovea cells of each gt on one level (zoo §5.3 item 3), inclusive cell indices.

        In feature units (box / s), half_w = (x2 − x1)/2: columns ``ceil(x1 + (1 − σ)·half_w −
        0.5)`` … ``floor(x1 + (1 + σ)·half_w − 0.5)``, each clamped to ``[0, W − 1]``; rows
        likewise with y and ``H − 1``: the cells whose centre lies in the box shrunk to σ of its
        half-size around its centre. An empty region has ``right < left`` or ``bottom < top``.

        Args:
            gt_bboxes: ``[K, 4]`` xyxy, resized-image pixels.
            stride: the level's stride, pixels.
            featmap_size: ``(H, W)`` of the level.

        Returns:
            ``[K, 4]`` long ``(left, top, right, bottom)``.
        """
        h, w = int(featmap_size[0]), int(featmap_size[1])
        boxes = gt_bboxes / stride
        half_w = 0.5 * (boxes[:, 2] - boxes[:, 0])
        half_h = 0.5 * (boxes[:, 3] - boxes[:, 1])
        left = torch.ceil(boxes[:, 0] + (1 - self.sigma) * half_w - 0.5).long().clamp(0, w - 1)
        right = torch.floor(boxes[:, 0] + (1 + self.sigma) * half_w - 0.5).long().clamp(0, w - 1)
        top = torch.ceil(boxes[:, 1] + (1 - self.sigma) * half_h - 0.5).long().clamp(0, h - 1)
        bottom = torch.floor(boxes[:, 1] + (1 + self.sigma) * half_h - 0.5).long().clamp(0, h - 1)
        return torch.stack([left, top, right, bottom], dim=1)

    def _paint_level(
        self, points: Tensor, featmap_size: tuple[int, int], lvl: int, boxes: Tensor, hits: Tensor
    ) -> tuple[Tensor, Tensor]:
        """One level: ``(gt_inds [H·W] long, 0 or gt + 1; targets [H·W, 4] log-space)``."""
        h, w = int(featmap_size[0]), int(featmap_size[1])
        gt_inds = torch.zeros(h * w, dtype=torch.long, device=points.device)
        ratios = points.new_ones((h * w, 4))
        hit = torch.nonzero(hits, as_tuple=False).flatten()
        if hit.numel() > 0:
            side = torch.sqrt((boxes[hit, 2] - boxes[hit, 0]) * (boxes[hit, 3] - boxes[hit, 1]))
            hit = hit[torch.sort(-side, stable=True).indices]  # largest first; smaller ones paint over
            region = self.fovea_region(boxes[hit], self.strides[lvl], (h, w))  # [G, 4]
            cols = torch.arange(w, device=points.device)
            rows = torch.arange(h, device=points.device)
            in_x = (cols[None] >= region[:, 0:1]) & (cols[None] <= region[:, 2:3])  # [G, W]
            in_y = (rows[None] >= region[:, 1:2]) & (rows[None] <= region[:, 3:4])  # [G, H]
            cover = in_y[:, :, None] & in_x[:, None, :]  # [G, H, W]
            rank = torch.arange(1, hit.numel() + 1, device=points.device)[:, None, None]
            last = (cover.long() * rank).amax(dim=0).reshape(-1)  # painting position + 1 of the last painter
            pos = last > 0
            gt = hit[last[pos] - 1]
            gt_inds[pos] = gt + 1
            p, g = points[pos], boxes[gt]
            ratios[pos] = torch.cat([p - g[:, :2], g[:, 2:] - p], dim=1) / self.base_edge_list[lvl]
        return gt_inds, torch.log(ratios.clamp(min=self.target_clamp[0], max=self.target_clamp[1]))

    @torch.no_grad()
    def assign(
        self,
        points: Sequence[Tensor],
        featmap_sizes: Sequence[tuple[int, int]],
        gt_bboxes: Tensor,
        gt_labels: Tensor,
        num_classes: int,
    ) -> FoveaAssignResult:
        """Assign the points of one image to its gts (class docstring).

        Args:
            points: per level ``[H_l·W_l, 2]`` (x, y) points, pixels (offset 0.5, zoo §1.6).
            featmap_sizes: ``(H_l, W_l)`` per level.
            gt_bboxes: ``[K, 4]`` xyxy gt boxes, resized-image pixels (K may be 0).
            gt_labels: ``[K]`` integer classes in ``0..num_classes-1``.
            num_classes: number of foreground classes; the background label.

        Returns:
            :class:`FoveaAssignResult` with ``P = Σ_l H_l·W_l`` rows on ``points[0].device``.

        Raises:
            ValueError: ``points`` / ``featmap_sizes`` do not have one entry per level, a level's
                point count is not ``H_l·W_l``, ``gt_bboxes`` is not ``[K, 4]`` or ``gt_labels``
                not ``[K]``.
        """
        if not len(points) == len(featmap_sizes) == len(self.strides):
            raise ValueError(
                f"fovea_assigner.py: {len(self.strides)} levels but {len(points)} point sets and "
                f"{len(featmap_sizes)} featmap sizes"
            )
        if any(p.shape != (int(h) * int(w), 2) for p, (h, w) in zip(points, featmap_sizes)):
            raise ValueError("fovea_assigner.py: each level needs [H·W, 2] points")
        if gt_bboxes.dim() != 2 or gt_bboxes.size(-1) != 4 or gt_labels.shape != gt_bboxes.shape[:1]:
            raise ValueError(
                f"fovea_assigner.py: gt boxes must be [K, 4] with labels [K], got {tuple(gt_bboxes.shape)} "
                f"and {tuple(gt_labels.shape)}"
            )
        boxes = gt_bboxes.to(device=points[0].device, dtype=torch.float32)
        hits = self.scale_assignment(boxes)  # [K, L]
        painted = [self._paint_level(points[l], featmap_sizes[l], l, boxes, hits[:, l]) for l in range(len(points))]
        gt_inds = torch.cat([p[0] for p in painted])  # [P]
        labels = torch.full_like(gt_inds, num_classes)
        pos = gt_inds > 0
        labels[pos] = gt_labels.to(gt_inds.device).long()[gt_inds[pos] - 1]
        return FoveaAssignResult(
            gt_inds=gt_inds,
            max_overlaps=points[0].new_zeros((gt_inds.shape[0],)),
            labels=labels,
            bbox_targets=torch.cat([p[1] for p in painted]),
        )
