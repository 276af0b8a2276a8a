"""The bundled BCCD model (models/vfnet_lite0_bccd.pth) loads and finds a real white cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from varifocal.cli.main import model_from_checkpoint
from varifocal.data import load_image
from varifocal.structures.boxes import bbox_overlaps

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "vfnet_lite0_bccd.pth"


def test_bundled_model_detects_the_white_blood_cell():
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is absent")
    model = model_from_checkpoint(str(MODEL)).eval()
    assert model.class_names == ["RBC", "WBC", "Platelets"]
    ann = json.loads((REPO / "data" / "bccd" / "annotations" / "instances_val.json").read_text())
    image_info = ann["images"][0]
    gts = [a for a in ann["annotations"] if a["image_id"] == image_info["id"] and a["category_id"] == 2]
    assert gts, "the first test image has a WBC"
    x, y, w, h = gts[0]["bbox"]
    gt = torch.tensor([[x, y, x + w, y + h]])
    image = load_image(REPO / "data" / "bccd" / "JPEGImages" / image_info["file_name"])
    with torch.no_grad():
        (det,) = model([image.float()])
    wbc = det["labels"] == 1
    assert bool(wbc.any())
    best = det["scores"][wbc].argmax()
    assert float(det["scores"][wbc][best]) > 0.5
    assert float(bbox_overlaps(det["boxes"][wbc][best : best + 1], gt)[0, 0]) > 0.7
