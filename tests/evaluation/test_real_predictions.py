"""Our COCO metrics equal plain pycocotools' on real model predictions (the bundled BCCD model
on held-out BCCD test images)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from varifocal.cli.main import model_from_checkpoint
from varifocal.data import CocoDetection, build_test_transforms
from varifocal.engine.trainer import run_inference
from varifocal.evaluation import CocoEvaluator, detections_to_coco

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "vfnet_lite0_bccd.pth"
ANN = REPO / "data" / "bccd" / "annotations" / "instances_val.json"


def test_metrics_equal_pycocotools_on_real_predictions():
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is absent")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    model = model_from_checkpoint(str(MODEL))
    dataset = CocoDetection(REPO / "data" / "bccd" / "JPEGImages", ANN, build_test_transforms((640, 480)))
    dataset.records = dataset.records[:8]
    detections, image_ids = run_inference(model, dataset, torch.device("cpu"))
    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    assert len(results) > 100  # a real, non-trivial predictions file

    evaluator = CocoEvaluator(str(ANN), dataset.class_names, dataset.cat_ids, backend="pycocotools")
    ours = evaluator.evaluate(results, image_ids=image_ids)

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ANN))
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert np.allclose([ours["stats"][k] for k in ours["stats"]], ev.stats, atol=0, rtol=0)
    assert ours["stats"]["AP50"] > 0.8  # and the bundled model is good on these images
