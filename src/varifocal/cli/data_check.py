"""``varifocal data check CONFIG [overrides]``: does the data fit the recipe? (issue 16)

Reads the training set (and the validation set when ``train.eval_interval > 0``) of the config
exactly as ``train`` would, and prints: image and box counts (per class), empty images,
degenerate annotations dropped, the box side distribution in original pixels and at the
training and test scales against the detector's strides, the schedule in iterations, and the
warnings of :func:`varifocal.engine.schedule_check.check_training` with their fixes. Nothing is
written. Exit 0; bad input ends with the CLI's one-line errors (exit 2).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

import numpy as np

from ..config import Config, ConfigError, load_config
from ..data import AspectRatioGroupedBatchSampler, DataError
from ..data.stats import DatasetStats, box_sides, dataset_stats, smallest_train_scale, test_scale, tile_size
from ..engine.optim import resolve_schedule
from ..engine.schedule_check import DEFAULT_STRIDES, check_training
from ..models.zoo import list_models
from .common import UsageError, unknown_model_hint

__all__ = ["cmd_data_check", "format_size_table", "detector_strides"]

#: percentiles of the box side table
_PERCENTILES = (5, 25, 50, 75, 95)


def detector_strides(cfg: Config) -> tuple[int, ...]:
    """The FPN strides of ``cfg.model.name``, read from its head built on the meta device
    (no weights, no memory).

    Raises:
        ConfigError: ``model.name`` is not a varifocal model.
    """
    if cfg.model.name not in list_models():
        raise ConfigError(
            f"model.name={cfg.model.name!r} is not a varifocal model; {unknown_model_hint(cfg.model.name)}"
        )
    import torch

    from ..engine.schedule_check import model_strides
    from ..models.zoo import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg.model.name, num_classes=cfg.model.num_classes, pretrained_backbone=False)
    except ImportError:  # an optional backbone package is missing: the strides are the standard ones
        return DEFAULT_STRIDES
    return model_strides(model)


def format_size_table(rows: Sequence[tuple[str, np.ndarray]], stride: int) -> list[str]:
    """Lines of a box side table: one row per ``(label, sides)`` with min, the percentiles of
    :data:`_PERCENTILES`, max (pixels) and the share of boxes under half the smallest
    ``stride`` and under it."""
    head = (
        ["box side √(w·h), px", "min"] + [f"p{p}" for p in _PERCENTILES] + ["max", f"<{stride / 2:g}px", f"<{stride}px"]
    )
    table = [head]
    for label, sides in rows:
        if sides.size == 0:
            table.append([label, "-"] + ["-"] * len(_PERCENTILES) + ["-", "-", "-"])
            continue
        values = [sides.min(), *np.percentile(sides, _PERCENTILES), sides.max()]
        table.append(
            [label]
            + [f"{v:.1f}" for v in values]
            + [f"{np.mean(sides < stride / 2):.1%}", f"{np.mean(sides < stride):.1%}"]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    return [
        "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in table
    ]


def _describe(name: str, ds: Any, stats: DatasetStats) -> list[str]:
    (lmin, lmed, lmax), (smin, smed, smax) = stats.image_sizes
    lines = [
        f"{name} set {ds.source}: {stats.num_images} images ({stats.num_filtered} dropped by data.drop_empty/"
        f"data.min_size), {stats.num_boxes} boxes, {stats.empty_images} images without a box, "
        f"{stats.num_degenerate} degenerate annotations dropped, {stats.num_crowd} crowd/ignore regions",
        f"  image size: long side {lmin:.0f}/{lmed:.0f}/{lmax:.0f}, short side {smin:.0f}/{smed:.0f}/{smax:.0f} "
        "px (min/median/max)",
    ]
    names = list(getattr(ds, "class_names", []))
    width = max([len("class")] + [len(n) for n in names])
    lines.append(f"  {'class'.ljust(width)}  boxes")
    for n, count in zip(names, stats.boxes_per_class):
        lines.append(f"  {n.ljust(width)}  {count:5d}")
    return lines


def _schedule_line(cfg: Config, ipe: int, repeat: int, world: int) -> str:
    t = cfg.train
    sched = resolve_schedule(t, ipe)
    steps = ", ".join(f"{b:g}" for b in sched.step_boundaries) or "none"
    return (
        f"schedule: {ipe} iterations per epoch ({t.batch_size} images × {world} processes, repeat {repeat}), "
        f"{ipe * t.epochs} in {t.epochs} epochs; warm-up {sched.warmup_iters:g} iterations; lr steps at iterations "
        f"{steps}"
    )


def cmd_data_check(args: argparse.Namespace) -> int:
    """Run ``data check`` (see the module docstring)."""
    from ..engine.build import build_datasets

    cfg = load_config(args.config, args.overrides)
    world = args.world_size if args.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise UsageError(f"--world-size must be >= 1, got {world}")
    strides = detector_strides(cfg)
    train_ds, val_ds = build_datasets(cfg, train=True, val=cfg.train.eval_interval > 0)
    if len(train_ds) == 0:
        raise DataError(
            f"{train_ds.source}: the training set has no images; check data.train_ann / data.train_images "
            "(and data.min_size, data.drop_empty)"
        )
    stats = dataset_stats(train_ds)
    lines = [f"data check of {args.config or 'the defaults'} (model {cfg.model.name}, strides {list(strides)})"]
    lines += _describe("training", train_ds, stats)
    train_scale, eval_scale = smallest_train_scale(cfg.data), test_scale(cfg)
    train_keep = cfg.data.keep_ratio and cfg.data.pipeline != "ssd"
    tile = tile_size(cfg.data)
    tiled = "" if tile is None else f" ({tile[0]}×{tile[1]} tiles)"
    rows = [
        ("original", stats.sides),
        (
            f"training {train_scale[0]}×{train_scale[1]}{tiled}",
            box_sides(train_ds.records, train_scale, tile, keep_ratio=train_keep),
        ),
        (
            f"test {eval_scale[0]}×{eval_scale[1]}{tiled}",
            box_sides(train_ds.records, eval_scale, tile, keep_ratio=cfg.data.keep_ratio),
        ),
    ]
    lines += format_size_table(rows, min(strides))
    if val_ds is not None:
        val_stats = dataset_stats(val_ds)
        lines += _describe("validation", val_ds, val_stats)
        lines += format_size_table(
            [
                ("original", val_stats.sides),
                (
                    f"test {eval_scale[0]}×{eval_scale[1]}{tiled}",
                    box_sides(val_ds.records, eval_scale, tile, keep_ratio=cfg.data.keep_ratio),
                ),
            ],
            min(strides),
        )
    sampler = AspectRatioGroupedBatchSampler(
        train_ds,
        cfg.train.batch_size,
        world_size=world,
        repeat=cfg.data.repeat,
        min_batches_per_epoch=cfg.data.min_iters_per_epoch,
    )
    ipe = sampler.batches_per_epoch()
    lines.append(_schedule_line(cfg, ipe, sampler.repeat, world))
    warnings = check_training(cfg, len(train_ds), ipe, world, train_ds.records, strides, sampler.repeat)
    if stats.num_boxes == 0:
        warnings.insert(0, "the training set has no box: training would stop; check data.train_ann")
    lines += [f"warning: {w}" for w in warnings] or ["no warnings: the recipe fits the data"]
    print("\n".join(lines))
    return 0
