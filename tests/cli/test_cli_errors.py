"""What a user can get wrong ends with one line on stderr and exit 2 (input) or 1 (other);
Ctrl-C in predict keeps what was finished and exits 130; only a bug prints a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import varifocal
from varifocal.cli import predict as predict_module
from varifocal.cli.main import main

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"
JPG = BCCD / "JPEGImages" / "BloodImage_00000.jpg"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def save_lite(path: Path, model_name: str = "vfnet_lite0_fpn", **kwargs) -> Path:
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96])
    varifocal.save_checkpoint(
        path, model, model_name=model_name, model_kwargs={"num_classes": 3, "scale": [128, 96], **kwargs}
    )
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_lite(tmp_path_factory.mktemp("ckpt") / "m.pth", test_cfg={"score_thr": 0.2})


@pytest.fixture()
def train_cfg(tmp_path) -> Path:
    from ..engine.test_trainer import tiny_config

    return tiny_config(tmp_path, "run", epochs=1)


# ------------------------------------------------------------------------------ train
@pytest.mark.parametrize("case", ["zero_images", "no_boxes"])
def test_empty_training_set(case, tmp_path, capsys, train_cfg):
    ann = json.loads((tmp_path / "tiny.json").read_text())
    ann["annotations"] = []
    if case == "zero_images":
        ann["images"] = []
    (tmp_path / "empty.json").write_text(json.dumps(ann))
    assert main(["train", str(train_cfg), f"data.train_ann={tmp_path / 'empty.json'}", "data.drop_empty=false"]) == 2
    err = one_line_error(capsys)
    assert "empty.json" in err and ("no images" if case == "zero_images" else "no boxes") in err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_unknown_model_name_in_config(capsys, train_cfg):
    assert main(["train", str(train_cfg), "model.name=vfnet_lite0_fpm"]) == 2
    err = one_line_error(capsys)
    assert "model.name='vfnet_lite0_fpm'" in err and "vfnet_lite0_fpn" in err


def test_missing_pretrained_backbone_file(tmp_path, capsys, train_cfg):
    assert main(["train", str(train_cfg), f"model.pretrained_backbone={tmp_path / 'nope.pth'}"]) == 2
    assert "model.pretrained_backbone=" in one_line_error(capsys)


def test_resume_from_an_inference_only_checkpoint(tmp_path, capsys, train_cfg):
    (tmp_path / "run").mkdir()
    save_lite(tmp_path / "run" / "last.pth")
    assert main(["train", str(train_cfg), "--resume"]) == 2
    err = one_line_error(capsys)
    assert "last.pth" in err and "inference-only" in err and "model.load_from=" in err


def test_train_out_dir_that_is_a_file(tmp_path, capsys, train_cfg):
    (tmp_path / "file").write_text("x")
    assert main(["train", str(train_cfg), f"train.out_dir={tmp_path / 'file'}"]) == 2
    assert "train.out_dir" in one_line_error(capsys)


# ------------------------------------------------------------------------------ checkpoints
def test_unknown_model_name_in_checkpoint(tmp_path, capsys):
    bad = save_lite(tmp_path / "renamed.pth", model_name="vfnet_lite9_fpn")
    assert main(["predict", str(JPG), "--checkpoint", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "renamed.pth" in err and "vfnet_lite9_fpn" in err


def test_checkpoint_with_an_unknown_builder_argument(tmp_path, capsys):
    bad = save_lite(tmp_path / "future.pth", head_option_from_the_future=1)
    assert main(["predict", str(JPG), "--checkpoint", str(bad), "--out-dir", str(tmp_path / "o")]) == 2
    err = one_line_error(capsys)
    assert "future.pth" in err and "'head_option_from_the_future'" in err


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "extra",
    [["--score-thr", "2"], ["--score-thr", "nan"], ["--score-thr", "inf"], ["--device", "cuda:x"], ["--device", "gpu"]],
)
def test_bad_numeric_and_device_arguments(extra, tmp_path, capsys, ckpt):
    assert main(["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path), *extra]) == 2
    err = one_line_error(capsys)
    assert extra[0] in err and extra[1] in err
    assert not (tmp_path / "predictions.json").exists()


def test_val_rejects_a_negative_draw_count(capsys):
    assert main(["val", "--checkpoint", "m.pth", "--draw", "-1"]) == 2
    assert "--draw" in one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_device_without_a_gpu(tmp_path, capsys, ckpt):
    assert main(["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in one_line_error(capsys)


# ------------------------------------------------------------------------------ output paths
def test_predict_out_dir_that_is_a_file(tmp_path, capsys, ckpt):
    (tmp_path / "file").write_text("x")
    assert main(["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "file" / "sub")]) == 2
    assert "--out-dir" in one_line_error(capsys)
    assert main(["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "file")]) == 2
    assert "is a file" in one_line_error(capsys)
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_out_dir(tmp_path, capsys, ckpt, monkeypatch):
    def refuse(image, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(predict_module, "save_png", refuse)
    assert main(["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path / "ro")]) == 2
    err = one_line_error(capsys)
    assert str(tmp_path / "ro" / "BloodImage_00000.png") in err and "Permission denied" in err


def test_convert_to_a_folder_or_an_unwritable_path(tmp_path, capsys, ckpt):
    assert main(["convert", str(ckpt), str(tmp_path)]) == 2
    assert "is a folder" in one_line_error(capsys)
    (tmp_path / "file").write_text("x")
    assert main(["convert", str(ckpt), str(tmp_path / "file" / "slim.pth")]) == 2
    assert "slim.pth" in one_line_error(capsys)
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "slim.pth")]) == 2
    assert "missing.pth" in one_line_error(capsys)


# ------------------------------------------------------------------------------ predict behaviour
def test_ctrl_c_during_predict_keeps_what_was_finished(tmp_path, capsys, ckpt, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("BloodImage_00000.jpg", "BloodImage_00001.jpg", "BloodImage_00002.jpg"):
        shutil.copy(BCCD / "JPEGImages" / name, src)
    real, calls = predict_module.load_image, []

    def load_then_interrupt(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(predict_module, "load_image", load_then_interrupt)
    out = tmp_path / "out"
    assert main(["predict", str(src), "--checkpoint", str(ckpt), "--out-dir", str(out)]) == 130
    err = one_line_error(capsys)
    assert "interrupted after 1 of 3 images" in err
    pred = json.loads((out / "predictions.json").read_text())
    assert pred["interrupted"] is True and [Path(r["file"]).name for r in pred["images"]] == ["BloodImage_00000.jpg"]
    assert sorted(p.name for p in out.iterdir()) == ["BloodImage_00000.png", "predictions.json"]


def test_predict_skip_bad_images_counts_and_goes_on(tmp_path, capsys, ckpt):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(JPG, src / "good.jpg")
    (src / "broken.jpg").write_bytes(JPG.read_bytes()[:3000])
    out = tmp_path / "out"
    assert main(["predict", str(src), "--checkpoint", str(ckpt), "--out-dir", str(out)]) == 2
    assert "broken.jpg" in one_line_error(capsys) and not (out / "predictions.json").exists()
    assert main(["predict", str(src), "--checkpoint", str(ckpt), "--out-dir", str(out), "--skip-bad-images"]) == 0
    assert "skipped 1 bad images: broken.jpg" in capsys.readouterr().out
    pred = json.loads((out / "predictions.json").read_text())
    assert [Path(r["file"]).name for r in pred["images"]] == ["good.jpg"]
    assert [Path(s["file"]).name for s in pred["skipped_files"]] == ["broken.jpg"]


# ------------------------------------------------------------------------------ val
def test_val_prints_where_each_test_setting_came_from(tmp_path, capsys, ckpt):
    from ..engine.test_trainer import tiny_dataset

    ann = tiny_dataset(tmp_path, n=2)
    args = [
        "val",
        f"data.val_ann={ann}",
        f"data.val_images={BCCD / 'JPEGImages'}",
        "model.num_classes=3",
        "eval.nms_iou=0.55",
        "--checkpoint",
        str(ckpt),
        "--out-dir",
        str(tmp_path / "val"),
    ]
    assert main(args) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("test settings: "))
    assert "score_thr 0.2 (checkpoint)" in line and "nms_iou 0.55 (config)" in line
    assert "max_per_img 100 (default)" in line and "scale 128x96 (checkpoint)" in line


# ------------------------------------------------------------------------------ a bug
def test_a_bug_shows_a_traceback_and_says_so(tmp_path, capsys, ckpt, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(predict_module, "drawing_paths", broken)
    assert main(["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "this is a bug in varifocal" in err.strip().splitlines()[-1]
