"""The ``varifocal`` command: one-line errors, non-zero exits, outputs left untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

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
    varifocal.save_checkpoint(
        ckpt, model, model_name="vfnet_lite0_fpn", model_kwargs={"num_classes": 5, "scale": [128, 96]}
    )
    out_dir = tmp_path / "val"
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text('{"old": true}')
    args = [
        "val",
        f"data.root={BCCD}",
        "data.val_ann=annotations/instances_val.json",
        "data.val_images=JPEGImages",
        "model.num_classes=3",
        "model.test_scale=[128,96]",
        "--checkpoint",
        str(ckpt),
        "--out-dir",
        str(out_dir),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(ckpt) in err and "5 classes" in err
    assert json.loads((out_dir / "metrics.json").read_text()) == {"old": True}


def test_predict_on_a_truncated_image_names_the_file(capsys, tmp_path):
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96])
    ckpt = tmp_path / "m.pth"
    varifocal.save_checkpoint(
        ckpt, model, model_name="vfnet_lite0_fpn", model_kwargs={"num_classes": 3, "scale": [128, 96]}
    )
    bad = tmp_path / "broken.jpg"
    data = (BCCD / "JPEGImages" / "BloodImage_00000.jpg").read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    assert main(["predict", str(bad), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.jpg" in err
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_predict_writes_json_and_drawings(tmp_path):
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96], test_cfg={"score_thr": 0.0})
    model.class_names = ["RBC", "WBC", "Platelets"]
    ckpt = tmp_path / "m.pth"
    varifocal.save_checkpoint(
        ckpt,
        model,
        model_name="vfnet_lite0_fpn",
        # the flat test kwargs of format-1 checkpoints still load (upgraded to test_cfg)
        model_kwargs={"num_classes": 3, "scale": [128, 96], "score_thr": 0.0},
    )
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(BCCD / "JPEGImages" / "BloodImage_00000.jpg", src)
    assert (
        main(["predict", str(src), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "out"), "--score-thr", "0.0"])
        == 0
    )
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


def _val_args(root: Path, ann: str, ckpt: Path, out_dir: Path) -> list[str]:
    return [
        "val",
        f"data.root={root}",
        f"data.val_ann={ann}",
        "data.val_images=JPEGImages",
        "model.num_classes=3",
        "model.test_scale=[128,96]",
        "--checkpoint",
        str(ckpt),
        "--out-dir",
        str(out_dir),
    ]


@pytest.fixture()
def lite_ckpt(tmp_path):
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96])
    ckpt = tmp_path / "m.pth"
    varifocal.save_checkpoint(
        ckpt, model, model_name="vfnet_lite0_fpn", model_kwargs={"num_classes": 3, "scale": [128, 96]}
    )
    return ckpt


@pytest.mark.parametrize("problem", ["not_json", "unknown_image", "unknown_category"])
def test_bad_annotation_file_exits_non_zero_with_one_line(problem, tmp_path, capsys, lite_ckpt):
    root = tmp_path / "bccd"
    (root / "annotations").mkdir(parents=True)
    (root / "JPEGImages").symlink_to(BCCD / "JPEGImages")
    data = json.loads((BCCD / "annotations" / "instances_val.json").read_text())
    ann = root / "annotations" / "bad.json"
    if problem == "not_json":
        ann.write_text("{'images': [")  # truncated, single quotes: not JSON
    else:
        bad = data["annotations"][5]
        bad["image_id" if problem == "unknown_image" else "category_id"] = 999999
        ann.write_text(json.dumps(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "metrics.json").write_text("previous")
    assert main(_val_args(root, "annotations/bad.json", lite_ckpt, out_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.json" in err
    if problem != "not_json":
        assert str(data["annotations"][5]["id"]) in err  # names the offending annotation
    assert (out_dir / "metrics.json").read_text() == "previous"


def test_skip_bad_images_trains_on_and_counts(tmp_path, capsys):
    from .engine.test_trainer import tiny_config

    cfg = tiny_config(tmp_path, "skip", epochs=1)
    images = tmp_path / "images"
    images.mkdir()
    ann = json.loads((tmp_path / "tiny.json").read_text())
    for im in ann["images"]:
        shutil.copy(BCCD / "JPEGImages" / im["file_name"], images)
    broken = images / ann["images"][2]["file_name"]
    broken.write_bytes(broken.read_bytes()[:5000])
    args = ["train", str(cfg), f"data.train_images={images}", f"data.val_images={images}"]
    assert main(args) == 2  # without the flag: a one-line error naming the file
    err = capsys.readouterr().err.strip()
    assert broken.name in err and err.count("\n") == 0
    assert main(args + ["--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 bad images" in out and "done: 1 epochs" in out
