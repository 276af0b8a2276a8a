"""COCO images without ``width``/``height``: the size comes from the image file's header
(spec §6.1); a one-line DataError when neither gives one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from varifocal.data import CocoDetection, DataError, read_coco_json

from .helpers import solid_jpeg, write_json

CATEGORIES = [{"id": 1, "name": "a"}]


def _ann_file(tmp_path, images, annotations=()):
    return write_json(
        tmp_path / "ann.json", {"images": images, "annotations": list(annotations), "categories": CATEGORIES}
    )


def test_size_read_from_the_image_header(tmp_path):
    solid_jpeg(tmp_path / "wide.jpg", 30, 20)
    solid_jpeg(tmp_path / "tall.jpg", 16, 40)
    images = [
        {"id": 1, "file_name": "wide.jpg"},  # no width / height at all
        {"id": 2, "file_name": "tall.jpg", "width": None, "height": None},  # null
        {"id": 3, "file_name": "given.jpg", "width": 7, "height": 9},  # as annotated: file not opened
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [31, 2, 10, 10], "area": 100},  # right of 30 px: dropped
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 30, 10, 9], "area": 90},  # inside 16 x 40: kept
    ]
    ann = _ann_file(tmp_path, images, anns)
    with pytest.raises(DataError, match="image id 1 has no positive integer 'width'"):
        read_coco_json(ann)  # a file alone (no images to read) still needs the sizes
    ds = CocoDetection(tmp_path, ann)
    assert [(r.width, r.height) for r in ds.records] == [(30, 20), (16, 40), (7, 9)]
    assert ds.num_degenerate == 1 and ds.records[0].boxes.tolist() == [[2, 2, 12, 12]]
    assert ds.records[1].boxes.tolist() == [[1, 30, 11, 39]]
    assert ds.aspect_ratio_groups().tolist() == [1, 0, 0]
    image, _, meta = ds[0]  # the decoded size agrees with the header size
    assert tuple(image.shape) == (3, 20, 30) and meta["ori_shape"] == (20, 30)
    gt = ds.to_coco_dict()  # the evaluator gets the sizes too
    assert [(g["width"], g["height"]) for g in gt["images"]] == [(30, 20), (16, 40), (7, 9)]
    assert [a["id"] for a in gt["annotations"]] == [1, 3]
    assert "width" not in json.loads(ann.read_text())["images"][0]  # the file itself is not touched


def test_size_from_header_follows_exif_orientation(tmp_path):
    im = Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8))  # 3 wide x 2 high, stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 2 wide x 3 high
    im.save(tmp_path / "rot.png", exif=exif)
    ds = CocoDetection(tmp_path, _ann_file(tmp_path, [{"id": 1, "file_name": "rot.png"}]))
    assert (ds.records[0].width, ds.records[0].height) == (2, 3)
    assert tuple(ds[0][0].shape) == (3, 3, 2)


def test_no_size_and_no_readable_file_is_one_line_error(tmp_path):
    ann = _ann_file(tmp_path, [{"id": 4, "file_name": "missing.jpg"}])
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, ann)
    message = str(info.value)
    assert "\n" not in message
    for part in (str(ann), "image id 4", "no 'width'/'height'", str(tmp_path / "missing.jpg")):
        assert part in message, message
    (tmp_path / "garbage.jpg").write_bytes(b"not an image")
    ann = _ann_file(tmp_path, [{"id": 5, "file_name": "garbage.jpg", "height": 10}])
    with pytest.raises(DataError, match=r"image id 5 has no 'width'/'height'.*garbage.jpg: cannot read image size"):
        CocoDetection(tmp_path, ann)


def test_one_given_side_must_agree_with_the_file(tmp_path):
    solid_jpeg(tmp_path / "a.jpg", 30, 20)
    ok = CocoDetection(tmp_path, _ann_file(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 20}]))
    assert (ok.records[0].width, ok.records[0].height) == (30, 20)
    with pytest.raises(DataError, match=r"a.jpg: image is 30x20 .* says width None, height 21"):
        CocoDetection(tmp_path, _ann_file(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 21}]))


@pytest.mark.parametrize("value", [0, -3, 2.5, "20"])
def test_invalid_sizes_are_still_refused(tmp_path, value):
    solid_jpeg(tmp_path / "a.jpg", 30, 20)
    ann = _ann_file(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": value, "height": 20}])
    with pytest.raises(DataError, match="image id 1 has no positive integer 'width'"):
        CocoDetection(tmp_path, ann)
