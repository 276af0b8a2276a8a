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
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, Union

import yaml

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "TilesConfig",
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
            ``None`` the detector's default (VFL for VFNet, FL for RetinaNet/FCOS/ATSS/FoveaBox/
            RepPoints).
    """

    name: str = "vfnet_lite0_fpn"
    num_classes: int = 80
    pretrained_backbone: Union[bool, str] = True
    test_scale: tuple[int, int] = (1333, 800)
    load_from: Union[str, None] = None
    use_vfl: Union[bool, None] = None


@dataclass
class TilesConfig:
    """Tiled training (issue 16; :mod:`varifocal.data.tiles`): large training images are cut
    into overlapping tiles on the fly; images that fit in one tile pass unchanged.

    Attributes:
        size: ``(width, height)`` of a tile in pixels, or one integer for a square tile;
            ``null`` (default): no tiling.
        overlap: fraction of a tile shared by neighbouring tiles, in ``[0, 1)``.
        min_visibility: a box cut by a tile border stays a target when at least this fraction of
            its area is inside the tile, in ``(0, 1]``.
        jitter: move the interior tile borders every epoch (seeded by ``train.seed``).

    With tiles, the evaluations during training are sliced as well (tiles of ``size`` with
    ``overlap``, NMS merging; ``varifocal.engine.steps.val_slicing``), on the whole images.
    """

    size: Union[tuple[int, int], int, None] = None
    overlap: float = 0.2
    min_visibility: float = 0.5
    jitter: bool = True

    def wh(self) -> Union[tuple[int, int], None]:
        """``(width, height)`` of a tile, or ``None`` when tiling is off."""
        if self.size is None:
            return None
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)


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
        tiles: tiled training (:class:`TilesConfig`; off unless ``tiles.size`` is set).
        repeat: passes over the training set per epoch (MMDetection ``RepeatDataset``; each pass
            a fresh shuffle with its own augmentation draws; 1: one pass). For tiny datasets,
            so that an epoch is more than a batch or two (issue 16).
        min_iters_per_epoch: raise the repeat factor to the smallest value (>= ``repeat``)
            that gives an epoch at least this many iterations per process (0: off).
        pipeline: training augmentation: ``'default'`` (resize, flip: spec §6.1) or ``'ssd'``
            (SSD's photometric distortion, zoom-out expansion, min-IoU random crop, warp resize
            to ``train_scale`` as ``(width, height)``, flip: ``refinedet_spec.md`` §11).
        ssd_expand_ratio: the ``'ssd'`` pipeline's largest zoom-out ratio (SSD's 4; a smaller
            one keeps small objects, e.g. BCCD's platelets, nearer their test size).
        keep_ratio: ``True``: keep-ratio resizes to ``(long, short)`` scales (MMDetection);
            ``False``: warp (stretch) to ``(width, height)``, as SSD and RefineDet test
            (``refinedet_spec.md`` §1), for the validation images too.
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
    tiles: TilesConfig = field(default_factory=TilesConfig)
    repeat: int = 1
    min_iters_per_epoch: int = 0
    pipeline: Literal["default", "ssd"] = "default"
    ssd_expand_ratio: float = 4.0
    keep_ratio: bool = True

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
        warmup_epochs: the warm-up length in epochs instead (fractional allowed: ``0.5`` is
            half an epoch's iterations); replaces ``warmup_iters`` when not ``null``.
        warmup: ``'linear'`` (ramp to ``lr``) or ``'constant'`` (``lr * warmup_ratio`` flat,
            then ``lr``; FCOS).
        lr_steps, lr_gamma: multiply the lr by ``lr_gamma`` after each listed epoch; a
            fractional epoch ``7.5`` steps in the middle of epoch 8 (at the first iteration
            at or past ``7.5 x`` iterations per epoch).
        lr_step_iters: the steps as global iterations instead (the lr is multiplied from
            each listed iteration on); replaces ``lr_steps`` when not ``null``.
        grad_clip: max gradient L2 norm, or ``None`` (spec: none).
        amp: float16 mixed precision on CUDA (the older name of ``precision: fp16``).
        precision: ``'fp32'`` (default), ``'bf16'`` (autocast; on the CPU also channels-last;
            losses and box decoding stay float32), ``'fp16'`` (CUDA, with a grad scaler) or
            ``'auto'`` (bf16 on a CPU with AMX, else fp32); :mod:`varifocal.utils.precision`.
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
    warmup_epochs: Union[float, None] = None
    warmup_ratio: float = 0.1
    warmup: Literal["linear", "constant"] = "linear"
    lr_steps: list[Union[int, float]] = field(default_factory=lambda: [8, 11])
    lr_step_iters: Union[list[int], None] = None
    lr_gamma: float = 0.1
    grad_clip: Union[float, None] = None
    amp: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
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
    ATSS, 0.5 for RetinaNet, FCOS, FoveaBox and RepPoints).

    Attributes:
        score_thr: keep (box, class) pairs with score strictly above this.
        nms_iou: class-aware NMS IoU threshold.
        nms_pre: candidates kept per FPN level before NMS.
        max_per_img: detections kept per image.
        batch_size: images per evaluation batch.
        backend: COCOeval implementation: ``'auto'`` (faster-coco-eval when installed, else
            pycocotools; the same numbers, ``benchmarks/bench_coco_eval.py``), ``'pycocotools'``
            or ``'faster_coco_eval'``.
        max_dets: detections per image that COCO AP counts (100 in the COCO protocol; raise
            it, and ``max_per_img``, for images with hundreds of objects).
        report: the training run's final evaluation also writes the evaluation report
            (``<out_dir>/report/``: PR/F1 curves, confusion matrix, TIDE errors, score-vs-IoU
            calibration; needs matplotlib) and saves the per-class best-F1 score thresholds in
            the checkpoints (``varifocal predict --score-thr best``).
        metric: what the evaluations report and rank checkpoints by: ``'coco'`` (COCO AP, the
            default), ``'voc07'`` (PASCAL VOC mAP at IoU 0.5, 11-point, difficult objects
            ignored) or ``'voc12'`` (the same, all-point area); the VOC metrics come with the
            COCO numbers as well.
    """

    score_thr: Union[float, None] = None
    nms_iou: Union[float, None] = None
    nms_pre: Union[int, None] = None
    max_per_img: Union[int, None] = None
    batch_size: int = 1
    backend: Literal["auto", "pycocotools", "faster_coco_eval"] = "auto"
    max_dets: int = 100
    report: bool = True
    metric: Literal["coco", "voc07", "voc12"] = "coco"


@dataclass
class Config:
    """The whole configuration: ``model``, ``data``, ``train`` and ``eval`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# The type checking and the range checks live in private modules that use the dataclasses above.
from ._config_coerce import _apply, _apply_override  # noqa: E402
from ._config_validate import validate_config  # noqa: E402

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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
