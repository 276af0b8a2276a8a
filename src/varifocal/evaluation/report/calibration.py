"""Calibration of the detection score against localisation quality (issue 15).

VFNet trains its classification score towards the IoU of the box with its ground truth (the
IoU-aware classification score, spec §3), so for a well-trained model the score of a *matched*
detection should rank -- and ideally equal -- its IoU. For the true positives of
:func:`~.matching.match_detections` (default IoU >= 0.5, same class, COCO greedy; the IoU is the
one with the matched gt) this module gives:

- Pearson r of (score, IoU) and Spearman rho (Pearson of the ranks, ties get their average rank);
  None when fewer than 2 pairs or a constant input;
- a reliability diagram: score bins [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0] (1.0 in the last
  bin, scores clipped to [0, 1]) with count, mean score and mean IoU per bin;
- the expected calibration error ECE = sum_b n_b / N * |mean_score_b - mean_iou_b| (empty bins
  add 0; None when N = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .matching import Matches

__all__ = ["pearson", "spearman", "average_ranks", "reliability_bins", "calibration_stats", "calibration"]


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two (N,) arrays; None when N < 2 or either is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    den = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    if den <= 1e-15 * max(1.0, float(np.abs(x).max() * np.abs(y).max())):
        return None
    return float(np.clip((dx * dy).sum() / den, -1.0, 1.0))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of (N,) ``x``, tied values sharing the mean of their ranks (e.g. [3, 1, 3] -> [2.5, 1, 2.5])."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of (start+1 .. end)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation: Pearson of :func:`average_ranks`; None as :func:`pearson`."""
    if np.asarray(x).size < 2:
        return None
    return pearson(average_ranks(x), average_ranks(y))


def reliability_bins(scores: np.ndarray, ious: np.ndarray, num_bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width score bins over [0, 1]: ``[{"lo", "hi", "count", "mean_score", "mean_iou"}]``
    (means None for an empty bin)."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    v = np.asarray(ious, dtype=np.float64)
    b = np.minimum((s * num_bins).astype(np.int64), num_bins - 1)
    out = []
    for k in range(num_bins):
        m = b == k
        n = int(m.sum())
        out.append(
            {
                "lo": k / num_bins,
                "hi": (k + 1) / num_bins,
                "count": n,
                "mean_score": float(s[m].mean()) if n else None,
                "mean_iou": float(v[m].mean()) if n else None,
            }
        )
    return out


def calibration_stats(scores: np.ndarray, ious: np.ndarray, num_bins: int = 10) -> dict[str, Any]:
    """``{"count", "mean_score", "mean_iou", "pearson", "spearman", "ece", "bins"}`` of (N,) pairs."""
    scores, ious = np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    bins = reliability_bins(scores, ious, num_bins)
    n = scores.size
    ece = None
    if n:
        ece = float(sum(b["count"] / n * abs(b["mean_score"] - b["mean_iou"]) for b in bins if b["count"]))
    return {
        "count": int(n),
        "mean_score": float(scores.mean()) if n else None,
        "mean_iou": float(ious.mean()) if n else None,
        "pearson": pearson(scores, ious),
        "spearman": spearman(scores, ious),
        "ece": ece,
        "bins": bins,
    }


def calibration(
    matches: Matches, cat_ids: Sequence[int], class_names: Sequence[str] | None = None, num_bins: int = 10
) -> dict[str, Any]:
    """Score-vs-IoU calibration of the true positives of ``matches``, overall and per class.

    Returns ``{"iou_thr", "overall": stats, "per_class": [{"category_id", "name", **stats}]}``
    with the stats of :func:`calibration_stats`.
    """
    names = list(class_names) if class_names is not None else [str(c) for c in cat_ids]
    tp = matches.tp
    per_class = []
    for c, name in zip(cat_ids, names):
        m = tp & (matches.category_id == c)
        per_class.append(
            {"category_id": int(c), "name": name, **calibration_stats(matches.score[m], matches.iou[m], num_bins)}
        )
    overall = calibration_stats(matches.score[tp], matches.iou[tp], num_bins)
    return {"iou_thr": matches.iou_thr, "overall": overall, "per_class": per_class}
