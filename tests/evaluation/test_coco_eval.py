"""COCO bbox evaluation against plain pycocotools (spec §5.3)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from varifocal.data import CocoDetection, DataError, VOCDetection
from varifocal.evaluation import (
    STAT_NAMES,
    CocoEvaluator,
    detections_to_coco,
    evaluate_file,
    format_summary,
    write_json_atomic,
    write_predictions,
)

from ..conftest import shared_path
from ..data.helpers import solid_jpeg, tiny_coco, truncated_copy

pytest.importorskip("pycocotools", reason="COCO evaluation needs pycocotools")


@pytest.fixture(scope="module")
def coco_val_ann():
    return shared_path("data", "coco_subset", "annotations", "instances_val2017.json")


@pytest.fixture(scope="module")
def coco_evaluator(coco_val_ann):
    return CocoEvaluator(coco_val_ann, backend="pycocotools")


def _gt_as_detections(ann_file):
    gt = json.loads(open(ann_file).read())
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
        if not a.get("iscrowd", 0)
    ]


def _realistic_detections(ann_file, seed=0):
    """GT boxes jittered by ~5% of their size, 15% of them missed, random scores, plus
    false positives with random boxes and categories."""
    gt = json.loads(open(ann_file).read())
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    cats = [c["id"] for c in gt["categories"]]
    dets = []
    for a in gt["annotations"]:
        if a["iscrowd"] or rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0.0, 0.05, 4) * [w, h, w, h]
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [
                    float(x + jitter[0]),
                    float(y + jitter[1]),
                    float(max(1.0, w + jitter[2])),
                    float(max(1.0, h + jitter[3])),
                ],
                "score": float(rng.uniform(0.05, 1.0)),
            }
        )
    for image_id, (width, height) in sizes.items():
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(5, width / 2), rng.uniform(5, height / 2)
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(cats)),
                    "bbox": [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), float(w), float(h)],
                    "score": float(rng.uniform(0.05, 0.9)),
                }
            )
    return dets


def _plain_pycocotools(ann_file, results_file, cat_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(str(results_file))
        ev = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats], out.getvalue()


# ---- (a) ground truth as predictions ------------------------------------------------------------


def test_coco_subset_gt_as_predictions_gives_ap_1(coco_evaluator, coco_val_ann):
    m = coco_evaluator.evaluate(_gt_as_detections(coco_val_ann))
    assert m["stats"]["AP"] == 1.0 and m["stats"]["AP50"] == 1.0 and m["stats"]["AP75"] == 1.0
    assert m["stats"]["AR100"] == 1.0
    assert m["backend"].startswith("pycocotools") and m["num_images"] == 128 and m["num_detections"] == 977
    rows = {r["name"]: r for r in m["per_class"]}
    assert rows["person"]["AP"] == 1.0 and rows["hot dog"]["AP"] is None  # no hot dog in val


def test_bccd_gt_as_predictions_gives_ap_1():
    ann = shared_path("data", "bccd", "annotations", "instances_val.json")
    m = CocoEvaluator(ann).evaluate(_gt_as_detections(ann))
    assert m["stats"]["AP"] == 1.0
    # (c) data README: val has 805 RBC / 71 WBC / 69 Platelets boxes.
    assert [(r["name"], r["num_gt"], r["num_dets"]) for r in m["per_class"]] == [
        ("RBC", 805, 805),
        ("WBC", 71, 71),
        ("Platelets", 69, 69),
    ]


def test_bccd_voc_ground_truth_as_predictions_gives_ap_1():
    voc = VOCDetection(shared_path("data", "bccd"), "test", class_names=["RBC", "WBC", "Platelets"])
    evaluator = CocoEvaluator(voc)
    gt = voc.to_coco_dict()
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    assert evaluator.evaluate(dets)["stats"]["AP"] == 1.0


# ---- (b) equality with plain pycocotools ----------------------------------------------------------


def test_metrics_equal_plain_pycocotools(coco_evaluator, coco_val_ann, tmp_path):
    dets = _realistic_detections(coco_val_ann)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(dets))
    ours = coco_evaluator.evaluate(results)
    plain, printed = _plain_pycocotools(coco_val_ann, results)
    assert [ours["stats"][k] for k in STAT_NAMES] == plain  # exactly
    assert 0.3 < ours["stats"]["AP"] < 0.9  # a realistic, non-trivial value
    # the 12 summary lines are pycocotools' own lines
    assert coco_evaluator.format_summary().splitlines()[:12] == printed.strip().splitlines()[-12:]
    # the list and the file give the same numbers
    assert coco_evaluator.evaluate(dets)["stats"] == ours["stats"]

    # per-class AP equals a COCOeval restricted to that category
    rows = {r["name"]: r for r in ours["per_class"]}
    person = rows["person"]
    only_person, _ = _plain_pycocotools(coco_val_ann, results, cat_ids=[1])
    assert person["AP"] == pytest.approx(only_person[0], abs=1e-12)
    assert person["AP50"] == pytest.approx(only_person[1], abs=1e-12)
    assert person["AP75"] == pytest.approx(only_person[2], abs=1e-12)
    assert person["num_dets"] == sum(d["category_id"] == 1 for d in dets)


# ---- (c) per-class ground-truth counts ------------------------------------------------------------


def test_num_gt_hand_count(coco_evaluator, coco_val_ann):
    # bicycle (id 2) in val: annotations 125303, 125737, 128189, 1335646, 1336430, none crowd.
    m = coco_evaluator.evaluate([])
    rows = {r["name"]: r for r in m["per_class"]}
    assert rows["bicycle"]["num_gt"] == 5 and rows["bicycle"]["category_id"] == 2
    # person: 243 boxes in val (data README) of which 5 are crowd.
    gt = json.loads(open(coco_val_ann).read())
    crowd_person = sum(a["category_id"] == 1 and a["iscrowd"] == 1 for a in gt["annotations"])
    assert rows["person"]["num_gt"] == 243 - crowd_person == 238


# ---- empty predictions ----------------------------------------------------------------------------


def test_empty_predictions_give_zero(coco_evaluator):
    m = coco_evaluator.evaluate([])
    assert m["stats"]["AP"] == 0.0 and m["stats"]["AR100"] == 0.0 and m["num_detections"] == 0
    assert all(r["num_dets"] == 0 for r in m["per_class"])


# ---- (d) errors -----------------------------------------------------------------------------------


def test_ground_truth_errors_name_the_file(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text("not json at all")
    with pytest.raises(DataError, match=f"{bad}: not valid JSON"):
        CocoEvaluator(bad)
    ann = tiny_coco(tmp_path, [("a.jpg", 10, 10)], [{"id": 5, "image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(DataError, match=r"ann.json: annotation id 5 has image_id 9"):
        CocoEvaluator(ann)
    ann = tiny_coco(tmp_path, [("a.jpg", 10, 10)], [{"id": 6, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(DataError, match=r"ann.json: annotation id 6 has category_id 4"):
        CocoEvaluator(ann)


def test_truncated_image_error_names_the_file(tmp_path):
    src = shared_path("data", "bccd", "JPEGImages", "BloodImage_00007.jpg")
    truncated_copy(src, tmp_path / "BloodImage_00007.jpg", keep=0.3)
    ann = tiny_coco(tmp_path, [("BloodImage_00007.jpg", 640, 480)], [])
    with pytest.raises(DataError) as info:
        CocoDetection(tmp_path, ann)[0]
    assert str(tmp_path / "BloodImage_00007.jpg") in str(info.value) and "\n" not in str(info.value)


def test_prediction_errors(coco_evaluator, tmp_path):
    good = {"image_id": 139, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    with pytest.raises(DataError, match=r"detection #1 has image_id 12345"):
        coco_evaluator.evaluate([good, dict(good, image_id=12345)])
    with pytest.raises(DataError, match=r"detection #0 has category_id 12"):
        coco_evaluator.evaluate([dict(good, category_id=12)])
    with pytest.raises(DataError, match=r"detection #0 has bbox"):
        coco_evaluator.evaluate([dict(good, bbox=[1, 2, 3])])
    # numpy scalars are fine
    assert coco_evaluator.evaluate([dict(good, score=np.float32(0.5), image_id=np.int64(139))])["num_detections"] == 1
    broken = tmp_path / "preds.json"
    broken.write_text("[{")
    with pytest.raises(DataError, match=f"{broken}: not valid JSON"):
        coco_evaluator.evaluate(broken)


def test_class_list_checked_against_ground_truth(coco_val_ann, tmp_path):
    with pytest.raises(DataError, match="label 1 is 'car' but category id 2 is 'bicycle'"):
        CocoEvaluator(coco_val_ann, class_names=["person", "car"], cat_ids=[1, 2])
    subset = CocoEvaluator(coco_val_ann, class_names=["person", "bicycle"], cat_ids=[1, 2])
    m = subset.evaluate([])
    assert [r["name"] for r in m["per_class"]] == ["person", "bicycle"]
    preds = tmp_path / "p.json"
    write_predictions(preds, [], ["person", "bicycle"], [1, 3])
    with pytest.raises(DataError, match=f"{preds}: label 1 is 'bicycle' but category id 3 is 'car'"):
        subset.evaluate(preds)
    write_predictions(
        preds, [{"image_id": 139, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}], ["person", "bicycle"], [1, 2]
    )
    assert subset.evaluate(preds)["num_detections"] == 1


# ---- conversion and files -------------------------------------------------------------------------


def test_detections_to_coco():
    results = [
        {
            "boxes": torch.tensor([[10.5, 20.0, 30.25, 60.0], [0.0, 0.0, 1.0, 1.0]]),
            "scores": torch.tensor([0.9, 0.123456789]),
            "labels": torch.tensor([2, 0]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    out = detections_to_coco(results, [7, 8], [1, 5, 90])
    assert out[0] == {
        "image_id": 7,
        "category_id": 90,
        "bbox": [10.5, 20.0, 19.75, 40.0],
        "score": pytest.approx(0.9, abs=1e-7),
    }
    assert out[1]["category_id"] == 1 and out[1]["bbox"] == [0.0, 0.0, 1.0, 1.0]
    assert out[1]["score"] == float(torch.tensor(0.123456789))  # full float32 value, not rounded
    assert len(out) == 2 and all(type(v) is float for v in out[0]["bbox"])
    with pytest.raises(ValueError, match="label 3 outside 0..2"):
        detections_to_coco([dict(results[0], labels=torch.tensor([3, 0]))], [7], [1, 5, 90])
    with pytest.raises(ValueError, match="2 results but 1 image ids"):
        detections_to_coco(results, [7], [1, 5, 90])


def test_evaluate_file_writes_only_metrics(coco_val_ann, tmp_path):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(_gt_as_detections(coco_val_ann)[:50]))
    out_dir = tmp_path / "out"
    metrics = evaluate_file(coco_val_ann, preds, out_dir, backend="pycocotools")
    assert sorted(p.name for p in out_dir.iterdir()) == ["metrics.json"]
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert saved["stats"] == metrics["stats"] and saved["predictions"] == str(preds)
    assert 0 < saved["stats"]["AP"] < 1
    summary = format_summary(saved)
    assert summary.splitlines()[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]")
    # a bad predictions file leaves the existing metrics.json untouched
    before = (out_dir / "metrics.json").read_bytes()
    preds.write_text('[{"image_id": 1}]')
    with pytest.raises(DataError, match="detection #0 has no 'category_id'"):
        evaluate_file(coco_val_ann, preds, out_dir)
    assert (out_dir / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in out_dir.iterdir()) == ["metrics.json"]


def test_write_json_atomic(tmp_path):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"a": np.float32(0.5), "b": np.arange(3), "c": torch.tensor([1.5]), "d": 0.1 + 0.2})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": [1.5], "d": 0.30000000000000004}
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_json_atomic(path, {"nan": float("nan")})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_image_subset_evaluation(coco_evaluator, coco_val_ann):
    dets = [d for d in _gt_as_detections(coco_val_ann) if d["image_id"] == 139]
    m = coco_evaluator.evaluate(dets, image_ids=[139])
    assert m["num_images"] == 1 and m["stats"]["AP"] == 1.0
    with pytest.raises(DataError, match="not in"):
        coco_evaluator.evaluate([], image_ids=[1])


def test_small_tiny_dataset_roundtrip(tmp_path):
    # A 1-image GT built from a CocoDetection: a detection with IoU 0.81 counts at 0.5..0.8.
    solid_jpeg(tmp_path / "a.jpg", 100, 100)
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0}]
    ann = tiny_coco(tmp_path, [("a.jpg", 100, 100)], anns)
    ds = CocoDetection(tmp_path, ann)
    evaluator = CocoEvaluator(ds, backend="pycocotools")
    assert evaluator.class_names == ["a", "b"] and evaluator.cat_ids == [1, 3]
    # box [0, 0, 45, 45]: IoU = 2025 / 2500 = 0.81 -> matched at thresholds 0.50..0.80 (7 of 10)
    m = evaluator.evaluate(
        detections_to_coco(
            [
                {
                    "boxes": torch.tensor([[0.0, 0.0, 45.0, 45.0]]),
                    "scores": torch.tensor([0.9]),
                    "labels": torch.tensor([0]),
                }
            ],
            [1],
            ds.cat_ids,
        )
    )
    assert m["stats"]["AP"] == pytest.approx(0.7, abs=1e-12)
    assert m["stats"]["AP50"] == pytest.approx(1.0, abs=1e-12) and m["stats"]["AP75"] == pytest.approx(1.0, abs=1e-12)
    assert m["stats"]["APm"] == m["stats"]["AP"] and m["stats"]["APs"] == -1.0  # no small box: -1 as in COCOeval
