"""PASCAL VOC AP / mAP (evaluation/voc_eval.py): hand-computed values (refinedet_spec §14, issue "RefineDet" item 3)."""

from __future__ import annotations

from fractions import Fraction as F
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from varifocal.evaluation.voc_eval import (
    box_iou_voc,
    evaluate_voc,
    format_voc_table,
    voc_ap,
    voc_ground_truths,
    voc_inputs_from_coco,
)

EXACT = 1e-12  # float sums of the hand-computed fractions


def _det(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _gt(boxes, labels, difficult_boxes=(), difficult_labels=()):
    return {
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "difficult_boxes": np.asarray(difficult_boxes, dtype=np.float32).reshape(-1, 4),
        "difficult_labels": np.asarray(difficult_labels, dtype=np.int64),
    }


# ---- voc_ap ------------------------------------------------------------------------------------


def test_voc_ap_by_hand_at_exact_tenths():
    # npos = 5, ranked detections TP FP TP TP:
    #   tp 1 1 2 3, fp 0 1 1 1 -> recall 1/5 1/5 2/5 3/5, precision 1 1/2 2/3 3/4
    recall = [0.2, 0.2, 0.4, 0.6]
    precision = [1.0, 0.5, 2 / 3, 0.75]
    # 11-point: t = 0, .1, .2 -> max precision of all = 1 (3 x 1); t = .3, .4 -> recall >= t at 2/5, 3/5:
    # max(2/3, 3/4) = 3/4 (2 x 3/4); t = .5, .6 -> recall 3/5 (3/5 >= 0.6 counts: t = k/10 exactly): 3/4
    # (2 x 3/4); t = .7 .. 1 -> none: 0. Sum 3 + 3/2 + 3/2 = 6 -> AP 6/11. (np.arange's 0.6000000000000001
    # would drop recall 0.6 at t = .6 and give 21/44.)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(6 / 11, abs=EXACT)
    # all-point: mrec 0 .2 .2 .4 .6 1, mpre 0 1 1/2 2/3 3/4 0 -> envelope 1 1 3/4 3/4 3/4 0;
    # steps 0->.2 at p 1, .2->.4 at 3/4, .4->.6 at 3/4, .6->1 at 0: .2 + .15 + .15 = 1/2
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.5, abs=EXACT)


def test_voc_ap_edge_cases_and_errors():
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0
    assert voc_ap([1.0], [1.0], True) == pytest.approx(1.0, abs=EXACT)  # every t reached at precision 1
    assert voc_ap([1.0], [1.0], False) == pytest.approx(1.0, abs=EXACT)
    with pytest.raises(ValueError, match="same length"):
        voc_ap([0.1, 0.2], [1.0], True)
    with pytest.raises(ValueError, match="finite"):
        voc_ap([float("nan")], [1.0], False)


# ---- the toy case --------------------------------------------------------------------------------
#
# Classes a (0), b (1), c (2). Image A (index 0): gt a g1 [0,0,10,10], g2 [20,0,30,10], a difficult
# a box d1 [40,0,50,10], gt b [0,20,10,30]. Image B (index 1): gt a g3 [0,0,10,10].
# Detections of a, ranked over both images:
#   0.95 A on g1                 -> TP (g1)
#   0.90 B [60,60,70,70]         -> FP (no overlap)
#   0.85 A on d1 (difficult)     -> ignored: neither TP nor FP
#   0.70 A [0,0,10,9] dup of g1  -> FP (IoU 10/11 with g1, already taken)
#   0.65 B on g3                 -> TP
#   0.60 A on g2                 -> TP
# Counted sequence TP FP FP TP TP; npos = 3 (d1 not counted):
#   tp 1 1 1 2 3, fp 0 1 2 2 2 -> recall 1/3 1/3 1/3 2/3 1, precision 1 1/2 1/3 1/2 3/5
# 11-point: t = 0 .. .3 (4): max all = 1 -> 4; t = .4 .5 .6 (3): recall >= t at 2/3, 1: max(1/2, 3/5) = 3/5
#   -> 9/5; t = .7 .. 1 (4): recall 1: 3/5 -> 12/5. Sum 41/5 -> AP 41/55.
# all-point: mrec 0 1/3 1/3 1/3 2/3 1 1, mpre 0 1 1/2 1/3 1/2 3/5 0 -> envelope 1 1 3/5 3/5 3/5 3/5 0;
#   1/3 * 1 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15.
# (Without the global ranking, image A then image B would give TP FP TP | FP TP and other APs.)
# Class b has a gt and no detection: AP 0. Class c has a detection and no gt: AP None, not in the mean.
# mAP = (41/55 + 0) / 2 = 41/110 (voc07), (11/15 + 0) / 2 = 11/30 (voc12).

A_DETS = ([[0, 0, 10, 10], [40, 0, 50, 10], [0, 0, 10, 9], [20, 0, 30, 10], [0, 0, 5, 5]], [0.95, 0.85, 0.7, 0.6, 0.5])
B_DETS = ([[60, 60, 70, 70], [0, 0, 10, 10]], [0.9, 0.65])


