"""COCO / VOC readers, image decoding, degenerate boxes, bad input, seeding (spec §6.1)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from varifocal.data import (
    CocoDetection,
    DataError,
    VOCDetection,
    build_train_transforms,
    load_image,
    read_coco_json,
    sample_seed,
)

from ..conftest import shared_path
from .helpers import solid_jpeg, tiny_coco, truncated_copy, voc_tree, write_json

BCCD_CLASSES = ["RBC", "WBC", "Platelets"]


@pytest.fixture(scope="module")
def coco_val():
    root = shared_path("data", "coco_subset")
    return CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json")


# ---- COCO ------------------------------------------------------------------------------------


def test_coco_subset_val_counts_and_classes(coco_val):
    # data README: 128 images, 987 instances of which 10 iscrowd, 80 categories (ids 1..90).
    assert len(coco_val) == 128
    assert sum(len(r.boxes) for r in coco_val.records) == 977
    assert sum(len(r.crowd_boxes) for r in coco_val.records) == 10
    assert coco_val.num_degenerate == 0
    assert len(coco_val.class_names) == 80 and coco_val.cat_ids[:3] == [1, 2, 3]
    assert coco_val.cat_ids[-1] == 90 and coco_val.cat_ids == sorted(coco_val.cat_ids)
    assert coco_val.class_names[0] == "person" and coco_val.class_names[-1] == "toothbrush"


def test_coco_box_conversion_and_label_mapping(coco_val):
    # annotation 3253: image 22192, category 18 (dog), bbox [71.57, 120.67, 144.02, 255.26].
    # Category ids 1..11, 13..18 (12 is a gap) -> id 18 is label 16.
    rec = next(r for r in coco_val.records if r.image_id == 22192)
    expected = np.array([71.57, 120.67, 71.57 + 144.02, 120.67 + 255.26], dtype=np.float32)
    row = np.flatnonzero(np.all(np.isclose(rec.boxes, expected), axis=1))
    assert len(row) == 1
    assert rec.labels[row[0]] == 16 and coco_val.class_names[16] == "dog"
    assert rec.boxes.dtype == np.float32 and rec.labels.dtype == np.int64
    assert rec.file_name.endswith("val2017/000000022192.jpg")


def test_coco_crowd_box_goes_to_crowd_boxes(coco_val):
    # annotation 900100087038: image 87038, person, iscrowd=1, bbox [1, 190, 638, 101].
    rec = next(r for r in coco_val.records if r.image_id == 87038)
    assert [1.0, 190.0, 639.0, 291.0] in rec.crowd_boxes.tolist()
    assert [1.0, 190.0, 639.0, 291.0] not in rec.boxes.tolist()
    image, target, meta = coco_val[coco_val.records.index(rec)]
    assert len(target["boxes"]) == len(rec.boxes)  # the crowd box is not a training target


def test_coco_getitem_types(coco_val):
    image, target, meta = coco_val[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 426, 640)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["image_id"] == 139 == meta["image_id"]
    assert meta["ori_shape"] == meta["img_shape"] == (426, 640)
    assert meta["scale_factor"] == (1.0, 1.0) and meta["flip"] is False and meta["skipped_files"] == []


def test_coco_drop_empty_and_min_size():
    root = shared_path("data", "coco_subset")
    ann = root / "annotations" / "instances_val2017.json"
    # 2 val images (58636, 226111) have no annotation at all.
    ds = CocoDetection(root / "val2017", ann, drop_empty=True)
    assert len(ds) == 126 and ds.num_filtered == 2
    assert {58636, 226111}.isdisjoint(r.image_id for r in ds.records)
    ds = CocoDetection(root / "val2017", ann, min_size=10_000)
    assert len(ds) == 0 and ds.num_filtered == 128


def test_degenerate_boxes_dropped_and_logged_once(tmp_path, caplog):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0.5, 30], "area": 15, "iscrowd": 0},  # w < 1
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [120, 10, 20, 30], "area": 600, "iscrowd": 0},  # outside
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "area": 0, "iscrowd": 0},  # area 0
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 1},  # crowd
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0, "ignore": 1},
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [90, 50, 30, 30], "area": 900},  # partly outside: kept
    ]
    ann = tiny_coco(tmp_path, [("a.jpg", 100, 80), ("b.jpg", 40, 60)], anns)
    with caplog.at_level(logging.WARNING, logger="varifocal.data"):
        ds = CocoDetection(tmp_path, ann)
    assert ds.num_degenerate == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"dropped 3 degenerate boxes in {ann}"]
    rec = ds.records[0]
    # categories [3 'b', 1 'a'] sort to cat_ids [1, 3]: 'a' is label 0, 'b' label 1.
    assert ds.cat_ids == [1, 3] and ds.class_names == ["a", "b"]
    assert rec.boxes.tolist() == [[10, 10, 30, 40], [90, 50, 120, 80]]  # not clipped at load time
    assert rec.labels.tolist() == [1, 0]
    assert rec.crowd_boxes.tolist() == [[0, 0, 50, 50]] and rec.crowd_labels.tolist() == [0]
    assert ds.records[1].boxes.shape == (0, 4)  # empty image kept by default
    assert ds.aspect_ratio_groups().tolist() == [1, 0]


# ---- annotation errors -------------------------------------------------------------------------


def _assert_one_line(exc: DataError, *parts: str) -> None:
    message = str(exc)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_annotation_file_not_json(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [}')
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, bad)
    _assert_one_line(info.value, str(bad), "not valid JSON", "line 1")


def test_annotation_unknown_image_id(tmp_path):
    ann = tiny_coco(tmp_path, [("a.jpg", 10, 10)], [{"id": 77, "image_id": 5, "category_id": 1, "bbox": [0, 0, 2, 2]}])
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, ann)
    _assert_one_line(info.value, str(ann), "annotation id 77", "image_id 5")


def test_annotation_unknown_category_id(tmp_path):
    ann = tiny_coco(tmp_path, [("a.jpg", 10, 10)], [{"id": 78, "image_id": 1, "category_id": 2, "bbox": [0, 0, 2, 2]}])
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, ann)
    _assert_one_line(info.value, str(ann), "annotation id 78", "category_id 2")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.pop("categories"), "missing key 'categories'"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, 2]), "annotation id 1 has bbox"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id 1 appears twice"),
        (lambda d: d["images"][0].pop("width"), "image id 1 has no positive integer 'width'"),
    ],
)
def test_annotation_structure_errors(tmp_path, mutate, expected):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    mutate(data)
    ann = write_json(tmp_path / "x.json", data)
    with pytest.raises(DataError) as info:
        read_coco_json(ann)
    _assert_one_line(info.value, str(ann), expected)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


# ---- images ------------------------------------------------------------------------------------


def test_truncated_and_corrupt_images_raise(tmp_path):
    src = shared_path("data", "coco_subset", "val2017", "000000000139.jpg")
    truncated = truncated_copy(src, tmp_path / "truncated.jpg")
    with pytest.raises(DataError) as info:
        load_image(truncated)
    _assert_one_line(info.value, str(truncated), "truncated")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(DataError) as info:
        load_image(garbage)
    _assert_one_line(info.value, str(garbage), "cannot read image")
    with pytest.raises(DataError, match="file not found"):
        load_image(tmp_path / "missing.jpg")


def test_truncated_image_through_dataset_and_skipping(tmp_path, caplog):
    src = shared_path("data", "coco_subset", "val2017", "000000000139.jpg")
    truncated_copy(src, tmp_path / "bad.jpg")
    solid_jpeg(tmp_path / "good.jpg", 64, 48)
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [4, 4, 10, 10]}]
    ann = tiny_coco(tmp_path, [("bad.jpg", 640, 426), ("good.jpg", 64, 48)], anns)
    strict = CocoDetection(tmp_path, ann)
    with pytest.raises(DataError) as info:
        strict[0]
    _assert_one_line(info.value, "bad.jpg")

    lenient = CocoDetection(tmp_path, ann, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="varifocal.data"):
        image, target, meta = lenient[0]
    assert meta["image_id"] == 2 and tuple(image.shape) == (3, 48, 64)  # the next good image
    assert meta["skipped_files"] == [str(tmp_path / "bad.jpg")]
    assert target["boxes"].tolist() == [[4.0, 4.0, 14.0, 14.0]]
    assert lenient.num_skipped == 1
    image, target, meta = lenient[1]
    assert meta["image_id"] == 2 and meta["skipped_files"] == []
    lenient[0]  # known bad: not decoded again, not counted twice
    assert lenient.num_skipped == 1


def test_all_images_bad_is_an_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    ann = tiny_coco(tmp_path, [("bad.jpg", 10, 10)], [])
    with pytest.raises(DataError, match="no readable image left"):
        CocoDetection(tmp_path, ann, skip_bad_images=True)[0]


def test_image_size_mismatch_with_annotation(tmp_path):
    solid_jpeg(tmp_path / "a.jpg", 30, 20)
    ann = tiny_coco(tmp_path, [("a.jpg", 20, 30)], [])
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, ann)[0]
    _assert_one_line(info.value, "a.jpg", "30x20", "20x30")


def test_mode_conversions_to_rgb8(tmp_path):
    gray = Image.fromarray(np.array([[0, 128], [255, 7]], dtype=np.uint8), mode="L")
    gray.save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    assert out.dtype == torch.uint8 and out.shape == (3, 2, 2)
    assert out[:, 0, 1].tolist() == [128, 128, 128] and out[:, 1, 1].tolist() == [7, 7, 7]

    sixteen = Image.fromarray(np.array([[0, 65535], [256 * 200 + 99, 255]], dtype=np.uint16))
    sixteen.save(tmp_path / "sixteen.png")
    out = load_image(tmp_path / "sixteen.png")  # high byte kept
    assert out[0].tolist() == [[0, 255], [200, 0]]

    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    rgba.save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png")[:, 0, 0].tolist() == [10, 20, 30]

    palette = Image.new("P", (1, 1))
    palette.putpalette([0, 0, 0, 40, 50, 60] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png")[:, 0, 0].tolist() == [40, 50, 60]


def test_exif_orientation_is_applied(tmp_path):
    # 3 wide x 2 high, red top-left pixel; EXIF orientation 6 = "rotate 90 degrees clockwise
    # to display": the displayed image is 2 wide x 3 high with the red pixel top-right.
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)
    im = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.png", exif=exif)
    out = load_image(tmp_path / "rot.png")
    assert tuple(out.shape) == (3, 3, 2)
    assert out[:, 0, 1].tolist() == [255, 0, 0] and out[:, 0, 0].tolist() == [0, 0, 0]


# ---- VOC ---------------------------------------------------------------------------------------


def test_voc_samples(tmp_path):
    src = shared_path("data", "voc_samples", "VOC2007")
    root = voc_tree(tmp_path, src / "000001.xml", src / "000001.jpg", "000001")
    ds = VOCDetection(root, "trainval")
    rec = ds.records[0]
    assert (rec.image_id, rec.width, rec.height) == (1, 353, 500)
    assert rec.boxes.tolist() == [[48, 240, 195, 371], [8, 12, 352, 498]]  # no -1 shift
    assert [ds.class_names[k] for k in rec.labels] == ["dog", "person"] and rec.labels.tolist() == [11, 14]
    image, target, meta = ds[0]
    assert tuple(image.shape) == (3, 500, 353) and target["image_id"] == 1


def test_voc_difficult_is_crowd_and_unknown_class_errors(tmp_path):
    src = shared_path("data", "voc_samples", "VOC2012")
    xml = (src / "000001.xml").read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>")
    (tmp_path / "edited.xml").write_text(xml)
    root = voc_tree(tmp_path, tmp_path / "edited.xml", src / "000001.jpg", "2012_000002")
    ds = VOCDetection(root, "trainval")
    rec = ds.records[0]
    assert rec.image_id == 2012000002 and rec.boxes.shape == (0, 4)
    assert rec.crowd_boxes.tolist() == [[139, 200, 207, 301]] and ds.class_names[rec.crowd_labels[0]] == "train"
    with pytest.raises(DataError) as info:
        VOCDetection(root, "trainval", class_names=["dog"])
    _assert_one_line(info.value, "2012_000002.xml", "'train'")
    with pytest.raises(DataError, match="image-set file not found"):
        VOCDetection(root, "val")


def test_voc_invalid_xml(tmp_path):
    src = shared_path("data", "voc_samples", "VOC2007")
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    root = voc_tree(tmp_path, tmp_path / "broken.xml", src / "000001.jpg", "000009")
    with pytest.raises(DataError) as info:
        VOCDetection(root)
    _assert_one_line(info.value, "000009.xml", "not valid XML")


def test_bccd_voc_xml_equals_coco_json():
    bccd = shared_path("data", "bccd")
    voc = VOCDetection(bccd, "test", class_names=BCCD_CLASSES)
    coco = CocoDetection(bccd / "JPEGImages", bccd / "annotations" / "instances_val.json")
    assert coco.class_names == BCCD_CLASSES and voc.cat_ids == coco.cat_ids == [1, 2, 3]
    assert len(voc) == len(coco) == 72
    by_id = {r.image_id: r for r in coco.records}
    total = 0
    for rv in voc.records:
        rc = by_id[rv.image_id]
        assert (rv.file_name, rv.width, rv.height) == (rc.file_name, rc.width, rc.height)
        key_v = sorted(zip(map(tuple, rv.boxes.tolist()), rv.labels.tolist()))
        key_c = sorted(zip(map(tuple, rc.boxes.tolist()), rc.labels.tolist()))
        assert key_v == key_c
        total += len(key_v)
    assert total == 945  # data README: val has 945 boxes


# ---- seeding -----------------------------------------------------------------------------------


def test_sample_seed_is_deterministic_and_distinct():
    assert sample_seed(0, 0, 0) == sample_seed(0, 0, 0)
    seeds = {sample_seed(s, e, i) for s in range(2) for e in range(3) for i in range(20)}
    assert len(seeds) == 120 and all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError):
        sample_seed(-1, 0, 0)


def test_seeded_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    solid_jpeg(tmp_path / "a.jpg", 40, 30)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12]}]
    ann = tiny_coco(tmp_path, [("a.jpg", 40, 30)], anns)
    tf = build_train_transforms(scale=(80, 60), multiscale_mode="range", scales=[(80, 20), (80, 60)])
    ds = CocoDetection(tmp_path, ann, transforms=tf, seed=7)

    def draws(epoch):
        ds.set_epoch(epoch)
        return [(m["img_shape"], m["flip"]) for _, _, m in (ds[0] for _ in range(3))]

    torch.manual_seed(1)
    first = draws(0)
    torch.manual_seed(2)  # the global RNG state does not matter...
    again = draws(0)
    assert first == again and len(set(first)) == 1
    assert len({draws(e)[0] for e in range(12)}) > 1  # ...the epoch does
    # and the global RNG is left untouched by a seeded sample
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    ds[0]
    assert torch.equal(torch.rand(3), expected)
