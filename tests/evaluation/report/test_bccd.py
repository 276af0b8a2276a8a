"""The report analyses at real scale: BCCD test ground truth (72 images, 945 boxes) with
ground-truth boxes as detections, so the answers are known."""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

from varifocal.evaluation.report import (
    best_f1,
    calibration,
    coco_ap,
    confusion_matrix,
    match_detections,
    pr_curves,
    tide_errors,
)

ANN = Path(__file__).resolve().parents[3] / "data" / "bccd" / "annotations" / "instances_val.json"


@pytest.fixture(scope="module")
def bccd():
    if not ANN.is_file():
        pytest.skip(f"{ANN} is absent")
    gt = json.loads(ANN.read_text())
    return gt, [c["id"] for c in gt["categories"]]


def _as_dets(gt, score, dx=0.0):
    """Every gt box as a detection, shifted right by ``dx`` of its width (IoU (1-dx)/(1+dx))."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "score": score,
         "bbox": [a["bbox"][0] + dx * a["bbox"][2], *a["bbox"][1:]]}
        for a in gt["annotations"]
    ]  # fmt: skip


def test_exact_copies_are_perfect_and_fast(bccd):
    gt, cats = bccd
    res = _as_dets(gt, 0.9)
    t0 = time.perf_counter()
    m = match_detections(gt, res, cats, 0.5)
    curves = pr_curves(m, cats)
    cm = confusion_matrix(gt, res, cats, 0.5, 0.5)
    tide = tide_errors(gt, res, cats)
    cal = calibration(m, cats)
    pr_curves(match_detections(gt, res, cats, 0.75), cats)
    assert time.perf_counter() - t0 < 2.0
    n = {c: sum(a["category_id"] == c for a in gt["annotations"]) for c in cats}
    assert sum(n.values()) == 945
    for c in curves:
        assert best_f1(c) == {
            "score_thr": 0.9,
            "f1": 1.0,
            "precision": 1.0,
            "recall": 1.0,
            "tp": n[c.category_id],
            "fp": 0,
        }
    np.testing.assert_array_equal(cm.counts, np.diag([*n.values(), 0]))
    assert tide["ap"] == 1.0 and sum(tide["delta_ap"].values()) == 0 and sum(tide["counts"].values()) == 0
    ov = cal["overall"]
    assert ov["count"] == 945 and ov["mean_iou"] == pytest.approx(1.0) and ov["ece"] == pytest.approx(0.1)


def test_shifted_copies_have_the_predicted_iou(bccd):
    gt, cats = bccd
    res = _as_dets(gt, 0.8, dx=0.1)  # IoU 0.9 / 1.1 = 9/11 with its own gt
    m = match_detections(gt, res, cats, 0.5)
    assert m.tp.all()
    cal = calibration(m, cats)
    # a shifted box may take a neighbour of higher IoU in a dense RBC cluster: the IoU is then >= 9/11
    assert cal["overall"]["mean_iou"] == pytest.approx(9 / 11, abs=2e-3) and m.iou.min() >= 9 / 11 - 1e-9
    res = _as_dets(gt, 0.8, dx=0.25)  # IoU 0.6: a TP at 0.5, an FP at 0.75
    f1_75 = [best_f1(c)["f1"] for c in pr_curves(match_detections(gt, res, cats, 0.75), cats)]
    assert max(f1_75) < 0.05  # only chance overlaps with neighbours remain


def test_ap50_equals_pycocotools_on_noisy_detections(bccd):
    gt, cats = bccd
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    res = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        j = rng.normal(0, 0.15, 4)
        res.append({"image_id": a["image_id"], "category_id": int(rng.choice(cats)) if rng.random() < 0.1 else a["category_id"],
                    "bbox": [x + j[0] * w, y + j[1] * h, w * (1 + j[2]), h * (1 + j[3])], "score": float(rng.random())})  # fmt: skip
    m = match_detections(gt, res, cats, 0.5)
    ours = np.mean(
        [coco_ap(m.score[s], m.tp[s], m.num_gt[c]) for c in cats for s in [(m.category_id == c) & ~m.ignored]]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        e = COCOeval(coco_gt, coco_gt.loadRes(res), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    assert 0.2 < ours < 0.95
    assert ours == pytest.approx(e.stats[1], abs=1e-12)
