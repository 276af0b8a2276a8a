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
@pytest.mark.parametrize("name", ["retinanet_lite0_bccd", "fcos_lite0_bccd", "atss_lite0_bccd"])
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
