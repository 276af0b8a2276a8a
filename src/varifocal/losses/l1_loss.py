"""L1 and Smooth-L1 regression losses (zoo_spec §1.14).

RetinaNet / RPN / RCNN regress DeltaXYWH targets with ``L1Loss``; FoveaBox and RepPoints use
``SmoothL1Loss(beta=0.11)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._reduce import _reduce, _upcast

__all__ = ["L1Loss", "SmoothL1Loss"]


def _prepare_weight(name: str, pred: Tensor, weight: Tensor | None) -> Tensor | None:
    """``weight`` as ``pred``'s dtype: ``pred``'s shape, or ``[N]`` viewed ``[N, 1, ...]``."""
    if weight is None:
        return None
    if weight.shape == pred.shape:
        return weight.to(pred.dtype)
    if pred.dim() >= 2 and weight.dim() == 1 and weight.size(0) == pred.size(0):
        return weight.to(pred.dtype).reshape((-1,) + (1,) * (pred.dim() - 1))
    rows = pred.size(0) if pred.dim() else 0
    raise ValueError(
        f"{name}: weight must have pred's shape {tuple(pred.shape)} or be [{rows}], got {tuple(weight.shape)}"
    )


class _ElementwiseRegressionLoss(nn.Module):
    """Shared ``forward`` of the element-wise regression losses (zoo_spec §1.14)."""

    _file = "l1_loss.py"

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def _element_loss(self, diff: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        """Reduced loss.

        Args:
            pred: predictions of any shape, e.g. ``[N, 4]`` deltas or distances (any float dtype;
                computed in float32, or float64).
            target: regression targets of ``pred``'s shape.
            weight: optional element weights of ``pred``'s shape, or ``[N]`` per-row weights
                broadcast over the trailing dims.
            avg_factor: normaliser (float or 0-dim tensor): the weighted element losses are
                summed (over the 4 coordinates too) and divided by ``avg_factor + eps32``; None
                gives the mean over all elements.

        Returns:
            0-dim float32 tensor (float64 for float64 ``pred``). If ``weight`` is given and no
            entry is > 0, ``(pred·weight).sum()``: a zero connected to ``pred``. If ``pred`` is
            empty and no weight is given, ``(pred·0).sum()``.

        Raises:
            ValueError: ``pred`` and ``target`` differ in shape, or ``weight`` has a bad shape.
        """
        if pred.shape != target.shape:
            raise ValueError(
                f"{self._file}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
            )
        pred = _upcast(pred)
        target = target.to(pred.dtype)
        weight = _prepare_weight(self._file, pred, weight)
        if weight is not None:
            if not torch.any(weight > 0):
                return (pred * weight).sum()
        elif pred.numel() == 0:
            return (pred * 0.0).sum()
        loss = self._element_loss((pred - target).abs())
        if weight is not None:
            loss = loss * weight
        return self.loss_weight * _reduce(loss, avg_factor)


class L1Loss(_ElementwiseRegressionLoss):
    """``|pred - target|`` per element, weighted and normalised (zoo_spec §1.14).

    ``forward`` returns ``loss_weight · Σ w·|pred - target| / (avg_factor + eps32)`` (eps32 =
    ``torch.finfo(torch.float32).eps``); the sum runs over the 4 coordinates too, so the
    ``avg_factor`` counts boxes, not coordinates. Without ``avg_factor``: the mean over all
    elements.

    Args:
        loss_weight: multiplier applied after the reduction (default 1.0).
    """

    def _element_loss(self, diff: Tensor) -> Tensor:
        return diff

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}"


class SmoothL1Loss(_ElementwiseRegressionLoss):
    """Smooth-L1 (Huber with slope 1) per element (zoo_spec §1.14).

    With ``d = |pred - target|``: ``0.5·d²/β`` if ``d < β``, else ``d - 0.5·β``. Reduction as
    :class:`L1Loss`.

    Args:
        beta: transition point β > 0, in the units of the targets (0.11 for FoveaBox and
            RepPoints; default 1.0).
        loss_weight: multiplier applied after the reduction (default 1.0).

    Raises:
        ValueError: ``beta <= 0``.
    """

    def __init__(self, beta: float = 1.0, loss_weight: float = 1.0) -> None:
        if beta <= 0:
            raise ValueError(f"l1_loss.py: SmoothL1Loss beta must be > 0, got {beta}")
        super().__init__(loss_weight=loss_weight)
        self.beta = float(beta)

    def _element_loss(self, diff: Tensor) -> Tensor:
        return torch.where(diff < self.beta, 0.5 * diff * diff / self.beta, diff - 0.5 * self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, loss_weight={self.loss_weight}"
