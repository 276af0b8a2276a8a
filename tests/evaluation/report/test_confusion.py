"""Confusion matrix of a toy scene: a misclassified box, a duplicate, a miss, a background detection."""

from __future__ import annotations

import numpy as np
import pytest

from varifocal.evaluation.report import confusion_matrix

from ._toys import A, B, coco

GTS = [(1, A, [0, 0, 10, 10]), (1, B, [100, 0, 10, 10]), (1, A, [200, 0, 10, 10]), (1, B, [300, 0, 10, 10])]
DETS = [
    (1, A, [0, 0, 10, 10], 0.9),  # TP A
    (1, A, [1, 0, 10, 10], 0.8),  # duplicate of the A gt (IoU 9/11) -> background row, column A
    (1, A, [100, 0, 10, 10], 0.7),  # true B predicted A
    (1, B, [500, 500, 10, 10], 0.6),  # on background -> background row, column B
    (1, B, [300, 0, 10, 10], 0.95),  # TP B
    (1, A, [200, 0, 10, 10], 0.2),  # below score 0.5: the A gt at x=200 is missed
]


def test_counts_and_row_normalised():
    gt, res = coco(GTS, DETS)
    cm = confusion_matrix(gt, res, [A, B], iou_thr=0.5, score_thr=0.5)
    # rows: true A, true B, background; columns: predicted A, predicted B, background (missed)
    np.testing.assert_array_equal(cm.counts, [[1, 0, 1], [1, 1, 0], [1, 1, 0]])
    np.testing.assert_allclose(cm.normalized, [[0.5, 0, 0.5], [0.5, 0.5, 0], [0.5, 0.5, 0]])
    assert cm.score_thr == {A: 0.5, B: 0.5}


def test_score_threshold_per_class_and_lower():
    gt, res = coco(GTS, DETS)
    cm = confusion_matrix(gt, res, [A, B], score_thr={A: 0.1, B: 0.5})
    np.testing.assert_array_equal(cm.counts, [[2, 0, 0], [1, 1, 0], [1, 1, 0]])  # the 0.2 det finds the gt
    cm = confusion_matrix(gt, res, [A, B], score_thr=0.96)  # nothing kept: every gt missed
    np.testing.assert_array_equal(cm.counts, [[0, 0, 2], [0, 0, 2], [0, 0, 0]])
    with pytest.raises(ValueError, match="no threshold for categories \\[2\\]"):
        confusion_matrix(gt, res, [A, B], score_thr={A: 0.1})


def test_same_class_match_wins_over_a_better_overlapping_wrong_class():
    # B det overlaps the A gt better (IoU 1) than the A det (IoU 9/11): the A det is the match,
    # the B det is a background false positive (step 1 before step 2)
    gt, res = coco([(1, A, [0, 0, 10, 10])], [(1, B, [0, 0, 10, 10], 0.9), (1, A, [1, 0, 10, 10], 0.6)])
    cm = confusion_matrix(gt, res, [A, B], score_thr=0.5)
    np.testing.assert_array_equal(cm.counts, [[1, 0, 0], [0, 0, 0], [0, 1, 0]])
