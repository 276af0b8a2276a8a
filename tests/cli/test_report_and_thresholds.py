"""``val --report``, the training run's final report, and ``--score-thr best`` (issue 15)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from varifocal.checkpoint import read_checkpoint
from varifocal.cli.main import main
from varifocal.cli.thresholds import keep_mask, resolve_score_thr, score_thr_arg

pytest.importorskip("matplotlib", reason="the report needs matplotlib")

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"
ANN = BCCD / "annotations" / "instances_val.json"
JPG = BCCD / "JPEGImages" / "BloodImage_00000.jpg"


def _shifted_gt_as_predictions(path: Path, score_of) -> Path:
    """The BCCD test ground truth as predictions, each box shifted right by 10 % of its width
    (IoU 9/11 with its gt), with a score given by ``score_of(annotation)``."""
    gt = json.loads(ANN.read_text())
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + 0.1 * a["bbox"][2], *a["bbox"][1:]],
            "score": score_of(a),
        }
        for a in gt["annotations"]
    ]
    path.write_text(json.dumps(dets))
    return path


def test_val_report_of_a_predictions_file(tmp_path, capsys):
    preds = _shifted_gt_as_predictions(tmp_path / "p.json", lambda a: 0.9)
    out = tmp_path / "val"
    assert main(["val", "--predictions", str(preds), "--ann", str(ANN), "--out-dir", str(out), "--report"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # every detection matches its gt at IoU 9/11 > 0.5: F1 1 at threshold 0.9 for each class
    assert metrics["best_score_thr"] == {"RBC": 0.9, "WBC": 0.9, "Platelets": 0.9}
    cal = metrics["report"]["calibration"]
    assert cal["count"] == 945 and cal["mean_iou"] == pytest.approx(9 / 11, abs=1e-6)
    assert cal["ece"] == pytest.approx(0.9 - 9 / 11, abs=1e-6)
    for name in ("report.html", "report.md", "pr_curves.png", "confusion_matrix.png", "calibration.png", "tide.png"):
        assert (out / "report" / name).stat().st_size > 500, name
    text = capsys.readouterr().out
    assert "best-F1 score thresholds (IoU 0.5): RBC 0.900, WBC 0.900, Platelets 0.900" in text


def test_predict_with_per_class_thresholds_from_a_metrics_file(tmp_path, capsys):
    ckpt = REPO / "models" / "vfnet_lite0_bccd.pth"  # the bundled model: real detections
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} is absent")
    assert (
        main(
            [
                "predict",
                str(JPG),
                "--checkpoint",
                str(ckpt),
                "--score-thr",
                "0",
                "--out-dir",
                str(tmp_path / "all"),
                "--no-draw",
            ]
        )
        == 0
    )
    every = json.loads((tmp_path / "all" / "predictions.json").read_text())["images"][0]["detections"]
    assert len(every) > 10
    scores = sorted(d["score"] for d in every if d["class_name"] == "WBC")
    thr = {"RBC": None, "WBC": scores[len(scores) // 2], "Platelets": 0.0}  # RBC: no true positive → none kept
    (tmp_path / "metrics.json").write_text(json.dumps({"best_score_thr": thr}))
    out = tmp_path / "best"
    args = ["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(out), "--no-draw"]
    assert main([*args, "--score-thr", str(tmp_path / "metrics.json")]) == 0
    result = json.loads((out / "predictions.json").read_text())
    kept = result["images"][0]["detections"]
    expected = [
        d for d in every if d["class_name"] == "Platelets" or (d["class_name"] == "WBC" and d["score"] >= thr["WBC"])
    ]
    assert sorted(d["score"] for d in kept) == sorted(d["score"] for d in expected)
    assert result["score_thr_per_class"] == thr
    # 'best' needs thresholds saved in the checkpoint: one line naming the fix
    capsys.readouterr()
    assert main([*args, "--score-thr", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "has no saved per-class thresholds" in err and "--report" in err


def test_keep_mask_and_argument_parsing(tmp_path):
    scores, labels = torch.tensor([0.2, 0.5, 0.5, 0.9]), torch.tensor([0, 0, 1, 1])
    assert keep_mask(scores, labels, 0.5).tolist() == [False, False, False, True]  # one number: strictly above
    assert keep_mask(scores, labels, [0.5, 0.6]).tolist() == [False, True, False, True]  # per class: at or above
    assert keep_mask(scores, labels, [math.inf, 0.0]).tolist() == [False, False, True, True]
    assert score_thr_arg("0.25") == 0.25 and score_thr_arg("best") == "best"
    for bad in ("1.5", "nan", "high", str(tmp_path / "missing.json")):
        with pytest.raises(argparse.ArgumentTypeError):
            score_thr_arg(bad)
    with pytest.raises(ValueError, match="no threshold for class"):
        resolve_score_thr("best", ["a", "b"], {"best_score_thr": {"a": 0.5}}, "m.pth")


def test_training_ends_with_a_report_and_thresholds_in_the_checkpoint(tmp_path):
    from ..engine.test_trainer import tiny_config

    cfg = tiny_config(tmp_path, "run", epochs=1, eval_interval=1)
    assert main(["train", str(cfg), "train.lr=0.001"]) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["best_score_thr"]) == {"RBC", "WBC", "Platelets"}
    for name in ("report/report.html", "report/pr_curves.png", "loss_curves.png", "ap_curves.png"):
        assert (run / name).is_file(), name
    meta = read_checkpoint(run / "last.pth")["raw"]["meta"]
    assert meta["best_score_thr"] == metrics["best_score_thr"]
