"""PASCAL VOC detection metrics: per-class AP at one IoU threshold and their mean (mAP).

The rules are those of the PASCAL VOC devkit (``VOCevaldet.m``; VOC2007: 11-point interpolated
AP, VOC2010 and later: the area under the monotone precision envelope), the metric of
``../shared/docs/refinedet_spec.md`` §14 (its VOC07 / VOC12 mAP columns) and of issue "RefineDet"
item 3. Per class:

1. the detections of the class on all images are ranked by score, highest first (ties keep
   the order of the images, then of the detections within an image: a stable sort);
2. each detection is compared with every ground-truth box of its class in its image, difficult
   ones included, and takes the one of largest IoU (the first one on a tie; the non-difficult
   boxes of an image come before its difficult ones). With IoU >= ``iou_thr``: a difficult box
   makes the detection *ignored* (neither true nor false positive), a box not yet taken makes it
   a true positive (and takes the box), a box already taken by a higher-ranked detection makes it
   a false positive (a duplicate). Below ``iou_thr`` (or no box at all) it is a false positive.
   As in the devkit, a detection whose best box is already taken is a duplicate even when
   another, untaken box overlaps it by more than ``iou_thr``;
3. ``recall = TP / npos`` and ``precision = TP / (TP + FP)`` after each counted (not ignored)
   detection, where ``npos`` counts the non-difficult boxes; the AP is :func:`voc_ap` of them.

A class without a single non-difficult ground-truth box has no AP (the devkit's 0/0 recall):
its ``ap`` and ``recall`` are ``None`` and the mAP is the mean over the classes that have
ground truth, as MMDetection's ``eval_map`` averages (0.0 when no class has any). A class with
ground truth but no detection has AP 0 and is part of the mean.

Boxes are continuous ``xyxy`` pixels without the "+1" (the toolbox's convention; VOC XML
corners are read as they are). With ``legacy_coordinate=True`` widths, heights and
intersections get the devkit's "+1" (``x2 - x1 + 1``: integer pixel boxes whose corners are
both inside the box), so that the IoU of VOC XML boxes equals the devkit's; MMDetection 3.x's
``VOCMetric`` passes ``use_legacy_coordinate=True`` for the same reason (its XML reader subtracts
1 from the corners, which a shift-invariant IoU does not see). Hence the default is ``True``:
``voc07`` / ``voc12`` numbers on VOC-style data equal the devkit's. ``False`` gives the plain
continuous IoU of the rest of the toolbox (:func:`varifocal.structures.bbox_overlaps`).

11-point thresholds are the exact tenths ``t = k / 10``; implementations that write
``np.arange(0, 1.1, 0.1)`` (py-faster-rcnn, MMDetection) compare against 0.30000000000000004,
0.6000000000000001 and 0.7000000000000001 and so skip a recall of exactly 3/10, 6/10 or 7/10.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["voc_ap", "box_iou_voc", "evaluate_voc", "voc_ground_truths", "voc_inputs_from_coco", "format_voc_table"]

_TP, _FP, _IGNORED = 1, 0, -1


def voc_ap(recall: Sequence[float] | np.ndarray, precision: Sequence[float] | np.ndarray, use_07_metric: bool) -> float:
    """Average precision of a precision/recall curve (PASCAL VOC devkit ``VOCevaldet.m`` / ``VOCap.m``).

    Args:
        recall: ``[n]`` recall after each counted detection (ranked by score; non-decreasing).
        precision: ``[n]`` precision at the same points.
        use_07_metric: ``True``: VOC2007's 11-point interpolated AP, the mean over
            ``t = 0, 0.1, ..., 1`` of the largest precision at a recall ``>= t`` (0 where there is
            none; ``t = k / 10`` exactly, see the module docstring). ``False``: VOC2010+ all-point
            AP, the precision made monotone (each point takes the largest precision at any
            higher recall), summed over the recall steps: ``sum (r[i+1] - r[i]) * p[i+1]`` on the
            curve with ``(0, 0)`` prepended and ``(1, 0)`` appended.

    Returns:
        the AP in ``[0, 1]``; 0.0 for an empty curve.

    Raises:
        ValueError: ``recall`` and ``precision`` are not 1-D of the same length, or not finite.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if rec.ndim != 1 or prec.ndim != 1 or rec.shape != prec.shape:
        raise ValueError(
            f"voc_ap: recall and precision must be 1-D of the same length, got {rec.shape} and {prec.shape}"
        )
    if not (np.isfinite(rec).all() and np.isfinite(prec).all()):
        raise ValueError("voc_ap: recall and precision must be finite")
    if use_07_metric:
        total = 0.0
        for k in range(11):
            reached = prec[rec >= k / 10]
            total += float(reached.max()) if reached.size else 0.0
        return total / 11
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_iou_voc(boxes1: Any, boxes2: Any, legacy_coordinate: bool = True) -> np.ndarray:
    """IoU of every pair of ``boxes1`` ``[N, 4]`` and ``boxes2`` ``[M, 4]`` (``xyxy`` pixels).

    ``legacy_coordinate=True``: the devkit's integer-pixel rule, width ``x2 - x1 + 1`` and an
    intersection ``(min x2 - max x1 + 1) * (min y2 - max y1 + 1)`` counted only when both sides
    are positive; ``False``: the continuous ``x2 - x1``. Computed in float64.

    Returns:
        float64 ``[N, M]`` (0 where the union is not positive).

    Raises:
        ValueError: a shape other than ``[N, 4]``.
    """
    a = _boxes(boxes1, "boxes1")
    b = _boxes(boxes2, "boxes2")
    extra = 1.0 if legacy_coordinate else 0.0
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + extra
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + extra
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + extra) * (a[:, 3] - a[:, 1] + extra)
    area_b = (b[:, 2] - b[:, 0] + extra) * (b[:, 3] - b[:, 1] + extra)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _boxes(x: Any, what: str) -> np.ndarray:
    boxes = _numpy(x, np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: expected boxes of shape [k, 4], got {tuple(boxes.shape)}")
    return boxes


def _labels(x: Any, n: int, num_classes: int, what: str) -> np.ndarray:
    labels = _numpy(x, np.int64).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"{what}: {n} boxes but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels.min() if labels.min() < 0 else labels.max())
        raise ValueError(f"{what}: label {bad} outside 0..{num_classes - 1}")
    return labels


def _image_flags(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    iou_thr: float,
    legacy_coordinate: bool,
) -> np.ndarray:
    """TP / FP / ignored flag of each detection of one class in one image (in input order)."""
    flags = np.full(len(det_boxes), _FP, dtype=np.int8)
    if not len(det_boxes) or not len(gt_boxes):
        return flags
    ious = box_iou_voc(det_boxes, gt_boxes, legacy_coordinate)
    best = ious.argmax(axis=1)  # over all boxes, taken or not (devkit)
    hit = ious[np.arange(len(det_boxes)), best] >= iou_thr
    on_difficult = hit & gt_difficult[best]
    flags[on_difficult] = _IGNORED
    candidates = hit & ~on_difficult
    order = np.argsort(-det_scores, kind="stable")
    ranked = order[candidates[order]]  # candidate detections, best score first
    _, first = np.unique(best[ranked], return_index=True)  # the first detection on each box takes it
    flags[ranked[first]] = _TP
    return flags


def evaluate_voc(
    detections: Sequence[dict[str, Any]],
    ground_truths: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    iou_thr: float = 0.5,
    use_07_metric: bool = True,
    legacy_coordinate: bool = True,
) -> dict[str, Any]:
    """PASCAL VOC per-class AP and mAP (rules: module docstring; ``refinedet_spec.md`` §14).

    Args:
        detections: one dict per image: ``boxes`` ``[k, 4]`` ``xyxy`` in original-image pixels,
            ``scores`` ``[k]``, ``labels`` ``[k]`` in ``0..C-1`` (tensors or arrays).
        ground_truths: one dict per image, in the order of ``detections``: ``boxes`` ``[K, 4]``,
            ``labels`` ``[K]`` (the non-difficult objects) and optionally ``difficult_boxes``
            ``[D, 4]``, ``difficult_labels`` ``[D]`` (VOC ``difficult=1``, COCO ``iscrowd``:
            detections on them are ignored; not counted in ``npos``).
        class_names: the ``C`` class names in label order.
        iou_thr: the IoU a true positive needs (``>=``), in ``(0, 1]``.
        use_07_metric: ``True``: VOC2007 11-point AP (``metric`` ``'voc07'``); ``False``: the
            all-point AP of VOC2010+ (``'voc12'``), see :func:`voc_ap`.
        legacy_coordinate: the devkit's "+1" widths (default ``True``, so that the numbers on
            VOC XML boxes equal the devkit's; module docstring).

    Returns:
        ``{"metric": "voc07" | "voc12", "iou_thr", "legacy_coordinate", "mAP": float,
        "per_class": [{"name", "num_gt" (non-difficult boxes = npos), "num_dets" (every
        detection of the class, ignored ones included), "tp", "fp", "recall" (TP / npos after
        the last detection), "ap"}]}``; ``recall`` and ``ap`` are ``None`` for a class without
        ground truth, which the mean leaves out (``mAP`` 0.0 when no class has any).

    Raises:
        ValueError: ``detections`` and ``ground_truths`` of different lengths, no class names,
            ``iou_thr`` outside ``(0, 1]``, a bad shape, a missing key, or a label outside
            ``0..C-1`` (the message names the image index).
    """
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError("evaluate_voc: class_names is empty")
    if not 0.0 < float(iou_thr) <= 1.0:
        raise ValueError(f"evaluate_voc: iou_thr must be in (0, 1], got {iou_thr}")
    if len(detections) != len(ground_truths):
        raise ValueError(f"evaluate_voc: {len(detections)} detection entries but {len(ground_truths)} ground truths")

    npos = np.zeros(num_classes, dtype=np.int64)
    num_dets = np.zeros(num_classes, dtype=np.int64)
    scores_of: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    flags_of: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for index, (det, gt) in enumerate(zip(detections, ground_truths)):
        where = f"image #{index}"
        try:
            det_boxes = _boxes(det["boxes"], f"{where} detections")
            det_scores = _numpy(det["scores"], np.float64).reshape(-1)
            det_labels = _labels(det["labels"], len(det_boxes), num_classes, f"{where} detections")
            gt_boxes = _boxes(gt["boxes"], f"{where} ground truth")
            gt_labels = _labels(gt["labels"], len(gt_boxes), num_classes, f"{where} ground truth")
            diff_boxes = _boxes(gt.get("difficult_boxes", np.zeros((0, 4))), f"{where} difficult boxes")
            diff_labels = _labels(
                gt.get("difficult_labels", np.zeros(0)), len(diff_boxes), num_classes, f"{where} difficult boxes"
            )
        except KeyError as exc:
            raise ValueError(f"evaluate_voc: {where} has no {exc.args[0]!r}") from None
        if len(det_scores) != len(det_boxes):
            raise ValueError(f"{where} detections: {len(det_boxes)} boxes but {len(det_scores)} scores")
        if not np.isfinite(det_scores).all():
            raise ValueError(f"{where} detections: scores must be finite")
        npos += np.bincount(gt_labels, minlength=num_classes)
        all_boxes = np.concatenate((gt_boxes, diff_boxes))
        all_labels = np.concatenate((gt_labels, diff_labels))
        difficult = np.concatenate((np.zeros(len(gt_boxes), bool), np.ones(len(diff_boxes), bool)))
        for c in np.unique(det_labels):
            mine, theirs = det_labels == c, all_labels == c
            flags = _image_flags(
                det_boxes[mine], det_scores[mine], all_boxes[theirs], difficult[theirs], iou_thr, legacy_coordinate
            )
            scores_of[c].append(det_scores[mine])
            flags_of[c].append(flags)
            num_dets[c] += int(mine.sum())

    per_class = []
    for c, name in enumerate(class_names):
        scores = np.concatenate(scores_of[c]) if scores_of[c] else np.zeros(0)
        flags = np.concatenate(flags_of[c]) if flags_of[c] else np.zeros(0, np.int8)
        counted = flags != _IGNORED  # an ignored detection changes neither TP nor FP
        scores, flags = scores[counted], flags[counted]
        flags = flags[np.argsort(-scores, kind="stable")]
        tp = np.cumsum(flags == _TP)
        fp = np.cumsum(flags == _FP)
        row: dict[str, Any] = {
            "name": str(name),
            "num_gt": int(npos[c]),
            "num_dets": int(num_dets[c]),
            "tp": int(tp[-1]) if len(tp) else 0,
            "fp": int(fp[-1]) if len(fp) else 0,
            "recall": None,
            "ap": None,
        }
        if npos[c] > 0:
            recall = tp / float(npos[c])
            precision = tp / np.maximum(tp + fp, 1)
            row["recall"] = float(recall[-1]) if len(recall) else 0.0
            row["ap"] = voc_ap(recall, precision, use_07_metric)
        per_class.append(row)
    aps = [row["ap"] for row in per_class if row["ap"] is not None]
    return {
        "metric": "voc07" if use_07_metric else "voc12",
        "iou_thr": float(iou_thr),
        "legacy_coordinate": bool(legacy_coordinate),
        "mAP": float(np.mean(aps)) if aps else 0.0,
        "per_class": per_class,
    }


def voc_ground_truths(records: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    """The :func:`evaluate_voc` ground truth of dataset records (:class:`~varifocal.data.ImageRecord`):
    ``boxes`` / ``labels`` as they are, ``crowd_boxes`` / ``crowd_labels`` (VOC ``difficult=1``,
    COCO ``iscrowd=1``) as the difficult boxes. One dict per record, in order."""
    return [
        {
            "boxes": r.boxes,
            "labels": r.labels,
            "difficult_boxes": r.crowd_boxes,
            "difficult_labels": r.crowd_labels,
        }
        for r in records
    ]


def voc_inputs_from_coco(
    gt: dict[str, Any], results: Sequence[dict[str, Any]], cat_ids: Sequence[int]
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """``(detections, ground_truths)`` for :func:`evaluate_voc` from a COCO ground-truth dict and
    a COCO results list, one entry per image of ``gt["images"]`` in its order.

    ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; ``iscrowd=1`` annotations are the difficult
    boxes; ``cat_ids[k]`` is label ``k``. Results on images or categories outside them are left out.

    Raises:
        KeyError: an annotation or result without ``image_id``, ``category_id`` or ``bbox``.
    """
    label_of = {int(c): k for k, c in enumerate(cat_ids)}
    order = {int(img["id"]): i for i, img in enumerate(gt["images"])}
    n = len(order)
    gt_lists: list[dict[str, list]] = [{"b": [], "l": [], "db": [], "dl": []} for _ in range(n)]
    for a in gt["annotations"]:
        i, label = order.get(int(a["image_id"])), label_of.get(int(a["category_id"]))
        if i is None or label is None:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        key = "d" if a.get("iscrowd", 0) else ""
        gt_lists[i][key + "b"].append([x, y, x + w, y + h])
        gt_lists[i][key + "l"].append(label)
    det_lists: list[dict[str, list]] = [{"b": [], "s": [], "l": []} for _ in range(n)]
    for d in results:
        i, label = order.get(int(d["image_id"])), label_of.get(int(d["category_id"]))
        if i is None or label is None:
            continue
        x, y, w, h = (float(v) for v in d["bbox"])
        det_lists[i]["b"].append([x, y, x + w, y + h])
        det_lists[i]["s"].append(float(d["score"]))
        det_lists[i]["l"].append(label)

    def boxes(rows: list) -> np.ndarray:
        return np.asarray(rows, dtype=np.float64).reshape(-1, 4)

    def labels(rows: list) -> np.ndarray:
        return np.asarray(rows, dtype=np.int64)

    ground_truths = [
        {
            "boxes": boxes(g["b"]),
            "labels": labels(g["l"]),
            "difficult_boxes": boxes(g["db"]),
            "difficult_labels": labels(g["dl"]),
        }
        for g in gt_lists
    ]
    detections = [
        {"boxes": boxes(d["b"]), "scores": np.asarray(d["s"], dtype=np.float64), "labels": labels(d["l"])}
        for d in det_lists
    ]
    return detections, ground_truths


def format_voc_table(result: dict[str, Any]) -> str:
    """The per-class table of an :func:`evaluate_voc` result (class, gt count, detections,
    recall, AP; ``-`` for a class without ground truth) and its mAP line, e.g.::

        VOC07 (11-point AP, IoU 0.5, difficult ignored, +1 pixel boxes)
        class       gts   dets  recall      ap
        RBC         680   1931   0.912   0.801
        mAP                              0.842
    """
    rows = result["per_class"]
    width = max([len("class")] + [len(r["name"]) for r in rows])
    kind = "11-point AP" if result["metric"] == "voc07" else "all-point AP"
    coords = "+1 pixel boxes" if result["legacy_coordinate"] else "continuous boxes"
    lines = [
        f"{result['metric'].upper()} ({kind}, IoU {result['iou_thr']:g}, difficult ignored, {coords})",
        f"{'class':<{width}} {'gts':>6} {'dets':>6} {'recall':>7} {'ap':>7}",
    ]
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.3f}"
        ap = "-" if r["ap"] is None else f"{r['ap']:.3f}"
        lines.append(f"{r['name']:<{width}} {r['num_gt']:>6} {r['num_dets']:>6} {recall:>7} {ap:>7}")
    lines.append(f"{'mAP':<{width}} {'':>6} {'':>6} {'':>7} {result['mAP']:>7.3f}")
    return "\n".join(lines)
