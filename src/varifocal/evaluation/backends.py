"""The COCOeval implementations: :func:`_backend` picks pycocotools or faster-coco-eval (same
numbers), and :func:`_stats_at` reads the 12 summary numbers from an evaluated ``COCOeval`` whose
largest ``maxDets`` is not 100.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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


def _stats_at(coco_eval: Any) -> list[float]:
    """The 12 summary numbers from ``coco_eval.eval`` with the largest ``params.maxDets`` in place
    of 100 (``COCOeval.summarize`` asks for 100 by name and gives -1 without it); the same
    averages as ``summarize``: over IoU thresholds, recall points and classes, -1 entries left out."""
    precision, recall = coco_eval.eval["precision"], coco_eval.eval["recall"]  # [T, R, K, A, M], [T, K, A, M]
    iou_thrs = np.asarray(coco_eval.params.iouThrs)
    areas = list(coco_eval.params.areaRngLbl)
    max_dets = list(coco_eval.params.maxDets)

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    def ap(iou: float | None, area: str) -> float:
        p = precision[..., areas.index(area), len(max_dets) - 1]
        return mean(p if iou is None else p[int(np.argmin(np.abs(iou_thrs - iou)))])

    def ar(area: str, m: int) -> float:
        return mean(recall[:, :, areas.index(area), m])

    last = len(max_dets) - 1
    return [
        ap(None, "all"),
        ap(0.5, "all"),
        ap(0.75, "all"),
        ap(None, "small"),
        ap(None, "medium"),
        ap(None, "large"),
        ar("all", 0),
        ar("all", 1),
        ar("all", last),
        ar("small", last),
        ar("medium", last),
        ar("large", last),
    ]
