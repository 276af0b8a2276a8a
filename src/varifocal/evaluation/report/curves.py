"""Precision, recall and F1 against the score threshold per class, and the best-F1 threshold (issue 15).

For one class, with the detections matched by :func:`~.matching.match_detections` (crowd-ignored
detections left out), keeping the detections of score >= s gives TP(s), FP(s) and

    precision(s) = TP / (TP + FP),  recall(s) = TP / n_gt,  F1(s) = 2 P R / (P + R)  (0 when P + R = 0).

The curve is evaluated at every distinct detection score (descending), so tied scores enter or
leave together. The **best-F1 threshold** is the distinct score s maximising F1(s); on equal F1
(within 1e-12) the *highest* such s wins (the fewest detections for the same F1). A class with no
ground truth or no true positive has no best threshold (``score_thr`` None, F1 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .matching import Matches

__all__ = ["PRCurve", "pr_curve", "pr_curves", "best_f1"]


@dataclass
class PRCurve:
    """One class's curve; arrays (K,) over the K distinct scores in descending order.

    ``score``: the threshold s; ``tp``/``fp``: counts kept at s; ``precision``, ``recall``, ``f1``.
    """

    category_id: int
    iou_thr: float
    num_gt: int
    score: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


def pr_curve(matches: Matches, category_id: int) -> PRCurve:
    """The precision/recall/F1-vs-score curve of ``category_id`` (module doc for the definitions)."""
    sel = (matches.category_id == category_id) & ~matches.ignored
    scores, tp = matches.score[sel], matches.tp[sel]
    order = np.argsort(-scores, kind="mergesort")
    scores, tp = scores[order], tp[order]
    ctp = np.cumsum(tp).astype(np.int64)
    cfp = np.cumsum(~tp).astype(np.int64)
    # the last detection of each run of equal scores: the state after keeping all of score >= s
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if scores.size else np.zeros(0, dtype=np.int64)
    s, t, f = scores[last], ctp[last], cfp[last]
    n_gt = int(matches.num_gt.get(int(category_id), 0))
    precision = t / np.maximum(t + f, 1)
    recall = t / n_gt if n_gt > 0 else np.zeros_like(precision)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return PRCurve(int(category_id), matches.iou_thr, n_gt, s, t, f, precision, recall, f1)


def pr_curves(matches: Matches, cat_ids: Sequence[int]) -> list[PRCurve]:
    """:func:`pr_curve` for every category of ``cat_ids`` (same order)."""
    return [pr_curve(matches, c) for c in cat_ids]


def best_f1(curve: PRCurve) -> dict[str, float | int | None]:
    """The best-F1 operating point of ``curve``: ``{"score_thr", "f1", "precision", "recall", "tp", "fp"}``.

    ``score_thr`` is None (and the rest 0) when F1 is 0 everywhere (no gt, no detection or no TP).
    Tie rule: the highest score among F1 values within 1e-12 of the maximum.
    """
    if curve.f1.size == 0 or curve.f1.max() <= 0:
        return {"score_thr": None, "f1": 0.0, "precision": 0.0, "recall": 0.0, "tp": 0, "fp": 0}
    k = int(np.flatnonzero(curve.f1 >= curve.f1.max() - 1e-12)[0])  # scores descend: first = highest
    return {
        "score_thr": float(curve.score[k]),
        "f1": float(curve.f1[k]),
        "precision": float(curve.precision[k]),
        "recall": float(curve.recall[k]),
        "tp": int(curve.tp[k]),
        "fp": int(curve.fp[k]),
    }
