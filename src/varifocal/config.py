"""Typed configuration: nested dataclasses, YAML files and dotted command-line overrides.

::

    cfg = load_config("configs/bccd.yaml", ["model.num_classes=3", "train.epochs=24"])
    cfg.train.lr            # 0.01
    save_config(cfg, "work_dirs/run/config.yaml")

Defaults reproduce the VFNet R-50 1x recipe (spec §6.1, §6.2): SGD lr 0.01 for a total batch
of 16, momentum 0.9, weight decay 1e-4, bias lr x2 and no bias decay, linear warm-up over 500
iterations from ratio 0.1, lr x0.1 after epochs 8 and 11, 12 epochs, (1333, 800) keep-ratio
resize, flip 0.5, no gradient clipping. The lr is used as given: scale it yourself for another
total batch (linear rule, spec §6.2: 0.005 for 8 images).

Every value is type-checked against its field's annotation. ``Literal`` fields only accept the
listed values. An int is accepted for a float field; so is a string that parses as a float,
because YAML 1.1 reads ``1e-4`` (no dot) as a string. Unknown keys raise :class:`ConfigError`
with a close-match suggestion. Every number is range-checked by :func:`validate_config`, and no
float may be nan or infinite.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, Union

import yaml

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "EvalConfig",
    "Config",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "validate_config",
]


class ConfigError(ValueError):
    """Invalid configuration: a one-line message naming the source (file or override) and key."""


@dataclass
class ModelConfig:
    """Which detector to build.

    Attributes:
        name: a model of ``varifocal.list_models()``, e.g. ``'vfnet_r50_fpn'``.
        num_classes: number of foreground classes (must equal the dataset's).
        pretrained_backbone: ``True`` (the builder's default ImageNet weights), ``False``
            (random init), or a path to a backbone checkpoint.
        test_scale: ``(long_edge, short_edge)`` of the test-time keep-ratio resize (spec §6.1).
        load_from: optional checkpoint (varifocal or MMDetection) to initialise all weights from.
        use_vfl: classification loss of the head: ``True`` Varifocal Loss, ``False`` focal loss,
            ``None`` the detector's default (VFL for VFNet, FL for RetinaNet/FCOS/ATSS).
    """

    name: str = "vfnet_lite0_fpn"
    num_classes: int = 80
    pretrained_backbone: Union[bool, str] = True
    test_scale: tuple[int, int] = (1333, 800)
    load_from: Union[str, None] = None
    use_vfl: Union[bool, None] = None


@dataclass
class DataConfig:
    """Where the data is and how training images are augmented.

    Relative paths are taken relative to ``root`` (see :meth:`path`).

    Attributes:
        format: ``'coco'`` (JSON + image folder) or ``'voc'`` (``ImageSets/Main`` layout).
        root: base folder of the dataset.
        train_ann, val_ann, train_images, val_images: COCO annotation files and image folders.
        train_set, val_set: VOC image-set names (``ImageSets/Main/<set>.txt``).
        class_names: VOC class names in label order (``None``: the 20 VOC classes); COCO
            takes its classes from the annotation file.
        train_scale: ``(long, short)`` training resize when ``multiscale_mode`` is ``None``.
        multiscale_mode: ``None``, ``'value'`` or ``'range'`` (see
            :class:`varifocal.data.transforms.Resize`), with ``train_scales``.
        train_scales: candidate ``(long, short)`` pairs, e.g. ``[[1333, 480], [1333, 960]]``.
        flip_prob: horizontal flip probability.
        drop_empty: drop training images without annotations (MMDetection ``filter_empty_gt``).
        min_size: drop training images whose shorter side is below this (pixels).
        skip_bad_images: skip undecodable images instead of stopping.
        num_workers: DataLoader worker processes.
    """

    format: Literal["coco", "voc"] = "coco"
    root: str = "data/coco"
    train_ann: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    train_set: str = "trainval"
    val_set: str = "test"
    class_names: Union[list[str], None] = None
    train_scale: tuple[int, int] = (1333, 800)
    multiscale_mode: Union[Literal["value", "range"], None] = None
    train_scales: list[tuple[int, int]] = field(default_factory=list)
    flip_prob: float = 0.5
    drop_empty: bool = True
    min_size: int = 32
    skip_bad_images: bool = False
    num_workers: int = 2

    def path(self, relative: str) -> str:
        """``relative`` joined to ``root`` (unchanged when absolute or when ``root`` is empty)."""
        if not self.root or os.path.isabs(relative):
            return relative
        return os.path.join(self.root, relative)


@dataclass
class TrainConfig:
    """Optimiser, schedule and bookkeeping (spec §6.2).

    Attributes:
        epochs: number of epochs.
        batch_size: images per process per iteration (total batch = batch_size x world size).
        lr: base learning rate (0.01 for a total batch of 16).
        momentum, weight_decay: SGD settings.
        bias_lr_mult, bias_decay_mult: multipliers for non-norm biases (spec §6.2).
        warmup_iters, warmup_ratio: warm-up from ``lr * warmup_ratio`` over that many
            iterations (0 disables it).
        warmup: ``'linear'`` (ramp to ``lr``) or ``'constant'`` (``lr * warmup_ratio`` flat,
            then ``lr``; FCOS).
        lr_steps, lr_gamma: multiply the lr by ``lr_gamma`` after each listed epoch.
        grad_clip: max gradient L2 norm, or ``None`` (spec: none).
        amp: mixed precision on CUDA.
        seed: seed for the model init, the sampler and the augmentation.
        out_dir: where checkpoints, logs and the resolved config go.
        checkpoint_interval, eval_interval: in epochs (0 disables evaluation during training).
        log_interval: in iterations.
        resume: checkpoint to resume from, ``'auto'`` (latest in ``out_dir``), or ``None``.
    """

    epochs: int = 12
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_mult: float = 2.0
    bias_decay_mult: float = 0.0
    warmup_iters: int = 500
    warmup_ratio: float = 0.1
    warmup: Literal["linear", "constant"] = "linear"
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])
    lr_gamma: float = 0.1
    grad_clip: Union[float, None] = None
    amp: bool = False
    seed: int = 0
    out_dir: str = "work_dirs/vfnet"
    checkpoint_interval: int = 1
    eval_interval: int = 1
    log_interval: int = 50
    resume: Union[str, None] = None


@dataclass
class EvalConfig:
    """Inference settings (spec §5). ``null`` keeps the detector's own test setting (its
    MMDetection ``test_cfg``: score 0.05, 1000 per level, 100 per image; NMS 0.6 for VFNet and
    ATSS, 0.5 for RetinaNet and FCOS).

    Attributes:
        score_thr: keep (box, class) pairs with score strictly above this.
        nms_iou: class-aware NMS IoU threshold.
        nms_pre: candidates kept per FPN level before NMS.
        max_per_img: detections kept per image.
        batch_size: images per evaluation batch.
    """

    score_thr: Union[float, None] = None
    nms_iou: Union[float, None] = None
    nms_pre: Union[int, None] = None
    max_per_img: Union[int, None] = None
    batch_size: int = 1


@dataclass
class Config:
    """The whole configuration: ``model``, ``data``, ``train`` and ``eval`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# Type checking
# --------------------------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_type_name(args[0])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` converted to type ``tp``, or raise ``_Mismatch``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:  # in declaration order: bool before str, float before None...
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        return [_coerce(v, args[0]) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    raise TypeError(f"config.py: unsupported field type {tp!r}")


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        full = f"{prefix}{f.name}"
        keys.append(full)
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, f"{full}."))
    return keys


