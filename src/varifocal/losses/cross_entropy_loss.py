"""Cross-entropy losses: sigmoid BCE (RPN objectness, centerness) and softmax CE (RCNN).

zoo_spec §1.14.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._reduce import _reduce, _upcast

__all__ = ["CrossEntropyLoss"]


class CrossEntropyLoss(nn.Module):
    """Binary (sigmoid) or softmax cross-entropy with weights and avg_factor (zoo_spec §1.14).

    * ``use_sigmoid=True``: ``BCE_with_logits(x, y)`` per element.
      - ``target`` of ``pred``'s shape: soft targets in [0, 1] (FCOS/ATSS centerness,
        ``pred [N]``, ``target [N]``).
      - ``pred [N, C]`` with integer ``labels [N]``: one-hot over the C columns; a label ≥ C
        (the background, C) gives an all-zero row. A negative label (e.g. -1) also gives an
        all-zero row *and* weight 0 for the whole row (the reference's "invalid label" mask).
        ``weight [N]`` is broadcast over the C columns. (RPN: C = 1, label 0 = object,
        1 = background.)
    * ``use_sigmoid=False``: ``F.cross_entropy`` over ``pred [N, C+1]`` logits with labels
      ``[N]`` in ``0..C`` (background = the last column, RCNN); labels of -100 are ignored
      (loss 0 for that row).

    ``forward`` returns ``loss_weight · Σ w·loss / (avg_factor + eps32)`` (eps32 =
    ``torch.finfo(torch.float32).eps``), or ``loss_weight`` times the mean over all elements
    (N·C for the one-hot sigmoid case, N otherwise) without ``avg_factor``. There is no
    zero-weights shortcut here: all-zero weights give 0.

    Args:
        use_sigmoid: sigmoid BCE (True) or softmax CE (False, default).
        loss_weight: multiplier applied after the reduction (default 1.0).
    """

    def __init__(self, use_sigmoid: bool = False, loss_weight: float = 1.0) -> None:
        super().__init__()
        self.use_sigmoid = use_sigmoid
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
            pred: logits (any float dtype; computed in float32, or float64). Sigmoid: any shape
                (soft targets) or ``[N, C]`` (integer labels). Softmax: ``[N, C+1]``.
            target: sigmoid: float targets of ``pred``'s shape, or integer labels ``[N]`` for
                ``pred [N, C]``; softmax: integer labels ``[N]``.
            weight: optional ``[N]`` per-sample weights (sigmoid with soft targets: also
                ``pred``'s shape).
            avg_factor: normaliser (float or 0-dim tensor), or None for an element mean.

        Returns:
            0-dim float32 tensor (float64 for float64 ``pred``).

        Raises:
            ValueError: inconsistent shapes.
            TypeError: the softmax / one-hot path gets non-integer labels.
        """
        pred = _upcast(pred)
        if self.use_sigmoid:
            loss, weight = self._sigmoid(pred, target, weight)
        else:
            loss, weight = self._softmax(pred, target, weight)
        if weight is not None:
            loss = loss * weight
        return self.loss_weight * _reduce(loss, avg_factor)

    @staticmethod
    def _check_labels(labels: Tensor, n: int) -> None:
        if labels.shape != (n,):
            raise ValueError(f"cross_entropy_loss.py: labels must be [{n}], got {tuple(labels.shape)}")
        if torch.is_floating_point(labels) or labels.dtype == torch.bool:
            raise TypeError(f"cross_entropy_loss.py: labels must be an integer tensor, got {labels.dtype}")

    def _sigmoid(self, pred: Tensor, target: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor | None]:
        integer_labels = not torch.is_floating_point(target) and target.dtype != torch.bool
        if not (integer_labels and pred.dim() == 2 and target.dim() == 1):
            # Soft (or 0/1) targets of pred's shape.
            if target.shape != pred.shape:
                raise ValueError(
                    f"cross_entropy_loss.py: sigmoid target must be {tuple(pred.shape)} (soft) "
                    f"or integer [N] labels for pred [N, C], got {tuple(target.shape)}"
                )
            target = target.to(pred.dtype)
            if weight is not None:
                if weight.shape == pred.shape:
                    weight = weight.to(pred.dtype)
                elif pred.dim() >= 1 and weight.shape == (pred.size(0),):
                    weight = weight.to(pred.dtype).reshape((-1,) + (1,) * (pred.dim() - 1))
                else:
                    raise ValueError(
                        f"cross_entropy_loss.py: weight must be [{pred.size(0)}] or "
                        f"{tuple(pred.shape)}, got {tuple(weight.shape)}"
                    )
            return F.binary_cross_entropy_with_logits(pred, target, reduction="none"), weight

        n, num_classes = pred.shape
        self._check_labels(target, n)
        classes = torch.arange(num_classes, device=target.device)
        one_hot = (target[:, None] == classes[None, :]).to(pred.dtype)  # label >= C: zeros
        valid = (target >= 0).to(pred.dtype)[:, None]  # negative label: weight 0
        if weight is not None:
            if weight.shape != (n,):
                raise ValueError(f"cross_entropy_loss.py: weight must be [{n}], got {tuple(weight.shape)}")
            row_weight = weight.to(pred.dtype)[:, None] * valid
        else:
            row_weight = valid
        loss = F.binary_cross_entropy_with_logits(pred, one_hot, reduction="none")
        return loss, row_weight.expand(n, num_classes)

    def _softmax(self, pred: Tensor, labels: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if pred.dim() != 2:
            raise ValueError(f"cross_entropy_loss.py: softmax needs pred [N, C+1], got {tuple(pred.shape)}")
        n = pred.size(0)
        self._check_labels(labels, n)
        if weight is not None:
            if weight.shape != (n,):
                raise ValueError(f"cross_entropy_loss.py: weight must be [{n}], got {tuple(weight.shape)}")
            weight = weight.to(pred.dtype)
        loss = F.cross_entropy(pred, labels.long(), reduction="none", ignore_index=-100)
        return loss, weight

    def extra_repr(self) -> str:
        return f"use_sigmoid={self.use_sigmoid}, loss_weight={self.loss_weight}"
