"""COCO bbox evaluation (spec §5.3).

The metric is the standard ``COCOeval`` for ``iouType='bbox'`` from pycocotools, or from
``faster-coco-eval`` when it is importable (same numbers, faster); the backend used is recorded
in the result. Neither is needed to import this module, only to evaluate
(``pip install varifocal[eval]``).

Detections go to COCO as ``[x1, y1, x2 - x1, y2 - y1]`` (no "+1") with the original category
id: label ``k`` -> ``cat_ids[k]``, the k-th category id in ascending order.

Ground truth: a dataset (:class:`~varifocal.data.CocoDetection`,
:class:`~varifocal.data.VOCDetection`) is scored on exactly the boxes it kept
(``to_coco_dict()``): boxes its loader dropped as degenerate / off-image (or flagged
``"ignore"``) are not ground truth and are reported as counts (``dropped_boxes``,
``ignored_boxes``); crowd boxes are ignore regions (``iscrowd=1``). A path or a dict is scored
as it is (the official COCO protocol).

Prediction files: either a plain COCO results list (``[{"image_id", "category_id", "bbox",
"score"}, ...]``) or the object written by :func:`write_predictions`
(``{"class_names", "cat_ids", "detections": [...]}``), whose class list is checked against the
ground truth.

The summary text, the writing of detections and JSON files, and the choice of the COCOeval
implementation live beside this file (:mod:`.summary`, :mod:`.predictions`, :mod:`.backends`);
their public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.coco import read_coco_json, validate_coco_dict
from ..data.errors import DataError
from .backends import _backend, _stats_at
from .predictions import detections_to_coco, write_json_atomic, write_predictions
from .summary import STAT_NAMES, format_summary

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "detections_to_coco",
    "evaluate_file",
    "format_summary",
    "write_json_atomic",
    "write_predictions",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class CocoEvaluator:
    """bbox COCOeval against a fixed ground truth.

    Args:
        gt: the ground truth: a COCO annotation file path, a COCO-format dict, a pycocotools
            ``COCO`` object, or a dataset with ``to_coco_dict()`` (:class:`CocoDetection`,
            :class:`VOCDetection`): then exactly the images and boxes the dataset kept, and
            the per-image counts of its dropped boxes (``records[].num_degenerate`` /
            ``num_ignored``) are reported by :meth:`evaluate`.
        class_names, cat_ids: the model's classes (label k = ``class_names[k]`` with category
            id ``cat_ids[k]``), as stored in its checkpoint. Default: all categories of ``gt``
            in ascending id order. Each id must exist in ``gt`` under the same name.
            Evaluation covers exactly these categories (``params.catIds``).
        backend: ``'auto'`` (faster-coco-eval if importable, else pycocotools),
            ``'pycocotools'`` or ``'faster_coco_eval'``.
        max_dets: detections per image that count (COCOeval's largest ``maxDets``, 100 in the
            COCO protocol). Raise it for crowded images (e.g. 300 for the 200-cell BCCD mosaics
            of ``tools/make_mosaics.py``); the ``AP*`` and ``AR100``/``ARs``/``ARm``/``ARl``
            statistics then count that many (``metrics["max_dets"]`` says how many).

    Raises:
        DataError: invalid ground truth, or a class list that does not match it.
        ImportError: no COCO evaluation backend installed.
    """

    def __init__(
        self,
        gt: Any,
        class_names: Sequence[str] | None = None,
        cat_ids: Sequence[int] | None = None,
        backend: str = "auto",
        max_dets: int = 100,
    ) -> None:
        if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 10:
            raise ValueError(f"max_dets must be an integer >= 10, got {max_dets!r}")
        self.max_dets = max_dets
        self.backend, self._COCO, self._COCOeval = _backend(backend)
        # image id -> (degenerate, ignore-flagged) annotations the dataset dropped (not scored)
        self._dropped: dict[int, tuple[int, int]] = {}
        if isinstance(gt, (str, os.PathLike)):
            self.source = str(gt)
            data = read_coco_json(gt)
        elif isinstance(gt, dict):
            self.source = "<ground-truth dict>"
            data = gt
            validate_coco_dict(data, self.source)
        elif hasattr(gt, "to_coco_dict"):
            self.source = str(getattr(gt, "source", type(gt).__name__))
            data = gt.to_coco_dict()
            validate_coco_dict(data, self.source)
            for r in getattr(gt, "records", ()):
                self._dropped[int(r.image_id)] = (
                    int(getattr(r, "num_degenerate", 0)),
                    int(getattr(r, "num_ignored", 0)),
                )
        elif hasattr(gt, "dataset") and isinstance(gt.dataset, dict):
            self.source = "<COCO object>"
            data = gt.dataset
            validate_coco_dict(data, self.source)
        else:
            raise TypeError(f"gt must be a path, a COCO dict, a COCO object or a dataset, got {type(gt).__name__}")
        self.gt_dict = data
        gt_names = {c["id"]: c["name"] for c in data["categories"]}
        if cat_ids is None:
            cat_ids = sorted(gt_names)
        if class_names is None:
            missing = [c for c in cat_ids if c not in gt_names]
            if missing:
                raise DataError(f"{self.source}: category ids {missing} are not in 'categories'")
            class_names = [gt_names[c] for c in cat_ids]
        self.class_names = list(class_names)
        self.cat_ids = [int(c) for c in cat_ids]
        self.check_classes(self.class_names, self.cat_ids, "class list")
        self.image_ids = [img["id"] for img in data["images"]]
        self.coco_gt = self._make_coco(data)
        self.last_metrics: dict[str, Any] | None = None

    # ---- helpers ---------------------------------------------------------------------------

    def check_classes(self, class_names: Sequence[str], cat_ids: Sequence[int], what: str) -> None:
        """Check that ``cat_ids[k]`` exists in the ground truth under ``class_names[k]``.

        Raises:
            DataError: lengths differ, an id is missing, or a name differs.
        """
        gt_names = {c["id"]: c["name"] for c in self.gt_dict["categories"]}
        if len(class_names) != len(cat_ids):
            raise DataError(f"{what}: {len(class_names)} class names but {len(cat_ids)} category ids")
        if len(set(cat_ids)) != len(cat_ids):
            raise DataError(f"{what}: repeated category ids {list(cat_ids)}")
        for k, (name, cid) in enumerate(zip(class_names, cat_ids)):
            if cid not in gt_names:
                raise DataError(f"{what}: label {k} '{name}' has category id {cid}, which is not in {self.source}")
            if gt_names[cid] != name:
                raise DataError(
                    f"{what}: label {k} is '{name}' but category id {cid} is '{gt_names[cid]}' in {self.source}"
                )

    def _make_coco(self, data: dict[str, Any]) -> Any:
        """A COCO ground-truth object of ``data``. Annotations without ``area`` (allowed by
        box-only exporters, needed by pycocotools' area ranges) get the box area w·h, on a copy."""
        if any("area" not in ann for ann in data["annotations"]):
            data = {
                **data,
                "annotations": [
                    ann if "area" in ann else {**ann, "area": float(ann["bbox"][2]) * float(ann["bbox"][3])}
                    for ann in data["annotations"]
                ],
            }
        with contextlib.redirect_stdout(io.StringIO()):
            coco = self._COCO()
            coco.dataset = data
            coco.createIndex()
        return coco

    def load_predictions(self, predictions: Any) -> list[dict[str, Any]]:
        """The checked COCO results list of ``predictions`` (a list, a JSON path, or the object of
        :func:`write_predictions`), as :meth:`evaluate` reads it.

        Raises:
            DataError: as :meth:`evaluate`.
        """
        dets, source = self._load_predictions(predictions)
        self._validate_detections(dets, source)
        return dets

    def _load_predictions(self, predictions: Any) -> tuple[list[dict[str, Any]], str]:
        if isinstance(predictions, (str, os.PathLike)):
            source = str(predictions)
            try:
                with open(predictions, "rb") as f:
                    data = json.loads(f.read().decode("utf-8"))
            except FileNotFoundError:
                raise DataError(f"{source}: predictions file not found") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{source}: cannot read predictions file ({type(exc).__name__})") from None
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                ) from None
        else:
            source, data = "<predictions>", predictions
        if isinstance(data, dict):
            if "detections" not in data or not isinstance(data["detections"], list):
                raise DataError(f"{source}: a predictions object needs a 'detections' list")
            if "class_names" in data or "cat_ids" in data:
                self.check_classes(data.get("class_names", []), data.get("cat_ids", []), source)
            data = data["detections"]
        if not isinstance(data, list):
            raise DataError(f"{source}: predictions must be a list of detections, got {type(data).__name__}")
        return data, source

    def _validate_detections(self, dets: list[Any], source: str) -> None:
        image_ids = set(self.image_ids)
        cat_ids = set(self.cat_ids)
        for i, d in enumerate(dets):
            if not isinstance(d, dict):
                raise DataError(f"{source}: detection #{i} is not an object")
            for key in ("image_id", "category_id", "bbox", "score"):
                if key not in d:
                    raise DataError(f"{source}: detection #{i} has no '{key}'")
            if not _is_int(d["image_id"]) or d["image_id"] not in image_ids:
                raise DataError(
                    f"{source}: detection #{i} has image_id {d['image_id']!r}, which is not in {self.source}"
                )
            if not _is_int(d["category_id"]) or d["category_id"] not in cat_ids:
                raise DataError(
                    f"{source}: detection #{i} has category_id {d['category_id']!r}, which is not among the evaluated "
                    f"categories {self.cat_ids}"
                )
            bbox, score = d["bbox"], d["score"]
            if (
                not isinstance(bbox, (list, tuple))
                or len(bbox) != 4
                or not all(_is_real(v) and math.isfinite(v) for v in bbox)
            ):
                raise DataError(f"{source}: detection #{i} has bbox {bbox!r}; expected 4 finite numbers [x, y, w, h]")
            if not _is_real(score) or not math.isfinite(score):
                raise DataError(f"{source}: detection #{i} has score {score!r}; expected a finite number")

    # ---- evaluation ------------------------------------------------------------------------

    def evaluate(
        self,
        predictions: list[dict[str, Any]] | str | os.PathLike,
        image_ids: Sequence[int] | None = None,
        skipped_images: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Run bbox COCOeval.

        Args:
            predictions: COCO results list, or a path to a JSON file holding one (or the
                object of :func:`write_predictions`). An empty list gives AP 0.
            image_ids: evaluate on these images only (default: every image of the ground
                truth; images without detections count as misses).
            skipped_images: file names of images that could not be read and were left out
                of ``image_ids`` (only reported: ``skipped_images`` / ``num_skipped_images``).

        Returns:
            ``{"backend": str, "iou_type": "bbox", "num_images": int, "num_detections": int,
            "stats": {name: float for the 12 STAT_NAMES} (-1 where COCOeval has no ground
            truth, e.g. APs without small objects), "per_class": [{"name", "category_id",
            "AP", "AP50", "AP75", "num_gt" (non-crowd), "num_dets"}] (AP None for a class
            without ground truth), "class_names", "cat_ids", "num_skipped_images": int,
            "skipped_images": [file names], "dropped_boxes": int (degenerate / off-image
            boxes of the evaluated images that the dataset dropped: not scored; 0 for a
            path or dict ground truth), "ignored_boxes": int (likewise, ``"ignore"``-flagged
            annotations)}``.

        Raises:
            DataError: unreadable predictions, or a detection with an unknown image /
                category id, a bad bbox or score (one line naming the file and entry).
        """
        dets, source = self._load_predictions(predictions)
        self._validate_detections(dets, source)
        if image_ids is None:
            eval_ids = sorted(set(self.image_ids))
        else:
            eval_ids = sorted(set(int(i) for i in image_ids))
            unknown = sorted(set(eval_ids) - set(self.image_ids))
            if unknown:
                raise DataError(f"image ids {unknown[:5]} are not in {self.source}")
        eval_set = set(eval_ids)
        dets = [dict(d) for d in dets if d["image_id"] in eval_set]  # loadRes adds keys: copy

        with contextlib.redirect_stdout(io.StringIO()):
            if dets:
                coco_dt = self.coco_gt.loadRes(dets)
            else:  # loadRes cannot take an empty list
                coco_dt = self._make_coco(
                    {"images": self.gt_dict["images"], "categories": self.gt_dict["categories"], "annotations": []}
                )
            coco_eval = self._COCOeval(self.coco_gt, coco_dt, "bbox")
            coco_eval.params.imgIds = eval_ids
            coco_eval.params.catIds = list(self.cat_ids)
            coco_eval.params.maxDets = [1, 10, self.max_dets]
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = [float(v) for v in coco_eval.stats[:12]] if self.max_dets == 100 else _stats_at(coco_eval)

        per_class = self._per_class(coco_eval, dets, eval_set)
        metrics = {
            "backend": self.backend,
            "iou_type": "bbox",
            "max_dets": self.max_dets,
            "num_images": len(eval_ids),
            "num_detections": len(dets),
            "stats": dict(zip(STAT_NAMES, stats)),
            "per_class": per_class,
            "class_names": list(self.class_names),
            "cat_ids": list(self.cat_ids),
            "num_skipped_images": len(skipped_images),
            "skipped_images": [str(f) for f in skipped_images],
            "dropped_boxes": sum(self._dropped.get(i, (0, 0))[0] for i in eval_ids),
            "ignored_boxes": sum(self._dropped.get(i, (0, 0))[1] for i in eval_ids),
        }
        self.last_metrics = metrics
        return metrics

    def _per_class(self, coco_eval: Any, dets: list[dict[str, Any]], eval_set: set[int]) -> list[dict[str, Any]]:
        precision = coco_eval.eval.get("precision") if isinstance(getattr(coco_eval, "eval", None), dict) else None
        eval_cats = list(coco_eval.params.catIds)
        iou_thrs = np.asarray(coco_eval.params.iouThrs)
        i50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
        i75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
        num_gt = {c: 0 for c in self.cat_ids}
        for ann in self.gt_dict["annotations"]:
            if ann["category_id"] in num_gt and ann["image_id"] in eval_set and not ann.get("iscrowd", 0):
                num_gt[ann["category_id"]] += 1
        num_dets = {c: 0 for c in self.cat_ids}
        for d in dets:
            num_dets[d["category_id"]] += 1

        def mean_valid(p: np.ndarray) -> float | None:
            p = p[p > -1]
            return float(p.mean()) if p.size else None

        rows = []
        for name, cid in zip(self.class_names, self.cat_ids):
            ap = ap50 = ap75 = None
            if precision is not None and cid in eval_cats:
                k = eval_cats.index(cid)
                # precision: [iou thresholds, recall thresholds, classes, areas (0 = all), maxDets (-1 = 100)]
                ap = mean_valid(precision[:, :, k, 0, -1])
                ap50 = mean_valid(precision[i50, :, k, 0, -1])
                ap75 = mean_valid(precision[i75, :, k, 0, -1])
            rows.append(
                {
                    "name": name,
                    "category_id": cid,
                    "AP": ap,
                    "AP50": ap50,
                    "AP75": ap75,
                    "num_gt": num_gt[cid],
                    "num_dets": num_dets[cid],
                }
            )
        return rows

    def format_summary(self, metrics: dict[str, Any] | None = None) -> str:
        """:func:`format_summary` of ``metrics`` (default: the last :meth:`evaluate` result).

        Raises:
            RuntimeError: nothing evaluated yet and no ``metrics`` given.
        """
        metrics = metrics if metrics is not None else self.last_metrics
        if metrics is None:
            raise RuntimeError("format_summary: call evaluate() first")
        return format_summary(metrics)


def evaluate_file(
    ann_file: str | os.PathLike, predictions_json: str | os.PathLike, out_dir: str | os.PathLike, backend: str = "auto"
) -> dict[str, Any]:
    """Evaluate a predictions file against a COCO annotation file; write ``out_dir/metrics.json``.

    Only ``metrics.json`` is written (atomically; ``out_dir`` is created if needed). On any
    error nothing is written and an existing ``metrics.json`` is left untouched.

    Returns:
        the metrics dict (see :meth:`CocoEvaluator.evaluate`) with ``ann_file`` and
        ``predictions`` paths added.

    Raises:
        DataError: invalid annotation or predictions file (one line naming it).
    """
    evaluator = CocoEvaluator(ann_file, backend=backend)
    metrics = evaluator.evaluate(predictions_json)
    metrics = {"ann_file": str(ann_file), "predictions": str(predictions_json), **metrics}
    write_json_atomic(Path(out_dir) / "metrics.json", metrics)
    return metrics
