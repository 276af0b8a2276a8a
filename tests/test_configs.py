"""The shipped configs: each loads, names a zoo model, and the BCCD recipes train end to end
through ``varifocal train`` (here on 4 images at 128×96 for 2 iterations, then evaluated)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import varifocal
from varifocal.checkpoint import read_checkpoint
from varifocal.config import load_config

from .engine.test_trainer import BCCD, run_cli, tiny_dataset

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_names_a_zoo_model(path):
    cfg = load_config(path)
    assert cfg.model.name in varifocal.list_models()
    assert Path(cfg.train.out_dir).name == path.stem  # runs do not overwrite each other


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["retinanet_lite0_bccd", "fcos_lite0_bccd", "atss_lite0_bccd", "fovea_lite0_bccd", "reppoints_moment_lite0_bccd"],
)
def test_bccd_recipe_trains_and_evaluates(tmp_path, name):
    ann = tiny_dataset(tmp_path, n=4)
    config = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    overrides = [
        "model.pretrained_backbone=false",
        "model.test_scale=[128,96]",
        "data.root=''",
        f"data.train_ann={ann}",
        f"data.val_ann={ann}",
        f"data.train_images={BCCD / 'JPEGImages'}",
        f"data.val_images={BCCD / 'JPEGImages'}",
        "data.train_scale=[128,96]",
        "data.multiscale_mode=null",
        "data.min_size=0",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=2",
        "train.warmup_iters=1",
        "train.lr_steps=[]",
        "train.log_interval=1",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    run_cli("train", str(config), *overrides)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["model_name"] == load_config(config).model.name
    assert ckpt["raw"]["iteration"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records].count("train") == 2
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 1 and 0.0 <= val[0]["AP"] <= 1.0


@pytest.mark.slow
def test_refinedet_voc_recipe_trains_evaluates_and_predicts(tmp_path):
    """``configs/refinedet320_lite0_bccd.yaml`` end to end on a 4-image VOC tree at 128×128:
    SSD augmentation, two iterations, the VOC07 evaluation, then ``predict`` on an original
    640×480 image gives boxes in its pixels."""
    root = tmp_path / "voc"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").symlink_to(BCCD / "Annotations")
    (root / "JPEGImages").symlink_to(BCCD / "JPEGImages")
    names = (BCCD / "ImageSets" / "Main" / "trainval.txt").read_text().split()[:4]
    for split in ("trainval", "test"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    config = Path(__file__).resolve().parents[1] / "configs" / "refinedet320_lite0_bccd.yaml"
    overrides = [
        "model.pretrained_backbone=false",
        "model.test_scale=[128,128]",
        f"data.root={root}",
        "data.train_scale=[128,128]",
        "data.num_workers=0",
        "train.epochs=1",
        "train.batch_size=2",
        "train.warmup_epochs=null",
        "train.warmup_iters=1",
        "train.lr_steps=[]",
        "train.eval_interval=1",
        f"train.out_dir={tmp_path / 'run'}",
    ]
    run_cli("train", str(config), *overrides)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pth")
    assert ckpt["model_name"] == "refinedet320_lite0" and ckpt["raw"]["iteration"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["kind"] == "val"]
    assert len(val) == 1 and 0.0 <= val[0]["voc07_mAP"] <= 1.0
    out = tmp_path / "val"
    proc = run_cli(
        "val", str(config), *overrides, "--checkpoint", str(tmp_path / "run" / "last.pth"), "--out-dir", str(out)
    )
    assert "VOC07 (11-point AP" in proc.stdout and "Platelets" in proc.stdout
    assert json.loads((out / "metrics.json").read_text())["voc07_mAP"] == pytest.approx(val[0]["voc07_mAP"], abs=1e-9)
    pred = tmp_path / "pred"
    image = BCCD / "JPEGImages" / f"{names[0]}.jpg"
    run_cli(
        "predict",
        str(image),
        "--checkpoint",
        str(tmp_path / "run" / "last.pth"),
        "--out-dir",
        str(pred),
        "--score-thr",
        "0.0",
    )
    dets = json.loads((pred / "predictions.json").read_text())["images"][0]["detections"]
    boxes = [d["bbox_xyxy"] for d in dets]
    assert 0 < len(boxes) <= 500  # keep_top_k
    # Boxes are in the 640x480 original's pixels (the 128x128 warp undone per axis), clipped to it.
    assert all(0 <= b[0] <= b[2] <= 640 and 0 <= b[1] <= b[3] <= 480 for b in boxes)
    assert max(b[2] for b in boxes) > 128 and max(b[3] for b in boxes) > 128
