"""Evaluation scores exactly what the dataset kept, and never counts an image twice (spec §5.3,
§6.1): dropped (degenerate / off-image / ignore-flagged) boxes are not ground truth; an
unreadable image is left out, not replaced by the next one."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from varifocal.data import CocoDetection, DataError, build_test_transforms
from varifocal.engine.evaluate import evaluate, run_inference
from varifocal.evaluation import STAT_NAMES, CocoEvaluator, format_summary

from ..data.helpers import tiny_coco, truncated_copy, write_json

pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")

# Image 1 is 100 x 80, image 2 is 60 x 50. Category ids [3 'b', 1 'a'].
KEPT = [
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 20, 30, 40], "area": 1200, "iscrowd": 0},
    {"id": 3, "image_id": 1, "category_id": 1, "bbox": [90, 50, 30, 30], "area": 900, "iscrowd": 0},  # partly out
    {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 25, 25], "area": 625, "iscrowd": 0},
    {"id": 5, "image_id": 2, "category_id": 3, "bbox": [0, 0, 60, 20], "area": 1200, "iscrowd": 1},  # crowd
]
DEGENERATE = {"id": 6, "image_id": 1, "category_id": 3, "bbox": [30, 30, 0.5, 20], "area": 10, "iscrowd": 0}
OFF_IMAGE = {"id": 7, "image_id": 2, "category_id": 1, "bbox": [70, 10, 20, 20], "area": 400, "iscrowd": 0}
IGNORED = {"id": 8, "image_id": 2, "category_id": 3, "bbox": [30, 25, 20, 20], "area": 400, "iscrowd": 0, "ignore": 1}
SIZES = [("a.jpg", 100, 80), ("b.jpg", 60, 50)]


def _det(ann, score=1.0, shift=0.0):
    x, y, w, h = ann["bbox"]
    return {
        "image_id": ann["image_id"],
        "category_id": ann["category_id"],
        "bbox": [x + shift, y, w, h],
        "score": score,
    }


def _perfect():
    return [_det(a) for a in KEPT if not a["iscrowd"]]


def _pycocotools(gt_dict, dets, tmp_path, name):
    """Plain pycocotools on ``gt_dict``, written to a file by the test itself."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_file = write_json(tmp_path / f"{name}_gt.json", gt_dict)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(dets))), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


@pytest.fixture()
def tiny(tmp_path):
    ann = tiny_coco(tmp_path, SIZES, KEPT + [DEGENERATE, OFF_IMAGE, IGNORED])
    ds = CocoDetection(tmp_path, ann)
    kept_gt = json.loads(Path(ann).read_text())
    kept_gt["annotations"] = [dict(a) for a in KEPT]  # by hand: the boxes the loader keeps
    return ds, kept_gt


def test_loader_keeps_what_the_case_says(tiny):
    ds, _ = tiny
    assert ds.num_degenerate == 2
    assert [(r.num_degenerate, r.num_ignored) for r in ds.records] == [(1, 0), (1, 1)]
    assert [len(r.boxes) for r in ds.records] == [3, 1] and [len(r.crowd_boxes) for r in ds.records] == [0, 1]
    gt = ds.to_coco_dict()
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4, 5]
    assert gt["annotations"][4]["iscrowd"] == 1 and gt["annotations"][0]["area"] == 600  # file's own values


def test_perfect_predictions_on_kept_boxes_give_ap_1(tiny, tmp_path):
    ds, kept_gt = tiny
    m = CocoEvaluator(ds, backend="pycocotools").evaluate(_perfect())
    plain = _pycocotools(kept_gt, _perfect(), tmp_path, "perfect")
    assert [m["stats"][k] for k in STAT_NAMES] == plain
    assert m["stats"]["AP"] == 1.0 and m["stats"]["AR100"] == 1.0
    assert [(r["name"], r["num_gt"]) for r in m["per_class"]] == [("a", 3), ("b", 1)]
    assert [r["AP"] for r in m["per_class"]] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert (m["dropped_boxes"], m["ignored_boxes"]) == (2, 1)
    assert m["num_skipped_images"] == 0 and m["skipped_images"] == []


def test_detecting_a_dropped_box_is_a_false_positive(tiny, tmp_path):
    ds, kept_gt = tiny
    # the dropped boxes' "detections" outrank the true ones: as false positives they cost AP
    dets = [dict(d, score=0.5) for d in _perfect()] + [
        _det(OFF_IMAGE, 0.95),
        _det(DEGENERATE, 0.9),
        _det(IGNORED, 0.97),
    ]
    m = CocoEvaluator(ds, backend="pycocotools").evaluate(dets)
    plain = _pycocotools(kept_gt, dets, tmp_path, "fp")
    assert [m["stats"][k] for k in STAT_NAMES] == plain
    assert m["stats"]["AP"] < 1.0  # the raw file would score the off-image "detection" as a hit
    assert m["stats"]["AR100"] == 1.0