def _unknown_key(source: str, key: str) -> ConfigError:
    match = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.6)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return ConfigError(f"{source}: unknown key '{key}'{hint}")


def _set(obj: Any, key: str, name: str, value: Any, source: str) -> None:
    """Set field ``name`` of dataclass instance ``obj`` (full dotted key ``key``)."""
    hints = typing.get_type_hints(type(obj))
    if name not in hints or name not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown_key(source, key)
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section in YAML ("model:") changes nothing
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' is a section and needs a mapping, got {value!r}")
        _apply(getattr(obj, name), value, f"{key}.", source)
        return
    try:
        setattr(obj, name, _coerce(value, tp))
    except _Mismatch:
        raise ConfigError(
            f"{source}: '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        ) from None


def _apply(obj: Any, mapping: dict[str, Any], prefix: str, source: str) -> None:
    for name, value in mapping.items():
        if not isinstance(name, str):
            raise ConfigError(
                f"{source}: keys must be strings, got {name!r} under '{prefix.rstrip('.') or 'top level'}'"
            )
        _set(obj, f"{prefix}{name}", name, value, source)


def _apply_override(cfg: Config, override: str) -> None:
    source = f"override '{override}'"
    if "=" not in override:
        raise ConfigError(f"{source}: expected key=value, e.g. train.epochs=24")
    key, _, text = override.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{source}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: value is not valid YAML ({' '.join(str(exc).split())})") from None
    *parents, name = key.split(".")
    obj: Any = cfg
    walked = []
    for part in parents:
        walked.append(part)
        if part not in {f.name for f in dataclasses.fields(obj)} or not dataclasses.is_dataclass(getattr(obj, part)):
            raise _unknown_key(source, key)
        obj = getattr(obj, part)
    _set(obj, key, name, value, source)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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
      multiscale_mode); flip_prob in [0, 1]; min_size, num_workers >= 0.
    - ``train``: epochs, batch_size, checkpoint_interval, log_interval >= 1; lr > 0;
      momentum in [0, 1); weight_decay, bias_lr_mult, bias_decay_mult, warmup_iters,
      eval_interval >= 0; warmup_ratio in (0, 1]; lr_steps increasing positive epochs;
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
    t = cfg.train
    at_least("train.epochs", t.epochs, 1)
    at_least("train.batch_size", t.batch_size, 1)
    positive("train.lr", t.lr)
    need(0.0 <= t.momentum < 1.0, f"train.momentum must be in [0, 1), got {t.momentum}")
    at_least("train.weight_decay", t.weight_decay, 0)
    at_least("train.bias_lr_mult", t.bias_lr_mult, 0)
    at_least("train.bias_decay_mult", t.bias_decay_mult, 0)
    at_least("train.warmup_iters", t.warmup_iters, 0)
    need(0.0 < t.warmup_ratio <= 1.0, f"train.warmup_ratio must be in (0, 1], got {t.warmup_ratio}")
    need(
        all(b > a for a, b in zip([0] + t.lr_steps, t.lr_steps)),
        f"train.lr_steps must be increasing positive epochs, got {t.lr_steps}",
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


def config_from_dict(data: dict[str, Any] | None, source: str = "<dict>") -> Config:
    """Defaults updated with a (possibly partial) nested dict, type-checked and validated.

    Raises:
        ConfigError: unknown key, wrong type or invalid value.
    """
    cfg = Config()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    _apply(cfg, data, "", source)
    validate_config(cfg, source)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Build a :class:`Config`: defaults, then the YAML file, then the overrides in order.

    Args:
        path: YAML file holding a (partial) nested mapping, or ``None`` for the defaults.
        overrides: ``"section.key=value"`` strings; ``value`` is parsed with
            ``yaml.safe_load`` (``train.lr_steps=[16,22]``, ``model.load_from=null``).

    Returns:
        the validated configuration.

    Raises:
        ConfigError: unreadable/invalid YAML, unknown key (with a "did you mean" suggestion),
            wrong type, or invalid value; one line naming the file or the override.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg = Config()
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file ({type(exc).__name__})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise ConfigError(f"{path}: invalid YAML{where} ({problem})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        _apply(cfg, data, "", source)
    for override in overrides:
        _apply_override(cfg, override)
    validate_config(cfg, source if not overrides else f"{source} + overrides")
    return cfg


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The configuration as plain nested dicts/lists (YAML/JSON-ready; tuples become lists).
    ``config_from_dict(config_to_dict(cfg)) == cfg``."""
    return _plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved configuration as YAML, atomically (``load_config(path)`` gives it back).

    Raises:
        OSError: the directory is not writable.
    """
    from .utils.io import atomic_write

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, _write)
