"""faster-coco-eval as a COCOeval backend gives pycocotools' numbers (issue 15)."""

from __future__ import annotations

import pytest

from varifocal.evaluation import STAT_NAMES, CocoEvaluator

from ..conftest import shared_path
from .test_coco_eval import _realistic_detections

pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")
pytest.importorskip("faster_coco_eval", reason="the faster-coco-eval backend is not installed")


@pytest.mark.parametrize("seed", [0, 1])
def test_faster_coco_eval_equals_pycocotools_on_the_coco_subset(seed):
    ann = shared_path("data", "coco_subset", "annotations", "instances_val2017.json")
    dets = _realistic_detections(ann, seed=seed)
    ref = CocoEvaluator(ann, backend="pycocotools").evaluate(dets)
    fast = CocoEvaluator(ann, backend="faster_coco_eval").evaluate(dets)
    assert ref["backend"].startswith("pycocotools") and fast["backend"].startswith("faster_coco_eval")
    for name in STAT_NAMES:
        assert fast["stats"][name] == pytest.approx(ref["stats"][name], abs=1e-12), name
    assert 0.2 < ref["stats"]["AP"] < 0.9  # a realistic mix, not a degenerate case
    for a, b in zip(ref["per_class"], fast["per_class"]):
        assert a["name"] == b["name"] and a["num_gt"] == b["num_gt"] and a["num_dets"] == b["num_dets"]
        for key in ("AP", "AP50", "AP75"):
            assert (a[key] is None) == (b[key] is None)
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], abs=1e-12)


def test_unknown_backend_is_refused():
    ann = shared_path("data", "coco_subset", "annotations", "instances_val2017.json")
    with pytest.raises(ValueError, match="backend must be"):
        CocoEvaluator(ann, backend="cocoapi")


def test_max_dets_caps_the_detections_that_count(tmp_path):
    """20 gt boxes in one image, 20 perfect detections: with max_dets 10 only the 10 best count,
    so precision is 1 up to recall 0.5 and 0 after: AP = 51/101 (COCO's 101 recall points)."""
    boxes = [[10.0 + 30 * i, 10.0, 20.0, 20.0] for i in range(20)]
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 64}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 400.0, "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }
    dets = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - 0.01 * i} for i, b in enumerate(boxes)]
    full = CocoEvaluator(gt, backend="pycocotools").evaluate(dets)
    capped = CocoEvaluator(gt, backend="pycocotools", max_dets=10).evaluate(dets)
    assert full["stats"]["AP"] == pytest.approx(1.0) and full["max_dets"] == 100
    assert capped["stats"]["AP"] == pytest.approx(51 / 101) and capped["max_dets"] == 10
    assert capped["stats"]["AR100"] == pytest.approx(0.5)  # AR at the largest maxDets, here 10
    with pytest.raises(ValueError, match="max_dets"):
        CocoEvaluator(gt, max_dets=5)


def test_stats_at_100_detections_equal_summarize():
    """The fallback summary (used for max_dets != 100) gives COCOeval's own 12 numbers when
    asked for 100, on realistic detections."""
    import contextlib
    import io

    from varifocal.evaluation.coco_eval import _stats_at

    ann = shared_path("data", "coco_subset", "annotations", "instances_val2017.json")
    evaluator = CocoEvaluator(ann, backend="pycocotools")
    dets = _realistic_detections(ann)
    ref = evaluator.evaluate(dets)["stats"]
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(evaluator.coco_gt, evaluator.coco_gt.loadRes([dict(d) for d in dets]), "bbox")
        ev.evaluate()
        ev.accumulate()
    for name, value in zip(STAT_NAMES, _stats_at(ev)):
        assert value == pytest.approx(ref[name], abs=1e-12), name
