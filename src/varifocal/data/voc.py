"""PASCAL VOC XML: the :class:`VOCDetection` set (spec §6.1; record format and drop rules:
:mod:`varifocal.data.base`)."""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from typing import Sequence

from .base import DetectionDataset, ImageRecord, Transform, _as_arrays, _box_is_degenerate
from .errors import DataError, _one_line
from .images import _image_size_from_header

__all__ = ["VOCDetection", "VOC_CLASSES"]

#: The 20 PASCAL VOC classes in the customary (alphabetical) order: label k is the k-th name.
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


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
        n_degenerate = 0
        objects = root.findall("object")
        for k, obj in enumerate(objects):
            where = f"object #{k}"
            cls = _xml_text(obj, "name", where, xml_file)
            if cls not in label_of:
                raise DataError(
                    f"{xml_file}: {where} has class '{cls}', which is not in class_names {self.class_names}"
                )
            difficult = obj.find("difficult")
            is_difficult = difficult is not None and (difficult.text or "0").strip() not in ("0", "")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise DataError(f"{xml_file}: {where} has no <bndbox>")
            try:
                x1, y1, x2, y2 = (
                    float(_xml_text(bndbox, t, where, xml_file)) for t in ("xmin", "ymin", "xmax", "ymax")
                )
            except ValueError:
                raise DataError(f"{xml_file}: {where} has a non-numeric <bndbox> coordinate") from None
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
                raise DataError(f"{xml_file}: {where} has a non-finite <bndbox> coordinate")
            if _box_is_degenerate(x1, y1, x2 - x1, y2 - y1, width, height):
                n_degenerate += 1
                continue
            if is_difficult:
                crowd.append([x1, y1, x2, y2])
                crowd_labels.append(label_of[cls])
            else:
                boxes.append([x1, y1, x2, y2])
                labels.append(label_of[cls])
        b, l = _as_arrays(boxes, labels)
        cb, cl = _as_arrays(crowd, crowd_labels)
        self.num_degenerate += n_degenerate
        return ImageRecord(image_file, image_id, width, height, b, l, cb, cl, n_degenerate), len(objects)
