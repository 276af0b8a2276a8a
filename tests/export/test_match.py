"""The detection matching of the parity check (varifocal.export.check.match_detections)."""

from __future__ import annotations

import numpy as np

from varifocal.export.check import match_detections
from varifocal.export.graph import to_image_detections


def _det(boxes, scores, labels):
    return {"boxes": np.array(boxes, np.float32), "scores": np.array(scores, np.float32), "labels": np.array(labels)}


def test_match_counts_and_diffs():
    ref = _det([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [0.9, 0.8, 0.7], [0, 1, 2])
    # first: same box shifted 0.01 px (IoU 0.998), score +2e-5; second: other label; third: IoU 0.81
    other = _det([[0.01, 0, 10.01, 10], [20, 20, 30, 30], [41, 41, 51, 51]], [0.90002, 0.8, 0.7], [0, 2, 2])
    m = match_detections(ref, other)
    assert m["n_ref"] == m["n_other"] == 3
    assert m["matched"] == 1
    assert abs(m["max_box_diff"] - 0.01) < 1e-6
    assert abs(m["max_score_diff"] - 2e-5) < 1e-6
    assert m["excused"] == 0


def test_near_tie_at_the_cut_is_excused():
    # Both lists full (max_per_img=2): the 2nd detection differs, its score ties the cut.
    ref = _det([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.5], [0, 0])
    other = _det([[0, 0, 10, 10], [60, 60, 70, 70]], [0.9, 0.50000003], [0, 0])
    m = match_detections(ref, other, max_per_img=2)
    assert m["matched"] == 1 and m["excused"] == 2
    assert match_detections(ref, other, max_per_img=None)["excused"] == 0


def test_to_image_detections_clips_and_rescales():
    det = _det([[-4, 2, 100, 50], [90, 10, 120, 20]], [0.9, 0.8], [1, 0])
    out = to_image_detections(det, img_shape=(40, 80), scale_factor=(0.5, 0.25))
    # box 0: x clipped to [0, 80], y to [0, 40], then x / 0.5, y / 0.25; box 1 starts right of the image: empty
    np.testing.assert_allclose(out["boxes"], [[0, 8, 160, 160]])
    assert out["labels"].tolist() == [1]
