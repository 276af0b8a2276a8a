"""COCO JSON: reading and validating annotation files, and the :class:`CocoDetection` set
(spec §6.1; record format and drop rules: :mod:`varifocal.data.base`)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .base import DetectionDataset, ImageRecord, Transform, _as_arrays, _box_is_degenerate
from .errors import DataError, _one_line
from .images import _image_size_from_header

__all__ = ["CocoDetection", "read_coco_json", "validate_coco_dict"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _annotation_fate(ann: dict[str, Any], width: int, height: int) -> str:
    """What the reader does with annotation ``ann`` of a ``width`` x ``height`` image:
    ``'ignored'`` (``"ignore": true``), ``'degenerate'`` (dropped, see
    :mod:`varifocal.data.base`), ``'crowd'`` or ``'box'``. The one rule that both the records
    and :meth:`CocoDetection.to_coco_dict` follow."""
    if ann.get("ignore", False):
        return "ignored"
    x, y, w, h = (float(v) for v in ann["bbox"])
    area = ann.get("area", 1.0)
    if _box_is_degenerate(x, y, w, h, width, height) or (_is_number(area) and area <= 0):
        return "degenerate"
    return "crowd" if ann.get("iscrowd", 0) else "box"


def read_coco_json(path: str | os.PathLike, require_size: bool = True) -> dict[str, Any]:
    """Read and validate a COCO annotation file (see :func:`validate_coco_dict`).

    ``require_size=False`` accepts images without ``width``/``height`` (a reader that can
    take the size from the image file, e.g. :class:`CocoDetection`).

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
    validate_coco_dict(data, str(path), require_size=require_size)
    return data


def validate_coco_dict(data: Any, source: str, require_annotations: bool = True, require_size: bool = True) -> None:
    """Check the structure of a COCO detection dict.

    Checks: top level is an object with lists ``images``, ``annotations`` (when
    ``require_annotations``) and ``categories``; every image has an integer ``id`` (unique),
    a string ``file_name`` and positive integer ``width``/``height`` (with
    ``require_size=False`` they may be absent or ``null``, but not invalid); every category has a
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
            if not require_size and img.get(key) is None:
                continue
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

    Image size: ``images[].width``/``height`` when the file has them, else read from the image
    file's header (EXIF orientation applied), which then must exist.

    Raises:
        DataError: unreadable or invalid annotation file (one line naming it and, where it
            applies, the offending annotation id); an image without ``width``/``height``
            whose file gives no size either.
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
        data = read_coco_json(ann_file, require_size=False)

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in categories]
        self.class_names = [c["name"] for c in categories]
        label_of = {cid: k for k, cid in enumerate(self.cat_ids)}

        per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]].append(ann)

        records, has_ann = [], []
        for img in data["images"]:
            file_name = os.path.join(self.image_dir, img["file_name"])
            width, height = self._image_size(img, file_name)
            boxes, labels, crowd, crowd_labels = [], [], [], []
            anns = per_image[img["id"]]
            n_degenerate = n_ignored = 0
            for ann in anns:
                fate = _annotation_fate(ann, width, height)
                if fate == "ignored":
                    n_ignored += 1
                    continue
                if fate == "degenerate":
                    n_degenerate += 1
                    continue
                x, y, w, h = (float(v) for v in ann["bbox"])
                if fate == "crowd":
                    crowd.append([x, y, x + w, y + h])
                    crowd_labels.append(label_of[ann["category_id"]])
                else:
                    boxes.append([x, y, x + w, y + h])
                    labels.append(label_of[ann["category_id"]])
            b, l = _as_arrays(boxes, labels)
            cb, cl = _as_arrays(crowd, crowd_labels)
            self.num_degenerate += n_degenerate
            records.append(ImageRecord(file_name, img["id"], width, height, b, l, cb, cl, n_degenerate, n_ignored))
            has_ann.append(bool(anns))
        self.records = records
        keep = [(h or not drop_empty) and min(r.width, r.height) >= min_size for r, h in zip(records, has_ann)]
        self._filter(keep)
        self._log_degenerate()

    def _image_size(self, img: dict[str, Any], file_name: str) -> tuple[int, int]:
        """``(width, height)`` of ``images[]`` entry ``img``: as annotated, else from the file."""
        width, height = img.get("width"), img.get("height")
        if width is not None and height is not None:
            return width, height
        try:
            size = _image_size_from_header(file_name)
        except DataError as exc:
            raise DataError(
                _one_line(
                    f"{self.source}: image id {img['id']} has no 'width'/'height' and its file gives none ({exc})"
                )
            ) from None
        given = (width, height)
        if any(g is not None and g != v for g, v in zip(given, size)):
            raise DataError(
                f"{file_name}: image is {size[0]}x{size[1]} (after EXIF orientation) but {self.source} says "
                f"width {width}, height {height}"
            )
        return size

    def to_coco_dict(self) -> dict[str, Any]:
        """The ground truth this dataset holds, in the annotation file's own terms.

        The file's images that are records (``width``/``height`` as recorded, so also where
        the file had none) and exactly the annotations that the records kept, as the file
        writes them (original ``bbox`` and ``area``, ``iscrowd=1`` crowd boxes): degenerate,
        off-image and ``"ignore"``-flagged annotations are absent, so evaluation scores the
        boxes the model was trained on (spec §5.3, §6.1).

        Raises:
            DataError: the annotation file no longer matches what was loaded.
        """
        data = read_coco_json(self.ann_file, require_size=False)
        by_id = {img["id"]: img for img in data["images"]}
        if any(r.image_id not in by_id for r in self.records):
            raise DataError(f"{self.source}: annotation file changed since it was loaded (images differ)")
        images = [{**by_id[r.image_id], "width": r.width, "height": r.height} for r in self.records]
        sizes = {r.image_id: (r.width, r.height) for r in self.records}
        annotations = [
            a
            for a in data["annotations"]
            if a["image_id"] in sizes and _annotation_fate(a, *sizes[a["image_id"]]) in ("box", "crowd")
        ]
        expected = sum(len(r.boxes) + len(r.crowd_boxes) for r in self.records)
        if len(annotations) != expected:
            raise DataError(f"{self.source}: annotation file changed since it was loaded (annotations differ)")
        return {**data, "images": images, "annotations": annotations}
