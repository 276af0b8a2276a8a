"""The ``varifocal`` command: one-line errors, non-zero exits, outputs left untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


import varifocal
from varifocal.cli.main import main

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO / "data" / "bccd"


def test_info_checks_the_deformable_conv(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch 2.14.1" in out and "deformable conv (torchvision, cpu): ok" in out


def test_unknown_override_key_suggests(capsys, tmp_path):
    assert main(["train", "train.epoch=3", "train.out_dir=" + str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'train.epochs'" in err


def test_checkpoint_of_other_class_count_fails_without_touching_outputs(capsys, tmp_path):
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=5, scale=[128, 96])
    ckpt = tmp_path / "five.pth"
    varifocal.save_checkpoint(ckpt, model, model_name="vfnet_lite0_fpn", model_kwargs={"num_classes": 5, "scale": [128, 96]})
    out_dir = tmp_path / "val"
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text('{"old": true}')
    args = ["val", f"data.root={BCCD}", "data.val_ann=annotations/instances_val.json", "data.val_images=JPEGImages",
            "model.num_classes=3", "model.test_scale=[128,96]", "--checkpoint", str(ckpt), "--out-dir", str(out_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(ckpt) in err and "5 classes" in err
    assert json.loads((out_dir / "metrics.json").read_text()) == {"old": True}


def test_predict_on_a_truncated_image_names_the_file(capsys, tmp_path):
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96])
    ckpt = tmp_path / "m.pth"
    varifocal.save_checkpoint(ckpt, model, model_name="vfnet_lite0_fpn", model_kwargs={"num_classes": 3, "scale": [128, 96]})
    bad = tmp_path / "broken.jpg"
    data = (BCCD / "JPEGImages" / "BloodImage_00000.jpg").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    assert main(["predict", str(bad), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.jpg" in err
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_predict_writes_json_and_drawings(tmp_path):
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96], score_thr=0.0)
    model.class_names = ["RBC", "WBC", "Platelets"]
    ckpt = tmp_path / "m.pth"
    varifocal.save_checkpoint(ckpt, model, model_name="vfnet_lite0_fpn",
                              model_kwargs={"num_classes": 3, "scale": [128, 96], "score_thr": 0.0})
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(BCCD / "JPEGImages" / "BloodImage_00000.jpg", src)
    assert main(["predict", str(src), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"), "--score-thr", "0.0"]) == 0
    pred = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert pred["class_names"] == ["RBC", "WBC", "Platelets"] and len(pred["images"]) == 1
    dets = pred["images"][0]["detections"]
    assert dets and all(0 <= d["bbox_xyxy"][2] <= 640 and 0 <= d["bbox_xyxy"][3] <= 480 for d in dets)
    from PIL import Image

    assert Image.open(tmp_path / "out" / "BloodImage_00000.png").size == (640, 480)


def test_convert_command(tmp_path, capsys):
    from .conftest import shared_path

    src = shared_path("golden", "vfnet_r50_coco80", "checkpoint.pth")
    assert main(["convert", str(src), str(tmp_path / "r50.pth")]) == 0
    assert "vfnet_r50_fpn, 80 classes" in capsys.readouterr().out
    assert varifocal.checkpoint.read_checkpoint(tmp_path / "r50.pth")["model_name"] == "vfnet_r50_fpn"
