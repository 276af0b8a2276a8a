"""Sigmoid focal loss on hard labels: the ``use_vfl=False`` ablation (spec §4.4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ._reduce import _reduce, _upcast

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    """Sigmoid focal loss with one-hot targets and per-sample label weights (spec §4.4).

    Per element (i, c), with p = sigmoid(pred[i, c]), y = [labels[i] == c]:
    ``FL = -α_t (1 - p_t)^γ log p_t`` where ``p_t = p·y + (1 - p)(1 - y)`` and
    ``α_t = α·y + (1 - α)(1 - y)`` (``torchvision.ops.sigmoid_focal_loss``). A background row
    (label = C) has y = 0 for every class.

    ``forward`` returns ``loss_weight · Σ_{i,c} FL(i, c)·weight[i] / (avg_factor + eps32)``
    (eps32 = ``torch.finfo(torch.float32).eps``, as in MMDetection), or ``loss_weight`` times
    the mean over all N·C weighted elements when ``avg_factor`` is None. VFNet passes
    ``avg_factor = N̄`` (§4.1) and the label weights (0 for invalid/padded points).

    Args:
        alpha: positives' weight α (default 0.25).
        gamma: focusing exponent γ (default 2.0).
        loss_weight: multiplier applied after the reduction (default 1.0).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.loss_weight = loss_weight

    def forward(
        self,
        pred: Tensor,
        labels: Tensor,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
    ) -> Tensor:
        """Reduced loss.

        Args:
            pred: ``[N, C]`` logits (any float dtype; computed in float32, or float64).
            labels: ``[N]`` integer labels in ``0..C``; ``C`` is background. Values outside
                ``0..C-1`` (including -1) give an all-zero target row, i.e. background; they are
                not checked, to avoid a device synchronisation.
            weight: optional ``[N]`` label weights (0 = ignore the sample).
            avg_factor: normaliser (float or 0-dim tensor), or None for an element mean.

        Returns:
            0-dim float32 tensor (float64 for float64 ``pred``).

        Raises:
            ValueError: ``pred`` is not 2-D, or ``labels``/``weight`` are not ``[N]``.
            TypeError: ``labels`` is not an integer tensor.
        """
        if pred.dim() != 2:
            raise ValueError(f"focal_loss.py: pred must be [N, C], got {tuple(pred.shape)}")
        n, num_classes = pred.shape
        if labels.shape != (n,):
            raise ValueError(f"focal_loss.py: labels must be [{n}], got {tuple(labels.shape)}")
        if torch.is_floating_point(labels) or labels.dtype == torch.bool:
            raise TypeError(f"focal_loss.py: labels must be an integer tensor, got {labels.dtype}")
        if weight is not None and weight.shape != (n,):
            raise ValueError(f"focal_loss.py: weight must be [{n}], got {tuple(weight.shape)}")

        pred = _upcast(pred)
        classes = torch.arange(num_classes, device=labels.device)
        target = (labels[:, None] == classes[None, :]).to(pred.dtype)
        loss = sigmoid_focal_loss(pred, target, alpha=self.alpha, gamma=self.gamma, reduction="none")
        if weight is not None:
            loss = loss * weight.to(pred.dtype)[:, None]
        return self.loss_weight * _reduce(loss, avg_factor)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, loss_weight={self.loss_weight}"
