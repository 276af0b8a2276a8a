"""``write_report``: every figure, table and the summary page of the evaluation report (issue 15)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from varifocal.utils.io import atomic_write

from ..coco_eval import write_json_atomic
from ._figure import new_figure
from .calibration import calibration
from .confusion import confusion_matrix
from .curves import best_f1, pr_curves
from .matching import check_results, index_ground_truth, match_detections
from .page import render_html, render_markdown
from .plots import plot_calibration, plot_confusion, plot_f1_curves, plot_pr_curves, plot_tide
from .tide import tide_errors

__all__ = ["REPORT_DIR", "CURVE_IOUS", "FALLBACK_SCORE_THR", "write_report"]

REPORT_DIR = "report"
CURVE_IOUS = (0.5, 0.75)
FALLBACK_SCORE_THR = 0.5  # confusion threshold of a class without a best-F1 threshold (no TP)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    atomic_write(path, write)


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)


def write_report(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    class_names: Sequence[str],
    cat_ids: Sequence[int],
    out_dir: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    iou_thr: float = 0.5,
    score_thr: float | None = None,
) -> dict[str, Any]:
    """Write the evaluation report of ``results`` against ``gt`` into ``out_dir/report/``.

    Files (all written atomically): ``pr_curves.png``, ``f1_curves.png`` and ``curves.csv`` (per
    class P/R/F1 vs score at IoU 0.5 and 0.75), ``best_f1.csv``, ``confusion_matrix.png``,
    ``confusion_counts.csv``, ``confusion_normalized.csv``, ``tide.png``, ``tide.json``,
    ``calibration.png``, ``calibration_bins.csv``, ``summary.json`` (the returned dict),
    ``report.md`` and ``report.html`` (offline; relative links).

    Args:
        gt: COCO dataset dict (``images``, ``annotations``; crowd boxes are ignore regions).
        results: COCO results list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        class_names, cat_ids: the evaluated classes, same length and order.
        out_dir: the run's output folder (the one holding metrics.json).
        metrics: the COCO metrics (as :meth:`CocoEvaluator.evaluate`) shown on the page, optional.
        iou_thr: IoU of the best-F1 thresholds, the confusion matrix and the calibration matching.
        score_thr: confusion-matrix score threshold; None = each class's best-F1 threshold at
            ``iou_thr`` (``FALLBACK_SCORE_THR`` for a class without one).

    Returns:
        A JSON-able summary: ``{"iou_thr", "num_images", "num_gt", "num_detections", "best_f1":
        [{"name", "category_id", "score_thr", "f1", "precision", "recall", "tp", "fp", "num_gt"}],
        "best_f1_by_iou": {"0.50": [...], "0.75": [...]}, "calibration": {"iou_thr", "overall",
        "per_class"}, "tide": {...}, "confusion": {"iou_thr", "score_thr", "score_thr_source",
        "labels", "counts", "normalized"}, "files": [paths relative to out_dir]}``.

    Raises:
        ImportError: matplotlib is missing (``pip install 'varifocal[report]'``), before any file.
        ValueError: ``class_names`` and ``cat_ids`` differ in length;
        DataError: malformed ground truth or results.
    """
    new_figure(1, 1)  # fail on a missing matplotlib before anything is written
    if len(class_names) != len(cat_ids):
        raise ValueError(f"write_report: {len(class_names)} class names for {len(cat_ids)} category ids")
    names, cats = [str(n) for n in class_names], [int(c) for c in cat_ids]
    g = index_ground_truth(gt, cats)
    check_results(results, g.image_ids, cats)
    ious = sorted({*CURVE_IOUS, float(iou_thr)})
    matches = {t: match_detections(g, results, cats, t) for t in ious}
    curves = {t: pr_curves(matches[t], cats) for t in ious}

    def best_rows(t: float) -> list[dict[str, Any]]:
        return [
            {"name": n, "category_id": c, **best_f1(cv), "num_gt": cv.num_gt}
            for n, c, cv in zip(names, cats, curves[t])
        ]

    best = best_rows(float(iou_thr))
    if score_thr is None:
        thr = {b["category_id"]: (FALLBACK_SCORE_THR if b["score_thr"] is None else b["score_thr"]) for b in best}
        source = f"per-class best-F1 thresholds; {FALLBACK_SCORE_THR} for a class without one"
    else:
        thr, source = {c: float(score_thr) for c in cats}, "given threshold"
    cm = confusion_matrix(g, results, cats, iou_thr, thr)
    tide = tide_errors(g, results, cats)
    cal = calibration(matches[float(iou_thr)], cats, names)
    labels = [*names, "background"]
    summary: dict[str, Any] = {
        "iou_thr": float(iou_thr),
        "num_images": len(g.image_ids),
        "num_gt": int(sum(g.num_gt.values())),
        "num_detections": len(results),
        "best_f1": best,
        "best_f1_by_iou": {f"{t:.2f}": best_rows(t) for t in CURVE_IOUS},
        "calibration": cal,
        "tide": tide,
        "confusion": {
            "iou_thr": float(iou_thr),
            "score_thr": [{"name": n, "category_id": c, "score_thr": thr[c]} for n, c in zip(names, cats)],
            "score_thr_source": source,
            "labels": labels,
            "counts": cm.counts.tolist(),
            "normalized": cm.normalized.tolist(),
        },
    }
    rep = Path(out_dir) / REPORT_DIR
    rep.mkdir(parents=True, exist_ok=True)
    plot_pr_curves({t: curves[t] for t in CURVE_IOUS}, names, rep / "pr_curves.png")
    plot_f1_curves({t: curves[t] for t in CURVE_IOUS}, names, rep / "f1_curves.png")
    rows = []
    for t in CURVE_IOUS:
        for n, cv in zip(names, curves[t]):
            for k in range(cv.score.size):
                rows.append([f"{t:.2f}", cv.category_id, n, repr(float(cv.score[k])), int(cv.tp[k]), int(cv.fp[k]),
                             cv.num_gt, f"{cv.precision[k]:.6f}", f"{cv.recall[k]:.6f}", f"{cv.f1[k]:.6f}"])  # fmt: skip
    _write_csv(rep / "curves.csv", ["iou_thr", "category_id", "name", "score_thr", "tp", "fp", "num_gt",
                                    "precision", "recall", "f1"], rows)  # fmt: skip
    keys = ["name", "category_id", "score_thr", "f1", "precision", "recall", "tp", "fp", "num_gt"]
    _write_csv(rep / "best_f1.csv", ["iou_thr", *keys],
               [[f"{t}", *(r[k] for k in keys)] for t, v in summary["best_f1_by_iou"].items() for r in v])  # fmt: skip
    plot_confusion(cm, names, rep / "confusion_matrix.png")
    _write_csv(rep / "confusion_counts.csv", ["true \\ predicted", *labels],
               [[lab, *r] for lab, r in zip(labels, cm.counts.tolist())])  # fmt: skip
    _write_csv(rep / "confusion_normalized.csv", ["true \\ predicted", *labels],
               [[lab, *(f"{x:.6f}" for x in r)] for lab, r in zip(labels, cm.normalized.tolist())])  # fmt: skip
    plot_tide(tide, rep / "tide.png")
    write_json_atomic(rep / "tide.json", tide)
    m = matches[float(iou_thr)]
    pairs = {n: (m.score[m.tp & (m.category_id == c)], m.iou[m.tp & (m.category_id == c)]) for n, c in zip(names, cats)}
    plot_calibration(cal, pairs, rep / "calibration.png")
    bin_rows = []
    for name, st in [("all", cal["overall"])] + [(p["name"], p) for p in cal["per_class"]]:
        for b in st["bins"]:
            bin_rows.append([name, b["lo"], b["hi"], b["count"], _opt(b["mean_score"]), _opt(b["mean_iou"])])
    _write_csv(rep / "calibration_bins.csv", ["class", "score_lo", "score_hi", "count", "mean_score", "mean_iou"],
               bin_rows)  # fmt: skip
    files = ["pr_curves.png", "f1_curves.png", "curves.csv", "best_f1.csv", "confusion_matrix.png",
             "confusion_counts.csv", "confusion_normalized.csv", "tide.png", "tide.json", "calibration.png",
             "calibration_bins.csv", "summary.json", "report.md", "report.html"]  # fmt: skip
    summary["files"] = [f"{REPORT_DIR}/{f}" for f in files]
    _write_text(rep / "report.md", render_markdown(summary, metrics))
    _write_text(rep / "report.html", render_html(summary, metrics))
    write_json_atomic(rep / "summary.json", summary)
    return summary


def _opt(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"
