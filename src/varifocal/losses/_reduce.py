"""Shared reduction helpers of the loss modules (zoo_spec §1.14, spec §4).

MMDetection's ``weight_reduce_loss(reduction='mean')``: the weighted element losses are summed
and divided by ``avg_factor + eps32`` when an ``avg_factor`` is given, otherwise averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["_AVG_EPS", "_upcast", "_reduce"]

# MMDetection's ``weight_reduce_loss`` adds this to ``avg_factor`` before dividing.
_AVG_EPS = torch.finfo(torch.float32).eps


def _upcast(t: Tensor) -> Tensor:
    """float16/bfloat16/float32 -> float32; float64 stays float64 (used by the loss modules)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _reduce(loss: Tensor, avg_factor: float | Tensor | None) -> Tensor:
    """``loss.sum() / (avg_factor + eps32)``, or ``loss.mean()`` when ``avg_factor`` is None.

    Mirrors MMDetection's ``weight_reduce_loss(reduction='mean')``, including the float32
    machine epsilon (≈1.19e-7) added to ``avg_factor`` (zoo_spec §1.14). Shared by all the
    loss modules.

    Args:
        loss: element losses of any shape, already multiplied by their weights.
        avg_factor: normaliser (float or 0-dim tensor), or None for an element mean.

    Returns:
        0-dim tensor of ``loss``'s dtype.
    """
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / (avg_factor + _AVG_EPS)
