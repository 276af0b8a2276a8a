"""Score-vs-IoU calibration metrics of toy sets against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from varifocal.evaluation.report import calibration, calibration_stats, match_detections, pearson, spearman
from varifocal.evaluation.report.calibration import average_ranks

from ._toys import A, B, coco


def test_stats_of_four_pairs():
    s = calibration_stats(np.array([0.95, 0.85, 0.55, 0.52]), np.array([0.9, 0.8, 0.7, 0.6]))
    # bins [0.5,0.6): (0.55,0.7),(0.52,0.6) -> means 0.535 / 0.65; [0.8,0.9): 0.85/0.8; [0.9,1]: 0.95/0.9
    assert s["ece"] == pytest.approx((2 * 0.115 + 0.05 + 0.05) / 4)
    assert s["pearson"] == pytest.approx(0.0795 / math.sqrt(0.138675 * 0.05))
    assert s["spearman"] == pytest.approx(1.0)  # same order
    assert [b["count"] for b in s["bins"]] == [0, 0, 0, 0, 0, 2, 0, 0, 1, 1]
    assert s["bins"][5]["mean_score"] == pytest.approx(0.535) and s["bins"][5]["mean_iou"] == pytest.approx(0.65)
    assert s["bins"][0]["mean_score"] is None and s["count"] == 4


def test_spearman_uses_average_ranks_for_ties():
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0])), [2.5, 1.0, 2.5])
    # ranks x [1, 2.5, 2.5, 4], y [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 3, 2, 4])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert pearson(np.array([1.0, 1.0]), np.array([1.0, 2.0])) is None  # constant input
    assert spearman(np.array([1.0]), np.array([1.0])) is None


def test_calibration_of_matched_detections_overall_and_per_class():
    gt, res = coco(
        [(1, A, [0, 0, 10, 10]), (1, A, [50, 0, 10, 10]), (1, B, [100, 0, 10, 10])],
        [
            (1, A, [0, 0, 10, 10], 0.9),  # IoU 1
            (1, A, [51, 0, 10, 10], 0.7),  # IoU 9/11
            (1, B, [102, 0, 10, 10], 0.65),  # IoU 8/12
            (1, A, [300, 0, 10, 10], 0.8),  # FP: not in the calibration
        ],
    )
    cal = calibration(match_detections(gt, res, [A, B]), [A, B], ["cat", "dog"])
    ov, pa, pb = cal["overall"], cal["per_class"][0], cal["per_class"][1]
    assert ov["count"] == 3 and pa["count"] == 2 and pb["count"] == 1
    assert ov["mean_iou"] == pytest.approx((1 + 9 / 11 + 2 / 3) / 3)
    # bins: 0.9 -> [0.9,1] (IoU 1); 0.7 -> [0.7,0.8) (9/11); 0.65 -> [0.6,0.7) (2/3)
    assert ov["ece"] == pytest.approx((0.1 + abs(0.7 - 9 / 11) + abs(0.65 - 2 / 3)) / 3)
    assert (
        pa["name"] == "cat"
        and pa["spearman"] == pytest.approx(1.0)
        and pa["ece"] == pytest.approx((0.1 + (9 / 11 - 0.7)) / 2)
    )
    assert pb["pearson"] is None and pb["ece"] == pytest.approx(abs(0.65 - 2 / 3))
    assert ov["spearman"] == pytest.approx(1.0)  # scores 0.9 > 0.7 > 0.65 rank like IoUs 1 > 0.82 > 0.67
