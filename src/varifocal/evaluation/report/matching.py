"""COCO-style matching of detections to ground truth, the base of every report analysis (issue 15).

Inputs are COCO dicts: ``gt`` is a COCO dataset dict (``images``, ``annotations`` with ``bbox``
``[x, y, w, h]`` in pixels, ``category_id``, ``iscrowd``) and ``results`` a COCO results list
(``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``).

The matching is COCOeval's (pycocotools ``evaluateImg``, area range "all"): per image and class,
the detections in descending score order (stable) take, each, the unmatched non-crowd ground
truth of highest IoU >= ``iou_thr`` (on equal IoU the later one, as COCOeval); a detection with
no such match that overlaps a crowd region with intersection-over-detection-area >= ``iou_thr``
is *ignored* (neither TP nor FP), and crowd boxes never count as positives. Only the
``max_dets`` highest-scoring detections per image and class are kept (COCOeval's maxDets=100).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varifocal.data.errors import DataError

__all__ = ["GroundTruth", "Matches", "box_iou_xywh", "index_ground_truth", "check_results", "match_detections"]


def box_iou_xywh(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of ``dets`` (N, 4) with ``gts`` (M, 4), both ``[x, y, w, h]`` pixels, no "+1" -> (N, M).

    For a crowd gt (``crowd[j]`` true) the value is intersection / area of the detection, as
    pycocotools' ``maskUtils.iou`` with ``iscrowd``. Zero-area unions give 0.
    """
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 4)
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    dx2, dy2 = dets[:, 0] + dets[:, 2], dets[:, 1] + dets[:, 3]
    gx2, gy2 = gts[:, 0] + gts[:, 2], gts[:, 1] + gts[:, 3]
    iw = np.minimum(dx2[:, None], gx2[None]) - np.maximum(dets[:, None, 0], gts[None, :, 0])
    ih = np.minimum(dy2[:, None], gy2[None]) - np.maximum(dets[:, None, 1], gts[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_d = (dets[:, 2] * dets[:, 3])[:, None]
    union = area_d + (gts[:, 2] * gts[:, 3])[None] - inter
    if crowd is not None:
        union = np.where(np.asarray(crowd, dtype=bool)[None], np.broadcast_to(area_d, union.shape), union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass
class GroundTruth:
    """Ground truth grouped per image: ``boxes[img]`` (G, 4) xywh, ``labels[img]`` (G,) category ids,
    ``crowd[img]`` (G,) bool, ``ann_ids[img]`` (G,); ``image_ids`` in the order of ``gt['images']``;
    ``num_gt[cat]`` = number of non-crowd boxes of that category."""

    image_ids: list[int]
    boxes: dict[int, np.ndarray]
    labels: dict[int, np.ndarray]
    crowd: dict[int, np.ndarray]
    ann_ids: dict[int, np.ndarray]
    num_gt: dict[int, int]


def _finite_box(bbox: Any) -> bool:
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    )


def index_ground_truth(gt: dict[str, Any], cat_ids: Sequence[int]) -> GroundTruth:
    """Group a COCO dataset dict per image; annotations of categories outside ``cat_ids`` are dropped.

    Raises:
        DataError: ``gt`` lacks ``images``/``annotations``, or an annotation lacks ``image_id``,
            ``category_id`` or a finite 4-number ``bbox``, or names an image not in ``images``.
    """
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise DataError("ground truth: expected a COCO dataset dict with 'images' and 'annotations'")
    image_ids = [int(im["id"]) for im in gt["images"]]
    known = set(image_ids)
    wanted = set(int(c) for c in cat_ids)
    per: dict[int, list[tuple[list[float], int, bool, int]]] = defaultdict(list)
    num_gt = {int(c): 0 for c in cat_ids}
    for i, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise DataError(f"ground truth: annotation #{i} has no 'image_id' or 'category_id'")
        if not _finite_box(ann.get("bbox")):
            raise DataError(f"ground truth: annotation #{i} has bbox {ann.get('bbox')!r}; expected [x, y, w, h]")
        if ann["image_id"] not in known:
            raise DataError(f"ground truth: annotation #{i} has image_id {ann['image_id']!r}, not in 'images'")
        cat = int(ann["category_id"])
        if cat not in wanted:
            continue
        crowd = bool(ann.get("iscrowd", 0))
        per[int(ann["image_id"])].append((ann["bbox"], cat, crowd, int(ann.get("id", i))))
        num_gt[cat] += 0 if crowd else 1
    boxes, labels, crowds, ids = {}, {}, {}, {}
    for img in image_ids:
        rows = per.get(img, [])
        boxes[img] = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
        labels[img] = np.array([r[1] for r in rows], dtype=np.int64)
        crowds[img] = np.array([r[2] for r in rows], dtype=bool)
        ids[img] = np.array([r[3] for r in rows], dtype=np.int64)
    return GroundTruth(image_ids, boxes, labels, crowds, ids, num_gt)


def check_results(results: Sequence[dict[str, Any]], image_ids: Sequence[int], cat_ids: Sequence[int]) -> None:
    """Validate a COCO results list (the rules of :class:`varifocal.evaluation.CocoEvaluator`).

    Raises:
        DataError: a detection is not a dict, lacks a key, has an unknown image or category id,
            a non-finite bbox or score.
    """
    if not isinstance(results, (list, tuple)):
        raise DataError(f"results: expected a list of detections, got {type(results).__name__}")
    imgs, cats = set(image_ids), set(cat_ids)
    for i, d in enumerate(results):
        if not isinstance(d, dict) or any(k not in d for k in ("image_id", "category_id", "bbox", "score")):
            raise DataError(f"results: detection #{i} must be a dict with image_id, category_id, bbox and score")
        if d["image_id"] not in imgs:
            raise DataError(f"results: detection #{i} has image_id {d['image_id']!r}, not in the ground truth")
        if d["category_id"] not in cats:
            raise DataError(f"results: detection #{i} has category_id {d['category_id']!r}, not among {list(cats)}")
        if not _finite_box(d["bbox"]):
            raise DataError(f"results: detection #{i} has bbox {d['bbox']!r}; expected 4 finite numbers [x, y, w, h]")
        if not isinstance(d["score"], (int, float)) or not math.isfinite(d["score"]):
            raise DataError(f"results: detection #{i} has score {d['score']!r}; expected a finite number")


@dataclass
class Matches:
    """The match of every kept detection at one IoU threshold; arrays (N,) in COCOeval's order
    (images in ``gt['images']`` order, within an image and class by descending score).

    ``det_index``: index into the results list; ``image_id``, ``category_id``, ``score``;
    ``tp``: matched a non-crowd gt of its class; ``ignored``: matched only a crowd region;
    ``iou``: IoU with the matched gt for a TP, else the highest IoU with a same-class non-crowd gt
    (0 if none); ``gt_id``: annotation id of the matched gt (-1 if none); ``num_gt[cat]``.
    """

    iou_thr: float
    det_index: np.ndarray
    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    iou: np.ndarray
    gt_id: np.ndarray
    num_gt: dict[int, int]


def _match_one(ious: np.ndarray, crowd: np.ndarray, iou_thr: float) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy match of score-sorted detections (rows of ``ious``) -> (matched gt or -1,
    ignored flag). ``iou_thr`` is clipped to 1 - 1e-10 as in COCOeval."""
    n, g = ious.shape
    thr = min(iou_thr, 1 - 1e-10)
    taken = np.zeros(g, dtype=bool)
    match = np.full(n, -1, dtype=np.int64)
    ignored = np.zeros(n, dtype=bool)
    normal = np.flatnonzero(~crowd)
    crowd_idx = np.flatnonzero(crowd)
    for d in range(n):
        free = normal[~taken[normal]]
        if free.size:
            row = ious[d, free]
            best = row.max()
            if best >= thr:
                j = free[free.size - 1 - int(np.argmax(row[::-1]))]  # last of the equal maxima
                match[d] = j
                taken[j] = True
                continue
        if crowd_idx.size and ious[d, crowd_idx].max() >= thr:
            ignored[d] = True
    return match, ignored


def match_detections(
    gt: dict[str, Any] | GroundTruth,
    results: Sequence[dict[str, Any]],
    cat_ids: Sequence[int],
    iou_thr: float = 0.5,
    max_dets: int | None = 100,
) -> Matches:
    """Match ``results`` to ``gt`` per image and class at ``iou_thr`` (COCOeval semantics, module doc).

    Args:
        gt: a COCO dataset dict (or its :func:`index_ground_truth`).
        results: COCO results list; detections of categories outside ``cat_ids`` raise.
        cat_ids: the evaluated category ids.
        iou_thr: IoU threshold of a true positive, in (0, 1].
        max_dets: detections kept per image and class (highest scores), None for all.

    Raises:
        DataError: malformed ground truth or results (see :func:`check_results`).
    """
    g = gt if isinstance(gt, GroundTruth) else index_ground_truth(gt, cat_ids)
    check_results(results, g.image_ids, cat_ids)
    per: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, d in enumerate(results):
        per[(int(d["image_id"]), int(d["category_id"]))].append(i)
    scores_all = np.array([float(d["score"]) for d in results], dtype=np.float64)
    cols: dict[str, list[np.ndarray]] = defaultdict(list)
    for img in g.image_ids:
        for cat in cat_ids:
            idx = np.array(per.get((img, int(cat)), []), dtype=np.int64)
            if idx.size == 0:
                continue
            idx = idx[np.argsort(-scores_all[idx], kind="mergesort")][:max_dets]
            sel = g.labels[img] == cat
            boxes, crowd, ann_ids = g.boxes[img][sel], g.crowd[img][sel], g.ann_ids[img][sel]
            ious = box_iou_xywh(np.array([results[i]["bbox"] for i in idx]), boxes, crowd)
            match, ignored = _match_one(ious, crowd, iou_thr)
            tp = match >= 0
            normal_iou = np.where(crowd[None], 0.0, ious)
            best = normal_iou.max(axis=1) if boxes.shape[0] else np.zeros(idx.size)
            cols["det_index"].append(idx)
            cols["image_id"].append(np.full(idx.size, img, dtype=np.int64))
            cols["category_id"].append(np.full(idx.size, int(cat), dtype=np.int64))
            cols["score"].append(scores_all[idx])
            cols["tp"].append(tp)
            cols["ignored"].append(ignored)
            if boxes.shape[0]:
                m0 = np.maximum(match, 0)
                cols["iou"].append(np.where(tp, ious[np.arange(idx.size), m0], best))
                cols["gt_id"].append(np.where(tp, ann_ids[m0], -1))
            else:
                cols["iou"].append(np.zeros(idx.size))
                cols["gt_id"].append(np.full(idx.size, -1, dtype=np.int64))
    dtypes = dict(det_index=np.int64, image_id=np.int64, category_id=np.int64, score=np.float64)
    dtypes.update(tp=bool, ignored=bool, iou=np.float64, gt_id=np.int64)
    arrays = {k: (np.concatenate(cols[k]) if cols[k] else np.zeros(0, dtype=t)) for k, t in dtypes.items()}
    return Matches(iou_thr=float(iou_thr), num_gt=dict(g.num_gt), **arrays)
