"""TIDE breakdown of a toy scene: every error type recovers its hand-computed ΔAP.

The hand values below were also reproduced with tidecv 1.0.1 (in a throwaway venv): its
fix_main_errors / fix_special_errors gave the same numbers (x100).
"""

from __future__ import annotations

import numpy as np
import pytest

from varifocal.evaluation.report import coco_ap, tide_errors

from ._toys import TIDE_DETS, TIDE_GTS, A, B, coco


def test_coco_ap_101_points():
    # T F F T with 2 gt: precision envelope 1 up to recall 0.5, then 0.5 -> (51 + 50 * 0.5) / 101
    assert coco_ap(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 0, 1], bool), 2) == pytest.approx(76 / 101)
    assert coco_ap(np.array([]), np.array([], bool), 3) == 0.0
    assert coco_ap(np.array([0.5]), np.array([False]), 0) is None


def test_each_error_type_recovers_the_hand_computed_delta_ap():
    gt, res = coco(TIDE_GTS, TIDE_DETS)
    t = tide_errors(gt, res, [A, B])
    # class A, score order d1 T, d2 F, d5 F, d9 F, d4 F, d8 T with 5 gt: AP_A = (21 + 20/3) / 101
    # class B, d6 F, d7 T, d3 F with 1 gt: AP_B = 1/2
    ap_a = 83 / 303
    assert t["ap"] == pytest.approx((ap_a + 0.5) / 2)
    expected = {
        "Cls": (901 / 2121 - ap_a) / 2,  # d3 -> TP of A at 0.8: (21 + 40/3 + 60/7) / 101
        "Loc": (123 / 303 - ap_a) / 2,  # d4 -> TP, recall 0.6: (21 + 40 * 0.5) / 101
        "Both": 0.25,  # d6 removed: AP_B 1/2 -> 1
        "Dupe": (87 / 303 - ap_a) / 2,  # d2 removed: (21 + 20 * 0.4) / 101
        "Bkg": (93 / 303 - ap_a) / 2,  # d5, d9 removed: (21 + 20 * 0.5) / 101
        "Miss": (103 / 303 - ap_a) / 2,  # GA4 dropped, 4 gt: (26 + 25/3) / 101
    }
    assert t["delta_ap"] == pytest.approx(expected)
    assert t["counts"] == {"Cls": 1, "Loc": 1, "Both": 1, "Dupe": 1, "Bkg": 2, "Miss": 1}
    assert t["special"]["FalsePos"] == pytest.approx((41 / 101 - ap_a + 0.5) / 2)  # only TPs kept
    assert t["special"]["FalseNeg"] == pytest.approx((203 / 303 - ap_a) / 2)  # 2 gt for A: (51 + 50/3) / 101


def test_perfect_detections_have_no_error_and_an_empty_image_is_background():
    gts = [(1, A, [0, 0, 10, 10]), (1, B, [50, 0, 10, 10])]
    gt, res = coco(gts, [(i, c, b, 0.9) for i, c, b in gts])
    t = tide_errors(gt, res, [A, B])
    assert t["ap"] == 1.0 and all(v == 0 for v in t["delta_ap"].values())
    gt["images"].append({"id": 2, "width": 100, "height": 100})
    t = tide_errors(gt, res + [{"image_id": 2, "category_id": A, "bbox": [0, 0, 5, 5], "score": 0.95}], [A, B])
    assert t["counts"]["Bkg"] == 1
    # the FP outranks class A's only TP: precision 1/2 at recall 1 -> AP_A 0.5; fixing Bkg recovers it
    assert t["ap"] == pytest.approx(0.75) and t["delta_ap"]["Bkg"] == pytest.approx(0.25)
