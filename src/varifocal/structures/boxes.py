"""Axis-aligned box utilities: IoU / GIoU, (l, t, r, b) <-> xyxy, centerness, xyxy <-> xywh.

Conventions (DEVELOPERS.md, spec §10 item 23): boxes are float ``(x1, y1, x2, y2)`` in pixels,
width = ``x2 - x1`` (no "+1"). Distances are ``(l, t, r, b)`` from a point to the four box
sides, in the same pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "bbox_overlaps",
    "distance2bbox",
    "bbox2distance",
    "centerness_target",
    "xyxy_to_xywh",
    "xywh_to_xyxy",
]

_MODES = ("iou", "giou")


def _check_boxes(name: str, boxes: Tensor) -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes.py: {name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.size(-1) != 4:
        raise ValueError(f"boxes.py: {name} must have shape [N, 4], got {tuple(boxes.shape)}")


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def bbox_overlaps(
    bboxes1: Tensor,
    bboxes2: Tensor,
    mode: str = "iou",
    is_aligned: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """IoU or GIoU between two sets of xyxy boxes (spec §3.2 step 1, §3.5, §4.3).

    Semantics follow MMDetection's ``bbox_overlaps`` exactly, so the results agree to float
    rounding:

    * ``area = (x2 - x1) * (y2 - y1)`` (no "+1");
    * ``overlap = prod(clamp(min(rb) - max(lt), min=0))``;
    * ``union = max(area1 + area2 - overlap, eps)``; ``iou = overlap / union``;
    * GIoU: ``enclose = max(prod(clamp(max(rb) - min(lt), min=0)), eps)`` and
      ``giou = iou - (enclose - union) / enclose``.

    Args:
        bboxes1: ``[N, 4]`` xyxy boxes, pixels.
        bboxes2: ``[M, 4]`` xyxy boxes, pixels (``M == N`` when ``is_aligned``).
        mode: ``"iou"`` or ``"giou"``.
        is_aligned: if True, compare ``bboxes1[i]`` with ``bboxes2[i]`` only.
        eps: lower clamp of the union (and of the enclosing area for GIoU), pixels².

    Returns:
        ``[N, M]`` pairwise values, or ``[N]`` when ``is_aligned``. Dtype/device of
        ``bboxes1``. IoU lies in ``[0, 1]``, GIoU in ``[-1, 1]``. Empty inputs (N = 0 or
        M = 0) give an empty result of the right shape.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: ``mode`` is not ``"iou"``/``"giou"``, a box tensor is not ``[*, 4]``, or
            ``is_aligned`` with ``N != M``.
    """
    if mode not in _MODES:
        raise ValueError(f"boxes.py: bbox_overlaps mode must be one of {_MODES}, got {mode!r}")
    _check_boxes("bboxes1", bboxes1)
    _check_boxes("bboxes2", bboxes2)
    rows, cols = bboxes1.size(0), bboxes2.size(0)
    if is_aligned and rows != cols:
        raise ValueError(f"boxes.py: is_aligned=True needs the same number of boxes, got {rows} and {cols}")
    if rows * cols == 0:
        shape = (rows,) if is_aligned else (rows, cols)
        return bboxes1.new_zeros(shape)

    area1 = _area(bboxes1)
    area2 = _area(bboxes2)
    if is_aligned:
        b1, b2 = bboxes1, bboxes2
        a1, a2 = area1, area2
    else:
        # Broadcast [N, 1, 4] against [1, M, 4].
        b1, b2 = bboxes1[:, None, :], bboxes2[None, :, :]
        a1, a2 = area1[:, None], area2[None, :]

    lt = torch.max(b1[..., :2], b2[..., :2])
    rb = torch.min(b1[..., 2:], b2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = a1 + a2 - overlap
    eps_t = union.new_tensor([eps])
    union = torch.max(union, eps_t)
    ious = overlap / union
    if mode == "iou":
        return ious

    enclosed_lt = torch.min(b1[..., :2], b2[..., :2])
    enclosed_rb = torch.max(b1[..., 2:], b2[..., 2:])
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
    return ious - (enclose_area - union) / enclose_area


def distance2bbox(
    points: Tensor,
    distance: Tensor,
    max_shape: tuple[int, int] | None = None,
) -> Tensor:
    """Decode ``(l, t, r, b)`` distances at points into xyxy boxes (spec §3.3, §5).

    ``x1 = px - l, y1 = py - t, x2 = px + r, y2 = py + b``. No clamp unless ``max_shape`` is
    given (training never clamps, spec §3.3; test time clamps to the resized image, §10 item 17).

    Args:
        points: ``[N, 2]`` point coordinates ``(x, y)``, pixels.
        distance: ``[N, 4]`` distances ``(l, t, r, b)``, pixels.
        max_shape: optional ``(h, w)``; x is clamped to ``[0, w]`` and y to ``[0, h]``.

    Returns:
        ``[N, 4]`` xyxy boxes, pixels (differentiable w.r.t. both inputs).

    Raises:
        ValueError: ``points`` is not ``[N, 2]``, ``distance`` is not ``[N, 4]``, or their
            N differ.
    """
    if points.dim() != 2 or points.size(-1) != 2:
        raise ValueError(f"boxes.py: points must be [N, 2], got {tuple(points.shape)}")
    if distance.dim() != 2 or distance.size(-1) != 4 or distance.size(0) != points.size(0):
        raise ValueError(f"boxes.py: distance must be [N, 4] with N = {points.size(0)}, got {tuple(distance.shape)}")
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    if max_shape is not None:
        h, w = max_shape
        x1 = x1.clamp(min=0, max=w)
        x2 = x2.clamp(min=0, max=w)
        y1 = y1.clamp(min=0, max=h)
        y2 = y2.clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points: Tensor, bboxes: Tensor) -> Tensor:
    """Encode xyxy boxes as ``(l, t, r, b)`` distances from points (spec §3.3).

    ``(px - x1, py - y1, x2 - px, y2 - py)``, no clamp and no normalisation: a point outside its
    box yields negative entries.

    Args:
        points: ``[N, 2]`` point coordinates ``(x, y)``, pixels.
        bboxes: ``[N, 4]`` xyxy boxes, pixels.

    Returns:
        ``[N, 4]`` distances ``(l, t, r, b)``, pixels.

    Raises:
        ValueError: ``points`` is not ``[N, 2]``, ``bboxes`` is not ``[N, 4]``, or their N
            differ.
    """
    if points.dim() != 2 or points.size(-1) != 2:
        raise ValueError(f"boxes.py: points must be [N, 2], got {tuple(points.shape)}")
    _check_boxes("bboxes", bboxes)
    if bboxes.size(0) != points.size(0):
        raise ValueError(f"boxes.py: points and bboxes differ in N: {points.size(0)} vs {bboxes.size(0)}")
    left = points[:, 0] - bboxes[:, 0]
    top = points[:, 1] - bboxes[:, 1]
    right = bboxes[:, 2] - points[:, 0]
    bottom = bboxes[:, 3] - points[:, 1]
    return torch.stack([left, top, right, bottom], dim=-1)


def centerness_target(distances: Tensor) -> Tensor:
    """Centerness ``sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b))`` of (l, t, r, b) distances
    (zoo_spec §3.4 for FCOS, §4.4 for ATSS).

    No validation of the values: a point outside its box (a negative distance) or on two
    opposite sides of a zero-size box (0/0) yields NaN or a meaningless value. Callers that must
    reject those check first or afterwards (``atss_head.centerness_target`` raises).

    Args:
        distances: ``[N, 4]`` (l, t, r, b) of points inside their boxes (all > 0 for a finite
            result in (0, 1]); any common unit (pixels or stride units).

    Returns:
        ``[N]`` centerness in (0, 1], 1 at the box centre; dtype/device of ``distances``;
        ``[0]`` for ``N = 0``.

    Raises:
        ValueError: ``distances`` is not ``[N, 4]``.
    """
    if distances.dim() != 2 or distances.size(-1) != 4:
        raise ValueError(f"boxes.py: distances must be [N, 4], got {tuple(distances.shape)}")
    lr = distances[:, [0, 2]]
    tb = distances[:, [1, 3]]
    if lr.shape[0] == 0:
        return lr[:, 0]
    ratio = (lr.min(dim=-1).values / lr.max(dim=-1).values) * (tb.min(dim=-1).values / tb.max(dim=-1).values)
    return ratio.sqrt()


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """Convert ``(x1, y1, x2, y2)`` to COCO-style ``(x1, y1, w, h)``, ``w = x2 - x1`` (spec §5.3).

    Args:
        boxes: ``[N, 4]`` xyxy boxes, pixels.

    Returns:
        ``[N, 4]`` top-left corner plus width/height, pixels.

    Raises:
        TypeError / ValueError: ``boxes`` is not an ``[N, 4]`` tensor.
    """
    _check_boxes("boxes", boxes)
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert COCO-style ``(x1, y1, w, h)`` to ``(x1, y1, x1 + w, y1 + h)`` (spec §5.3).

    Args:
        boxes: ``[N, 4]`` top-left corner plus width/height, pixels.

    Returns:
        ``[N, 4]`` xyxy boxes, pixels.

    Raises:
        TypeError / ValueError: ``boxes`` is not an ``[N, 4]`` tensor.
    """
    _check_boxes("boxes", boxes)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=-1)