def test_imperfect_predictions_equal_pycocotools_on_kept_boxes(tiny, tmp_path):
    ds, kept_gt = tiny
    rng = np.random.default_rng(0)
    dets = [_det(a, float(rng.uniform(0.2, 1.0)), float(rng.uniform(0, 6))) for a in KEPT if not a["iscrowd"]]
    dets += [_det(OFF_IMAGE, 0.8), {"image_id": 2, "category_id": 3, "bbox": [2, 1, 50, 15], "score": 0.7}]
    m = CocoEvaluator(ds, backend="pycocotools").evaluate(dets)
    plain = _pycocotools(kept_gt, dets, tmp_path, "jitter")
    assert [m["stats"][k] for k in STAT_NAMES] == plain
    assert 0.0 < m["stats"]["AP"] < 1.0


def test_path_ground_truth_is_scored_as_written(tiny, tmp_path):
    # A file path (``val --predictions --ann``) keeps the official protocol: every annotation.
    ds, _ = tiny
    raw = json.loads(Path(ds.ann_file).read_text())
    m = CocoEvaluator(ds.ann_file, backend="pycocotools").evaluate(_perfect())
    assert [m["stats"][k] for k in STAT_NAMES] == _pycocotools(raw, _perfect(), tmp_path, "raw")
    assert m["stats"]["AP"] < 1.0 and m["dropped_boxes"] == 0


def test_summary_mentions_what_was_left_out(tiny):
    ds, _ = tiny
    evaluator = CocoEvaluator(ds, backend="pycocotools")
    m = evaluator.evaluate(_perfect(), skipped_images=["/x/bad.jpg"])
    assert m["skipped_images"] == ["/x/bad.jpg"] and m["num_skipped_images"] == 1
    lines = evaluator.format_summary().splitlines()
    assert "skipped 1 unreadable images (not evaluated): bad.jpg" in lines
    assert "dropped 2 degenerate / off-image boxes (not scored)" in lines
    assert "left out 1 boxes flagged 'ignore' (not scored)" in lines
    plain = format_summary({**m, "skipped_images": [], "dropped_boxes": 0, "ignored_boxes": 0})
    assert "skipped" not in plain and "dropped" not in plain  # nothing to say: the summary of before


# ---- skipped bad images through the inference loop ------------------------------------------------


class _Preprocessor:
    def pad_batch(self, images, metas):
        return images, metas


class _OracleModel(nn.Module):
    """Predicts the kept boxes of whichever image it is given (from ``meta['image_id']``)."""

    def __init__(self, per_image):
        super().__init__()
        self.preprocessor = _Preprocessor()
        self.per_image = per_image
        self.seen: list[int] = []

    def predict(self, batch, metas):
        out = []
        for meta in metas:
            self.seen.append(int(meta["image_id"]))
            boxes, labels = self.per_image[int(meta["image_id"])]
            out.append({"boxes": boxes.clone(), "scores": torch.ones(len(boxes)), "labels": labels.clone()})
        return out


def _noise_jpeg(path, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


@pytest.fixture()
def with_bad_image(tmp_path):
    # images 1 (good), 2 (truncated JPEG), 3 (good): substitution would give image 3 twice.
    _noise_jpeg(tmp_path / "one.jpg", 64, 48, 1)
    truncated_copy(_noise_jpeg(tmp_path / "full.jpg", 64, 48, 2), tmp_path / "bad.jpg")
    _noise_jpeg(tmp_path / "three.jpg", 64, 48, 3)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 3, "image_id": 3, "category_id": 3, "bbox": [30, 8, 25, 30], "area": 750, "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [70, 8, 25, 30], "area": 750, "iscrowd": 0},  # off
    ]
    ann = tiny_coco(tmp_path, [("one.jpg", 64, 48), ("bad.jpg", 64, 48), ("three.jpg", 64, 48)], anns)
    ds = CocoDetection(tmp_path, ann, build_test_transforms((64, 48)), skip_bad_images=True)
    per_image = {r.image_id: (torch.from_numpy(r.boxes), torch.from_numpy(r.labels)) for r in ds.records}
    return ds, _OracleModel(per_image), tmp_path / "bad.jpg"


