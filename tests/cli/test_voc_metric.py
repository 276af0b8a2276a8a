"""``varifocal val --metric voc07|voc12`` and ``eval.metric`` in training (issue "RefineDet" item 3)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from varifocal.cli.main import main
from varifocal.config import load_config
from varifocal.data import VOCDetection
from varifocal.engine import state, steps
from varifocal.engine.run_dir import _Logger
from varifocal.evaluation.voc_eval import evaluate_voc, voc_ground_truths

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"
MODEL = REPO / "models" / "vfnet_lite0_bccd.pth"
CLASSES = ["RBC", "WBC", "Platelets"]


def _voc_subset(tmp_path: Path, n: int = 3) -> tuple[Path, list[str]]:
    """The first ``n`` BCCD test images as a VOC tree; the first object of the first image is made difficult."""
    root = tmp_path / "voc"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (root / sub).mkdir(parents=True)
    names = (BCCD / "ImageSets" / "Main" / "test.txt").read_text().split()[:n]
    for k, name in enumerate(names):
        xml = (BCCD / "Annotations" / f"{name}.xml").read_text()
        if k == 0:
            xml = xml.replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1)
        (root / "Annotations" / f"{name}.xml").write_text(xml)
        os.symlink(BCCD / "JPEGImages" / f"{name}.jpg", root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names) + "\n")
    return root, names


def _predictions_as_detections(path: Path, ds: VOCDetection) -> list[dict[str, np.ndarray]]:
    """``predictions.json`` (COCO results) back to one xyxy detection dict per record."""
    results = json.loads(path.read_text())
    label_of = {c: k for k, c in enumerate(ds.cat_ids)}
    out = []
    for record in ds.records:
        mine = [r for r in results if r["image_id"] == record.image_id]
        boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)]).reshape(-1, 4)
        out.append(
            {
                "boxes": boxes,
                "scores": np.asarray([r["score"] for r in mine]),
                "labels": np.asarray([label_of[r["category_id"]] for r in mine], dtype=np.int64),
            }
        )
    return out


def test_val_metric_voc07_prints_the_table_and_writes_the_map(tmp_path, capsys):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is absent")
    root, names = _voc_subset(tmp_path, 2)
    out = tmp_path / "val"
    args = [
        "val",
        "data.format=voc",
        f"data.root={root}",
        "data.val_set=test",
        f"data.class_names=[{','.join(CLASSES)}]",
        "model.num_classes=3",
        "model.test_scale=[320,240]",  # a quarter of the bundled model's pixels: seconds on 2 cores
        "--checkpoint",
        str(MODEL),
        "--out-dir",
        str(out),
        "--metric",
        "voc07",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())

    ds = VOCDetection(root, "test", CLASSES)
    assert len(ds.records[0].crowd_boxes) == 1 and ds.records[0].image_id == int(names[0].split("_")[-1])
    expected = evaluate_voc(
        _predictions_as_detections(out / "predictions.json", ds), voc_ground_truths(ds.records), CLASSES
    )
    assert metrics["voc07_mAP"] == expected["mAP"] and metrics["voc07"] == expected
    assert 0.1 < metrics["voc07_mAP"] <= 1.0  # the bundled model finds cells
    num_gt = sum(len(r.labels) for r in ds.records)
    assert sum(row["num_gt"] for row in metrics["voc07"]["per_class"]) == num_gt  # the difficult box is not counted
    assert metrics["stats"]["AP"] > 0  # the COCO numbers stay

    lines = text.splitlines()
    head = lines.index("VOC07 (11-point AP, IoU 0.5, difficult ignored, +1 pixel boxes)")
    assert any(line.startswith(" Average Precision") for line in lines[:head])  # after the COCO summary
    assert lines[head + 1].split() == ["class", "gts", "dets", "recall", "ap"]
    for row, line in zip(expected["per_class"], lines[head + 2 : head + 5]):
        assert line.split() == [
            row["name"],
            str(row["num_gt"]),
            str(row["num_dets"]),
            f"{row['recall']:.3f}",
            f"{row['ap']:.3f}",
        ]
    assert lines[head + 5].split() == ["mAP", f"{expected['mAP']:.3f}"]


def test_val_of_a_predictions_file_takes_the_metric_of_the_config(tmp_path, capsys):
    # the BCCD test ground truth as predictions (IoU 1 with its own box): every detection a TP, AP 1
    ann = BCCD / "annotations" / "instances_val.json"
    gt = json.loads(ann.read_text())
    preds = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    out = tmp_path / "val"
    args = [
        "val",
        "eval.metric=voc12",
        "--predictions",
        str(tmp_path / "p.json"),
        "--ann",
        str(ann),
        "--out-dir",
        str(out),
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["voc12_mAP"] == 1.0 and "voc07_mAP" not in metrics
    assert [(r["name"], r["tp"], r["fp"], r["ap"]) for r in metrics["voc12"]["per_class"]] == [
        (r["name"], r["num_gt"], 0, 1.0) for r in metrics["per_class"]
    ]
    assert "VOC12 (all-point AP, IoU 0.5" in capsys.readouterr().out
    # no --metric and no config: COCO only, as before
    assert main(args[:1] + args[2:]) == 0
    assert "voc12_mAP" not in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("metric", ["coco", "voc07"])
def test_training_ranks_best_by_the_metric_of_the_config(metric, tmp_path, monkeypatch, capsys):
    # two evaluations: COCO AP 0.5 then 0.4, VOC07 mAP 0.2 then 0.3: best.pth is epoch 1 by COCO, epoch 2 by VOC07
    cfg = load_config(
        None, [f"eval.metric={metric}", "train.epochs=10", "train.eval_interval=1", "train.checkpoint_interval=100"]
    )
    values = iter([(0.5, 0.2), (0.4, 0.3)])
    calls: list[str] = []

    def fake_evaluate(model, dataset, device, batch_size, **kwargs):
        calls.append(kwargs["metric"])
        ap, voc = next(values)
        metrics = {"stats": {"AP": ap, "AP50": ap}}
        if kwargs["metric"] != "coco":
            metrics["voc07_mAP"] = voc
        return metrics, [], []

    saved: list[tuple] = []
    monkeypatch.setattr(steps, "evaluate", fake_evaluate)
    monkeypatch.setattr(
        state, "save_best", lambda path, model, cfg, kw, info, epoch, ap: saved.append((epoch, ap, info))
    )
    log = _Logger.__new__(_Logger)  # without TensorBoard
    log.enabled, log.jsonl, log.tb = True, tmp_path / "metrics.jsonl", None
    best = -1.0
    for epoch in range(2):
        _, best = steps._evaluate_and_checkpoint(
            cfg,
            torch.nn.Linear(1, 1),
            None,
            None,
            object(),
            torch.device("cpu"),
            tmp_path,
            log,
            epoch,
            epoch + 1,
            best,
            {},
            {"class_names": CLASSES},
            {},
        )
    assert calls == [metric, metric]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    text = capsys.readouterr().out
    if metric == "coco":
        assert best == 0.5 and saved == [(1, 0.5, {"class_names": CLASSES})]
        assert all("voc07_mAP" not in r for r in records) and "mAP" not in text
    else:
        assert best == 0.3
        assert saved == [
            (1, 0.2, {"class_names": CLASSES, "metric": "voc07"}),
            (2, 0.3, {"class_names": CLASSES, "metric": "voc07"}),
        ]
        assert [r["voc07_mAP"] for r in records] == [0.2, 0.3]
        assert "epoch 2: AP 0.4000 AP50 0.4000 voc07_mAP 0.3000" in text
