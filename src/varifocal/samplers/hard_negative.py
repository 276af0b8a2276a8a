"""SSD hard negative mining, per image (Caffe ``MineHardExamples`` with ``MAX_NEGATIVE``,
``neg_pos_ratio 3``; ``refinedet_spec.md`` §8)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["hard_negative_mining"]


@torch.no_grad()
def hard_negative_mining(
    neg_losses: Tensor, pos_mask: Tensor, candidate_mask: Tensor, neg_pos_ratio: float = 3.0
) -> Tensor:
    """The negatives each image keeps: its ``min(floor(ratio · n_pos), n_candidates)``
    candidates of largest background loss.

    An image with no positive keeps no negative (and so adds nothing to the loss, §7); ties in
    the loss are broken by the lower prior index.

    Args:
        neg_losses: ``[N, M]`` the loss of calling each prior background (softmax CE with label
            0, i.e. ``-log p_background``); only its order matters.
        pos_mask: ``[N, M]`` bool, the positives.
        candidate_mask: ``[N, M]`` bool, the priors eligible as negatives (unmatched; for
            RefineDet's ODM also not filtered out by the ARM). Positives are never candidates.
        neg_pos_ratio: negatives per positive (3).

    Returns:
        ``[N, M]`` bool mask of the selected negatives.

    Raises:
        ValueError: the three tensors differ in shape or the ratio is negative.
    """
    if not (neg_losses.shape == pos_mask.shape == candidate_mask.shape) or neg_losses.dim() != 2:
        raise ValueError(
            f"hard_negative.py: neg_losses, pos_mask and candidate_mask must be [N, M] alike, got "
            f"{tuple(neg_losses.shape)}, {tuple(pos_mask.shape)}, {tuple(candidate_mask.shape)}"
        )
    if neg_pos_ratio < 0:
        raise ValueError(f"hard_negative.py: neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
    candidates = candidate_mask & ~pos_mask
    num_neg = torch.minimum(
        torch.floor(pos_mask.sum(dim=1).double() * float(neg_pos_ratio)).long(), candidates.sum(dim=1)
    )  # [N]
    ranked = torch.where(candidates, neg_losses.float(), torch.full_like(neg_losses, float("-inf"), dtype=torch.float))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices  # [N, M]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return candidates & (rank < num_neg[:, None])
