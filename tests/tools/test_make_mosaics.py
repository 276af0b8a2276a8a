"""tools/make_mosaics.py (issue 16): G×G mosaics of real BCCD images with their boxes, every source
image once, deterministic with --seed, never written into the inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"

_spec = importlib.util.spec_from_file_location("make_mosaics", REPO / "tools" / "make_mosaics.py")
mm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mm)
make_mosaics = mm.make_mosaics

needs_bccd = pytest.mark.skipif(not (BCCD / "JPEGImages").is_dir(), reason="the bundled BCCD images are absent")


def bccd_subset(tmp_path: Path, n: int) -> tuple[Path, Path]:
    """The first ``n`` images of the BCCD test split as ``tmp_path/src/instances_sub.json``, and
    the real image folder."""
    data = json.loads((BCCD / "annotations" / "instances_val.json").read_text())
    data["images"] = data["images"][:n]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    (tmp_path / "src").mkdir(exist_ok=True)
    path = tmp_path / "src" / "instances_sub.json"
    path.write_text(json.dumps(data))
    return path, BCCD / "JPEGImages"


@needs_bccd
def test_2x2_mosaic_places_the_images_and_shifts_their_boxes(tmp_path):
    ann, images = bccd_subset(tmp_path, 4)
    src = json.loads(ann.read_text())
    out = make_mosaics(ann, images, tmp_path / "out", grid=(2, 2), seed=0)
    (mosaic,) = out["images"]
    assert (mosaic["width"], mosaic["height"], mosaic["file_name"]) == (1280, 960, "sub_00000.jpg")
    corners = sorted((s["x"], s["y"]) for s in mosaic["sources"])
    assert corners == [(0, 0), (0, 480), (640, 0), (640, 480)]
    assert sorted(s["id"] for s in mosaic["sources"]) == sorted(im["id"] for im in src["images"])
    pixels = np.asarray(Image.open(tmp_path / "out" / "JPEGImages" / "sub_00000.jpg"), dtype=np.float64)
    for s in mosaic["sources"]:
        original = np.asarray(Image.open(images / s["file_name"]).convert("RGB"), dtype=np.float64)
        cell = pixels[s["y"] : s["y"] + 480, s["x"] : s["x"] + 640]
        assert np.abs(cell - original).mean() < 3.0  # the same pixels, up to JPEG re-encoding
        shifted = sorted(
            [a["bbox"][0] + s["x"], a["bbox"][1] + s["y"], a["bbox"][2], a["bbox"][3], a["category_id"]]
            for a in src["annotations"]
            if a["image_id"] == s["id"]
        )
        mine = sorted(
            [*a["bbox"], a["category_id"]]
            for a in out["annotations"]
            if s["x"] <= a["bbox"][0] < s["x"] + 640 and s["y"] <= a["bbox"][1] < s["y"] + 480
        )
        assert mine == shifted  # BCCD boxes lie inside their images: only shifted
    written = json.loads((tmp_path / "out" / "annotations" / "instances_sub.json").read_text())
    assert written == out and len(written["annotations"]) == len(src["annotations"])
    assert written["categories"] == src["categories"]


@needs_bccd
def test_every_source_once_and_deterministic(tmp_path):
    ann, images = bccd_subset(tmp_path, 5)
    a = make_mosaics(ann, images, tmp_path / "a", grid=(2, 2), seed=3)
    b = make_mosaics(ann, images, tmp_path / "b", grid=(2, 2), seed=3)
    assert [len(m["sources"]) for m in a["images"]] == [4, 1]  # the last mosaic is partial
    assert sorted(s["id"] for m in a["images"] for s in m["sources"]) == sorted(
        im["id"] for im in json.loads(ann.read_text())["images"]
    )
    assert a == b
    for name in ("sub_00000.jpg", "sub_00001.jpg"):
        assert (tmp_path / "a" / "JPEGImages" / name).read_bytes() == (
            tmp_path / "b" / "JPEGImages" / name
        ).read_bytes()
    dropped = make_mosaics(ann, images, tmp_path / "c", grid=(2, 2), seed=3, drop_last=True)
    assert [len(m["sources"]) for m in dropped["images"]] == [4]
    assert mm.plan_mosaics(range(5), (2, 2), 3, False) != mm.plan_mosaics(range(5), (2, 2), 4, False)


def test_plan_with_a_grid_range_uses_each_id_once():
    plan = mm.plan_mosaics(range(100), (2, 4), 0, False)
    assert sorted(i for _, ids in plan for i in ids) == list(range(100))
    assert {g for g, _ in plan} == {2, 3, 4} and all(len(ids) <= g * g for g, ids in plan)
    assert mm.parse_grid("4") == (4, 4) and mm.parse_grid("2-4") == (2, 4)
    for bad in ("5", "1", "4-2", "x"):
        with pytest.raises(ValueError, match="--grid"):
            mm.parse_grid(bad)


def test_a_box_over_the_image_border_is_clipped_to_its_cell(tmp_path):
    (tmp_path / "img").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "img" / name)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20], "area": 400, "iscrowd": 1},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [41, 0, 5, 5], "area": 25},  # off the image
        ],
        "categories": [{"id": 1, "name": "c"}],
    }
    data["images"].append({"id": 2, "file_name": "b.jpg", "width": 40, "height": 30})
    ann = tmp_path / "ann" / "instances_x.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(data))
    out = make_mosaics(ann, tmp_path / "img", tmp_path / "out", grid=(2, 2), seed=1)
    (box,) = out["annotations"]
    (corner,) = [(s["x"], s["y"]) for s in out["images"][0]["sources"] if s["id"] == 1]
    assert box["bbox"] == [30 + corner[0], 20 + corner[1], 10, 10] and box["area"] == 100 and box["iscrowd"] == 1


@needs_bccd
def test_outputs_never_go_into_the_inputs(tmp_path, capsys):
    ann, images = bccd_subset(tmp_path, 4)
    with pytest.raises(ValueError, match="inside the input image folder"):
        make_mosaics(ann, images, images / "mosaics")
    with pytest.raises(ValueError, match="inside the input annotation folder"):
        make_mosaics(ann, images, ann.parent)
    with pytest.raises(ValueError, match="contains the input annotation file"):
        make_mosaics(ann, images, tmp_path)
    make_mosaics(ann, images, tmp_path / "out", grid=(2, 2))
    argv = ["--ann", str(ann), "--images", str(images), "--out", str(tmp_path / "out"), "--grid", "2"]
    assert mm.main(argv) == 2  # the output exists: only with --overwrite
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert mm.main([*argv, "--overwrite"]) == 0
    assert not (images / "mosaics").exists()
