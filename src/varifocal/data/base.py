"""The record type and the base dataset shared by the COCO and VOC readers (spec §6.1).

Both readers produce one :class:`ImageRecord` per image, with boxes as float32 ``xyxy`` in
original-image pixels (COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; VOC corners are
used as they are; no "+1"/"-1" anywhere, spec §10 item 23) and contiguous labels
``0..num_classes-1`` (category ids sorted ascending).

What is dropped or kept (MMDetection 2.x ``CocoDataset._parse_ann_info`` semantics, spec §6.1
item 2):

* an annotation flagged ``"ignore": true`` is skipped (counted per image in
  ``ImageRecord.num_ignored``);
* a *degenerate* box is dropped and counted: width < 1 or height < 1 pixel, ``area <= 0``
  (when the annotation has an ``area``), or no overlap with the image. One summary line
  "dropped N degenerate boxes in <file>" is logged (logger ``varifocal.data``);
* a crowd box (COCO ``iscrowd=1``, VOC ``difficult=1``) goes to ``crowd_boxes``: it is never
  part of the training target; evaluation treats it as an ignore region (COCO ``iscrowd``);
* images without boxes are kept unless ``drop_empty=True``.

The records are the single source of truth of evaluation as well: :meth:`to_coco_dict` (what
:class:`~varifocal.evaluation.CocoEvaluator` scores) holds exactly the kept images and boxes,
so a dropped box is neither a training target nor a ground truth that a detector must find.

Images are decoded by :func:`varifocal.data.images.load_image`. A corrupt, truncated or
missing image raises :class:`DataError`, or is skipped when ``skip_bad_images=True`` (see
:class:`DetectionDataset`).

Random augmentation and seeding: when a dataset is given ``seed``, the transforms of sample
``i`` in epoch ``e`` run with torch's CPU generator seeded from ``(seed, e, i)`` (the global
generator is saved and restored around the call). The augmentation of a sample is then a pure
function of ``(seed, epoch, index)``: independent of the number of workers, of the batch order
and of where a resumed run starts. Call :meth:`DetectionDataset.set_epoch` every epoch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError
from .images import load_image

__all__ = ["ImageRecord", "DetectionDataset", "sample_seed"]

logger = logging.getLogger("varifocal.data")


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


@dataclass
class ImageRecord:
    """Everything known about one image before it is decoded.

    Attributes:
        file_name: absolute path of the image file.
        image_id: the dataset's integer image id (COCO ``images[].id``).
        width, height: image size in pixels, as annotated (after EXIF orientation).
        boxes: float32 ``[K, 4]`` ``xyxy`` in original-image pixels (training targets).
        labels: int64 ``[K]`` contiguous labels ``0..num_classes-1``.
        crowd_boxes: float32 ``[C, 4]`` ``xyxy`` ignore regions (COCO iscrowd / VOC difficult);
            absent from training targets.
        crowd_labels: int64 ``[C]`` labels of ``crowd_boxes``.
        num_degenerate: annotations of this image dropped as degenerate (side < 1 pixel,
            ``area <= 0`` or no overlap with the image); neither trained on nor scored.
        num_ignored: annotations of this image flagged ``"ignore": true`` (skipped).

    The arrays are numpy (not tensors) so that a dataset of 100k records pickles cheaply into
    DataLoader workers.
    """

    file_name: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    labels: np.ndarray = field(default_factory=_empty_labels)
    crowd_boxes: np.ndarray = field(default_factory=_empty_boxes)
    crowd_labels: np.ndarray = field(default_factory=_empty_labels)
    num_degenerate: int = 0
    num_ignored: int = 0

    @property
    def aspect_group(self) -> int:
        """1 for landscape (``width > height``), 0 otherwise (MMDetection's group flag)."""
        return int(self.width > self.height)


def _box_is_degenerate(x1: float, y1: float, w: float, h: float, width: int, height: int) -> bool:
    """MMDetection's test: no overlap with the image, or a side shorter than 1 pixel."""
    inter_w = max(0.0, min(x1 + w, width) - max(x1, 0.0))
    inter_h = max(0.0, min(y1 + h, height) - max(y1, 0.0))
    return inter_w * inter_h == 0 or w < 1 or h < 1


def _as_arrays(boxes: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    if not boxes:
        return _empty_boxes(), _empty_labels()
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample ``index`` of ``epoch`` (numpy ``SeedSequence``).

    Raises:
        ValueError: if an argument is negative.
    """
    if seed < 0 or epoch < 0 or index < 0:
        raise ValueError(f"seed, epoch and index must be >= 0, got {seed}, {epoch}, {index}")
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------
# Base dataset
# --------------------------------------------------------------------------------------------

Transform = Callable[[Tensor, dict, dict], tuple[Tensor, dict, dict]]


def apply_transforms(
    transforms: Transform | None, seed: int | None, epoch: int, index: int, image: Tensor, target: dict, meta: dict
) -> tuple[Tensor, dict, dict]:
    """``transforms(image, target, meta)`` (nothing when ``None``); with a ``seed``, run with
    torch's CPU generator seeded from :func:`sample_seed` ``(seed, epoch, index)`` and the global
    generator restored afterwards (module docstring: the augmentation of a sample is a pure
    function of ``(seed, epoch, index)``)."""
    if transforms is None:
        return image, target, meta
    if seed is None:
        return transforms(image, target, meta)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index))
        return transforms(image, target, meta)


class DetectionDataset(Dataset):
    """A list of :class:`ImageRecord` that decodes images and applies transforms.

    Subclasses fill ``records``, ``class_names``, ``cat_ids`` and ``source`` (the annotation
    file or directory named in messages).

    ``dataset[i]`` returns ``(image, target, meta)``:

    * ``image``: uint8 ``[3, H, W]`` RGB (or whatever the transforms make of it; ``Resize``
      keeps uint8);
    * ``target``: ``{"boxes": float32 [K, 4] xyxy in the current image's pixels,
      "labels": int64 [K], "image_id": int}``; crowd boxes are not in it;
    * ``meta``: ``{"image_id", "file_name", "ori_shape": (h, w), "img_shape": (h, w),
      "scale_factor": (w_scale, h_scale), "flip": bool, "skipped_files": list[str]}``.

    Bad images: with ``skip_bad_images=False`` a bad image raises :class:`DataError`. With
    ``True``, ``dataset[i]`` returns the next good image (``i+1``, ``i+2``, ... wrapping
    around) in place of a bad one; the bad file is remembered (never decoded again by this
    process), counted in ``num_skipped`` and listed in ``meta["skipped_files"]`` of the
    substitute sample. In DataLoader workers each worker has its own copy of the counter, so
    the training loop should count ``meta["skipped_files"]`` instead. The substitution is
    deterministic, so a resumed run sees the same samples. Evaluation must not substitute
    (the substitute would be scored twice): it uses ``load_sample(i, substitute=False)``,
    which gives ``None`` for a bad image.

    Seeding: see the module docstring; ``seed=None`` leaves the transforms on whatever state
    torch's global generator has (DataLoader seeds it per worker with ``base_seed + worker_id``).
    """

    records: list[ImageRecord]
    class_names: list[str]
    cat_ids: list[int]
    source: str

    def __init__(
        self,
        transforms: Transform | None = None,
        skip_bad_images: bool = False,
        seed: int | None = None,
    ) -> None:
        self.transforms = transforms
        self.skip_bad_images = bool(skip_bad_images)
        self.seed = seed
        self.epoch = 0
        self.bad_files: set[str] = set()
        self.num_degenerate = 0
        self.num_filtered = 0

    # ---- bookkeeping -------------------------------------------------------------------------

    @property
    def num_skipped(self) -> int:
        """Number of distinct bad images this process has skipped so far."""
        return len(self.bad_files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws ``dataset[i]`` reproduces (with ``seed``).

        Call it before creating the epoch's DataLoader iterator. Workers receive a copy of the
        dataset when the iterator starts, so ``persistent_workers=True`` would freeze the epoch:
        leave it off, or recreate the loader every epoch.
        """
        self.epoch = int(epoch)

    def aspect_ratio_groups(self) -> np.ndarray:
        """int64 ``[N]``: 1 where the image is landscape (``width > height``), else 0."""
        return np.asarray([r.aspect_group for r in self.records], dtype=np.int64)

    # ---- loading ------------------------------------------------------------------------------

    def _load_checked(self, record: ImageRecord) -> Tensor:
        image = load_image(record.file_name)
        height, width = int(image.shape[1]), int(image.shape[2])
        if (width, height) != (record.width, record.height):
            raise DataError(
                f"{record.file_name}: image is {width}x{height} (after EXIF orientation) but "
                f"{self.source} says {record.width}x{record.height}"
            )
        return image

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any], dict[str, Any]]:
        sample = self.load_sample(index)
        assert sample is not None  # substitute=True never gives None
        return sample

    def load_sample(self, index: int, substitute: bool = True) -> tuple[Tensor, dict[str, Any], dict[str, Any]] | None:
        """Sample ``index`` as ``dataset[index]`` gives it, or ``None`` for a bad image.

        Args:
            index: record index (negative counts from the end).
            substitute: ``True``: a bad image is replaced by the next good one (``dataset[i]``,
                see the class docstring). ``False`` (evaluation): with ``skip_bad_images`` a
                bad image gives ``None`` (logged, remembered in ``bad_files``); without it,
                :class:`DataError` as always.

        Raises:
            IndexError: ``index`` out of range.
            DataError: a bad image without ``skip_bad_images``, or no readable image left.
        """
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index = index % n
        skipped: list[str] = []
        image = None
        record = self.records[index]
        for step in range(n if substitute else 1):
            record = self.records[(index + step) % n]
            if record.file_name in self.bad_files:
                skipped.append(record.file_name)
                continue
            try:
                image = self._load_checked(record)
                break
            except DataError as exc:
                if not self.skip_bad_images:
                    raise
                logger.warning("skipping bad image: %s", exc)
                self.bad_files.add(record.file_name)
                skipped.append(record.file_name)
        if image is None:
            if not substitute:
                return None
            raise DataError(f"{self.source}: no readable image left (all {n} images failed to load)")

        height, width = int(image.shape[1]), int(image.shape[2])
        target = {
            "boxes": torch.from_numpy(record.boxes.astype(np.float32, copy=True)).reshape(-1, 4),
            "labels": torch.from_numpy(record.labels.astype(np.int64, copy=True)),
            "image_id": record.image_id,
        }
        meta = {
            "image_id": record.image_id,
            "file_name": record.file_name,
            "ori_shape": (height, width),
            "img_shape": (height, width),
            "scale_factor": (1.0, 1.0),
            "flip": False,
            "skipped_files": skipped,
        }
        return apply_transforms(self.transforms, self.seed, self.epoch, index, image, target, meta)

    # ---- evaluation ---------------------------------------------------------------------------

    def to_coco_dict(self) -> dict[str, Any]:
        """Ground truth as a COCO-format dict (for :class:`~varifocal.evaluation.CocoEvaluator`).

        Exactly the records: their images (with the recorded ``width``/``height``) and their
        kept boxes; dropped (degenerate, ignore-flagged) boxes are absent. Boxes become
        ``[x, y, w, h]`` with ``area = w * h``; crowd boxes get ``iscrowd=1``.
        """
        images, annotations = [], []
        for record in self.records:
            images.append(
                {
                    "id": record.image_id,
                    "file_name": os.path.basename(record.file_name),
                    "width": record.width,
                    "height": record.height,
                }
            )
            for boxes, labels, crowd in (
                (record.boxes, record.labels, 0),
                (record.crowd_boxes, record.crowd_labels, 1),
            ):
                for box, label in zip(boxes.tolist(), labels.tolist()):
                    w, h = box[2] - box[0], box[3] - box[1]
                    annotations.append(
                        {
                            "id": len(annotations) + 1,
                            "image_id": record.image_id,
                            "category_id": self.cat_ids[label],
                            "bbox": [box[0], box[1], w, h],
                            "area": w * h,
                            "iscrowd": crowd,
                        }
                    )
        categories = [{"id": c, "name": n} for c, n in zip(self.cat_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def _filter(self, keep: Sequence[bool]) -> None:
        before = len(self.records)
        self.records = [r for r, k in zip(self.records, keep) if k]
        self.num_filtered = before - len(self.records)

    def _log_degenerate(self) -> None:
        if self.num_degenerate:
            logger.warning("dropped %d degenerate boxes in %s", self.num_degenerate, self.source)
