"""Range and finiteness checks of every numeric config value (one-line ConfigErrors naming the
key), and the optimiser's own guards."""

from __future__ import annotations

import math

import pytest

from varifocal.config import ConfigError, config_from_dict, load_config
from varifocal.engine.optim import lr_factor

SRC = "defaults + overrides"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_classes=0", "model.num_classes must be >= 1, got 0"),
        ("model.test_scale=[1333, 0]", "model.test_scale must be positive, got [1333, 0]"),
        ("data.train_scale=[-1, 800]", "data.train_scale must be positive, got [-1, 800]"),
        (
            "data.train_scales=[[1333, 480], [1333, 0]]",
            "data.train_scales must be positive, got [[1333, 480], [1333, 0]]",
        ),
        ("data.flip_prob=-0.1", "data.flip_prob must be in [0, 1], got -0.1"),
        ("data.min_size=-1", "data.min_size must be >= 0, got -1"),
        ("data.num_workers=-2", "data.num_workers must be >= 0, got -2"),
        ("data.ssd_expand_ratio=0.5", "data.ssd_expand_ratio must be >= 1, got 0.5"),
        ("train.epochs=0", "train.epochs must be >= 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.lr=0", "train.lr must be > 0, got 0.0"),
        ("train.lr=-0.01", "train.lr must be > 0, got -0.01"),
        ("train.momentum=-0.1", "train.momentum must be in [0, 1), got -0.1"),
        ("train.momentum=1", "train.momentum must be in [0, 1), got 1.0"),
        ("train.weight_decay=-1e-4", "train.weight_decay must be >= 0, got -0.0001"),
        ("train.bias_lr_mult=-2", "train.bias_lr_mult must be >= 0, got -2.0"),
        ("train.bias_decay_mult=-1", "train.bias_decay_mult must be >= 0, got -1.0"),
        ("train.warmup_iters=-1", "train.warmup_iters must be >= 0, got -1"),
        ("train.warmup_ratio=0", "train.warmup_ratio must be in (0, 1], got 0.0"),
        ("train.warmup_ratio=1.5", "train.warmup_ratio must be in (0, 1], got 1.5"),
        ("train.lr_steps=[0, 8]", "train.lr_steps must be increasing positive epochs, got [0, 8]"),
        ("train.lr_gamma=-1", "train.lr_gamma must be > 0, got -1.0"),
        ("train.lr_gamma=0", "train.lr_gamma must be > 0, got 0.0"),
        ("train.grad_clip=0", "train.grad_clip must be > 0 or null, got 0.0"),
        ("train.grad_clip=-5", "train.grad_clip must be > 0 or null, got -5.0"),
        ("train.seed=-1", "train.seed must be in [0, 2**63), got -1"),
        ("train.checkpoint_interval=0", "train.checkpoint_interval must be >= 1, got 0"),
        ("train.eval_interval=-1", "train.eval_interval must be >= 0, got -1"),
        ("train.log_interval=0", "train.log_interval must be >= 1, got 0"),
        ("eval.score_thr=1", "eval.score_thr must be in [0, 1), got 1.0"),
        ("eval.score_thr=-0.5", "eval.score_thr must be in [0, 1), got -0.5"),
        ("eval.nms_iou=0", "eval.nms_iou must be in (0, 1], got 0.0"),
        ("eval.nms_pre=0", "eval.nms_pre must be >= 1, got 0"),
        ("eval.max_per_img=0", "eval.max_per_img must be >= 1, got 0"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
    ],
)
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"{SRC}: {message}"


FLOAT_KEYS = [
    "data.flip_prob",
    "train.lr",
    "train.momentum",
    "train.weight_decay",
    "train.bias_lr_mult",
    "train.bias_decay_mult",
    "train.warmup_ratio",
    "train.lr_gamma",
    "train.grad_clip",
    "eval.score_thr",
    "eval.nms_iou",
]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("text, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), ("nan", "nan")])
def test_nan_and_inf_are_refused_for_every_float(key, text, shown):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={text}"])
    assert str(err.value) == f"{SRC}: {key} must be a finite number, got {shown}"


def test_non_finite_values_from_a_yaml_file_and_a_dict(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr_gamma: .inf\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: train.lr_gamma must be a finite number, got inf"
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"weight_decay": math.nan}}, "ckpt.pth")
    assert str(err.value) == "ckpt.pth: train.weight_decay must be a finite number, got nan"


def test_boundary_values_are_accepted():
    cfg = load_config(
        None,
        [
            "train.momentum=0",
            "train.weight_decay=0",
            "train.warmup_ratio=1",
            "train.lr_gamma=1",
            "train.grad_clip=0.5",
            "data.flip_prob=0",
            "eval.score_thr=0",
            "eval.nms_iou=1",
            "train.warmup_iters=0",
            "train.eval_interval=0",
        ],
    )
    assert cfg.train.lr_gamma == 1.0 and cfg.train.momentum == 0.0 and cfg.train.grad_clip == 0.5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gamma": -1.0}, "gamma must be finite and > 0, got -1.0"),
        ({"gamma": math.nan}, "gamma must be finite and > 0, got nan"),
        ({"warmup_ratio": 0.0}, r"warmup_ratio must be finite and in \(0, 1\], got 0.0"),
    ],
)
def test_lr_factor_refuses_a_factor_that_would_flip_the_lr_sign(kwargs, message):
    args = {"iteration": 0, "epoch": 9, "warmup_iters": 500, "warmup_ratio": 0.1, "steps": [8], "gamma": 0.1}
    with pytest.raises(ValueError, match=f"^{message}$"):
        lr_factor(**{**args, **kwargs})


def test_build_optimizer_guards_direct_calls():
    from torch import nn

    from varifocal.engine.optim import build_optimizer

    with pytest.raises(ValueError, match=r"^momentum must be finite and in \[0, 1\), got 1.5$"):
        build_optimizer(nn.Linear(2, 2), 0.01, 1.5, 1e-4)
    with pytest.raises(ValueError, match="^weight_decay must be finite and >= 0, got inf$"):
        build_optimizer(nn.Linear(2, 2), 0.01, 0.9, math.inf)
    assert build_optimizer(nn.Linear(2, 2), 0.01, 0.9, 1e-4).defaults["momentum"] == 0.9
