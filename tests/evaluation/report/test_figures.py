"""write_report and the training curves: every file is written, every figure has content."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the report figures need matplotlib (pip install 'varifocal[report]')")
from PIL import Image  # noqa: E402

from varifocal.evaluation.report import (  # noqa: E402
    plot_training_curves,
    plots,
    read_metrics_jsonl,
    write_report,
)
from varifocal.evaluation.report.confusion import confusion_matrix  # noqa: E402

from ._toys import TIDE_DETS, TIDE_GTS, A, B, coco  # noqa: E402


def _check_png(path, min_w=400, min_h=250):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_w and im.height >= min_h
        px = np.asarray(im.convert("L"))
    assert px.std() > 5 and len(np.unique(px)) > 20  # not blank: lines, text, several grey levels


def test_write_report_files_summary_and_page(tmp_path):
    gt, res = coco(TIDE_GTS, TIDE_DETS)
    metrics = {"stats": {"AP": 0.31, "AP50": 0.39}}
    s = write_report(gt, res, ["cat", "dog"], [A, B], tmp_path, metrics=metrics)
    for f in s["files"]:
        assert (tmp_path / f).is_file(), f
        if f.endswith(".png"):
            _check_png(tmp_path / f)
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert [b["name"] for b in s["best_f1"]] == ["cat", "dog"]
    # class A at IoU 0.5: 0.9 T, 0.85 F, 0.75 F, 0.7 F, 0.65 F, 0.3 T, 5 gt: F1(0.9) = 1/3 < F1(0.3) = 4/11
    assert s["best_f1"][0]["score_thr"] == 0.3 and s["best_f1"][0]["f1"] == pytest.approx(4 / 11)
    assert s["confusion"]["score_thr"][0]["score_thr"] == 0.3  # None given: the best-F1 thresholds
    assert s["tide"]["counts"]["Bkg"] == 2 and s["calibration"]["overall"]["count"] == 3
    page = (tmp_path / "report" / "report.html").read_text()
    for im in ("pr_curves.png", "f1_curves.png", "confusion_matrix.png", "tide.png", "calibration.png"):
        assert f'<img src="{im}"' in page and f"]({im})" in (tmp_path / "report" / "report.md").read_text()
    assert "<script" not in page and "http" not in page and "0.390" in page
    header = (tmp_path / "report" / "curves.csv").read_text().splitlines()[0]
    assert header == "iou_thr,category_id,name,score_thr,tp,fp,num_gt,precision,recall,f1"


def test_figures_have_labels_legends_and_class_names(tmp_path):
    gt, res = coco(TIDE_GTS, TIDE_DETS)
    from varifocal.evaluation.report import calibration, match_detections, pr_curves, tide_errors

    s = {
        "tide": tide_errors(gt, res, [A, B]),
        "calibration": calibration(match_detections(gt, res, [A, B]), [A, B], ["cat", "dog"]),
    }

    curves = {t: pr_curves(match_detections(gt, res, [A, B], t), [A, B]) for t in (0.5, 0.75)}
    fig = plots.plot_pr_curves(curves, ["cat", "dog"], tmp_path / "pr.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Recall" and ax.get_ylabel() == "Precision" and "0.50" in ax.get_title()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "cat" in legend and "cat best F1 0.364 @ score 0.300" in legend
    fig = plots.plot_confusion(confusion_matrix(gt, res, [A, B]), ["cat", "dog"], tmp_path / "cm.png")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog", "background"]
    fig = plots.plot_tide(s["tide"], tmp_path / "tide.png")
    assert "Cls (n=1)" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    m = match_detections(gt, res, [A, B])
    pairs = {
        n: (m.score[m.tp & (m.category_id == c)], m.iou[m.tp & (m.category_id == c)])
        for n, c in [("cat", A), ("dog", B)]
    }
    fig = plots.plot_calibration(s["calibration"], pairs, tmp_path / "cal.png")
    assert fig.axes[0].get_xlabel().startswith("Predicted score") and fig.axes[0].get_legend() is not None


def test_training_curves_from_a_resumed_and_truncated_log(tmp_path):
    log = tmp_path / "metrics.jsonl"
    rec = []
    for step in (10, 20, 30, 40, 20, 30, 40, 50):  # resumed after step 10: 20..40 logged again
        rec.append(
            {
                "kind": "train",
                "step": step,
                "loss_cls": 1.0 / step,
                "loss_bbox": 0.5,
                "loss": 1.0 / step + 0.5,
                "lr": 0.01,
                "epoch": 1 + step // 30,
            }
        )
    rec.insert(3, {"kind": "val", "step": 30, "epoch": 1, "AP": 0.1, "AP50": 0.2, "AP75": 0.05})
    rec.append({"kind": "val", "step": 30, "epoch": 1, "AP": 0.15, "AP50": 0.25, "AP75": 0.1})
    rec.append({"kind": "val", "step": 50, "epoch": 2, "AP": 0.2, "AP50": 0.4, "AP75": 0.15})
    log.write_text("\n".join(json.dumps(r) for r in rec) + '\n{"kind": "train", "step": 60, "lo')
    train, val = read_metrics_jsonl(log)
    assert [r["step"] for r in train] == [10, 20, 30, 40, 50]
    assert [(r["epoch"], r["AP"]) for r in val] == [(1, 0.15), (2, 0.2)]
    paths = plot_training_curves(log, tmp_path / "out")
    assert [p.name for p in paths] == ["loss_curves.png", "ap_curves.png"]
    for p in paths:
        _check_png(p)
    assert plot_training_curves(tmp_path / "absent.jsonl", tmp_path / "out") == []


def test_missing_matplotlib_raises_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    gt, res = coco(TIDE_GTS, TIDE_DETS)
    with pytest.raises(ImportError, match=r"pip install 'varifocal\[report\]'"):
        write_report(gt, res, ["cat", "dog"], [A, B], tmp_path)
    assert not (tmp_path / "report").exists()
