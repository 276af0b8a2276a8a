"""The result of assigning the priors of one image to its gt boxes (spec §3.2, zoo_spec §1.10)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["AssignResult"]


@dataclass
class AssignResult:
    """Per-prior assignment of one image (spec §3.2, zoo_spec §1.10, §1.13).

    Attributes:
        gt_inds: ``[M]`` long, one entry per prior:

            * ``-1``: ignored, neither positive nor negative (only :class:`MaxIoUAssigner`
              produces it: IoU between the two thresholds, or overlapping an ignore box); a
              pseudo sampler gives such priors label weight 0;
            * ``0``: negative (background);
            * ``k + 1``: positive, assigned to gt ``k`` (0-based).
        max_overlaps: ``[M]`` float. ATSS: the IoU with the assigned gt, 0 for background.
            MaxIoU: the highest IoU over all gts of each prior, whatever its assignment (−1 for
            priors masked by an ignore box, 0 everywhere when there is no gt).
        labels: ``[M]`` long; the assigned gt's class in ``0..num_classes-1`` for positives,
            ``num_classes`` (background) for negatives and ignored priors.
    """

    gt_inds: Tensor
    max_overlaps: Tensor
    labels: Tensor
