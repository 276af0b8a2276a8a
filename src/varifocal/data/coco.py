"""COCO JSON: reading and validating annotation files, and the :class:`CocoDetection` set
(spec §6.1; record format and drop rules: :mod:`varifocal.data.base`)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .base import DetectionDataset, ImageRecord, Transform, _as_arrays, _box_is_degenerate
from .errors import DataError, _one_line

__all__ = ["CocoDetection", "read_coco_json", "validate_coco_dict"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


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
            raise DataError(
                f"{source}: annotation id {aid} has image_id {ann.get('image_id')!r}, which is not in 'images'"
            )
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
