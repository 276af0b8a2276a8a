"""Detections in the COCO results format and JSON files: :func:`detections_to_coco` (model
outputs to ``[x, y, w, h]`` results with COCO category ids), :func:`write_predictions` (a
prediction file that carries its class list) and :func:`write_json_atomic` (strict JSON,
numpy and torch values converted, written atomically).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from ..utils.io import atomic_write


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
