"""The evaluation report of a dataset evaluation, and what of it goes into ``metrics.json`` (issue 15).

:func:`report_for_dataset` turns the output of :func:`varifocal.engine.evaluate.evaluate` into the
report of :func:`varifocal.evaluation.report.write_report` (figures, CSV, ``report.md`` /
``report.html`` under ``<out_dir>/report/``) and adds to ``metrics`` what a later command needs:

* ``best_score_thr``: ``{class name: score threshold or None}``, each class's best-F1 score
  threshold at IoU 0.5 (keep detections with ``score >= thr``; ``None`` for a class without a
  true positive), the thresholds ``varifocal predict --score-thr best`` uses;
* ``report``: the files written and the headline numbers (calibration overall, TIDE ΔAP).

The ground truth is the dataset's own (``to_coco_dict()``, the boxes it kept), restricted to the
evaluated images (unreadable images left out by ``skip_bad_images`` are not scored).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

__all__ = ["best_thresholds", "report_for_dataset", "report_for_coco"]


def best_thresholds(summary: dict[str, Any]) -> dict[str, float | None]:
    """``{class name: best-F1 score threshold}`` of a :func:`write_report` summary."""
    return {row["name"]: row["score_thr"] for row in summary["best_f1"]}


def report_for_coco(
    gt: dict[str, Any],
    results: list[dict[str, Any]],
    class_names: Sequence[str],
    cat_ids: Sequence[int],
    metrics: dict[str, Any],
    out_dir: str | os.PathLike,
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write the report of ``results`` against the COCO dict ``gt`` (only ``image_ids`` when
    given) into ``<out_dir>/report/``; add ``best_score_thr`` and ``report`` to ``metrics``
    (changed in place) and return the report's summary.

    Raises:
        ImportError: matplotlib is not installed (``pip install 'varifocal[report]'``).
        DataError: ground truth or results that the report cannot read.
    """
    from ..evaluation.report import write_report

    if image_ids is not None:
        keep = {int(i) for i in image_ids}
        gt = {
            **gt,
            "images": [img for img in gt["images"] if int(img["id"]) in keep],
            "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in keep],
        }
        results = [r for r in results if int(r["image_id"]) in keep]
    summary = write_report(gt, results, class_names, cat_ids, out_dir, metrics)
    metrics["best_score_thr"] = best_thresholds(summary)
    metrics["report"] = {
        "files": summary["files"],
        "calibration": {k: v for k, v in summary["calibration"]["overall"].items() if k != "bins"},
        "tide_delta_ap": summary["tide"]["delta_ap"],
    }
    return summary


def report_for_dataset(
    dataset: Any, results: list[dict[str, Any]], metrics: dict[str, Any], out_dir: str | os.PathLike
) -> dict[str, Any]:
    """:func:`report_for_coco` on a dataset's own ground truth (:class:`CocoDetection` or
    :class:`VOCDetection`), on the images ``metrics`` says were evaluated (every record but the
    ``skipped_images``)."""
    skipped = set(metrics.get("skipped_images", ()))
    image_ids = [r.image_id for r in dataset.records if r.file_name not in skipped]
    return report_for_coco(
        dataset.to_coco_dict(), results, dataset.class_names, dataset.cat_ids, metrics, out_dir, image_ids
    )
