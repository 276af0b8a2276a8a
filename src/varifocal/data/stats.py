"""Box statistics of a detection set, in original pixels and at a keep-ratio scale (issue 16).

They answer "can this detector see these objects at this scale?": a box whose side after the
resize is below the smallest FPN stride (8 px for every bundled detector) falls between the
points/anchors of the finest level. The box side is ``sqrt(w·h)`` (COCO sizes by area: 32² and
96² separate small, medium and large).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "DatasetStats",
    "box_sides",
    "dataset_stats",
    "keep_ratio_factors",
    "resize_factors",
    "smallest_train_scale",
    "test_scale",
    "tile_size",
]


def keep_ratio_factors(widths: np.ndarray, heights: np.ndarray, scale: Sequence[int]) -> np.ndarray:
    """The resize factor of each image under a keep-ratio resize to ``scale``.

    ``min(long / max(w, h), short / min(w, h))`` with ``(long, short) = (max(scale),
    min(scale))`` (MMDetection ``keep_ratio``, :func:`varifocal.models.preprocess.keep_ratio_size`
    before its rounding of the new size).

    Args:
        widths, heights: ``[N]`` image sizes in pixels (positive).
        scale: ``(long_edge, short_edge)``, order free.

    Returns:
        float64 ``[N]``.
    """
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    return np.minimum(max(scale) / np.maximum(w, h), min(scale) / np.minimum(w, h))


def resize_factors(
    widths: np.ndarray, heights: np.ndarray, scale: Sequence[int], keep_ratio: bool = True
) -> np.ndarray:
    """The factor by which each image's box sides ``sqrt(w·h)`` change under its resize:
    :func:`keep_ratio_factors`, or for a warp to ``scale = (width, height)`` (``data.keep_ratio:
    false``) the geometric mean ``sqrt(scale_w / w · scale_h / h)`` of the two axes' factors.

    Returns:
        float64 ``[N]``.
    """
    if keep_ratio:
        return keep_ratio_factors(widths, heights, scale)
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    return np.sqrt(float(scale[0]) / w * float(scale[1]) / h)


def box_sides(
    records: Sequence[Any],
    scale: Sequence[int] | None = None,
    tile: Sequence[int] | None = None,
    keep_ratio: bool = True,
) -> np.ndarray:
    """``sqrt(w·h)`` of every training box of ``records``, in original pixels (``scale=None``)
    or after each image's resize to ``scale`` (keep-ratio, or a warp to ``(width, height)``
    with ``keep_ratio=False``; see :func:`resize_factors`).

    With ``tile = (tile_w, tile_h)`` an image larger than a tile is resized as a tile
    (``min(w, tile_w) x min(h, tile_h)``, what tiled training and sliced inference feed the
    model); smaller images as themselves.

    Args:
        records: objects with ``width``, ``height`` and ``boxes`` (float ``[K, 4]`` xyxy), e.g.
            :class:`varifocal.data.base.ImageRecord`.
        scale: ``(long_edge, short_edge)`` or ``None``.
        tile: ``(width, height)`` of the tiles, or ``None``.

    Returns:
        float64 ``[sum K]`` in pixels (empty when there is no box).
    """
    parts = []
    for r in records:
        boxes = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            continue
        side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
        if scale is not None:
            w, h = (r.width, r.height) if tile is None else (min(r.width, tile[0]), min(r.height, tile[1]))
            side = side * float(resize_factors(np.array([w]), np.array([h]), scale, keep_ratio)[0])
        parts.append(side)
    return np.concatenate(parts) if parts else np.zeros(0)


def smallest_train_scale(data_cfg: Any) -> tuple[int, int]:
    """The training scale that shrinks images the most: ``data.train_scale`` without
    multiscale, else ``(min long edge, min short edge)`` of ``data.train_scales`` (the lower
    end of the ``'range'`` draws; for ``'value'`` a lower bound of its candidates). With
    ``data.keep_ratio: false`` or ``data.pipeline: ssd``: ``data.train_scale`` as
    ``(width, height)``."""
    if not getattr(data_cfg, "keep_ratio", True) or getattr(data_cfg, "pipeline", "default") == "ssd":
        return (int(data_cfg.train_scale[0]), int(data_cfg.train_scale[1]))
    if data_cfg.multiscale_mode is None or not data_cfg.train_scales:
        return (max(data_cfg.train_scale), min(data_cfg.train_scale))
    return (min(max(s) for s in data_cfg.train_scales), min(min(s) for s in data_cfg.train_scales))


def test_scale(cfg: Any) -> tuple[int, int]:
    """``model.test_scale`` as ``(long, short)``, or as ``(width, height)`` with
    ``data.keep_ratio: false``."""
    scale = tuple(int(v) for v in cfg.model.test_scale)
    return scale if not getattr(cfg.data, "keep_ratio", True) else (max(scale), min(scale))


def tile_size(data_cfg: Any) -> tuple[int, int] | None:
    """``(width, height)`` of ``data.tiles`` when tiled training is on, else ``None``."""
    tiles = getattr(data_cfg, "tiles", None)
    wh = tiles.wh() if tiles is not None and hasattr(tiles, "wh") else None
    return (int(wh[0]), int(wh[1])) if wh else None


@dataclass
class DatasetStats:
    """Counts and sizes of a detection set (what ``varifocal data check`` prints).

    Attributes:
        num_images: images kept (after ``drop_empty`` / ``min_size``).
        num_filtered: images dropped by ``drop_empty`` / ``min_size``.
        num_boxes: training boxes (crowd, ignored and degenerate ones excluded).
        boxes_per_class: ``[C]`` boxes of each label.
        empty_images: kept images without any training box (trained as all-negative).
        num_degenerate: annotations dropped as degenerate (side < 1 px, no area, off-image).
        num_crowd: crowd / difficult boxes (ignore regions, not trained on).
        image_sizes: ``(min, median, max)`` of the image long side and of the short side,
            pixels: ``((long_min, long_med, long_max), (short_min, short_med, short_max))``.
        sides: float64 ``[num_boxes]`` box sides ``sqrt(w·h)`` in original pixels.
    """

    num_images: int
    num_filtered: int
    num_boxes: int
    boxes_per_class: list[int]
    empty_images: int
    num_degenerate: int
    num_crowd: int
    image_sizes: tuple[tuple[float, float, float], tuple[float, float, float]]
    sides: np.ndarray = field(repr=False)


def dataset_stats(dataset: Any) -> DatasetStats:
    """:class:`DatasetStats` of any dataset with ``records`` (a list of
    :class:`~varifocal.data.base.ImageRecord`-like objects) and ``class_names``.

    Raises:
        ValueError: the dataset has no ``records``.
    """
    records = getattr(dataset, "records", None)
    if records is None:
        raise ValueError(f"{type(dataset).__name__} has no records to compute statistics from")
    num_classes = len(getattr(dataset, "class_names", ()))
    labels = [np.asarray(r.labels, dtype=np.int64).reshape(-1) for r in records]
    all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    per_class = np.bincount(all_labels, minlength=num_classes) if all_labels.size else np.zeros(num_classes, int)
    longs = np.array([max(r.width, r.height) for r in records], dtype=np.float64)
    shorts = np.array([min(r.width, r.height) for r in records], dtype=np.float64)

    def spread(v: np.ndarray) -> tuple[float, float, float]:
        return (float(v.min()), float(np.median(v)), float(v.max())) if v.size else (0.0, 0.0, 0.0)

    return DatasetStats(
        num_images=len(records),
        num_filtered=int(getattr(dataset, "num_filtered", 0)),
        num_boxes=int(all_labels.size),
        boxes_per_class=[int(c) for c in per_class],
        empty_images=sum(1 for lab in labels if lab.size == 0),
        num_degenerate=sum(int(getattr(r, "num_degenerate", 0)) for r in records),
        num_crowd=sum(len(getattr(r, "crowd_boxes", ())) for r in records),
        image_sizes=(spread(longs), spread(shorts)),
        sides=box_sides(records),
    )
