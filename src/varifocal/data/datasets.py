"""Detection datasets: COCO JSON and PASCAL VOC XML, read into one record type (spec §6.1).

Both readers produce one :class:`ImageRecord` per image, with boxes as float32 ``xyxy`` in
original-image pixels (COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; VOC corners are
used as they are; no "+1"/"-1" anywhere, spec §10 item 23) and contiguous labels
``0..num_classes-1`` (category ids sorted ascending).

What is dropped or kept (MMDetection 2.x ``CocoDataset._parse_ann_info`` semantics, spec §6.1
item 2):

* an annotation flagged ``"ignore": true`` is skipped;
* a *degenerate* box is dropped and counted: width < 1 or height < 1 pixel, ``area <= 0``
  (when the annotation has an ``area``), or no overlap with the image. One summary line
  "dropped N degenerate boxes in <file>" is logged (logger ``varifocal.data``);
* a crowd box (COCO ``iscrowd=1``, VOC ``difficult=1``) goes to ``crowd_boxes``: it is never
  part of the training target; evaluation treats it as an ignore region (COCO ``iscrowd``);
* images without boxes are kept unless ``drop_empty=True``.

Images are decoded with Pillow, EXIF orientation applied, and converted to 8-bit RGB (see
:func:`load_image`). A corrupt, truncated or missing image raises :class:`DataError`, or is
skipped when ``skip_bad_images=True`` (see :class:`DetectionDataset`).

Random augmentation and seeding: when a dataset is given ``seed``, the transforms of sample
``i`` in epoch ``e`` run with torch's CPU generator seeded from ``(seed, e, i)`` (the global
generator is saved and restored around the call). The augmentation of a sample is then a pure
function of ``(seed, epoch, index)``: independent of the number of workers, of the batch order
and of where a resumed run starts. Call :meth:`DetectionDataset.set_epoch` every epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DataError",
    "ImageRecord",
    "DetectionDataset",
    "CocoDetection",
    "VOCDetection",
    "VOC_CLASSES",
    "load_image",
    "read_coco_json",
    "validate_coco_dict",
    "sample_seed",
]

logger = logging.getLogger("varifocal.data")

#: The 20 PASCAL VOC classes in the customary (alphabetical) order: label k is the k-th name.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# EXIF orientations 5-8 swap width and height.
_EXIF_ORIENTATION_TAG = 0x0112
_warned_truncated = False


class DataError(ValueError):
    """Bad input data: the message is one line that names the file and the problem."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


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

    @property
    def aspect_group(self) -> int:
        """1 for landscape (``width > height``), 0 otherwise (MMDetection's group flag)."""
        return int(self.width > self.height)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


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
# Image decoding
# --------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file into an 8-bit RGB tensor.

    EXIF orientation is applied (``ImageOps.exif_transpose``). Every mode becomes 8-bit RGB:
    grayscale is replicated to three channels, RGBA/LA drop alpha, palette images go through
    RGBA, 16-bit grayscale (``I;16*`` and ``I``, values 0-65535) keeps the high byte
    (``value >> 8``, as OpenCV does), float (``F``) is clipped to 0-255 and rounded.

    Truncated files are errors: this relies on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` being
    ``False`` (Pillow's default; this module never changes it) and forces the full decode with
    ``.load()``.

    Args:
        path: image file.

    Returns:
        uint8 tensor ``[3, H, W]``, RGB.

    Raises:
        DataError: the file is missing, unreadable, not an image, corrupt or truncated; the
            message names the file.
    """
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        _warned_truncated = True
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code): truncated images load silently")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            array = _to_rgb8(im)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FileNotFoundError) else "file not found"
        raise DataError(_one_line(f"{path}: cannot read image ({reason})")) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB array of a decoded Pillow image, any mode."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.array(im).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.array(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _image_size_from_header(path: str) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, read from the header only."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:
        raise DataError(_one_line(f"{path}: cannot read image size ({type(exc).__name__}: {exc})")) from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return int(width), int(height)


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
    deterministic, so a resumed run sees the same samples.

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
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        index = index % n
        skipped: list[str] = []
        image = None
        record = self.records[index]
        for step in range(n):
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
        if self.transforms is not None:
            if self.seed is None:
                image, target, meta = self.transforms(image, target, meta)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
                    image, target, meta = self.transforms(image, target, meta)
        return image, target, meta

    # ---- evaluation ---------------------------------------------------------------------------

    def to_coco_dict(self) -> dict[str, Any]:
        """Ground truth as a COCO-format dict (for :class:`~varifocal.evaluation.CocoEvaluator`).

        Boxes become ``[x, y, w, h]`` with ``area = w * h``; crowd boxes get ``iscrowd=1``.
        """
        images, annotations = [], []
        for record in self.records:
            images.append(
                {"id": record.image_id, "file_name": os.path.basename(record.file_name),
                 "width": record.width, "height": record.height}
            )
            for boxes, labels, crowd in ((record.boxes, record.labels, 0), (record.crowd_boxes, record.crowd_labels, 1)):
                for box, label in zip(boxes.tolist(), labels.tolist()):
                    w, h = box[2] - box[0], box[3] - box[1]
                    annotations.append(
                        {"id": len(annotations) + 1, "image_id": record.image_id,
                         "category_id": self.cat_ids[label], "bbox": [box[0], box[1], w, h],
                         "area": w * h, "iscrowd": crowd}
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


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a COCO annotation file (see :func:`validate_coco_dict`).

    Returns:
        the parsed JSON dict, unchanged.

    Raises:
        DataError: unreadable file, not JSON, or invalid content; one line naming ``path``.
    """
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except OSError as exc:
        raise DataError(_one_line(f"{path}: cannot read annotation file ({exc.strerror or exc})")) from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    validate_coco_dict(data, str(path))
    return data


def validate_coco_dict(data: Any, source: str, require_annotations: bool = True) -> None:
    """Check the structure of a COCO detection dict.

    Checks: top level is an object with lists ``images``, ``annotations`` (when
    ``require_annotations``) and ``categories``; every image has an integer ``id`` (unique),
    a string ``file_name`` and positive integer ``width``/``height``; every category has a
    unique integer ``id`` and a string ``name``; every annotation has a unique integer ``id``,
    an ``image_id`` and a ``category_id`` that exist, and a ``bbox`` of 4 finite numbers.

    Raises:
        DataError: on the first problem; the message names ``source`` and the offending
            image / category / annotation id.
    """
    if not isinstance(data, dict):
        raise DataError(f"{source}: top level must be a JSON object, got {type(data).__name__}")
    keys = ("images", "annotations", "categories") if require_annotations else ("images", "categories")
    for key in keys:
        if key not in data:
            raise DataError(f"{source}: missing key '{key}'")
        if not isinstance(data[key], list):
            raise DataError(f"{source}: '{key}' must be a list, got {type(data[key]).__name__}")

    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise DataError(f"{source}: images[{i}] has no integer 'id'")
        iid = img["id"]
        if iid in image_ids:
            raise DataError(f"{source}: image id {iid} appears twice")
        image_ids.add(iid)
        if not isinstance(img.get("file_name"), str):
            raise DataError(f"{source}: image id {iid} has no string 'file_name'")
        for key in ("width", "height"):
            if not _is_int(img.get(key)) or img[key] <= 0:
                raise DataError(f"{source}: image id {iid} has no positive integer '{key}' (got {img.get(key)!r})")

    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise DataError(f"{source}: categories[{i}] has no integer 'id'")
        if cat["id"] in cat_ids:
            raise DataError(f"{source}: category id {cat['id']} appears twice")
        cat_ids.add(cat["id"])
        if not isinstance(cat.get("name"), str):
            raise DataError(f"{source}: category id {cat['id']} has no string 'name'")

    ann_ids: set[int] = set()
    for i, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise DataError(f"{source}: annotations[{i}] has no integer 'id'")
        aid = ann["id"]
        if aid in ann_ids:
            raise DataError(f"{source}: annotation id {aid} appears twice")
        ann_ids.add(aid)
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in image_ids:
            raise DataError(f"{source}: annotation id {aid} has image_id {ann.get('image_id')!r}, which is not in 'images'")
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
            raise DataError(
                f"{source}: annotation id {aid} has category_id {ann.get('category_id')!r}, which is not in 'categories'"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError(f"{source}: annotation id {aid} has bbox {bbox!r}; expected 4 finite numbers [x, y, w, h]")


class CocoDetection(DetectionDataset):
    """A COCO-format detection set (spec §6.1).

    Args:
        image_dir: folder that ``images[].file_name`` is relative to.
        ann_file: COCO JSON (``instances_*.json``).
        transforms: callable ``(image, target, meta) -> (image, target, meta)``, e.g.
            :func:`varifocal.data.transforms.build_train_transforms`.
        skip_bad_images: skip undecodable images instead of raising (see
            :class:`DetectionDataset`).
        drop_empty: drop images that have no annotation of any kind in the file
            (MMDetection's ``filter_empty_gt``: an image with only crowd or only degenerate
            annotations stays, and trains as all-negative). Use it for training.
        min_size: drop images whose shorter side is below this many pixels (MMDetection uses
            32 for training); 0 keeps all.
        seed: augmentation seed (see module docstring); ``None``: global torch RNG.

    Attributes:
        records: list of :class:`ImageRecord`, in the file's ``images`` order.
        class_names: category names in ascending category-id order (label k -> name k).
        cat_ids: ascending category ids (label k -> COCO category id ``cat_ids[k]``).
        num_degenerate: boxes dropped as degenerate; num_filtered: images dropped by
            ``drop_empty`` / ``min_size``.

    Raises:
        DataError: unreadable or invalid annotation file (one line naming it and, where it
            applies, the offending annotation id).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Transform | None = None,
        skip_bad_images: bool = False,
        drop_empty: bool = False,
        min_size: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(transforms, skip_bad_images, seed)
        self.image_dir = os.path.abspath(image_dir)
        self.ann_file = os.path.abspath(ann_file)
        self.source = str(ann_file)
        data = read_coco_json(ann_file)

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in categories]
        self.class_names = [c["name"] for c in categories]
        label_of = {cid: k for k, cid in enumerate(self.cat_ids)}

        per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]].append(ann)

        records, has_ann = [], []
        for img in data["images"]:
            width, height = img["width"], img["height"]
            boxes, labels, crowd, crowd_labels = [], [], [], []
            anns = per_image[img["id"]]
            for ann in anns:
                if ann.get("ignore", False):
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                area = ann.get("area", 1.0)
                if _box_is_degenerate(x, y, w, h, width, height) or (_is_number(area) and area <= 0):
                    self.num_degenerate += 1
                    continue
                if ann.get("iscrowd", 0):
                    crowd.append([x, y, x + w, y + h])
                    crowd_labels.append(label_of[ann["category_id"]])
                else:
                    boxes.append([x, y, x + w, y + h])
                    labels.append(label_of[ann["category_id"]])
            b, l = _as_arrays(boxes, labels)
            cb, cl = _as_arrays(crowd, crowd_labels)
            records.append(
                ImageRecord(os.path.join(self.image_dir, img["file_name"]), img["id"], width, height, b, l, cb, cl)
            )
            has_ann.append(bool(anns))
        self.records = records
        keep = [(h or not drop_empty) and min(r.width, r.height) >= min_size for r, h in zip(records, has_ann)]
        self._filter(keep)
        self._log_degenerate()

    def to_coco_dict(self) -> dict[str, Any]:
        """The annotation file's own content (original ``area`` values, all images)."""
        return read_coco_json(self.ann_file)


# --------------------------------------------------------------------------------------------
# PASCAL VOC
# --------------------------------------------------------------------------------------------


def _voc_image_ids(names: list[str]) -> list[int]:
    """All digits of each name joined (``BloodImage_00007`` -> 7, ``2008_000008`` ->
    2008000008); falls back to the 0-based position when a name has no digits or two names
    give the same number."""
    ids = []
    for name in names:
        digits = "".join(re.findall(r"\d", name))
        if not digits:
            return list(range(len(names)))
        ids.append(int(digits))
    if len(set(ids)) != len(ids):
        return list(range(len(names)))
    return ids


def _xml_text(node: ET.Element, path: str, where: str, xml_file: str) -> str:
    child = node.find(path)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{xml_file}: {where} has no <{path}>")
    return child.text.strip()


class VOCDetection(DetectionDataset):
    """A PASCAL-VOC-layout detection set.

    Layout under ``root``: ``ImageSets/Main/<image_set>.txt`` (one image name per line),
    ``Annotations/<name>.xml`` and ``JPEGImages/<name>.jpg``. Corner coordinates are used as
    they are (no "-1" shift, the same convention as the BCCD COCO JSON). ``difficult=1``
    objects become crowd (ignored) boxes. Degenerate boxes are dropped and counted as for
    COCO. Category ids are ``1..C`` in ``class_names`` order.

    Image ids: the digits of the name (``BloodImage_00007`` -> 7, ``000005`` -> 5), or the
    0-based line number for every image when a name has no digits or two names collide.

    Args:
        root: dataset folder (e.g. ``VOCdevkit/VOC2007``).
        image_set: name of the split file, e.g. ``'trainval'`` or ``'test'``.
        class_names: class names in label order; default: the 20 VOC classes.
        transforms, skip_bad_images, drop_empty, min_size, seed: as for :class:`CocoDetection`
            (``drop_empty`` drops images with no object at all in their XML).

    Raises:
        DataError: missing split file / XML, invalid XML, missing fields, or an object whose
            class is not in ``class_names``; one line naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_set: str = "trainval",
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
        skip_bad_images: bool = False,
        drop_empty: bool = False,
        min_size: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(transforms, skip_bad_images, seed)
        self.root = os.path.abspath(root)
        self.image_set = image_set
        self.class_names = list(class_names) if class_names is not None else list(VOC_CLASSES)
        if len(set(self.class_names)) != len(self.class_names) or not self.class_names:
            raise ValueError(f"class_names must be non-empty and unique, got {self.class_names}")
        self.cat_ids = list(range(1, len(self.class_names) + 1))
        split_file = os.path.join(self.root, "ImageSets", "Main", f"{image_set}.txt")
        self.source = split_file
        try:
            with open(split_file, encoding="utf-8") as f:
                names = [line.split()[0] for line in f if line.strip()]
        except FileNotFoundError:
            raise DataError(f"{split_file}: image-set file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(_one_line(f"{split_file}: cannot read image-set file ({exc})")) from None

        label_of = {name: k for k, name in enumerate(self.class_names)}
        records, has_obj = [], []
        for name, image_id in zip(names, _voc_image_ids(names)):
            record, n_obj = self._parse(name, image_id, label_of)
            records.append(record)
            has_obj.append(n_obj > 0)
        self.records = records
        keep = [(h or not drop_empty) and min(r.width, r.height) >= min_size for r, h in zip(records, has_obj)]
        self._filter(keep)
        self._log_degenerate()

    def _parse(self, name: str, image_id: int, label_of: dict[str, int]) -> tuple[ImageRecord, int]:
        xml_file = os.path.join(self.root, "Annotations", f"{name}.xml")
        image_file = os.path.join(self.root, "JPEGImages", f"{name}.jpg")
        try:
            tree = ET.parse(xml_file)
        except FileNotFoundError:
            raise DataError(f"{xml_file}: annotation file not found") from None
        except ET.ParseError as exc:
            raise DataError(_one_line(f"{xml_file}: not valid XML ({exc})")) from None
        except OSError as exc:
            raise DataError(_one_line(f"{xml_file}: cannot read annotation file ({exc})")) from None
        root = tree.getroot()
        width = height = 0
        size = root.find("size")
        if size is not None:
            try:
                width = int(float(_xml_text(size, "width", "<size>", xml_file)))
                height = int(float(_xml_text(size, "height", "<size>", xml_file)))
            except (DataError, ValueError):
                width = height = 0
        if width <= 0 or height <= 0:  # some VOC-style sets write 0: read the image header
            width, height = _image_size_from_header(image_file)

        boxes, labels, crowd, crowd_labels = [], [], [], []
        objects = root.findall("object")
        for k, obj in enumerate(objects):
            where = f"object #{k}"
            cls = _xml_text(obj, "name", where, xml_file)
            if cls not in label_of:
                raise DataError(f"{xml_file}: {where} has class '{cls}', which is not in class_names {self.class_names}")
            difficult = obj.find("difficult")
            is_difficult = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise DataError(f"{xml_file}: {where} has no <bndbox>")
            try:
                x1, y1, x2, y2 = (float(_xml_text(bndbox, t, where, xml_file)) for t in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise DataError(f"{xml_file}: {where} has a non-numeric <bndbox> coordinate") from None
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                raise DataError(f"{xml_file}: {where} has a non-finite <bndbox> coordinate")
            if _box_is_degenerate(x1, y1, x2 - x1, y2 - y1, width, height):
                self.num_degenerate += 1
                continue
            if is_difficult:
                crowd.append([x1, y1, x2, y2])
                crowd_labels.append(label_of[cls])
            else:
                boxes.append([x1, y1, x2, y2])
                labels.append(label_of[cls])
        b, l = _as_arrays(boxes, labels)
        cb, cl = _as_arrays(crowd, crowd_labels)
        return ImageRecord(image_file, image_id, width, height, b, l, cb, cl), len(objects)
