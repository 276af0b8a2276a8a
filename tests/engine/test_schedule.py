"""Schedules in (fractional) epochs or iterations, and the recipe warnings (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from varifocal.config import ConfigError, config_from_dict, config_to_dict, load_config
from varifocal.engine.optim import lr_factor, resolve_schedule
from varifocal.engine.schedule_check import check_training, object_size_warnings, schedule_warnings

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"
RECIPE = REPO / "configs" / "vfnet_lite0_bccd.yaml"


def train_cfg(**kw):
    return config_from_dict({"train": kw}).train


# ------------------------------------------------------------------------------ lr schedule
def test_fractional_warmup_epochs_give_the_exact_lr():
    # 0.5 epoch of 3 iterations = 1.5 iterations: factor 1 - (1 - i/1.5)·0.9
    s = resolve_schedule(train_cfg(warmup_epochs=0.5, warmup_ratio=0.1, lr_steps=[2]), 3)
    assert s.warmup_iters == 1.5
    assert s.factor(0, 0, 0) == pytest.approx(0.1)
    assert s.factor(1, 0, 1) == pytest.approx(0.7)
    assert s.factor(2, 0, 2) == 1.0
    assert s.factor(6, 2, 0) == pytest.approx(0.1)  # the epoch-2 step


def test_fractional_lr_step_steps_inside_the_epoch():
    # step at epoch 1.5 of 4 iterations = iteration 6 = batch 2 of epoch 1
    s = resolve_schedule(train_cfg(warmup_iters=0, lr_steps=[1.5, 2.25], lr_gamma=0.5), 4)
    assert [s.factor(4 + k, 1, k) for k in range(4)] == [1.0, 1.0, 0.5, 0.5]
    assert s.factor(8, 2, 0) == 0.5 and s.factor(9, 2, 1) == 0.25  # 2.25 × 4 = 9
    # 0.7 × 10 is 7.000000000000001 in floats; the step still comes at iteration 7
    s = resolve_schedule(train_cfg(warmup_iters=0, lr_steps=[0.7]), 10)
    assert s.factor(6, 0, 6) == 1.0 and s.factor(7, 0, 7) == pytest.approx(0.1)


def test_lr_step_iters_replace_the_epoch_steps():
    s = resolve_schedule(train_cfg(warmup_iters=2, warmup_ratio=0.5, lr_step_iters=[5, 7]), 100)
    assert s.step_boundaries == [5.0, 7.0]
    assert s.factor(1, 0, 1) == pytest.approx(0.75)  # 1 - (1 - 1/2)·0.5
    assert [s.factor(i, 0, i) for i in (4, 5, 6)] == [1.0, pytest.approx(0.1), pytest.approx(0.1)]
    assert s.factor(7, 0, 7) == pytest.approx(0.01)


def test_integer_epoch_steps_are_bit_identical_to_lr_factor():
    # the schedule of every existing config (and so of every resumed run) is unchanged
    t = train_cfg(warmup_iters=7, warmup_ratio=0.001, lr_steps=[2, 3], lr_gamma=0.1)
    s = resolve_schedule(t, 5)
    for it in range(25):
        epoch, step = divmod(it, 5)
        assert s.factor(it, epoch, step) == lr_factor(it, epoch, 7, 0.001, [2, 3], 0.1)


def test_new_keys_load_validate_and_old_configs_still_load():
    cfg = load_config(RECIPE, ["train.warmup_epochs=0.5", "train.lr_steps=[7.5, 11]", "data.repeat=3"])
    assert cfg.train.warmup_epochs == 0.5 and cfg.train.lr_steps == [7.5, 11] and cfg.data.repeat == 3
    assert type(load_config(RECIPE).train.lr_steps[0]) is int  # integer epochs stay ints
    old = config_to_dict(load_config(RECIPE))
    for key in ("warmup_epochs", "lr_step_iters"):
        del old["train"][key]
    for key in ("repeat", "min_iters_per_epoch"):
        del old["data"][key]
    assert config_from_dict(old) == load_config(RECIPE)  # a checkpoint's stored config of before issue 16
    for override, match in (
        ("train.warmup_epochs=-1", "train.warmup_epochs must be >= 0"),
        ("train.lr_step_iters=[5, 3]", "train.lr_step_iters must be increasing"),
        ("data.repeat=0", "data.repeat must be >= 1"),
        ("data.min_iters_per_epoch=-2", "data.min_iters_per_epoch must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(RECIPE, [override])


# ------------------------------------------------------------------------------ warnings
def test_tiny_dataset_warns_warmup_and_steps_and_names_the_fix():
    cfg = load_config(RECIPE)  # 6 images, batch 4: 2 iterations per epoch, 24 in all
    lines = schedule_warnings(cfg, num_images=6, iters_per_epoch=2)
    assert len(lines) == 2
    assert lines[0].startswith(
        "the warm-up (200 iterations) is longer than the whole run (24 iterations: 12 epochs × 2 per epoch)"
    )
    assert "train.lr_steps=[8, 11] decays the lr at iterations 16, 22, inside the warm-up" in lines[1]
    for line in lines:
        assert line.endswith("set train.warmup_epochs=1 or data.min_iters_per_epoch=200")
    # each fix silences both
    assert check_training(load_config(RECIPE, ["train.warmup_epochs=1"]), 6) == []
    assert check_training(load_config(RECIPE, ["data.min_iters_per_epoch=200"]), 6) == []


def test_warmup_in_epochs_longer_than_the_run():
    cfg = load_config(RECIPE, ["train.warmup_epochs=13"])
    long, inside = schedule_warnings(cfg, 292, 73)  # the steps at epochs 8, 11 fall inside it too
    assert long.startswith("the warm-up (13 epochs = 949 it.) is longer than the whole run (876 iterations")
    assert "decays the lr at iterations 584, 803, inside the warm-up" in inside
    for line in (long, inside):  # more iterations per epoch would not help: only a shorter warm-up
        assert line.endswith("; set train.warmup_epochs=1")


def test_steps_after_the_run_small_data_and_idle_workers():
    cfg = load_config(RECIPE, ["train.lr_steps=[8, 14]"])
    (line,) = schedule_warnings(cfg, 292, 73)
    assert "(14 >= train.epochs=12) that are never applied; set train.lr_steps=[8] or raise train.epochs" in line
    cfg = load_config(RECIPE, ["train.warmup_iters=0", "data.num_workers=4"])
    small, idle = schedule_warnings(cfg, num_images=3, iters_per_epoch=1)
    assert "smaller than one batch (4 images × 1 processes)" in small and small.endswith(
        "set train.batch_size=3 or data.repeat=2"
    )
    assert idle.startswith("an epoch has 1 iterations, fewer than data.num_workers=4")
    assert idle.endswith("set data.num_workers=1 or data.min_iters_per_epoch=4")


def aerial_records(n=6, side=30.0):
    boxes = np.array([[100, 100, 100 + side, 100 + side]] * 10, dtype=np.float32)
    return [SimpleNamespace(width=8000, height=6000, boxes=boxes) for _ in range(n)]


def test_objects_below_the_stride_warn_with_the_tile_size():
    # 30-px boxes in 8000×6000 images; training scale 640×416: factor min(640/8000, 416/6000) = 0.069333
    (line,) = object_size_warnings(load_config(RECIPE), aerial_records(), strides=(8, 16, 32, 64, 128))
    assert line.startswith("objects are much smaller than the smallest stride (8 px) at the training scale [640, 416]")
    assert "median box side 2.1 px (100% under 4 px; 30 px in the original 8000-px images)" in line
    assert "data.tiles.size=390" in line  # 416 × 30 / 32: the median box becomes 32 px
    # and with those tiles the objects are large enough
    assert object_size_warnings(load_config(RECIPE, ["data.tiles.size=390"]), aerial_records()) == []


def test_bimodal_small_objects_warn_and_large_ones_do_not():
    recs = [SimpleNamespace(width=640, height=480, boxes=np.array([[0, 0, 3, 3]] * 3 + [[0, 0, 50, 50]] * 7, "f4"))]
    (line,) = object_size_warnings(load_config(RECIPE), recs)  # median 50 px but 30% under 4 px
    assert "(30% under 4 px" in line
    recs[0].boxes = np.array([[0, 0, 3, 3]] * 2 + [[0, 0, 50, 50]] * 8, "f4")
    assert object_size_warnings(load_config(RECIPE), recs) == []  # 20%: not "much smaller"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_no_warning_for_the_bundled_configs(path):
    cfg = load_config(path)
    if path.stem.endswith("_bccd"):
        from varifocal.engine.build import build_datasets

        train_ds, _ = build_datasets(cfg, train=True, val=False)
        ann = json.loads((BCCD / "annotations" / "instances_train.json").read_text())
        assert len(train_ds) == len(ann["images"]) == 292
        assert check_training(cfg, len(train_ds), records=train_ds.records) == []
    else:  # COCO train2017: 118287 images, on 1 or 8 processes
        for world in (1, 8):
            assert check_training(cfg, 118287, world_size=world) == []


def test_estimated_iterations_per_epoch():
    from varifocal.engine.schedule_check import estimate_iters_per_epoch

    assert estimate_iters_per_epoch(118287, 2, world_size=8) == 7393  # ceil(118287 / 16)
    assert estimate_iters_per_epoch(6, 4, repeat=10) == 15  # ceil(60 / 4)
    assert estimate_iters_per_epoch(6, 4, min_iters=200) == 200


def test_large_images_shrunk_for_training_warn_with_tiles():
    from varifocal.engine.schedule_check import downscale_warnings

    # BCCD mosaics: 2560×1920 images at the recipe's smallest training scale [640, 416]:
    # factor min(640/2560, 416/1920) = 0.21667, shrunk 4.6×; tiles of the test scale 640×480
    recs = [SimpleNamespace(width=2560, height=1920, boxes=np.array([[0, 0, 100, 100]], "f4"))] * 3
    (line,) = downscale_warnings(load_config(RECIPE), recs)
    assert line.startswith("training images are shrunk 4.6× (median 2560×1920 px to the training scale [640, 416])")
    assert "set data.tiles.size=[640, 480] and predict/val with --tiles 640x480" in line
    assert downscale_warnings(load_config(RECIPE, ["data.tiles.size=[640,480]"]), recs) == []
    # 1280×960 → 640×416 is 2.15×, 1920×1440 → 3.46×: the rule starts at 3×
    small = [SimpleNamespace(width=1280, height=960, boxes=np.zeros((0, 4), "f4"))]
    assert downscale_warnings(load_config(RECIPE), small) == []
    # and only for large images (1.5 MP): BCCD's 640×480 at a 128×96 test recipe is shrunk 5× but small
    bccd = [SimpleNamespace(width=640, height=480, boxes=np.zeros((0, 4), "f4"))]
    assert (
        downscale_warnings(load_config(RECIPE, ["data.train_scale=[128,96]", "data.multiscale_mode=null"]), bccd) == []
    )
    big = [SimpleNamespace(width=1920, height=1440, boxes=np.zeros((0, 4), "f4"))]
    assert len(downscale_warnings(load_config(RECIPE), big)) == 1
