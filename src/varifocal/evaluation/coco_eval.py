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
from ..utils.io import atomic_write

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "detections_to_coco",
    "evaluate_file",
    "format_summary",
    "write_json_atomic",
    "write_predictions",
]

#: Names of the 12 numbers of ``COCOeval.stats``, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# (AP or AR, IoU label, area, maxDets) of each of the 12 summary lines.
_SUMMARY_ROWS = (
    (True, "0.50:0.95", "all", 100),
    (True, "0.50", "all", 100),
    (True, "0.75", "all", 100),
    (True, "0.50:0.95", "small", 100),
    (True, "0.50:0.95", "medium", 100),
    (True, "0.50:0.95", "large", 100),
    (False, "0.50:0.95", "all", 1),
    (False, "0.50:0.95", "all", 10),
    (False, "0.50:0.95", "all", 100),
    (False, "0.50:0.95", "small", 100),
    (False, "0.50:0.95", "medium", 100),
    (False, "0.50:0.95", "large", 100),
)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):  # torch tensors
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file beside it, fsync,
    ``os.replace``): ``path`` holds either its previous content or the complete new one.

    numpy scalars/arrays and torch tensors are converted; NaN/inf are refused (strict JSON).
    Floats are written with full precision (shortest round-trip repr).

    Raises:
        TypeError / ValueError: ``obj`` is not serialisable (nothing is written);
        OSError: the directory is not writable.
    """

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, allow_nan=False, default=_json_default)
            f.write("\n")

    atomic_write(path, _write)


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def detections_to_coco(
    results: Sequence[dict[str, Any]], image_ids: Sequence[int], cat_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Convert model detections to the COCO results format.

    Args:
        results: one dict per image with ``boxes`` ``[k, 4]`` xyxy in original-image pixels,
            ``scores`` ``[k]`` and ``labels`` ``[k]`` in ``0..len(cat_ids)-1`` (tensors or
            arrays).
        image_ids: the COCO image id of each entry of ``results``.
        cat_ids: label -> COCO category id (ascending category ids, spec §5.3).

    Returns:
        ``[{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}, ...]``
        with ``w = x2 - x1``, ``h = y2 - y1`` (no "+1"), unrounded Python floats.

    Raises:
        ValueError: length mismatch, bad shapes, or a label outside ``0..len(cat_ids)-1``.
    """
    if len(results) != len(image_ids):
        raise ValueError(f"detections_to_coco: {len(results)} results but {len(image_ids)} image ids")
    cat_ids = [int(c) for c in cat_ids]
    out: list[dict[str, Any]] = []
    for result, image_id in zip(results, image_ids):
        boxes = _to_numpy(result["boxes"], np.float64)
        scores = _to_numpy(result["scores"], np.float64).reshape(-1)
        labels = _to_numpy(result["labels"], np.int64).reshape(-1)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"detections for image {image_id}: expected boxes [k, 4], scores [k], labels [k], got "
                f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)}"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(cat_ids)):
            raise ValueError(
                f"detections for image {image_id}: label {int(labels.min() if labels.min() < 0 else labels.max())} "
                f"outside 0..{len(cat_ids) - 1}"
            )
        image_id = int(image_id)
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            out.append(
                {
                    "image_id": image_id,
                    "category_id": cat_ids[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return out


def write_predictions(
    path: str | os.PathLike, detections: list[dict[str, Any]], class_names: Sequence[str], cat_ids: Sequence[int]
) -> None:
    """Write a prediction file that carries its class list (atomically).

    Format: ``{"format": "varifocal-coco-detections", "class_names": [...], "cat_ids": [...],
    "detections": [COCO results]}``. :meth:`CocoEvaluator.evaluate` checks the class list
    against the ground truth. Use a plain list (``write_json_atomic(path, detections)``) for
    the COCO evaluation server.
    """
    write_json_atomic(
        path,
        {
            "format": "varifocal-coco-detections",
            "class_names": list(class_names),
            "cat_ids": [int(c) for c in cat_ids],
            "detections": detections,
        },
    )


def _backend(name: str) -> tuple[str, Any, Any]:
    """``(label, COCO class, COCOeval class)`` of the requested backend."""
    if name not in ("auto", "faster_coco_eval", "pycocotools"):
        raise ValueError(f"backend must be 'auto', 'faster_coco_eval' or 'pycocotools', got {name!r}")
    if name in ("auto", "faster_coco_eval"):
        try:
            import faster_coco_eval
            from faster_coco_eval import COCO, COCOeval_faster

            return f"faster_coco_eval {getattr(faster_coco_eval, '__version__', '?')}", COCO, COCOeval_faster
        except ImportError:
            if name == "faster_coco_eval":
                raise ImportError("backend 'faster_coco_eval' requested but the package is not installed") from None
    try:
        from importlib.metadata import version

        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError(
            "COCO evaluation needs pycocotools (pip install 'varifocal[eval]') or faster-coco-eval"
        ) from None
    try:
        label = f"pycocotools {version('pycocotools')}"
    except Exception:
        label = "pycocotools"
    return label, COCO, COCOeval


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_summary(metrics: dict[str, Any]) -> str:
    """The standard 12-line COCO summary plus a per-class table, as text.

    Args:
        metrics: a dict returned by :meth:`CocoEvaluator.evaluate` (or read from metrics.json).

    Returns:
        a multi-line string (the 12 lines are formatted exactly as pycocotools prints them).
    """
    lines = []
    for (is_ap, iou, area, max_dets), name in zip(_SUMMARY_ROWS, STAT_NAMES):
        title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {metrics['stats'][name]:0.3f}"
        )
    rows = metrics.get("per_class", [])
    notes = _notes(metrics)
    if rows:
        width = max(8, max(len(r["name"]) for r in rows))
        lines.append("")
        lines.append(f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'AP75':>6}  {'num_gt':>7}  {'num_dets':>8}")
        for r in rows:
            lines.append(
                f"{r['name']:<{width}}  {_fmt(r['AP']):>6}  {_fmt(r['AP50']):>6}  {_fmt(r['AP75']):>6}  "
                f"{r['num_gt']:>7d}  {r['num_dets']:>8d}"
            )
    lines.extend(notes)
    lines.append(f"backend: {metrics.get('backend', '?')}")
    return "\n".join(lines)


def _notes(metrics: dict[str, Any]) -> list[str]:
    """Lines saying what was left out of the evaluation (none when nothing was)."""
    notes = []
    skipped = metrics.get("skipped_images") or []
    if skipped:
        names = ", ".join(os.path.basename(str(f)) for f in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        notes.append(f"skipped {len(skipped)} unreadable images (not evaluated): {names}")
    if metrics.get("dropped_boxes"):
        notes.append(f"dropped {metrics['dropped_boxes']} degenerate / off-image boxes (not scored)")
    if metrics.get("ignored_boxes"):
        notes.append(f"left out {metrics['ignored_boxes']} boxes flagged 'ignore' (not scored)")
    return [""] + notes if notes else []


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
    ) -> None:
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
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        stats = [float(v) for v in coco_eval.stats[:12]]

        per_class = self._per_class(coco_eval, dets, eval_set)
        metrics = {
            "backend": self.backend,
            "iou_type": "bbox",
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
