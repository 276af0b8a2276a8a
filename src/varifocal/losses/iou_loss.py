"""IoU loss on aligned box pairs (zoo_spec §1.14; FCOS's box loss)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..structures.boxes import bbox_overlaps
from ._reduce import _reduce, _upcast

__all__ = ["IoULoss"]

_MODES = ("log", "linear")


class IoULoss(nn.Module):
    """``-log(IoU)`` (or ``1 - IoU``) per box pair, weighted and normalised (zoo_spec §1.14).

    ``IoU = clamp(bbox_overlaps(pred, target, aligned), min=eps)`` (the union is itself clamped
    to ≥ 1e-6, §1.9). Per box: ``-log(IoU)`` in mode ``'log'`` (FCOS), ``1 - IoU`` in mode
    ``'linear'``. ``forward`` returns ``loss_weight · Σ_i w_i·loss_i / (avg_factor + eps32)``, or
    ``loss_weight`` times the mean over the N weighted values without ``avg_factor``.

    Zero-positive behaviour: if ``weight`` is given and no entry is > 0, the result is
    ``(pred·weight).sum()`` (``weight`` viewed ``[N, 1]`` when it is ``[N]``), a zero connected
    to ``pred``. With N = 0 and no weight, ``(pred·0).sum()``.

    Args:
        mode: ``'log'`` or ``'linear'``.
        eps: lower clamp of the IoU (default 1e-6).
        loss_weight: multiplier applied after the reduction (default 1.0).

    Raises:
        ValueError: ``mode`` is not ``'log'``/``'linear'``.
    """

    def __init__(self, mode: str = "log", eps: float = 1e-6, loss_weight: float = 1.0) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"iou_loss.py: mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.eps = eps
        self.loss_weight = loss_weight

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
            weight: optional ``[N]`` per-box weights, or ``[N, 4]`` averaged over the last dim.
            avg_factor: normaliser (float or 0-dim tensor), or None for a mean over N.

        Returns:
            0-dim float32 tensor (float64 for float64 ``pred``).

        Raises:
            ValueError: ``pred``/``target`` are not both ``[N, 4]``, or ``weight`` is neither
                ``[N]`` nor ``[N, 4]``.
        """
        if pred.dim() != 2 or pred.size(-1) != 4 or pred.shape != target.shape:
            raise ValueError(
                f"iou_loss.py: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [N, 4]"
            )
        n = pred.size(0)
        if weight is not None and weight.shape not in ((n,), (n, 4)):
            raise ValueError(f"iou_loss.py: weight must be [{n}] or [{n}, 4], got {tuple(weight.shape)}")

        pred = _upcast(pred)
        target = target.to(pred.dtype)
        if weight is not None:
            weight = weight.to(pred.dtype)
            if not torch.any(weight > 0):
                return (pred * (weight[:, None] if weight.dim() == 1 else weight)).sum()
            if weight.dim() == 2:
                weight = weight.mean(dim=-1)
        elif n == 0:
            return (pred * 0.0).sum()

        ious = bbox_overlaps(pred, target, is_aligned=True).clamp(min=self.eps)
        loss = -ious.log() if self.mode == "log" else 1.0 - ious
        if weight is not None:
            loss = loss * weight
        return self.loss_weight * _reduce(loss, avg_factor)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, eps={self.eps}, loss_weight={self.loss_weight}"