@pytest.mark.parametrize("batch_size, num_workers", [(1, 0), (2, 0), (3, 0), (2, 1)])
def test_bad_image_is_left_out_not_replaced(with_bad_image, batch_size, num_workers):
    ds, model, bad = with_bad_image
    with pytest.raises(DataError, match="bad.jpg"):  # the image really is unreadable
        CocoDetection(ds.image_dir, ds.ann_file)[1]
    assert ds[1][2]["image_id"] == 3  # training still substitutes the next good image

    metrics, results, detections = evaluate(model, ds, torch.device("cpu"), batch_size, num_workers)
    assert sorted({d["image_id"] for d in results}) == [1, 3] and len(detections) == 2
    assert len(results) == 2  # one perfect detection per kept box of images 1 and 3, none repeated
    if num_workers == 0:
        assert model.seen == [1, 3]
    assert metrics["num_images"] == 2
    assert metrics["num_skipped_images"] == 1 and metrics["skipped_images"] == [str(bad)]
    # image 2's box is not a miss, image 3 is not counted twice (1 / (1 + eps): COCOeval's own rounding)
    assert metrics["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["dropped_boxes"] == 1  # the off-image box of image 3
    assert [r["num_gt"] for r in metrics["per_class"]] == [1, 1]

    again, _, _ = evaluate(model, ds, torch.device("cpu"), batch_size, num_workers)  # known bad: still reported
    assert again["skipped_images"] == [str(bad)] and again["stats"] == metrics["stats"]


def test_run_inference_gives_each_image_once(with_bad_image):
    ds, model, _ = with_bad_image
    detections, image_ids = run_inference(model, ds, torch.device("cpu"), batch_size=2)
    assert image_ids == [1, 3] and len(detections) == 2


def test_without_skipping_a_bad_image_is_an_error(with_bad_image):
    ds, model, bad = with_bad_image
    strict = CocoDetection(ds.image_dir, ds.ann_file, build_test_transforms((64, 48)))
    with pytest.raises(DataError) as info:
        evaluate(model, strict, torch.device("cpu"))
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_all_images_bad_is_an_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    ann = tiny_coco(tmp_path, [("bad.jpg", 10, 10)], [])
    ds = CocoDetection(tmp_path, ann, skip_bad_images=True)
    with pytest.raises(DataError, match="no readable image left"):
        evaluate(_OracleModel({}), ds, torch.device("cpu"))


def test_voc_dropped_boxes_are_counted_not_scored(tmp_path):
    from varifocal.data import VOCDetection

    from ..data.helpers import solid_jpeg, voc_tree

    objects = "".join(
        f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, d, b in [("a", 0, (2, 2, 20, 20)), ("b", 0, (70, 5, 90, 25)), ("b", 1, (30, 5, 50, 25))]
    )  # the second box lies right of the 64-pixel-wide image
    xml = tmp_path / "x.xml"
    xml.write_text(f"<annotation><size><width>64</width><height>48</height></size>{objects}</annotation>")
    root = voc_tree(tmp_path, xml, solid_jpeg(tmp_path / "x.jpg", 64, 48), "img_00001")
    ds = VOCDetection(root, "trainval", class_names=["a", "b"])
    assert ds.records[0].num_degenerate == 1 and ds.num_degenerate == 1
    gt = ds.to_coco_dict()
    assert [(a["bbox"], a["iscrowd"]) for a in gt["annotations"]] == [([2, 2, 18, 18], 0), ([30, 5, 20, 20], 1)]
    m = CocoEvaluator(ds, backend="pycocotools").evaluate(
        [{"image_id": 1, "category_id": 1, "bbox": [2.0, 2.0, 18.0, 18.0], "score": 0.9}]
    )
    assert m["stats"]["AP"] == pytest.approx(1.0, abs=1e-12) and m["dropped_boxes"] == 1
    assert [r["num_gt"] for r in m["per_class"]] == [1, 0]


def test_ground_truth_without_area_uses_the_box_area(tmp_path):
    """Box-only exporters may omit ``area``; pycocotools needs it for its area ranges. A
    perfect prediction of such a box (100 × 20 px = 2000 px², "medium") scores AP 1.0."""
    from varifocal.evaluation import evaluate_file

    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 20], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(
        json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 20], "score": 0.9}])
    )
    metrics = evaluate_file(tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "out")
    assert metrics["stats"]["AP"] == pytest.approx(1.0) and metrics["stats"]["APm"] == pytest.approx(1.0)
    assert metrics["stats"]["APs"] == -1.0 and metrics["stats"]["APl"] == -1.0
    assert "area" not in json.loads((tmp_path / "gt.json").read_text())["annotations"][0]  # input untouched
