"""PR / F1 curves and the best-F1 threshold of toy sets against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from varifocal.data.errors import DataError
from varifocal.evaluation.report import best_f1, match_detections, pr_curve

from ._toys import coco

# 3 gts of class 1 in two images; det d has IoU 70/130 with G2 (TP at 0.5, FP at 0.75), e duplicates G3.
GTS = [(1, 1, [0, 0, 10, 10]), (1, 1, [20, 0, 10, 10]), (2, 1, [0, 0, 10, 10])]
DETS = [
    (1, 1, [0, 0, 10, 10], 0.9),  # a: TP
    (1, 1, [50, 50, 10, 10], 0.8),  # b: FP
    (2, 1, [0, 0, 10, 10], 0.8),  # c: TP (score tied with b)
    (1, 1, [23, 0, 10, 10], 0.6),  # d: IoU 0.538
    (2, 1, [0, 0, 10, 10], 0.3),  # e: duplicate -> FP
]


def test_pr_curve_and_best_f1_at_iou_05():
    gt, res = coco(GTS, DETS)
    c = pr_curve(match_detections(gt, res, [1, 2], 0.5), 1)
    np.testing.assert_array_equal(c.score, [0.9, 0.8, 0.6, 0.3])  # tied 0.8 scores enter together
    np.testing.assert_array_equal(c.tp, [1, 2, 3, 3])
    np.testing.assert_array_equal(c.fp, [0, 1, 1, 2])
    np.testing.assert_allclose(c.precision, [1, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(c.recall, [1 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(c.f1, [0.5, 2 / 3, 6 / 7, 0.75])
    b = best_f1(c)
    assert b["score_thr"] == 0.6 and b["tp"] == 3 and b["fp"] == 1
    assert b["f1"] == pytest.approx(6 / 7) and b["precision"] == 0.75 and b["recall"] == 1.0


def test_pr_curve_at_iou_075():
    gt, res = coco(GTS, DETS)
    c = pr_curve(match_detections(gt, res, [1, 2], 0.75), 1)
    np.testing.assert_allclose(c.f1, [0.5, 2 / 3, 4 / 7, 0.5])
    b = best_f1(c)
    assert b["score_thr"] == 0.8 and b["f1"] == pytest.approx(2 / 3)


def test_best_f1_tie_takes_the_highest_score():
    # 2 gts: F1(0.9) = 2/3 (P 1, R 1/2) equals F1(0.6) = 2/3 (P 1/2, R 1)
    gt, res = coco(
        [(1, 1, [0, 0, 10, 10]), (1, 1, [50, 0, 10, 10])],
        [
            (1, 1, [0, 0, 10, 10], 0.9),
            (1, 1, [200, 0, 5, 5], 0.8),
            (1, 1, [300, 0, 5, 5], 0.7),
            (1, 1, [50, 0, 10, 10], 0.6),
        ],
    )
    c = pr_curve(match_detections(gt, res, [1]), 1)
    assert c.f1[0] == pytest.approx(c.f1[3])
    assert best_f1(c)["score_thr"] == 0.9


def test_no_tp_or_no_gt_gives_no_threshold():
    gt, res = coco([(1, 1, [0, 0, 10, 10])], [(1, 2, [0, 0, 10, 10], 0.9)])
    m = match_detections(gt, res, [1, 2])
    assert best_f1(pr_curve(m, 1)) == {"score_thr": None, "f1": 0.0, "precision": 0.0, "recall": 0.0, "tp": 0, "fp": 0}
    assert best_f1(pr_curve(m, 2))["score_thr"] is None  # class 2 has no gt


def test_crowd_region_detection_is_ignored_like_cocoeval():
    # det inside the crowd box (intersection / det area = 1) is neither TP nor FP
    gt, res = coco(
        [(1, 1, [0, 0, 10, 10]), (1, 1, [100, 100, 50, 50])],
        [(1, 1, [110, 110, 10, 10], 0.95), (1, 1, [0, 0, 10, 10], 0.9), (1, 1, [400, 400, 10, 10], 0.5)],
        crowd=(1,),
    )
    m = match_detections(gt, res, [1])
    assert m.num_gt == {1: 1}
    np.testing.assert_array_equal(m.ignored, [True, False, False])
    np.testing.assert_array_equal(m.tp, [False, True, False])
    c = pr_curve(m, 1)
    np.testing.assert_array_equal(c.score, [0.9, 0.5])
    np.testing.assert_allclose(c.precision, [1.0, 0.5])


def test_bad_results_raise_a_one_line_data_error():
    gt, res = coco([(1, 1, [0, 0, 10, 10])], [(1, 1, [0, 0, 10, 10], 0.9)])
    with pytest.raises(DataError, match="detection #0 has image_id 7"):
        match_detections(gt, [{**res[0], "image_id": 7}], [1])
    with pytest.raises(DataError, match="detection #0 has bbox"):
        match_detections(gt, [{**res[0], "bbox": [0, 0, float("nan"), 1]}], [1])
    with pytest.raises(DataError, match="ground truth"):
        match_detections({"images": []}, res, [1])