def _toy():
    detections = [_det(*A_DETS, [0, 0, 0, 0, 2]), _det(*B_DETS, [0, 0])]
    ground_truths = [
        _gt([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]], [0, 0, 1], [[40, 0, 50, 10]], [0]),
        _gt([[0, 0, 10, 10]], [0]),
    ]
    return detections, ground_truths


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize(("use_07", "ap_a", "m_ap"), [(True, F(41, 55), F(41, 110)), (False, F(11, 15), F(11, 30))])
def test_toy_case_by_hand(use_07, ap_a, m_ap, legacy):
    dets, gts = _toy()
    res = evaluate_voc(dets, gts, ["a", "b", "c"], use_07_metric=use_07, legacy_coordinate=legacy)
    assert res["metric"] == ("voc07" if use_07 else "voc12") and res["iou_thr"] == 0.5
    a, b, c = res["per_class"]
    assert (a["name"], a["num_gt"], a["num_dets"], a["tp"], a["fp"]) == ("a", 3, 6, 3, 2)
    assert a["recall"] == pytest.approx(1.0, abs=EXACT)
    assert a["ap"] == pytest.approx(float(ap_a), abs=EXACT)
    assert (b["num_gt"], b["num_dets"], b["tp"], b["fp"], b["recall"], b["ap"]) == (1, 0, 0, 0, 0.0, 0.0)
    assert (c["num_gt"], c["num_dets"], c["tp"], c["fp"], c["recall"], c["ap"]) == (0, 1, 0, 1, None, None)
    assert res["mAP"] == pytest.approx(float(m_ap), abs=EXACT)


def test_toy_case_does_not_depend_on_the_order_of_images_or_detections():
    dets, gts = _toy()
    ref = evaluate_voc(dets, gts, ["a", "b", "c"])
    perm = [4, 2, 0, 3, 1]
    shuffled = {k: v[perm] for k, v in dets[0].items()}
    res = evaluate_voc([dets[1], shuffled], [gts[1], gts[0]], ["a", "b", "c"])
    assert res == ref


def test_difficult_detection_is_ignored_not_false_positive():
    # one gt, a detection on a difficult box ranked first: if it counted as FP the curve would be
    # FP TP (AP 11-point 6/11), it is ignored: TP alone, AP 1
    dets = [_det([[0, 0, 10, 10], [20, 0, 30, 10]], [0.5, 0.9], [0, 0])]
    gts = [_gt([[0, 0, 10, 10]], [0], [[20, 0, 30, 10]], [0])]
    (row,) = evaluate_voc(dets, gts, ["a"])["per_class"]
    assert (row["num_gt"], row["num_dets"], row["tp"], row["fp"], row["ap"]) == (1, 2, 1, 0, 1.0)
    # a class whose only box is difficult has no ground truth: no AP, left out of the mean
    dets = [_det([[0, 0, 10, 10], [20, 0, 30, 10]], [0.5, 0.9], [0, 1])]
    gts = [_gt([[0, 0, 10, 10]], [0], [[20, 0, 30, 10]], [1])]
    res = evaluate_voc(dets, gts, ["a", "b"])
    assert res["per_class"][1] == {
        "name": "b",
        "num_gt": 0,
        "num_dets": 1,
        "tp": 0,
        "fp": 0,
        "recall": None,
        "ap": None,
    }
    assert res["mAP"] == 1.0


def test_duplicate_takes_the_best_box_even_when_it_is_taken():
    # gts g1 [0,0,10,10], g2 [2,0,12,10]; detections 0.9 exactly g1 -> TP; 0.8 [0.5,0,10.5,10]: IoU
    # (+1 boxes) with g1 115.5/126.5, with g2 104.5/137.5 >= 0.5, best is g1, taken -> FP (devkit), although
    # g2 is free; 0.7 exactly g2 -> TP. Sequence TP FP TP, npos 2: recall 1/2 1/2 1, precision 1 1/2 2/3.
    # 11-point: t = 0 .. .5 (6) -> 1; t = .6 .. 1 (5) -> 2/3: (6 + 10/3) / 11 = 28/33.
    # all-point: envelope 1 1 2/3 2/3 0 over mrec 0 1/2 1/2 1 1: 1/2 + 1/2 * 2/3 = 5/6.
    dets = [_det([[0, 0, 10, 10], [0.5, 0, 10.5, 10], [2, 0, 12, 10]], [0.9, 0.8, 0.7], [0, 0, 0])]
    gts = [_gt([[0, 0, 10, 10], [2, 0, 12, 10]], [0, 0])]
    ious = box_iou_voc(dets[0]["boxes"][1:2], gts[0]["boxes"])
    np.testing.assert_allclose(ious, [[115.5 / 126.5, 104.5 / 137.5]], rtol=0, atol=EXACT)
    (row,) = evaluate_voc(dets, gts, ["a"])["per_class"]
    assert (row["tp"], row["fp"]) == (2, 1) and row["ap"] == pytest.approx(28 / 33, abs=EXACT)
    (row,) = evaluate_voc(dets, gts, ["a"], use_07_metric=False)["per_class"]
    assert row["ap"] == pytest.approx(5 / 6, abs=EXACT)


