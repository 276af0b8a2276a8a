"""Tiles of large images: the tile grid, box clipping with a visibility rule, and tiled training
(issue 16).

Tile grid (:func:`tile_starts`, :func:`tile_grid`): along an axis of ``length`` pixels, tiles of
``tile`` pixels start at ``0, step, 2·step, …`` with ``step = tile − round(overlap · tile)``
(at least 1), and the last tile is moved back to end flush with the border, so the tiles cover
the axis and no tile leaves the image. An axis no longer than a tile has one tile, the whole
axis. A ``1000×600`` image with ``400×400`` tiles and overlap 0.2 (step 320) has x starts
``0, 320, 600`` and y starts ``0, 200``: six tiles. The 2-D grid is the product (row-major: y
outer, x inner); the same grid slices images at test time (:mod:`varifocal.engine.sliced`).

Boxes in a tile (:func:`crop_boxes`, :func:`crop_record`): each box is clipped to the tile and
kept when ``visible area / area ≥ min_visibility``, where ``area`` is that of the box clipped to
the image (so a box that already hung over the image border is not penalised twice), and both
sides of the clipped box are at least 1 pixel (the readers' degenerate rule,
:mod:`varifocal.data.base`). Crowd (ignore) boxes are kept, clipped, whenever they overlap the
tile: a partly visible ignore region still marks pixels not to score.

Tiled training (:class:`TiledDataset`): dataset index ``t`` is one tile of one image; every
image contributes the tiles of its grid, so an epoch sees every region of every image. Each
epoch the grid is jittered: every interior x start moves by an integer drawn uniformly from
``[−a, a]`` (``a`` = half the smaller overlap with its neighbours; per column, shared by the
column) and likewise every interior y start (per row); the first and last tiles stay flush with
the borders. Neighbours then still overlap, so the jittered grid still covers the image, while
the tile borders fall elsewhere from epoch to epoch. The draws come from numpy's PCG64 seeded
with ``SeedSequence([seed, epoch, image index, 0x711E5])`` (a stream distinct from the
transforms' ``sample_seed(seed, epoch, t)``), so the tile of ``(seed, epoch, t)`` is a pure
function of these three numbers: independent of workers, batch order and the resume point.
Images that fit in one tile pass unchanged (no clipping). The training transforms (resize to
the train scale, flip) then apply to the tile.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import ImageRecord, Transform, apply_transforms

__all__ = ["tile_starts", "tile_grid", "jitter_starts", "crop_boxes", "crop_record", "TiledDataset"]

#: the extra SeedSequence word of the jitter stream (never equal to a transform seed)
_TILE_STREAM = 0x711E5

Window = tuple[int, int, int, int]


def _check_tiling(tile_size: Sequence[int], overlap: float, min_visibility: float = 1.0) -> tuple[int, int]:
    try:
        tw, th = (int(v) for v in tile_size)
    except (TypeError, ValueError):
        raise ValueError(f"tile size must be two positive integers (width, height), got {tile_size!r}") from None
    if tw <= 0 or th <= 0:
        raise ValueError(f"tile size must be two positive integers (width, height), got {tuple(tile_size)}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    if not 0.0 < float(min_visibility) <= 1.0:
        raise ValueError(f"min_visibility must be in (0, 1], got {min_visibility}")
    return tw, th


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets (pixels) of the tiles along one axis (module docstring: the grid rule).

    Args:
        length: the image's size along the axis, pixels (> 0).
        tile: the tile's size along the axis, pixels (> 0).
        overlap: fraction of ``tile`` shared by neighbours, in ``[0, 1)``.

    Returns:
        increasing starts; the first is 0 and the last is ``max(length − tile, 0)``.

    Raises:
        ValueError: a size that is not positive, or an overlap outside ``[0, 1)``.
    """
    if int(length) <= 0 or int(tile) <= 0:
        raise ValueError(f"length and tile must be positive, got {length} and {tile}")
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    length, tile = int(length), int(tile)
    if length <= tile:
        return [0]
    step = max(1, tile - int(round(float(overlap) * tile)))
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(min(starts[-1] + step, length - tile))
    return starts


