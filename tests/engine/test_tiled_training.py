"""Tiled training end to end (issue 16): ``varifocal train`` with ``data.tiles`` runs, and a run
resumed after epoch 1 ends bit-exact with the uninterrupted run (tiles are a pure function of
(seed, epoch, index))."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from varifocal.checkpoint import read_checkpoint

from .test_trainer import BCCD, max_diff, run_cli, tiny_dataset, weights


def _config(tmp_path: Path, out: str, epochs: int) -> Path:
    ann = tiny_dataset(tmp_path, n=2)
    cfg = {
        "model": {"name": "vfnet_lite0_fpn", "num_classes": 3, "pretrained_backbone": False, "test_scale": [128, 96]},
        "data": {
            "root": "",
            "train_ann": str(ann),
            "train_images": str(BCCD / "JPEGImages"),
            "val_ann": str(ann),
            "val_images": str(BCCD / "JPEGImages"),
            "train_scale": [128, 96],
            "min_size": 0,
            "num_workers": 0,
            # 640x480 images: x starts 0 256 320, y starts 0 192 240 → 9 tiles each, jittered
            "tiles": {"size": [320, 240], "overlap": 0.2, "min_visibility": 0.5},
        },
        "train": {
            "epochs": epochs,
            "batch_size": 2,
            "lr": 0.01,
            "warmup_iters": 2,
            "lr_steps": [],
            "eval_interval": 0,
            "log_interval": 1,
            "seed": 7,
            "out_dir": str(tmp_path / out),
        },
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_resume_with_tiles_equals_an_uninterrupted_run(tmp_path):
    run_cli("train", str(_config(tmp_path, "ref", epochs=2)))
    cfg = _config(tmp_path, "resumed", epochs=1)
    run_cli("train", str(cfg))
    run_cli("train", str(cfg), "train.epochs=2", "--resume")
    ref, resumed = tmp_path / "ref" / "last.pth", tmp_path / "resumed" / "last.pth"
    assert read_checkpoint(ref)["raw"]["iteration"] == 18  # 2 images x 9 tiles / batch 2, x 2 epochs
    assert read_checkpoint(resumed)["raw"]["epoch"] == 2
    assert max_diff(weights(resumed), weights(ref)) == 0.0