def test_legacy_plus_one_flips_a_match():
    # gt [0,0,4,4], detection [0,0,2,5]. Continuous: intersection 2*4 = 8, areas 16 and 10, IoU 8/18 = 4/9 < 0.5.
    # +1 pixels: intersection 3*5 = 15, areas 25 and 18, IoU 15/28 >= 0.5.
    det, gt = [[0, 0, 2, 5]], [[0, 0, 4, 4]]
    assert box_iou_voc(det, gt, legacy_coordinate=False)[0, 0] == pytest.approx(4 / 9, abs=EXACT)
    assert box_iou_voc(det, gt, legacy_coordinate=True)[0, 0] == pytest.approx(15 / 28, abs=EXACT)
    dets, gts = [_det(det, [0.8], [0])], [_gt(gt, [0])]
    (legacy,) = evaluate_voc(dets, gts, ["a"], legacy_coordinate=True)["per_class"]
    (plain,) = evaluate_voc(dets, gts, ["a"], legacy_coordinate=False)["per_class"]
    assert (legacy["tp"], legacy["fp"], legacy["ap"]) == (1, 0, 1.0)
    assert (plain["tp"], plain["fp"], plain["ap"]) == (0, 1, 0.0)
    # disjoint boxes do not overlap in either convention (the +1 intersection needs both sides > 0)
    assert box_iou_voc([[0, 0, 4, 4]], [[5, 0, 9, 4]], True)[0, 0] == 0.0


def test_no_ground_truth_at_all_and_errors():
    res = evaluate_voc([_det([[0, 0, 1, 1]], [0.5], [0])], [_gt([], [])], ["a"])
    assert res["mAP"] == 0.0 and res["per_class"][0]["ap"] is None
    with pytest.raises(ValueError, match="1 detection entries but 2"):
        evaluate_voc([_det([], [], [])], [_gt([], []), _gt([], [])], ["a"])
    with pytest.raises(ValueError, match=r"image #0 detections: label 3 outside 0\.\.1"):
        evaluate_voc([_det([[0, 0, 1, 1]], [0.5], [3])], [_gt([], [])], ["a", "b"])
    with pytest.raises(ValueError, match="iou_thr"):
        evaluate_voc([], [], ["a"], iou_thr=0.0)
    with pytest.raises(ValueError, match="image #0 has no 'scores'"):
        evaluate_voc([{"boxes": np.zeros((0, 4)), "labels": np.zeros(0)}], [_gt([], [])], ["a"])
    with pytest.raises(ValueError, match=r"shape \[k, 4\]"):
        evaluate_voc([_det([], [], [])], [{"boxes": np.zeros((2, 3)), "labels": np.zeros(2)}], ["a"])


def test_records_and_coco_dicts_give_the_same_inputs():
    dets, gts = _toy()
    ref = evaluate_voc(dets, gts, ["a", "b", "c"])
    records = [
        SimpleNamespace(
            boxes=g["boxes"], labels=g["labels"], crowd_boxes=g["difficult_boxes"], crowd_labels=g["difficult_labels"]
        )
        for g in gts
    ]
    assert evaluate_voc(dets, voc_ground_truths(records), ["a", "b", "c"]) == ref
    cat_ids = [5, 7, 9]
    coco_gt = {"images": [{"id": 11}, {"id": 12}], "annotations": []}
    results = []
    for image_id, g, d in zip((11, 12), gts, dets):
        for boxes, labels, crowd in ((g["boxes"], g["labels"], 0), (g["difficult_boxes"], g["difficult_labels"], 1)):
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
                ann = {"image_id": image_id, "category_id": cat_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1]}
                coco_gt["annotations"].append({**ann, "iscrowd": crowd})
        for (x1, y1, x2, y2), s, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            results.append(
                {"image_id": image_id, "category_id": cat_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            )
    coco_dets, coco_gts = voc_inputs_from_coco(coco_gt, results, cat_ids)
    assert evaluate_voc(coco_dets, coco_gts, ["a", "b", "c"]) == ref


def test_format_voc_table():
    dets, gts = _toy()
    text = format_voc_table(evaluate_voc(dets, gts, ["a", "b", "c"]))
    lines = text.splitlines()
    assert lines[0] == "VOC07 (11-point AP, IoU 0.5, difficult ignored, +1 pixel boxes)"
    assert lines[1].split() == ["class", "gts", "dets", "recall", "ap"]
    assert lines[2].split() == ["a", "3", "6", "1.000", f"{41 / 55:.3f}"]
    assert lines[3].split() == ["b", "1", "0", "0.000", "0.000"]
    assert lines[4].split() == ["c", "0", "1", "-", "-"]
    assert lines[5].split() == ["mAP", f"{41 / 110:.3f}"]
