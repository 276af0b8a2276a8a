"""``varifocal predict/val --tiles`` (issue 16): sliced inference from the command line, and its
one-line usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import varifocal
from varifocal.cli.main import main
from varifocal.cli.slicing import tile_size
from varifocal.engine.sliced import sliced_predict
from varifocal.utils.precision import prepare_model

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"
pytestmark = pytest.mark.skipif(not (BCCD / "JPEGImages").is_dir(), reason="the bundled BCCD images are absent")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = varifocal.build_model(
        "vfnet_lite0_fpn", num_classes=3, scale=[128, 96], test_cfg={"score_thr": 0.0, "max_per_img": 10}
    )
    model.class_names = ["RBC", "WBC", "Platelets"]
    path = tmp_path_factory.mktemp("ckpt") / "m.pth"
    kwargs = {"num_classes": 3, "scale": [128, 96], "test_cfg": {"score_thr": 0.0, "max_per_img": 10}}
    varifocal.save_checkpoint(path, model, model_name="vfnet_lite0_fpn", model_kwargs=kwargs)
    return path, model.eval()


def test_tile_size_argument():
    assert tile_size("640") == (640, 640) and tile_size("640x480") == (640, 480)
    for bad in ("0", "x", "640x", "-5"):
        with pytest.raises(Exception, match="slice"):
            tile_size(bad)


def test_predict_with_tiles_writes_the_sliced_detections(tmp_path, tiny_ckpt, capsys):
    ckpt, model = tiny_ckpt
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(BCCD / "JPEGImages" / "BloodImage_00000.jpg", src)
    out = tmp_path / "out"
    args = ["predict", str(src), "--checkpoint", str(ckpt), "--out-dir", str(out), "--no-draw", "--score-thr", "0"]
    assert main([*args, "--tiles", "480x360", "--merge", "nmm"]) == 0
    assert "sliced inference: 480x360 slices, overlap 0.2, merge nmm (ios), no full image" in capsys.readouterr().out
    (rec,) = json.loads((out / "predictions.json").read_text())["images"]
    image = varifocal.data.load_image(src / "BloodImage_00000.jpg")
    prepare_model(model, "fp32", "cpu", inference=True)  # the CLI's layout (channels-last on the CPU)
    expected = sliced_predict(model, image, (480, 360), 0.2, merge="nmm")  # 4 slices
    got = torch.tensor([d["bbox_xyxy"] for d in rec["detections"]]).reshape(-1, 4)
    assert len(got) == len(expected["boxes"]) > 0
    torch.testing.assert_close(got, expected["boxes"][expected["scores"] > 0], atol=1e-4, rtol=0)
    assert float(got[:, 2].max()) <= 640 and float(got[:, 3].max()) <= 480


def test_val_with_tiles_records_the_slicing(tmp_path, tiny_ckpt):
    ckpt, _ = tiny_ckpt
    data = json.loads((BCCD / "annotations" / "instances_val.json").read_text())
    data["images"] = data["images"][:2]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    ann = tmp_path / "two.json"
    ann.write_text(json.dumps(data))
    out = tmp_path / "val"
    args = ["val", "data.root=''", f"data.val_ann={ann}", f"data.val_images={BCCD / 'JPEGImages'}"]
    args += ["model.num_classes=3", "--checkpoint", str(ckpt), "--out-dir", str(out), "--tiles", "400", "--full-image"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["slicing"]["tile_size"] == [400, 400]
    assert metrics["slicing"]["full_image"] is True and metrics["slicing"]["merge"] == "nms"


@pytest.mark.parametrize(
    "extra, message",
    [(["--overlap", "0.3"], "--overlap needs --tiles"), (["--tiles", "0x5"], "slice"), (["--overlap", "1"], "[0, 1)")],
)
def test_slicing_options_fail_with_one_line(tmp_path, tiny_ckpt, capsys, extra, message):
    ckpt, _ = tiny_ckpt
    img = BCCD / "JPEGImages" / "BloodImage_00000.jpg"
    out = tmp_path / "out"
    assert main(["predict", str(img), "--checkpoint", str(ckpt), "--out-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (out / "predictions.json").exists()
