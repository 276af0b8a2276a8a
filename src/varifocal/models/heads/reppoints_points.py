"""Point-set geometry of the RepPoints head: the DCN base grid, predicted offsets → pixel
points, the moment pseudo-box and the test-time box decode (``../shared/docs/zoo_spec.md``
§6.1, §6.2 item 7, §6.3 item 2, §6.5, pitfalls §6.10 items 1, 2, 4).

Layouts: a point set of K points is ``2K`` channels. The head's outputs use **(dy, dx) pairs,
y first**, in units of the level's stride, relative to the cell's point at offset 0 (the
layout of torchvision's ``deform_conv2d`` offsets); the loss path works on (x, y) pairs in
pixels. No parameters, no buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dcn_base_offset", "moment_boxes", "offsets_to_points", "decode_boxes"]


def dcn_base_offset(kernel_size: int = 3) -> Tensor:
    """The regular k×k grid of a deformable conv as ``[1, 2k², 1, 1]`` float64 offsets (§6.1):
    tap ``t = k·ky + kx`` has ``(dy, dx) = (ky − pad, kx − pad)`` with pad = (k − 1)/2, laid
    out ``(y0, x0, y1, x1, …)``; for k = 3: (−1, −1), (−1, 0), (−1, 1), (0, −1), … (1, 1).

    Subtracted from the predicted points, it turns them into DCN offsets relative to the grid,
    so that the conv samples exactly *at* the points (§6.2 item 4).

    Raises:
        ValueError: ``kernel_size`` is not odd and positive.
    """
    k = int(kernel_size)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"reppoints_points.py: the DCN kernel must be odd, got {kernel_size}")
    pad = (k - 1) // 2
    taps = torch.arange(-pad, pad + 1, dtype=torch.float64, device="cpu")
    dy = taps.repeat_interleave(k)  # ky-major
    dx = taps.repeat(k)
    return torch.stack([dy, dx], dim=1).reshape(1, -1, 1, 1)


def moment_boxes(pts: Tensor, moment_transfer: Tensor, moment_mul: float = 0.01, y_first: bool = True) -> Tensor:
    """Moment pseudo-boxes of point sets (§6.2 item 7, "points2box").

    With the K points' means μx, μy and the **unbiased** standard deviations (÷ (K − 1)) σx, σy
    of the centred coordinates, and ``m = moment_mul·t + (1 − moment_mul)·t.detach()`` of the
    learned ``t = moment_transfer`` (the value of t, ``moment_mul`` of its gradient): half-width
    ``σx·exp(m0)``, half-height ``σy·exp(m1)``, box ``(μx − hw, μy − hh, μx + hw, μy + hh)``.

    Args:
        pts: ``[B, 2K, *S]`` point sets along dim 1 (``[N, 18, H, W]`` head maps, or
            ``[P, 18]`` rows), in any one unit (strides or pixels; the box is in the same unit).
        moment_transfer: ``[2]`` log-scale of (width, height).
        moment_mul: the fraction of the gradient that reaches ``moment_transfer`` (0.01).
        y_first: pairs are (y, x) (the head's layout) rather than (x, y) (the loss path).

    Returns:
        ``[B, 4, *S]`` xyxy boxes, differentiable w.r.t. ``pts`` and ``moment_transfer``.

    Raises:
        ValueError: ``pts`` has fewer than 2 dims or an odd or < 4 channel count.
    """
    if pts.dim() < 2 or pts.shape[1] % 2 or pts.shape[1] < 4:
        raise ValueError(f"reppoints_points.py: pts must be [B, 2K, ...] with K >= 2, got {tuple(pts.shape)}")
    pairs = pts.view(pts.shape[0], -1, 2, *pts.shape[2:])  # [B, K, 2, *S]
    ys, xs = (pairs[:, :, 0], pairs[:, :, 1]) if y_first else (pairs[:, :, 1], pairs[:, :, 0])
    mean_x = xs.mean(dim=1, keepdim=True)
    mean_y = ys.mean(dim=1, keepdim=True)
    std_x = torch.std(xs - mean_x, dim=1, keepdim=True)  # unbiased (K − 1)
    std_y = torch.std(ys - mean_y, dim=1, keepdim=True)
    transfer = moment_transfer * moment_mul + moment_transfer.detach() * (1 - moment_mul)
    half_w = std_x * torch.exp(transfer[0])
    half_h = std_y * torch.exp(transfer[1])
    return torch.cat([mean_x - half_w, mean_y - half_h, mean_x + half_w, mean_y + half_h], dim=1)


def offsets_to_points(pts_pred: Tensor, points: Tensor, stride: int) -> Tensor:
    """Predicted offsets of one level → point coordinates in pixels (§6.3 item 2).

    Point t of cell (i, j) is ``(x, y) = (px + s·Δx_t, py + s·Δy_t)``, with the (dy, dx)
    channel pairs swapped into (x, y) order.

    Args:
        pts_pred: ``[N, 2K, H, W]`` (dy, dx) offsets in strides.
        points: ``[H·W, 2]`` (x, y) cell points, pixels (offset 0, row-major).
        stride: the level's stride s, pixels.

    Returns:
        ``[N, H·W, 2K]`` (x0, y0, x1, y1, …) pixels, row-major cells.
    """
    n, c = pts_pred.shape[:2]
    yx = pts_pred.permute(0, 2, 3, 1).reshape(n, -1, c // 2, 2)  # [N, HW, K, (dy, dx)]
    xy = yx.flip(-1).reshape(n, -1, c)  # (dx, dy) pairs
    return xy * stride + points.repeat(1, c // 2)[None]


def decode_boxes(
    points: Tensor, bbox_pred: Tensor, stride: float | Tensor, max_shape: tuple[int, int] | None = None
) -> Tensor:
    """Test-time decode (§6.5): ``box = pred·s + (px, py, px, py)``, with ``max_shape = (H, W)``
    clamping x to ``[0, W]`` and y to ``[0, H]``.

    Args:
        points: ``[P, 2]`` (x, y) cell points, pixels (offset 0).
        bbox_pred: ``[P, 4]`` moment boxes in strides, relative to the cell's point.
        stride: s, one number or ``[P]`` (one per point).
        max_shape: optional ``(H, W)`` of the resized, un-padded image.

    Returns:
        ``[P, 4]`` xyxy, pixels.
    """
    s = stride.reshape(-1, 1) if isinstance(stride, Tensor) else stride
    boxes = bbox_pred * s + torch.cat([points, points], dim=1)
    if max_shape is None:
        return boxes
    h, w = int(max_shape[0]), int(max_shape[1])
    x1, y1 = boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h)
    x2, y2 = boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], dim=-1)
