"""The bundled recipe on six images warns before its first iteration; repeat keeps resume exact (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from varifocal.config import load_config
from varifocal.engine import trainer

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"


def six_images(tmp_path: Path) -> Path:
    data = json.loads((BCCD / "annotations" / "instances_train.json").read_text())
    data["images"] = data["images"][:6]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    path = tmp_path / "six.json"
    path.write_text(json.dumps(data))
    return path


def recipe(tmp_path: Path, out: str, *extra: str):
    """configs/vfnet_lite0_bccd.yaml with only the data (and, for speed, the scales and weights) changed."""
    ann = six_images(tmp_path)
    return load_config(
        REPO / "configs" / "vfnet_lite0_bccd.yaml",
        [
            f"data.train_ann={ann}",
            f"data.val_ann={ann}",
            f"data.train_images={BCCD / 'JPEGImages'}",
            f"data.val_images={BCCD / 'JPEGImages'}",
            "data.multiscale_mode=null",
            "data.train_scale=[128, 96]",
            "model.test_scale=[128, 96]",
            "model.pretrained_backbone=false",
            "data.num_workers=0",
            "train.log_interval=1",
            f"train.out_dir={tmp_path / out}",
            *extra,
        ],
    )


def test_six_images_with_the_bundled_recipe_warn_before_the_first_iteration(tmp_path, capsys):
    result = trainer.train(recipe(tmp_path, "run"), max_iters=1)
    out = capsys.readouterr().out
    warm = out.index(
        "warning: the warm-up (200 iterations) is longer than the whole run (24 iterations: 12 epochs × 2 per epoch)"
    )
    steps = out.index("warning: train.lr_steps=[8, 11] decays the lr at iterations 16, 22, inside the warm-up")
    first = out.index("epoch 1/12 iter 1/2")
    assert warm < steps < first
    assert len(result["warnings"]) == 2 and result["iteration"] == 1


@pytest.mark.slow
def test_resume_with_a_repeat_factor_equals_the_uninterrupted_run(tmp_path):
    extra = ["data.repeat=2", "train.epochs=2", "train.batch_size=4", "train.warmup_epochs=0.5", "train.lr_steps=[1.5]"]
    full = trainer.train(recipe(tmp_path, "full", *extra, "train.eval_interval=0"))
    assert full["iteration"] == 6 and full["warnings"] == []  # 6 images × 2 passes / 4 per batch × 2 epochs
    trainer.train(recipe(tmp_path, "part", *extra, "train.eval_interval=0", "train.epochs=1"))
    resumed = trainer.train(recipe(tmp_path, "part", *extra, "train.eval_interval=0"), resume=True)
    assert resumed["iteration"] == 6
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
