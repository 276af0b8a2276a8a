"""Varifocal Loss (spec §4.2).

Per element (i, c), with p = sigmoid(P[i, c]) and soft target q = T[i, c] (IoU, in [0, 1]):

* q > 0:  VFL = -q · [q·log p + (1 - q)·log(1 - p)]  (BCE with soft target q, weighted by q)
* q <= 0: VFL = -α · p^γ · log(1 - p)                (focal down-weighting of negatives)

implemented as ``BCE_with_logits(P, T) · w`` with ``w = T·[T > 0] + α·|σ(P) - T|^γ·[T <= 0]``.
The modulating factor is *not* detached: gradient flows through p^γ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._reduce import _AVG_EPS, _reduce, _upcast  # noqa: F401  (re-exported)

__all__ = ["varifocal_loss", "VarifocalLoss"]


def varifocal_loss(
    pred: Tensor,
    target: Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
) -> Tensor:
    """Element-wise Varifocal Loss, no reduction (spec §4.2).

    Computed in float32 whatever the input dtype: bf16/fp16 logits are upcast (float64 stays
    float64, which allows ``torch.autograd.gradcheck``).

    Args:
        pred: ``[N, C]`` classification logits (before sigmoid).
        target: ``[N, C]`` IoU-aware classification targets in ``[0, 1]``; 0 for negatives and
            non-gt classes, the (clamped ≥ 1e-6) IoU at ``[i, c*_i]`` for positives (§3.5).
        alpha: weight of the negatives' focal term (0.75 in VFNet).
        gamma: exponent of the negatives' modulating factor |p - q|^γ (2.0 in VFNet).
        iou_weighted: if True positives are weighted by q, otherwise by 1.

    Returns:
        ``[N, C]`` float32 (float64 for float64 ``pred``) loss values (nats), differentiable
        w.r.t. ``pred`` (including through the modulating factor).

    Raises:
        ValueError: ``pred`` and ``target`` differ in shape.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"varifocal_loss.py: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    pred = _upcast(pred)
    target = target.to(pred.dtype)
    pred_sigmoid = pred.sigmoid()
    pos = (target > 0.0).float()
    neg = (target <= 0.0).float()
    # Same arithmetic as MMDetection (masked sum rather than torch.where), so values and
    # gradients agree to the last bit.
    pos_weight = target * pos if iou_weighted else pos
    focal_weight = pos_weight + alpha * (pred_sigmoid - target).abs().pow(gamma) * neg
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


class VarifocalLoss(nn.Module):
    """Varifocal Loss with MMDetection's ``reduction='mean'`` semantics (spec §4.2, §10 item 8).

    ``forward`` returns ``loss_weight · Σ_{i,c} VFL(i, c) / (avg_factor + eps32)`` where
    eps32 = ``torch.finfo(torch.float32).eps`` (as MMDetection). When ``avg_factor`` is None it
    returns ``loss_weight · mean_{i,c} VFL(i, c)``, i.e. a mean over all N·C elements; VFNet
    always passes ``avg_factor = N̄ = max(mean-over-GPUs num_pos, 1)`` (§4.1), so its loss is a
    *sum* over all points and classes divided by N̄, not an element mean.

    Args:
        alpha: negatives' weight α (default 0.75).
        gamma: modulating exponent γ (default 2.0).
        iou_weighted: weight positives by their IoU target (default True).
        loss_weight: multiplier applied after the reduction (default 1.0).
    """

    def __init__(
        self,
        alpha: float = 0.75,
        gamma: float = 2.0,
        iou_weighted: bool = True,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.iou_weighted = iou_weighted
        self.loss_weight = loss_weight

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        avg_factor: float | Tensor | None = None,
        weight: Tensor | None = None,
    ) -> Tensor:
        """Reduced loss.

        Args:
            pred: ``[N, C]`` logits (any float dtype; computed in float32, or float64).
            target: ``[N, C]`` soft IoU targets in ``[0, 1]``.
            avg_factor: normaliser (float or 0-dim tensor), or None for an element mean.
            weight: optional ``[N]`` per-sample label weights (RetinaNet's VFL variant, zoo_spec
                §2.7), broadcast over the classes.

        Returns:
            0-dim float32 tensor (float64 for float64 ``pred``).

        Raises:
            ValueError: ``pred`` and ``target`` differ in shape.
        """
        loss = varifocal_loss(pred, target, alpha=self.alpha, gamma=self.gamma, iou_weighted=self.iou_weighted)
        if weight is not None:
            loss = loss * weight.to(loss.dtype)[:, None]
        return self.loss_weight * _reduce(loss, avg_factor)

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, loss_weight={self.loss_weight}"
        )
