"""Detection confusion matrix with a background class (issue 15).

Layout: ``counts`` is (C+1, C+1); row = true class (cat_ids order), last row = background (a
detection that matched no ground truth); column = predicted class, last column = background (a
ground truth no detection matched). ``counts[C, C]`` is always 0.

Matching rule, per image, with the detections of score >= the threshold of their class:

1. same class first: COCOeval's greedy match per class (:func:`~.matching.match_detections`
   semantics: descending score, each detection takes the free same-class gt of highest IoU >=
   ``iou_thr``); a detection that only overlaps a same-class crowd region is ignored (not
   counted anywhere). So the diagonal equals the TP count of the PR curve at that threshold.
2. then across classes: the remaining detections and remaining non-crowd gts are paired by
   descending IoU (class-agnostic, IoU >= ``iou_thr``), each detection and gt at most once
   (the Ultralytics rule) -> off-diagonal cells (a misclassification).
3. detections left over (duplicates included) -> background row; gts left over -> background column.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .matching import GroundTruth, _match_one, box_iou_xywh, check_results, index_ground_truth

__all__ = ["ConfusionMatrix", "confusion_matrix"]


@dataclass
class ConfusionMatrix:
    """``counts`` (C+1, C+1) int64 and ``normalized`` (row sums 1, all-zero rows stay 0) float64;
    ``cat_ids`` (C,); ``iou_thr``; ``score_thr``: category id -> the threshold used."""

    counts: np.ndarray
    normalized: np.ndarray
    cat_ids: list[int]
    iou_thr: float
    score_thr: dict[int, float]


def _thresholds(score_thr: float | Mapping[int, float], cat_ids: Sequence[int]) -> dict[int, float]:
    if isinstance(score_thr, Mapping):
        missing = [c for c in cat_ids if score_thr.get(c) is None]
        if missing:
            raise ValueError(f"confusion_matrix: score_thr has no threshold for categories {missing}")
        return {int(c): float(score_thr[c]) for c in cat_ids}
    return {int(c): float(score_thr) for c in cat_ids}


def confusion_matrix(
    gt: dict[str, Any] | GroundTruth,
    results: Sequence[dict[str, Any]],
    cat_ids: Sequence[int],
    iou_thr: float = 0.5,
    score_thr: float | Mapping[int, float] = 0.5,
) -> ConfusionMatrix:
    """The confusion matrix of ``results`` against ``gt`` (module doc for the layout and rule).

    Args:
        gt: COCO dataset dict (or :func:`~.matching.index_ground_truth` of it).
        results: COCO results list.
        cat_ids: the classes, in row/column order.
        iou_thr: IoU needed for any match.
        score_thr: one threshold for all classes, or category id -> threshold (every class needed).

    Raises:
        DataError: malformed ground truth or results; ValueError: a class without a threshold.
    """
    cat_ids = [int(c) for c in cat_ids]
    g = gt if isinstance(gt, GroundTruth) else index_ground_truth(gt, cat_ids)
    check_results(results, g.image_ids, cat_ids)
    thr = _thresholds(score_thr, cat_ids)
    col = {c: i for i, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    counts = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    per: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(results):
        if float(d["score"]) >= thr[int(d["category_id"])]:
            per[int(d["image_id"])].append(i)
    for img in g.image_ids:
        idx = np.array(per.get(img, []), dtype=np.int64)
        scores = np.array([float(results[i]["score"]) for i in idx], dtype=np.float64)
        idx = idx[np.argsort(-scores, kind="mergesort")]
        d_cls = np.array([int(results[i]["category_id"]) for i in idx], dtype=np.int64)
        d_box = np.array([results[i]["bbox"] for i in idx], dtype=np.float64).reshape(-1, 4)
        g_cls, g_box, crowd = g.labels[img], g.boxes[img], g.crowd[img]
        det_free = np.ones(idx.size, dtype=bool)
        gt_free = ~crowd.copy()
        # 1. same-class COCO greedy match
        for c in cat_ids:
            ds, gs = np.flatnonzero(d_cls == c), np.flatnonzero(g_cls == c)
            if ds.size == 0 or gs.size == 0:
                continue
            match, ignored = _match_one(box_iou_xywh(d_box[ds], g_box[gs], crowd[gs]), crowd[gs], iou_thr)
            for k, m in enumerate(match):
                if m >= 0:
                    counts[col[c], col[c]] += 1
                    gt_free[gs[m]] = False
                if m >= 0 or ignored[k]:
                    det_free[ds[k]] = False
        # 2. class-agnostic pairing of what is left, by descending IoU
        ds, gs = np.flatnonzero(det_free), np.flatnonzero(gt_free)
        if ds.size and gs.size:
            ious = box_iou_xywh(d_box[ds], g_box[gs])
            pairs = np.argwhere(ious >= iou_thr)
            order = np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="mergesort")
            for a, b in pairs[order]:
                if det_free[ds[a]] and gt_free[gs[b]]:
                    counts[col[int(g_cls[gs[b]])], col[int(d_cls[ds[a]])]] += 1
                    det_free[ds[a]] = gt_free[gs[b]] = False
        # 3. leftovers
        for k in np.flatnonzero(det_free):
            counts[bg, col[int(d_cls[k])]] += 1
        for k in np.flatnonzero(gt_free):
            counts[col[int(g_cls[k])], bg] += 1
    sums = counts.sum(axis=1, keepdims=True)
    normalized = counts / np.maximum(sums, 1)
    return ConfusionMatrix(counts, normalized, cat_ids, float(iou_thr), thr)