def tile_grid(width: int, height: int, tile_size: Sequence[int], overlap: float) -> list[Window]:
    """The tiles of a ``width × height`` image as ``(x0, y0, x1, y1)`` integer pixel windows.

    Tiles are ``min(tile_w, width) × min(tile_h, height)`` pixels, row-major (y outer, x inner);
    see the module docstring for the starts.

    Raises:
        ValueError: bad sizes or overlap (see :func:`tile_starts`).
    """
    tw, th = _check_tiling(tile_size, overlap)
    xs, ys = tile_starts(width, tw, overlap), tile_starts(height, th, overlap)
    w, h = min(tw, int(width)), min(th, int(height))
    return [(x, y, x + w, y + h) for y in ys for x in xs]


def jitter_starts(starts: Sequence[int], length: int, tile: int, rng: np.random.Generator) -> list[int]:
    """``starts`` with every interior start moved by a uniform integer in ``[−a_k, a_k]``.

    ``a_k = ⌊min(o_{k−1}, o_k) / 2⌋`` with ``o_k = starts[k] + tile − starts[k+1]`` the overlap of
    tiles ``k`` and ``k+1``; so neighbours never separate and the tiles still cover the axis.
    The first and last start do not move; the result is clamped to ``[0, length − tile]``.
    Exactly ``len(starts)`` integers are drawn from ``rng`` whatever the amplitudes.

    Args:
        starts: nominal starts (from :func:`tile_starts`); ``tile``: the tile extent on this axis
            (``min(tile, length)``); ``length``: the axis length, pixels.
    """
    n = len(starts)
    amp = np.zeros(n, dtype=np.int64)
    for k in range(1, n - 1):
        left = starts[k - 1] + tile - starts[k]
        right = starts[k] + tile - starts[k + 1]
        amp[k] = max(0, min(left, right) // 2)
    shift = rng.integers(-amp, amp, endpoint=True) if n else amp
    top = max(int(length) - int(tile), 0)
    return [int(min(max(int(s) + int(d), 0), top)) for s, d in zip(starts, shift)]


def crop_boxes(
    boxes: np.ndarray, window: Sequence[int], min_visibility: float, image_size: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes seen through ``window``, by the visibility rule of the module docstring.

    Args:
        boxes: ``[K, 4]`` xyxy in image pixels.
        window: ``(x0, y0, x1, y1)`` of the tile in image pixels.
        min_visibility: keep a box when its visible fraction is ``≥`` this, in ``(0, 1]``.
        image_size: ``(width, height)``: the fraction is taken of the box clipped to the image;
            ``None``: of the whole box.

    Returns:
        ``(tile_boxes float32 [M, 4] xyxy in tile pixels (origin at the window's corner),
        kept int64 [M] indices into boxes)``.

    Raises:
        ValueError: ``min_visibility`` outside ``(0, 1]``.
    """
    if not 0.0 < float(min_visibility) <= 1.0:
        raise ValueError(f"min_visibility must be in (0, 1], got {min_visibility}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in window)
    ref = b.copy()
    if image_size is not None:
        ref[:, 0::2] = ref[:, 0::2].clip(0.0, float(image_size[0]))
        ref[:, 1::2] = ref[:, 1::2].clip(0.0, float(image_size[1]))
    area = (ref[:, 2] - ref[:, 0]).clip(min=0.0) * (ref[:, 3] - ref[:, 1]).clip(min=0.0)
    clipped = b.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(x0, x1)
    clipped[:, 1::2] = clipped[:, 1::2].clip(y0, y1)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    visible = np.divide(w * h, area, out=np.zeros_like(area), where=area > 0)
    keep = np.flatnonzero((visible >= float(min_visibility)) & (w >= 1.0) & (h >= 1.0))
    out = clipped[keep] - np.array([x0, y0, x0, y0])
    return out.astype(np.float32), keep.astype(np.int64)


def crop_record(record: ImageRecord, window: Sequence[int], min_visibility: float) -> ImageRecord:
    """The :class:`ImageRecord` of one tile of ``record``.

    Boxes follow :func:`crop_boxes` (visibility of the box clipped to the image); crowd boxes
    are kept, clipped, when they overlap the tile by a positive area. ``width``/``height`` are
    the window's; ``file_name`` and ``image_id`` stay the image's; the drop counters are 0 (they
    belong to the image). Coordinates are in tile pixels.

    Raises:
        ValueError: ``min_visibility`` outside ``(0, 1]``.
    """
    x0, y0, x1, y1 = (int(v) for v in window)
    size = (record.width, record.height)
    boxes, keep = crop_boxes(record.boxes, window, min_visibility, size)
    crowd = np.asarray(record.crowd_boxes, dtype=np.float64).reshape(-1, 4).copy()
    crowd[:, 0::2] = crowd[:, 0::2].clip(x0, x1)
    crowd[:, 1::2] = crowd[:, 1::2].clip(y0, y1)
    overlaps = np.flatnonzero((crowd[:, 2] > crowd[:, 0]) & (crowd[:, 3] > crowd[:, 1]))
    crowd = (crowd[overlaps] - np.array([x0, y0, x0, y0])).astype(np.float32)
    return ImageRecord(
        record.file_name,
        record.image_id,
        x1 - x0,
        y1 - y0,
        boxes.reshape(-1, 4),
        np.asarray(record.labels, dtype=np.int64)[keep],
        crowd.reshape(-1, 4),
        np.asarray(record.crowd_labels, dtype=np.int64)[overlaps],
    )


class TiledDataset(Dataset):
    """A detection dataset whose index ``t`` is one tile of one image (module docstring).

    Args:
        dataset: a :class:`~varifocal.data.base.DetectionDataset` without transforms (it only
            decodes; the tiles get ``transforms``). Its ``records`` fix the tiles.
        tile_size: ``(width, height)`` of a tile, pixels.
        overlap: fraction of a tile shared by neighbours, ``[0, 1)``.
        min_visibility: visible fraction a box needs to stay a target, ``(0, 1]``.
        transforms: applied to each tile, seeded from ``(seed, epoch, t)`` as in
            :class:`~varifocal.data.base.DetectionDataset`.
        seed: augmentation and jitter seed; ``None``: transforms use torch's global RNG and the
            grid is not jittered.
        jitter: move the interior tile borders every epoch (needs ``seed``).

    ``len()`` is the number of tiles (fixed: jitter moves tiles, never adds any);
    :meth:`aspect_ratio_groups` gives each tile's group (tiles have fixed sizes), so
    :class:`~varifocal.data.sampler.AspectRatioGroupedBatchSampler` works unchanged;
    :meth:`set_epoch` selects the epoch of both the jitter and the transforms. ``records``,
    ``class_names``, ``cat_ids``, ``source`` and the bad-image bookkeeping are the wrapped
    dataset's (records are images, not tiles).

    ``dataset[t]`` is ``(image uint8 [3, h, w], target, meta)`` as in ``DetectionDataset``, in
    tile pixels; ``meta["tile"]`` is the window ``(x0, y0, x1, y1)`` in image pixels and
    ``meta["ori_shape"]`` the tile's ``(h, w)``. A bad image, with ``skip_bad_images``, is
    replaced as the wrapped dataset does it (the next good image), taking that image's tile of
    the same ordinal (modulo its tile count). Tiles without boxes are kept (all-negative).

    Raises:
        ValueError: bad tile size, overlap or min_visibility, or a dataset with transforms.
    """

    def __init__(
        self,
        dataset: Any,
        tile_size: Sequence[int],
        overlap: float = 0.2,
        min_visibility: float = 0.5,
        transforms: Transform | None = None,
        seed: int | None = None,
        jitter: bool = True,
    ) -> None:
        self.tile_size = _check_tiling(tile_size, overlap, min_visibility)
        if getattr(dataset, "transforms", None) is not None:
            raise ValueError("TiledDataset: give the transforms to TiledDataset, not to the dataset it tiles")
        self.dataset = dataset
        self.overlap = float(overlap)
        self.min_visibility = float(min_visibility)
        self.transforms = transforms
        self.seed = seed
        self.jitter = bool(jitter)
        self.epoch = 0
        tw, th = self.tile_size
        self.tiles: list[tuple[int, int]] = []  # (record index, tile ordinal in its image)
        self._counts: list[int] = []
        groups = []
        for ri, rec in enumerate(dataset.records):
            n = len(tile_starts(rec.width, tw, overlap)) * len(tile_starts(rec.height, th, overlap))
            self._counts.append(n)
            self.tiles.extend((ri, k) for k in range(n))
            groups.extend([int(min(tw, rec.width) > min(th, rec.height))] * n)
        self._groups = np.asarray(groups, dtype=np.int64)
        self._index_of_file = {rec.file_name: ri for ri, rec in enumerate(dataset.records)}

    # ---- what the trainer and the sampler use --------------------------------------------------

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def records(self) -> list[ImageRecord]:
        return self.dataset.records

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    @property
    def cat_ids(self) -> list[int]:
        return self.dataset.cat_ids

    @property
    def num_classes(self) -> int:
        return len(self.dataset.class_names)

    @property
    def source(self) -> str:
        return self.dataset.source

    @property
    def skip_bad_images(self) -> bool:
        return self.dataset.skip_bad_images

    @property
    def bad_files(self) -> set[str]:
        return self.dataset.bad_files

    @property
    def num_skipped(self) -> int:
        return self.dataset.num_skipped

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the jitter and of the transforms (call it every epoch)."""
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def aspect_ratio_groups(self) -> np.ndarray:
        """int64 ``[len(self)]``: 1 where the tile is landscape (``w > h``), else 0."""
        return self._groups.copy()

    def num_tiles(self, record_index: int) -> int:
        """How many tiles image ``record_index`` has."""
        return self._counts[record_index]

    # ---- tiles -----------------------------------------------------------------------------------

    def window(self, record_index: int, ordinal: int, epoch: int | None = None) -> Window:
        """``(x0, y0, x1, y1)`` of tile ``ordinal`` of image ``record_index`` in ``epoch``
        (default: the current one), jittered when ``jitter`` and ``seed`` are set.

        Raises:
            IndexError: an ordinal outside ``[0, num_tiles(record_index))``.
        """
        if not 0 <= ordinal < self._counts[record_index]:
            raise IndexError(f"image {record_index} has {self._counts[record_index]} tiles, not {ordinal + 1}")
        rec = self.dataset.records[record_index]
        tw, th = self.tile_size
        w, h = min(tw, rec.width), min(th, rec.height)
        xs, ys = tile_starts(rec.width, tw, self.overlap), tile_starts(rec.height, th, self.overlap)
        if self.jitter and self.seed is not None:
            epoch = self.epoch if epoch is None else int(epoch)
            entropy = [int(self.seed), epoch, int(record_index), _TILE_STREAM]
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))
            xs = jitter_starts(xs, rec.width, w, rng)
            ys = jitter_starts(ys, rec.height, h, rng)
        row, col = divmod(ordinal, len(xs))
        return xs[col], ys[row], xs[col] + w, ys[row] + h

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any], dict[str, Any]]:
        n = len(self.tiles)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} tiles")
        index = index % n
        ri, ordinal = self.tiles[index]
        image, _, meta = self.dataset.load_sample(ri)
        rj = self._index_of_file.get(meta["file_name"], ri)
        if rj != ri:  # a bad image was replaced by the next good one: take one of its tiles
            ordinal %= self._counts[rj]
        record = self.dataset.records[rj]
        window = self.window(rj, ordinal)
        x0, y0, x1, y1 = window
        if (x1 - x0, y1 - y0) == (record.width, record.height):  # the image fits in one tile
            boxes, labels = record.boxes.astype(np.float32, copy=True), record.labels.astype(np.int64, copy=True)
        else:
            tile = crop_record(record, window, self.min_visibility)
            boxes, labels = tile.boxes, tile.labels
            image = image[:, y0:y1, x0:x1].clone()  # a copy: workers must not pickle the whole image
        height, width = int(image.shape[1]), int(image.shape[2])
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes)).reshape(-1, 4),
            "labels": torch.from_numpy(np.ascontiguousarray(labels)),
            "image_id": record.image_id,
        }
        meta = {
            **meta,
            "ori_shape": (height, width),
            "img_shape": (height, width),
            "scale_factor": (1.0, 1.0),
            "flip": False,
            "tile": window,
        }
        return apply_transforms(self.transforms, self.seed, self.epoch, index, image, target, meta)

    def __repr__(self) -> str:
        name = os.path.basename(str(getattr(self.dataset, "source", "")))
        return (
            f"TiledDataset({name!r}, {len(self.dataset.records)} images → {len(self)} tiles of "
            f"{self.tile_size[0]}x{self.tile_size[1]}, overlap {self.overlap}, min_visibility {self.min_visibility})"
        )
