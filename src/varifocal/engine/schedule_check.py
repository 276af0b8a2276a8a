"""Does the recipe fit the data? One-line warnings, each naming the fix (issue 16).

A recipe tuned for one dataset (the bundled BCCD one: 292 images, 73 iterations per epoch) can
silently fail on another: with six training images the same 12 epochs are 24 iterations, the
200-iteration warm-up never ends and the lr steps fall inside it; with 10000-pixel orthophotos
resized to 640×480 the objects shrink below the smallest stride. :func:`check_training` finds
these before the first iteration; the trainer prints its lines and goes on (they are
warnings: the run can still be what the user wants).

The rules (each a pure function of the config and the numbers given):

- **warm-up longer than the run**: warm-up iterations >= epochs × iterations per epoch;
- **lr steps inside the warm-up**: a step's iteration is below the warm-up length;
- **lr steps after the run**: an epoch step ``s >= train.epochs`` (never applied);
- **a batch larger than the data**: fewer images (× repeat) than one total batch, so each
  batch repeats images;
- **an epoch shorter than one batch per worker**: iterations per epoch < ``data.num_workers``
  (workers restart every epoch and some never get a batch);
- **objects much smaller than the smallest stride**: at the smallest training scale or the
  test scale, the median box side (``sqrt(w·h)`` after the keep-ratio resize) is below the
  smallest stride, or over a quarter of the boxes are below half of it. BCCD at 640×480
  (median 102 px, 5th percentile 42 px) is far from both;
- **large images shrunk for training**: without ``data.tiles``, the median training image has
  :data:`LARGE_IMAGE_PIXELS` or more and is shrunk by :data:`SHRINK_FACTOR` or more at the
  smallest training scale (a 2560×1920 image at
  640×480: 4×), so its objects lose that much resolution while tiles would keep it. The fix is
  tiles of the test scale's size (and ``--tiles`` at test time), the "Large images" recipe.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..data.sampler import AspectRatioGroupedBatchSampler
from ..data.stats import box_sides, resize_factors, smallest_train_scale, test_scale, tile_size
from .optim import resolve_schedule

__all__ = [
    "DEFAULT_STRIDES",
    "check_training",
    "downscale_warnings",
    "estimate_iters_per_epoch",
    "model_strides",
    "object_size_warnings",
    "schedule_warnings",
]

#: FPN strides of every bundled detector (P3-P7)
DEFAULT_STRIDES = (8, 16, 32, 64, 128)

#: fraction of boxes under half the smallest stride above which the objects are "too small"
SMALL_FRACTION = 0.25

#: box side (in smallest strides) that the suggested scale or tile size aims the median at
TARGET_STRIDES = 4


def model_strides(model: Any) -> tuple[int, ...]:
    """The FPN strides of a detector: its head's ``strides`` (every bundled head has them),
    else :data:`DEFAULT_STRIDES`."""
    strides = getattr(getattr(model, "bbox_head", None), "strides", None)
    return tuple(int(s) for s in strides) if strides else DEFAULT_STRIDES


def estimate_iters_per_epoch(
    num_images: int, batch_size: int, world_size: int = 1, repeat: int = 1, min_iters: int = 0
) -> int:
    """Iterations per epoch and process for ``num_images`` images in one aspect-ratio group:
    what :class:`~varifocal.data.sampler.AspectRatioGroupedBatchSampler` gives (two groups
    can add a padded batch). For a dataset that is not at hand (e.g. COCO's 118287 images).

    Raises:
        ValueError: ``num_images < 1`` or a bad batch size, world size or repeat.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    return _one_group_sampler(num_images, batch_size, world_size, repeat, min_iters).batches_per_epoch()


def _one_group_sampler(
    num_images: int, batch_size: int, world_size: int, repeat: int, min_iters: int
) -> AspectRatioGroupedBatchSampler:
    return AspectRatioGroupedBatchSampler(
        np.zeros(num_images, dtype=np.int64),
        batch_size,
        world_size=world_size,
        repeat=repeat,
        min_batches_per_epoch=min_iters,
    )


def _fmt(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def _warmup_fix(t: Any, sched: Any) -> str:
    """The config change that makes the warm-up fit: a warm-up of ``w`` epochs (1, or less for
    a run of under 4 epochs or a first step within 2 epochs: half of it), or, for a warm-up in
    iterations before epoch steps, epochs long enough for it to last ``w`` epochs."""
    ipe = sched.iters_per_epoch
    w = min(1.0, t.epochs / 4)
    if sched.step_epochs:
        w = min(w, sched.step_epochs[0] / 2)
    if sched.step_iters:
        w = min(w, sched.step_iters[0] / (2 * ipe))
    w = max(0.01, math.floor(w * 100) / 100)
    fix = f"set train.warmup_epochs={_fmt(w)}"
    if t.warmup_epochs is None and sched.step_iters is None:
        fix += f" or data.min_iters_per_epoch={math.ceil(sched.warmup_iters / w)}"
    return fix


def schedule_warnings(
    cfg: Any, num_images: int, iters_per_epoch: int, world_size: int = 1, repeat: int | None = None
) -> list[str]:
    """The schedule rules of the module docstring for a run of ``cfg`` whose epochs have
    ``iters_per_epoch`` iterations per process, over ``num_images`` training images.

    Args:
        cfg: a :class:`varifocal.config.Config`.
        num_images: training images (before repetition).
        iters_per_epoch: iterations per epoch and process (the sampler's ``batches_per_epoch()``).
        world_size: processes.
        repeat: the effective repeat factor (default ``cfg.data.repeat``).

    Returns:
        one line per problem, each ending with the config change that fixes it.
    """
    t, d = cfg.train, cfg.data
    repeat = d.repeat if repeat is None else repeat
    sched = resolve_schedule(t, max(1, iters_per_epoch))
    total = t.epochs * iters_per_epoch
    warm = sched.warmup_iters
    warm_text = (
        f"{_fmt(warm)} iterations" if t.warmup_epochs is None else f"{_fmt(t.warmup_epochs)} epochs = {_fmt(warm)} it."
    )
    fix = _warmup_fix(t, sched)
    run = f"{total} iterations: {t.epochs} epochs × {iters_per_epoch} per epoch"
    lines = []
    if warm > 0 and warm >= total:
        lines.append(
            f"the warm-up ({warm_text}) is longer than the whole run ({run}): the lr never reaches train.lr; {fix}"
        )
    inside = [b for b in sched.step_boundaries if b < warm]
    if warm > 0 and inside:
        key = "train.lr_step_iters" if t.lr_step_iters is not None else "train.lr_steps"
        given = t.lr_step_iters if t.lr_step_iters is not None else t.lr_steps
        at = ", ".join(_fmt(math.ceil(b)) for b in inside)
        lines.append(
            f"{key}={list(given)} decays the lr at iteration{'s' if len(inside) > 1 else ''} {at}, inside the warm-up ({warm_text}): "
            f"the lr is cut before it reaches train.lr; {fix}"
        )
    if t.lr_step_iters is None:
        late = [s for s in t.lr_steps if s >= t.epochs]
        if late:
            keep = [s for s in t.lr_steps if s < t.epochs]
            lines.append(
                f"train.lr_steps={list(t.lr_steps)} has steps at or after the last epoch ({', '.join(map(_fmt, late))} "
                f">= train.epochs={t.epochs}) that are never applied; set train.lr_steps={keep} or raise train.epochs"
            )
    elif any(s >= total for s in t.lr_step_iters):
        keep = [s for s in t.lr_step_iters if s < total]
        lines.append(
            f"train.lr_step_iters={list(t.lr_step_iters)} has steps at or after the run's last iteration ({run}) "
            f"that are never applied; set train.lr_step_iters={keep} or raise train.epochs"
        )
    total_batch = t.batch_size * world_size
    if num_images * repeat < total_batch:
        lines.append(
            f"the training set ({num_images} images × {repeat} repeat) is smaller than one batch ({t.batch_size} images "
            f"× {world_size} processes): every batch repeats images; set train.batch_size="
            f"{max(1, num_images * repeat // world_size)} or data.repeat={math.ceil(total_batch / num_images)}"
        )
    if 0 < iters_per_epoch < d.num_workers:
        lines.append(
            f"an epoch has {iters_per_epoch} iterations, fewer than data.num_workers={d.num_workers}: workers restart "
            f"every epoch and {d.num_workers - iters_per_epoch} never get a batch; set data.num_workers={iters_per_epoch} "
            f"or data.min_iters_per_epoch={d.num_workers}"
        )
    return lines


def object_size_warnings(cfg: Any, records: Sequence[Any], strides: Sequence[int] = DEFAULT_STRIDES) -> list[str]:
    """The object-size rule of the module docstring for training ``records`` (objects with
    ``width``, ``height``, ``boxes``) under ``cfg``'s smallest training scale and test scale.

    With ``data.tiles.size`` set, images larger than a tile are measured as tiles (what tiled
    training and sliced inference resize). The fix aims the median box side at
    :data:`TARGET_STRIDES` smallest strides (32 px for stride 8): a scale that much larger
    first when that is at most twice the configured one, else tiles whose side is
    ``short_edge × median_original_side / 32`` (each resized to the configured scale) first.

    Returns:
        at most one line (naming the worse scale), empty when the boxes are large enough or
        there are none.
    """
    stride = min(strides)
    original = box_sides(records)
    if original.size == 0:
        return []
    d = cfg.data
    train_keep = d.keep_ratio and d.pipeline != "ssd"
    scales = {"training": (smallest_train_scale(d), train_keep), "test": (test_scale(cfg), d.keep_ratio)}
    tile = tile_size(d)
    worst = None
    for name, (scale, keep_ratio) in scales.items():
        sides = box_sides(records, scale, tile, keep_ratio=keep_ratio)
        median, small = float(np.median(sides)), float(np.mean(sides < stride / 2))
        if (median < stride or small > SMALL_FRACTION) and (worst is None or median < worst[2]):
            worst = (name, scale, median, small)
    if worst is None:
        return []
    name, scale, median, small = worst
    orig_median = float(np.median(original))
    target = TARGET_STRIDES * stride
    grow = target / max(median, 1e-6)
    bigger = [math.ceil(scale[0] * grow), math.ceil(scale[1] * grow)]
    scale_key = "data.train_scale" if d.multiscale_mode is None else "data.train_scales"
    tile_side = max(1, int(min(scale) * orig_median / target))
    image_long = float(np.median([max(r.width, r.height) for r in records]))
    upscale = f"raise {scale_key} and model.test_scale to about {bigger}"
    if hasattr(d, "tiles"):
        tiles = f"{'set' if tile is None else 'shrink the tiles to'} data.tiles.size={tile_side}"
    else:
        tiles = f"cut the images into tiles of about {tile_side}×{tile_side} px"
    if orig_median < target / 2:
        tiles += f" (upsampled: the boxes are only {orig_median:.0f} px in the original images)"
    # a scale up to twice the configured one costs at most 4x the memory: cheaper than tiling
    fix = f"{upscale}, or {tiles}" if grow <= 2 else f"{tiles}, or {upscale}"
    where = f"{name} scale {list(scale)}" + ("" if tile is None else f" of {tile[0]}×{tile[1]} tiles")
    return [
        f"objects are much smaller than the smallest stride ({stride} px) at the {where}: "
        f"median box side {median:.1f} px ({small:.0%} under {_fmt(stride / 2)} px; {orig_median:.0f} px in the "
        f"original {image_long:.0f}-px images), so few points/anchors can match them; {fix}"
    ]


#: A median training image shrunk at least this much (without tiles) gets the tiling warning,
#: when it is a large image (at least LARGE_IMAGE_PIXELS: about 1.5 megapixels).
SHRINK_FACTOR = 3.0
LARGE_IMAGE_PIXELS = 1.5e6


def downscale_warnings(cfg: Any, records: Sequence[Any]) -> list[str]:
    """The large-image rule of the module docstring for training ``records`` (objects with
    ``width``, ``height``); at most one line, empty with ``data.tiles`` on or small images."""
    d = cfg.data
    if not records or tile_size(d) is not None:
        return []
    scale = smallest_train_scale(d)
    widths = np.array([r.width for r in records], dtype=np.float64)
    heights = np.array([r.height for r in records], dtype=np.float64)
    keep_ratio = d.keep_ratio and d.pipeline != "ssd"
    shrink = 1.0 / float(np.median(resize_factors(widths, heights, scale, keep_ratio)))
    if shrink < SHRINK_FACTOR or float(np.median(widths * heights)) < LARGE_IMAGE_PIXELS:
        return []
    long_side, short_side = max(cfg.model.test_scale), min(cfg.model.test_scale)  # tiles the model sees whole
    image = f"{np.median(widths):.0f}×{np.median(heights):.0f}"
    return [
        f"training images are shrunk {shrink:.1f}× (median {image} px to the training scale {list(scale)}), and "
        f"their objects with them; train on tiles at full resolution: set data.tiles.size=[{long_side}, {short_side}] "
        f"and predict/val with --tiles {long_side}x{short_side} (README 'Large images')"
    ]


def check_training(
    cfg: Any,
    num_images: int,
    iters_per_epoch: int | None = None,
    world_size: int = 1,
    records: Sequence[Any] | None = None,
    strides: Sequence[int] = DEFAULT_STRIDES,
    repeat: int | None = None,
) -> list[str]:
    """All warnings of the module docstring: :func:`schedule_warnings` then (with ``records``)
    :func:`object_size_warnings`.

    Args:
        cfg: a :class:`varifocal.config.Config`.
        num_images: training images.
        iters_per_epoch: iterations per epoch and process; ``None``: estimated by
            :func:`estimate_iters_per_epoch` from ``cfg`` (batch size, repeat, min iterations).
        world_size: processes.
        records: the training records for the object-size rule (skipped when ``None``).
        strides: the detector's FPN strides (:func:`model_strides`).
        repeat: the effective repeat factor (the sampler's ``repeat``; default from ``cfg``).

    Returns:
        one-line warnings, each naming the fix; empty when the recipe fits the data.
    """
    d = cfg.data
    if iters_per_epoch is None:
        sampler = _one_group_sampler(
            max(1, num_images), cfg.train.batch_size, world_size, d.repeat, d.min_iters_per_epoch
        )
        iters_per_epoch, repeat = sampler.batches_per_epoch(), sampler.repeat
    lines = schedule_warnings(cfg, num_images, iters_per_epoch, world_size, repeat)
    if records is not None:
        # the object-size fix names its own tile size; the large-image one only when that is silent
        lines += object_size_warnings(cfg, records, strides) or downscale_warnings(cfg, records)
    return lines
