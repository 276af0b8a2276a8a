"""Range checks of :mod:`varifocal.config`: :func:`validate_config` (every float finite, every
number in its range; re-exported by, and documented as, ``varifocal.config.validate_config``).

It and :mod:`varifocal.config` import each other: ``config`` imports it after defining its
dataclasses, and it imports them at its end, so that either module can be imported first.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def _numbers(value: Any, key: str) -> list[tuple[str, Any]]:
    """``(dotted key, number)`` for a number or every number inside nested lists/tuples."""
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in _numbers(v, f"{key}[{i}]")]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [(key, value)]
    return []


def _check_finite(obj: Any, prefix: str, source: str) -> None:
    """Every float of every section, lists included, must be finite (YAML ``.nan``/``.inf`` and
    the strings ``nan``/``inf`` parse as floats)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{key}.", source)
            continue
        for where, number in _numbers(value, key):
            if isinstance(number, float) and not math.isfinite(number):
                raise ConfigError(f"{source}: {where} must be a finite number, got {number}")


def validate_config(cfg: Config, source: str = "config") -> None:
    """Checks that go beyond types: every float is finite, and every number is in its range:

    - ``model``: num_classes >= 1; test_scale positive.
    - ``data``: train_scale and train_scales positive (and enough of them for the
      multiscale_mode); flip_prob in [0, 1]; min_size, num_workers, min_iters_per_epoch >= 0;
      repeat >= 1; ssd_expand_ratio >= 1; tiles.size positive, tiles.overlap in [0, 1), tiles.min_visibility in (0, 1].
    - ``train``: epochs, batch_size, checkpoint_interval, log_interval >= 1; lr > 0;
      momentum in [0, 1); weight_decay, bias_lr_mult, bias_decay_mult, warmup_iters,
      eval_interval >= 0; warmup_epochs >= 0 or null; warmup_ratio in (0, 1]; lr_steps
      increasing positive epochs; lr_step_iters increasing positive iterations or null;
      lr_gamma > 0; grad_clip > 0 or null; seed in [0, 2**63).
    - ``eval``: score_thr in [0, 1); nms_iou in (0, 1]; nms_pre, max_per_img, batch_size >= 1.

    Raises:
        ConfigError: one line naming ``source`` and the key, for a value that is not finite, out
            of range, or an inconsistent combination.
    """

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {message}")

    def at_least(key: str, value: float, low: float) -> None:
        need(value >= low, f"{key} must be >= {low}, got {value}")

    def positive(key: str, value: float) -> None:
        need(value > 0, f"{key} must be > 0, got {value}")

    def scales(key: str, value: Any) -> None:
        need(all(n > 0 for _, n in _numbers(value, key)), f"{key} must be positive, got {_plain(value)}")

    _check_finite(cfg, "", source)
    m = cfg.model
    at_least("model.num_classes", m.num_classes, 1)
    scales("model.test_scale", m.test_scale)
    d = cfg.data
    scales("data.train_scale", d.train_scale)
    scales("data.train_scales", d.train_scales)
    if d.multiscale_mode == "value":
        need(len(d.train_scales) >= 1, "data.multiscale_mode 'value' needs at least one entry in data.train_scales")
    if d.multiscale_mode == "range":
        need(len(d.train_scales) >= 2, "data.multiscale_mode 'range' needs at least two entries in data.train_scales")
    need(0.0 <= d.flip_prob <= 1.0, f"data.flip_prob must be in [0, 1], got {d.flip_prob}")
    at_least("data.num_workers", d.num_workers, 0)
    at_least("data.min_size", d.min_size, 0)
    scales("data.tiles.size", d.tiles.size)
    need(0.0 <= d.tiles.overlap < 1.0, f"data.tiles.overlap must be in [0, 1), got {d.tiles.overlap}")
    need(
        0.0 < d.tiles.min_visibility <= 1.0,
        f"data.tiles.min_visibility must be in (0, 1], got {d.tiles.min_visibility}",
    )
    at_least("data.repeat", d.repeat, 1)
    at_least("data.ssd_expand_ratio", d.ssd_expand_ratio, 1)
    at_least("data.min_iters_per_epoch", d.min_iters_per_epoch, 0)
    t = cfg.train
    at_least("train.epochs", t.epochs, 1)
    at_least("train.batch_size", t.batch_size, 1)
    positive("train.lr", t.lr)
    need(0.0 <= t.momentum < 1.0, f"train.momentum must be in [0, 1), got {t.momentum}")
    at_least("train.weight_decay", t.weight_decay, 0)
    at_least("train.bias_lr_mult", t.bias_lr_mult, 0)
    at_least("train.bias_decay_mult", t.bias_decay_mult, 0)
    at_least("train.warmup_iters", t.warmup_iters, 0)
    if t.warmup_epochs is not None:
        at_least("train.warmup_epochs", t.warmup_epochs, 0)
    need(0.0 < t.warmup_ratio <= 1.0, f"train.warmup_ratio must be in (0, 1], got {t.warmup_ratio}")
    need(
        all(b > a for a, b in zip([0] + t.lr_steps, t.lr_steps)),
        f"train.lr_steps must be increasing positive epochs, got {t.lr_steps}",
    )
    if t.lr_step_iters is not None:
        need(
            all(b > a for a, b in zip([0] + t.lr_step_iters, t.lr_step_iters)),
            f"train.lr_step_iters must be increasing positive iterations, got {t.lr_step_iters}",
        )
    positive("train.lr_gamma", t.lr_gamma)
    need(t.grad_clip is None or t.grad_clip > 0, f"train.grad_clip must be > 0 or null, got {t.grad_clip}")
    need(0 <= t.seed < 2**63, f"train.seed must be in [0, 2**63), got {t.seed}")
    at_least("train.checkpoint_interval", t.checkpoint_interval, 1)
    at_least("train.eval_interval", t.eval_interval, 0)
    at_least("train.log_interval", t.log_interval, 1)
    e = cfg.eval
    need(e.score_thr is None or 0.0 <= e.score_thr < 1.0, f"eval.score_thr must be in [0, 1), got {e.score_thr}")
    need(e.nms_iou is None or 0.0 < e.nms_iou <= 1.0, f"eval.nms_iou must be in (0, 1], got {e.nms_iou}")
    for key, value in (("eval.nms_pre", e.nms_pre), ("eval.max_per_img", e.max_per_img)):
        if value is not None:
            at_least(key, value, 1)
    at_least("eval.batch_size", e.batch_size, 1)
    at_least("eval.max_dets", e.max_dets, 10)


# At the end: varifocal.config imports this module after defining these (see above).
from .config import Config, ConfigError, _plain  # noqa: E402
