"""IoU-weighted GIoU loss for the initial and refined boxes (spec §4.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..structures.boxes import bbox_overlaps
from ._reduce import _reduce, _upcast

__all__ = ["GIoULoss"]


class GIoULoss(nn.Module):
    """``1 - GIoU(pred, target)`` per box pair, weighted and normalised (spec §4.3, §10 item 9).

    ``forward`` returns ``loss_weight · Σ_i w_i·(1 - GIoU_i) / (avg_factor + eps32)``
    (eps32 = ``torch.finfo(torch.float32).eps``, as in MMDetection), or ``loss_weight`` times the
    mean over the N weighted values when ``avg_factor`` is None. In VFNet ``w_i`` is the
    detached IoU of the box being penalised and ``avg_factor = max(mean-over-GPUs Σw, 1)``;
    ``loss_weight`` is 1.5 (initial) / 2.0 (refined).

    GIoU uses :func:`bbox_overlaps` with ``mode='giou'``: union and enclosing area are both
    clamped to at least ``eps``.

    Zero-positive behaviour (MMDetection's): if ``weight`` is given and no entry is > 0, the
    result is ``(pred * weight[:, None]).sum()``, a zero that is still connected to ``pred``
    (its gradient is all zeros). With N = 0 and no weight, the result is ``(pred * 0).sum()``.

    Args:
        loss_weight: multiplier applied after the reduction (default 1.0).
        eps: lower clamp of union and enclosing area, pixels² (default 1e-6).
    """

    def __init__(self, loss_weight: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.eps = eps

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        """Reduced loss.

        Args:
            pred: ``[N, 4]`` predicted xyxy boxes, pixels (any float dtype; computed in float32,
                or float64).
            target: ``[N, 4]`` target xyxy boxes, pixels.
            weight: optional ``[N]`` per-box weights.
            avg_factor: normaliser (float or 0-dim tensor), or None for a mean over N.

        Returns:
            0-dim float32 tensor (float64 for float64 ``pred``).

        Raises:
            ValueError: ``pred``/``target`` are not both ``[N, 4]``, or ``weight`` is not
                ``[N]``.
        """
        if pred.dim() != 2 or pred.size(-1) != 4 or pred.shape != target.shape:
            raise ValueError(
                f"giou_loss.py: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [N, 4]"
            )
        n = pred.size(0)
        if weight is not None and weight.shape != (n,):
            raise ValueError(f"giou_loss.py: weight must be [{n}], got {tuple(weight.shape)}")

        pred = _upcast(pred)
        target = target.to(pred.dtype)
        if weight is not None:
            weight = weight.to(pred.dtype)
            if not torch.any(weight > 0):
                return (pred * weight[:, None]).sum()
        elif n == 0:
            return (pred * 0.0).sum()

        loss = 1.0 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=self.eps)
        if weight is not None:
            loss = loss * weight
        return self.loss_weight * _reduce(loss, avg_factor)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, eps={self.eps}"
