"""Typed configuration: defaults, YAML, dotted overrides, type checks, suggestions, saving."""

from __future__ import annotations

import pytest
import yaml

from varifocal.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)


def test_defaults_follow_the_1x_recipe():
    cfg = load_config()
    t = cfg.train
    # spec §6.2: SGD lr 0.01 @ batch 16, momentum 0.9, wd 1e-4, warm-up 500 @ 0.1, steps 8/11, 12 epochs
    assert (t.lr, t.batch_size, t.momentum, t.weight_decay) == (0.01, 16, 0.9, 1e-4)
    assert (t.warmup_iters, t.warmup_ratio, t.lr_steps, t.lr_gamma, t.epochs) == (500, 0.1, [8, 11], 0.1, 12)
    assert (t.bias_lr_mult, t.bias_decay_mult, t.grad_clip) == (2.0, 0.0, None)
    assert cfg.data.train_scale == (1333, 800) and cfg.data.flip_prob == 0.5 and cfg.model.test_scale == (1333, 800)
    # Test settings default to null: each detector keeps its own MMDetection test_cfg.
    e = cfg.eval
    assert (e.score_thr, e.nms_iou, e.nms_pre, e.max_per_img) == (None, None, None, None)
    assert cfg.model.name == "vfnet_lite0_fpn" and cfg == Config()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "bccd.yaml"
    path.write_text(
        "model:\n  num_classes: 3\n  pretrained_backbone: false\n"
        "data:\n  root: /data/bccd\n  multiscale_mode: range\n  train_scales: [[1333, 480], [1333, 960]]\n"
        "train:\n  epochs: 24\n  lr_steps: [16, 22]\n  weight_decay: 1e-4\n"
    )
    cfg = load_config(path, ["train.epochs=36", "train.lr=0.005", "model.pretrained_backbone=weights/lite0.pth"])
    assert cfg.model.num_classes == 3 and cfg.model.pretrained_backbone == "weights/lite0.pth"
    assert cfg.data.multiscale_mode == "range" and cfg.data.train_scales == [(1333, 480), (1333, 960)]
    assert cfg.train.epochs == 36 and cfg.train.lr == 0.005 and cfg.train.lr_steps == [16, 22]
    # YAML 1.1 reads "1e-4" as a string: accepted for a float field
    assert cfg.train.weight_decay == 1e-4 and isinstance(cfg.train.weight_decay, float)
    assert cfg.data.path("train2017") == "/data/bccd/train2017" and cfg.data.path("/abs/x") == "/abs/x"
    # untouched fields keep their defaults
    assert cfg.train.momentum == 0.9 and cfg.eval.score_thr is None


def test_override_values_are_parsed_and_coerced():
    cfg = load_config(
        None,
        [
            "train.grad_clip=35",
            "model.load_from=null",
            "train.amp=true",
            "data.train_scale=[1000, 600]",
            "train.resume=auto",
            "eval.score_thr=0",
        ],
    )
    assert cfg.train.grad_clip == 35.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.model.load_from is None and cfg.train.amp is True
    assert cfg.data.train_scale == (1000, 600) and cfg.train.resume == "auto" and cfg.eval.score_thr == 0.0


def test_unknown_key_in_override_suggests():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epoch=3"])
    assert "unknown key 'train.epoch'; did you mean 'train.epochs'?" in str(info.value)
    assert str(info.value).startswith("override 'train.epoch=3'")
    with pytest.raises(ConfigError, match="unknown key 'trian.epochs'; did you mean 'train.epochs'"):
        load_config(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'zzz'$"):
        load_config(None, ["zzz=1"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_clases: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: unknown key 'model.num_clases'; did you mean 'model.num_classes'?"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=2.5", "'train.epochs' must be int, got 2.5"),
        ("train.epochs=true", "'train.epochs' must be int, got True"),
        ("train.amp=1", "'train.amp' must be bool"),
        ("train.lr=fast", "'train.lr' must be float"),
        ("data.multiscale_mode=ranges", "'data.multiscale_mode' must be 'value' or 'range' or null"),
        ("data.train_scale=[1333]", "'data.train_scale' must be a list of 2 (int, int)"),
        ("train.lr_steps=[8, x]", "'train.lr_steps' must be a list of int"),
        ("model=3", "'model' is a section and needs a mapping"),
        ("train.epochs", "expected key=value"),
    ],
)
def test_type_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("data.multiscale_mode=range", "needs at least two entries in data.train_scales"),
        ("train.lr_steps=[11, 8]", "train.lr_steps must be increasing"),
        ("data.flip_prob=1.5", "data.flip_prob must be in [0, 1]"),
        ("train.warmup_ratio=0", "train.warmup_ratio must be in (0, 1]"),
    ],
)
def test_value_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{bad}: invalid YAML at line \d+"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()
    empty.write_text("model:\ntrain:\n  epochs: 2\n")  # an empty section changes nothing
    assert load_config(empty).model == Config().model and load_config(empty).train.epochs == 2


def test_save_and_reload_roundtrip(tmp_path):
    cfg = load_config(
        None,
        [
            "model.num_classes=3",
            "data.multiscale_mode=value",
            "data.train_scales=[[1333, 640], [1333, 800]]",
            "data.class_names=[RBC, WBC, Platelets]",
        ],
    )
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    plain = yaml.safe_load(path.read_text())
    assert plain["data"]["train_scales"] == [[1333, 640], [1333, 800]] and plain["data"]["train_scale"] == [1333, 800]
    assert config_to_dict(cfg) == plain
    assert config_from_dict(plain) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temp file left


def test_config_from_dict_errors():
    with pytest.raises(ConfigError, match=r"checkpoint: unknown key 'train.epoks'; did you mean 'train.epochs'"):
        config_from_dict({"train": {"epoks": 3}}, source="checkpoint")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config_from_dict([1], source="x")
