"""Box coders: prior + regression output <-> xyxy box (zoo_spec §1.7, §1.8).

Boxes are xyxy in input-image pixels, width ``x2 - x1`` (no "+1"). The coders hold no
parameters; they are plain objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..structures.boxes import bbox2distance, distance2bbox

__all__ = ["DeltaXYWHBBoxCoder", "DistancePointBBoxCoder", "SSDBoxCoder"]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for fp16/bf16/fp32 inputs, float64 if any input is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_boxes(name: str, t: Tensor) -> None:
    if t.dim() != 2 or t.size(-1) != 4:
        raise ValueError(f"box_coders.py: {name} must be [N, 4], got {tuple(t.shape)}")


class DeltaXYWHBBoxCoder:
    """``(dx, dy, dw, dh)`` deltas of a box relative to a prior (zoo_spec §1.7, §10 item 7).

    With prior centre/size ``(pcx, pcy, pw, ph)`` and gt ``(gcx, gcy, gw, gh)``:
    ``d = ((gcx - pcx)/pw, (gcy - pcy)/ph, log(gw/pw), log(gh/ph))``, stored normalised as
    ``(d - means)/stds``. Decoding inverts this, with ``dw, dh`` clamped to
    ``±|log(wh_ratio_clip)|`` (±4.135166556742356 for the default 16/1000).

    Stds: (1, 1, 1, 1) for RetinaNet/RPN, (0.1, 0.1, 0.2, 0.2) for ATSS and the RCNN head.

    Args:
        means: the 4 target means (all 0 in the zoo).
        stds: the 4 target stds, all > 0.
        clip_border: clip decoded boxes to ``max_shape`` when one is given.
        wh_ratio_clip: bound of ``exp(|dw|)``, ``exp(|dh|)`` is ``1/wh_ratio_clip``; in (0, 1).

    Raises:
        ValueError: ``means``/``stds`` do not have 4 entries, a std is not > 0, or
            ``wh_ratio_clip`` is not in (0, 1).
    """

    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        clip_border: bool = True,
        wh_ratio_clip: float = 16 / 1000,
    ) -> None:
        if len(means) != 4 or len(stds) != 4:
            raise ValueError(f"box_coders.py: means and stds need 4 entries, got {means} and {stds}")
        if any(s <= 0 for s in stds):
            raise ValueError(f"box_coders.py: stds must be > 0, got {stds}")
        if not 0.0 < wh_ratio_clip < 1.0:
            raise ValueError(f"box_coders.py: wh_ratio_clip must be in (0, 1), got {wh_ratio_clip}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.clip_border = clip_border
        self.wh_ratio_clip = wh_ratio_clip
        # Python float64, so the default is exactly 4.135166556742356.
        self.max_ratio = abs(math.log(wh_ratio_clip))

    def encode(self, priors: Tensor, gt_bboxes: Tensor) -> Tensor:
        """Regression targets of gt boxes w.r.t. their priors (zoo_spec §1.7, "Encode").

        No clamping. Degenerate priors or gts (zero width/height) give inf/nan, as in the
        reference.

        Args:
            priors: ``[N, 4]`` xyxy priors, pixels.
            gt_bboxes: ``[N, 4]`` xyxy gt boxes, pixels, one per prior.

        Returns:
            ``[N, 4]`` normalised deltas ``(d - means)/stds``; float32 (float64 if an input is
            float64), on the inputs' device.

        Raises:
            ValueError: the inputs are not both ``[N, 4]`` with the same N.
        """
        _check_boxes("priors", priors)
        _check_boxes("gt_bboxes", gt_bboxes)
        if priors.size(0) != gt_bboxes.size(0):
            raise ValueError(
                f"box_coders.py: priors and gt_bboxes differ in N: {priors.size(0)} vs {gt_bboxes.size(0)}"
            )
        dtype = _compute_dtype(priors, gt_bboxes)
        p = priors.to(dtype)
        g = gt_bboxes.to(dtype)
        pcx = (p[:, 0] + p[:, 2]) * 0.5
        pcy = (p[:, 1] + p[:, 3]) * 0.5
        pw = p[:, 2] - p[:, 0]
        ph = p[:, 3] - p[:, 1]
        gcx = (g[:, 0] + g[:, 2]) * 0.5
        gcy = (g[:, 1] + g[:, 3]) * 0.5
        gw = g[:, 2] - g[:, 0]
        gh = g[:, 3] - g[:, 1]
        deltas = torch.stack([(gcx - pcx) / pw, (gcy - pcy) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(
        self,
        priors: Tensor,
        deltas: Tensor,
        max_shape: tuple[int, int] | None = None,
    ) -> Tensor:
        """Boxes from priors and normalised deltas (zoo_spec §1.7, "Decode").

        Steps: ``d = δ·stds + means``; clamp ``dw, dh`` to ``±max_ratio``;
        ``cx = pcx + pw·dx``, ``w = pw·exp(dw)`` (same for y); box
        ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)``; if ``max_shape`` is given and
        ``clip_border``, x is clamped to ``[0, w_img]`` and y to ``[0, h_img]``. Class-specific
        deltas ``[N, 4·k]`` are decoded per 4-block against the same prior.

        Args:
            priors: ``[N, 4]`` xyxy priors, pixels.
            deltas: ``[N, 4·k]`` normalised deltas (k ≥ 1 blocks, block j = columns 4j..4j+3).
            max_shape: optional ``(h, w)`` of the image (test time: the un-padded resized size).

        Returns:
            ``[N, 4·k]`` xyxy boxes, pixels; float32 (float64 if an input is float64);
            differentiable w.r.t. ``deltas`` (and ``priors``).

        Raises:
            ValueError: ``priors`` is not ``[N, 4]``, or ``deltas`` is not ``[N, 4·k]``.
        """
        _check_boxes("priors", priors)
        if deltas.dim() != 2 or deltas.size(0) != priors.size(0) or deltas.size(1) == 0 or deltas.size(1) % 4 != 0:
            raise ValueError(f"box_coders.py: deltas must be [{priors.size(0)}, 4·k], got {tuple(deltas.shape)}")
        num, cols = deltas.shape
        k = cols // 4
        dtype = _compute_dtype(priors, deltas)
        d = deltas.to(dtype).reshape(num * k, 4)
        d = d * d.new_tensor(self.stds) + d.new_tensor(self.means)
        p = priors.to(dtype).repeat(1, k).reshape(num * k, 4)  # prior i for each of its blocks

        pxy = (p[:, :2] + p[:, 2:]) * 0.5
        pwh = p[:, 2:] - p[:, :2]
        dwh = d[:, 2:].clamp(min=-self.max_ratio, max=self.max_ratio)
        gxy = pxy + pwh * d[:, :2]
        gwh = pwh * dwh.exp()
        x1y1 = gxy - gwh * 0.5
        x2y2 = gxy + gwh * 0.5
        if max_shape is not None and self.clip_border:
            h, w = max_shape[:2]
            bound = x1y1.new_tensor([w, h])
            zero = torch.zeros_like(bound)
            x1y1 = torch.minimum(torch.maximum(x1y1, zero), bound)
            x2y2 = torch.minimum(torch.maximum(x2y2, zero), bound)
        return torch.cat([x1y1, x2y2], dim=-1).reshape(num, cols)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(means={self.means}, stds={self.stds}, "
            f"clip_border={self.clip_border}, wh_ratio_clip={self.wh_ratio_clip})"
        )


class DistancePointBBoxCoder:
    """``(l, t, r, b)`` distances from a point to the box sides (zoo_spec §1.8).

    Thin wrapper over :func:`varifocal.structures.boxes.bbox2distance` and
    :func:`~varifocal.structures.boxes.distance2bbox`.

    Args:
        clip_border: clip decoded boxes to ``max_shape`` when one is given.
    """

    def __init__(self, clip_border: bool = True) -> None:
        self.clip_border = clip_border

    def encode(
        self,
        points: Tensor,
        gt_bboxes: Tensor,
        max_dis: float | None = None,
        eps: float = 0.1,
    ) -> Tensor:
        """Distances ``(px - x1, py - y1, x2 - px, y2 - py)`` (zoo_spec §1.8).

        Args:
            points: ``[N, 2]`` points ``(x, y)``, pixels.
            gt_bboxes: ``[N, 4]`` xyxy boxes, pixels.
            max_dis: if given, the distances are clamped to ``[0, max_dis - eps]`` (not used by
                FCOS).
            eps: margin below ``max_dis``.

        Returns:
            ``[N, 4]`` distances, pixels (negative for a point outside its box when unclamped).

        Raises:
            ValueError: shapes are wrong or their N differ (from ``bbox2distance``).
        """
        dist = bbox2distance(points, gt_bboxes)
        if max_dis is not None:
            dist = dist.clamp(min=0, max=max_dis - eps)
        return dist

    def decode(
        self,
        points: Tensor,
        distances: Tensor,
        max_shape: tuple[int, int] | None = None,
    ) -> Tensor:
        """Boxes ``(px - l, py - t, px + r, py + b)`` (zoo_spec §1.8).

        Args:
            points: ``[N, 2]`` points ``(x, y)``, pixels.
            distances: ``[N, 4]`` distances ``(l, t, r, b)``, pixels.
            max_shape: optional ``(h, w)``; x is clamped to ``[0, w]`` and y to ``[0, h]`` when
                ``clip_border``.

        Returns:
            ``[N, 4]`` xyxy boxes, pixels (differentiable).

        Raises:
            ValueError: shapes are wrong or their N differ (from ``distance2bbox``).
        """
        return distance2bbox(points, distances, max_shape if self.clip_border else None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(clip_border={self.clip_border})"


class SSDBoxCoder:
    """SSD / RefineDet ``CENTER_SIZE`` coding with variances (``refinedet_spec.md`` §4).

    For a reference box ``r`` (anchor or refined anchor) and a target ``g``, widths without
    "+1": ``t = ((g_cx - r_cx) / r_w / v0, (g_cy - r_cy) / r_h / v1, log(g_w / r_w) / v2,
    log(g_h / r_h) / v3)``; decoding inverts it with no clamp on ``exp`` and no clipping
    (Caffe ``clip_bbox = false``, §17 item 9). Both are invariant to per-axis scaling, so pixel
    boxes give the same offsets as Caffe's boxes normalised by the input width and height.

    Args:
        variances: ``(v0, v1, v2, v3)``, all > 0; (0.1, 0.1, 0.2, 0.2) in every RefineDet script.

    Raises:
        ValueError: not 4 positive variances.
    """

    def __init__(self, variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2)) -> None:
        if len(variances) != 4 or any(float(v) <= 0 for v in variances):
            raise ValueError(f"box_coders.py: variances must be 4 positive numbers, got {tuple(variances)}")
        self.variances = tuple(float(v) for v in variances)

    @staticmethod
    def _center_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h

    def encode(self, references: Tensor, gt_bboxes: Tensor) -> Tensor:
        """Offsets ``[..., 4]`` ``(t_x, t_y, t_w, t_h)`` of ``gt_bboxes`` from ``references``,
        both ``[..., 4]`` xyxy (same shape, pixels or normalised); float32 or wider."""
        if references.shape != gt_bboxes.shape or references.size(-1) != 4:
            raise ValueError(
                f"box_coders.py: references and gt_bboxes must both be [..., 4], got "
                f"{tuple(references.shape)} and {tuple(gt_bboxes.shape)}"
            )
        dtype = _compute_dtype(references, gt_bboxes)
        rx, ry, rw, rh = self._center_size(references.to(dtype))
        gx, gy, gw, gh = self._center_size(gt_bboxes.to(dtype))
        v0, v1, v2, v3 = self.variances
        return torch.stack(
            [(gx - rx) / rw / v0, (gy - ry) / rh / v1, torch.log(gw / rw) / v2, torch.log(gh / rh) / v3], dim=-1
        )

    def decode(self, references: Tensor, offsets: Tensor) -> Tensor:
        """Boxes ``[..., 4]`` xyxy from ``references [..., 4]`` xyxy and ``offsets [..., 4]``
        (broadcast against each other), in the references' units; not clipped."""
        if references.size(-1) != 4 or offsets.size(-1) != 4:
            raise ValueError(
                f"box_coders.py: references and offsets must be [..., 4], got "
                f"{tuple(references.shape)} and {tuple(offsets.shape)}"
            )
        dtype = _compute_dtype(references, offsets)
        rx, ry, rw, rh = self._center_size(references.to(dtype))
        offsets = offsets.to(dtype)
        v0, v1, v2, v3 = self.variances
        cx = rx + offsets[..., 0] * v0 * rw
        cy = ry + offsets[..., 1] * v1 * rh
        w = rw * torch.exp(offsets[..., 2] * v2)
        h = rh * torch.exp(offsets[..., 3] * v3)
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)

    def __repr__(self) -> str:
        return f"SSDBoxCoder(variances={self.variances})"
