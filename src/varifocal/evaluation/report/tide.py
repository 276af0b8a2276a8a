"""TIDE error breakdown: how much AP each kind of error costs (Bolya et al., "TIDE: A General Toolbox
for Identifying Object Detection Errors", ECCV 2020), issue 15.

Our own implementation, following the paper's definitions and the semantics of its reference code
(``tidecv`` 1.0.1, read, not copied). ``tidecv`` itself was not taken as a dependency: its last
release is from 2020/21 and it pulls opencv-python, pandas and seaborn (it does import and run
with numpy 2 in a throwaway venv, and the toy cases of our tests were cross-checked against it).

AP is COCO's 101-point interpolated AP at IoU ``t_f`` (default 0.5), a fraction in [0, 1] (tidecv
prints 100x), averaged over the classes that have at least one non-crowd gt (COCOeval's rule;
tidecv also averages classes with detections but no gt as 0). Per image the ``max_dets``
highest-scoring detections are kept (tidecv's per-image maxDets). True positives are COCOeval's
greedy same-class matches at ``t_f``; detections matching only a crowd region are ignored (not in
AP, not an error). Every other detection (a false positive) gets exactly one type, tested in the
reference code's order, with IoU_same / IoU_other its highest IoU with a non-crowd gt of its own /
another class:

- ``Bkg``: the image has no non-crowd gt;
- ``Loc``:  t_b <= IoU_same < t_f  (target: that gt);
- ``Cls``:  IoU_other >= t_f  (target: that gt);
- ``Dupe``: IoU_same >= t_f with an already matched gt;
- ``Bkg``:  highest IoU with any gt <= t_b;
- ``Both``: anything else (wrong class and t_b < IoU < t_f, the paper's "Both").

``Miss``: a non-crowd gt that no detection matched and that no Cls/Loc error targets.

The oracle of each type, applied alone to the original result (the paper's non-progressive
"main errors"): Cls -> the detection takes the class of its target and becomes a TP; Loc -> the
detection becomes a TP of its target; in both, only the highest-scoring such error per unmatched
target is fixed, the other errors of that type on the same target (or on a matched one) are
removed (they would be duplicates). Both, Dupe, Bkg -> the detections are removed. Miss -> the
missed gts are removed from the gt count. ΔAP = max(AP_fixed - AP, 0) (as the reference). The
"special" errors: ``FalsePos`` (every FP removed) and ``FalseNeg`` (every unmatched gt removed).
Deviations from tidecv: crowd-ignored detections are not classified as errors, Loc uses
IoU < t_f (tidecv <= t_f; equal IoU with a free gt is a TP anyway), the best-per-target choice
is made per error type rather than across Cls and Loc together (the paper fixes one type alone).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .matching import GroundTruth, _match_one, box_iou_xywh, check_results, index_ground_truth

__all__ = ["ERROR_TYPES", "coco_ap", "tide_errors"]

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
_REC_THRS = np.linspace(0.0, 1.0, 101)


def coco_ap(scores: np.ndarray, tp: np.ndarray, num_gt: int, order: np.ndarray | None = None) -> float | None:
    """COCOeval's 101-point interpolated AP of one class: detections (N,) ``scores``, ``tp`` flags,
    ``order`` (N,) breaking score ties (default: the given order); None when ``num_gt`` == 0."""
    if num_gt <= 0:
        return None
    scores, tp = np.asarray(scores, dtype=np.float64), np.asarray(tp, dtype=bool)
    if scores.size == 0:
        return 0.0
    o = np.lexsort((np.arange(scores.size) if order is None else np.asarray(order), -scores))
    tps, fps = np.cumsum(tp[o]), np.cumsum(~tp[o])
    recall = tps / num_gt
    precision = tps / (tps + fps)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _REC_THRS, side="left")
    q = np.where(idx < precision.size, precision[np.minimum(idx, precision.size - 1)], 0.0)
    return float(q.mean())


def _mean_ap(cls: np.ndarray, score: np.ndarray, tp: np.ndarray, order: np.ndarray, num_gt: dict[int, int]) -> float:
    aps = []
    for c, n in num_gt.items():
        m = cls == c
        ap = coco_ap(score[m], tp[m], n, order[m])
        if ap is not None:
            aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


def _classify(fp_rows, iou, same, used, t_f, t_b):
    """Error type and target gt (local index or -1) of each false-positive row of ``iou`` (D, G)."""
    out = []
    for d in fp_rows:
        if iou.shape[1] == 0:
            out.append(("Bkg", -1))
            continue
        s = np.where(same[d], iou[d], -1.0)
        o = np.where(~same[d], iou[d], -1.0)
        js, jo = int(np.argmax(s)), int(np.argmax(o))
        su = np.where(same[d] & used, iou[d], -1.0)
        if t_b <= s[js] < t_f:
            out.append(("Loc", js))
        elif o[jo] >= t_f:
            out.append(("Cls", jo))
        elif su.max() >= t_f:
            out.append(("Dupe", -1))
        elif iou[d].max() <= t_b:
            out.append(("Bkg", -1))
        else:
            out.append(("Both", -1))
    return out


def tide_errors(
    gt: dict[str, Any] | GroundTruth,
    results: Sequence[dict[str, Any]],
    cat_ids: Sequence[int],
    t_f: float = 0.5,
    t_b: float = 0.1,
    max_dets: int | None = 100,
) -> dict[str, Any]:
    """The TIDE breakdown of ``results`` (module doc for every definition).

    Returns ``{"ap", "t_f", "t_b", "delta_ap": {type: ΔAP}, "special": {"FalsePos", "FalseNeg"},
    "counts": {type: n}}`` with AP values as fractions in [0, 1].

    Raises:
        DataError: malformed ground truth or results.
    """
    cat_ids = [int(c) for c in cat_ids]
    g = gt if isinstance(gt, GroundTruth) else index_ground_truth(gt, cat_ids)
    check_results(results, g.image_ids, cat_ids)
    per: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(results):
        per[int(d["image_id"])].append(i)
    rows: list[tuple[Any, ...]] = []  # (class, score, tp, type, target key, target class, target matched)
    missed: dict[int, int] = defaultdict(int)
    for img in g.image_ids:
        idx = np.array(per.get(img, []), dtype=np.int64)
        scores = np.array([float(results[i]["score"]) for i in idx], dtype=np.float64)
        o = np.argsort(-scores, kind="mergesort")[:max_dets]
        idx, scores = idx[o], scores[o]
        d_cls = np.array([int(results[i]["category_id"]) for i in idx], dtype=np.int64)
        d_box = np.array([results[i]["bbox"] for i in idx], dtype=np.float64).reshape(-1, 4)
        g_cls, g_box, crowd = g.labels[img], g.boxes[img], g.crowd[img]
        tp = np.zeros(idx.size, dtype=bool)
        ignored = np.zeros(idx.size, dtype=bool)
        used = np.zeros(g_cls.size, dtype=bool)
        for c in cat_ids:
            ds, gs = np.flatnonzero(d_cls == c), np.flatnonzero(g_cls == c)
            if ds.size and gs.size:
                match, ign = _match_one(box_iou_xywh(d_box[ds], g_box[gs], crowd[gs]), crowd[gs], t_f)
                tp[ds] = match >= 0
                ignored[ds] = ign
                used[gs[match[match >= 0]]] = True
        normal = np.flatnonzero(~crowd)
        iou = box_iou_xywh(d_box, g_box[normal])
        same = d_cls[:, None] == g_cls[normal][None]
        fp_rows = np.flatnonzero(~tp & ~ignored)
        kinds = dict(zip(fp_rows.tolist(), _classify(fp_rows, iou, same, used[normal], t_f, t_b)))
        targeted = set()
        for d in np.flatnonzero(~ignored):
            kind, j = kinds.get(int(d), ("TP", -1))
            j = int(normal[j]) if j >= 0 else -1
            if kind in ("Cls", "Loc") and not used[j]:
                targeted.add(j)
            t_cls, t_used = (int(g_cls[j]), bool(used[j])) if j >= 0 else (-1, True)
            rows.append((int(d_cls[d]), float(scores[d]), bool(tp[d]), kind, (img, j), t_cls, t_used))
        for j in normal:
            if not used[j] and int(j) not in targeted:
                missed[int(g_cls[j])] += 1
    return _fix_all(rows, dict(g.num_gt), missed, t_f, t_b)


def _fix_all(rows, num_gt, missed, t_f, t_b) -> dict[str, Any]:
    n = len(rows)
    cls = np.array([r[0] for r in rows], dtype=np.int64)
    score = np.array([r[1] for r in rows], dtype=np.float64)
    tp = np.array([r[2] for r in rows], dtype=bool)
    kind = np.array([r[3] for r in rows], dtype=object)
    order = np.arange(n)
    tp_count = {c: int((tp & (cls == c)).sum()) for c in num_gt}
    ap = _mean_ap(cls, score, tp, order, num_gt)

    def fixed_ap(err: str) -> float:
        keep = np.ones(n, dtype=bool)
        c2, tp2, gts = cls.copy(), tp.copy(), dict(num_gt)
        if err == "Miss":
            gts = {c: v - missed.get(c, 0) for c, v in gts.items()}
        elif err in ("Cls", "Loc"):
            best: dict[tuple[int, int], int] = {}
            for i in np.flatnonzero(kind == err):  # per image in descending score: the first is the best
                if rows[i][6] or rows[i][4] in best:
                    keep[i] = False  # its target is matched already, or a higher-scored error takes it
                else:
                    best[rows[i][4]] = int(i)
            for i in best.values():
                tp2[i] = True
                c2[i] = rows[i][5]
        else:
            keep &= kind != err
        return _mean_ap(c2[keep], score[keep], tp2[keep], order[keep], gts)

    delta = {e: max(fixed_ap(e) - ap, 0.0) for e in ERROR_TYPES}
    special = {
        "FalsePos": max(_mean_ap(cls[tp], score[tp], tp[tp], order[tp], num_gt) - ap, 0.0),
        "FalseNeg": max(_mean_ap(cls, score, tp, order, tp_count) - ap, 0.0),
    }
    counts = {e: int((kind == e).sum()) for e in ERROR_TYPES if e != "Miss"}
    counts["Miss"] = int(sum(missed.values()))
    return {"ap": ap, "t_f": t_f, "t_b": t_b, "delta_ap": delta, "special": special, "counts": counts}
