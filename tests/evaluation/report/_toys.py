"""Hand-built COCO scenes shared by the report tests."""

from __future__ import annotations

from typing import Any


def coco(gts: list[tuple[int, int, list[float]]], dets: list[tuple[int, int, list[float], float]], crowd=()) -> tuple:
    """gts: (image_id, category_id, xywh); dets: (image_id, category_id, xywh, score); crowd: gt indices."""
    images = sorted({g[0] for g in gts} | {d[0] for d in dets})
    gt: dict[str, Any] = {
        "images": [{"id": i, "width": 1000, "height": 1000} for i in images],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": int(k in crowd)}
            for k, (i, c, b) in enumerate(gts)
        ],
    }
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]
    return gt, results


A, B = 1, 2
# The TIDE scene (one image): every error type once (Bkg twice); see test_tide.py for the hand values.
TIDE_GTS = [
    (1, A, [0, 0, 10, 10]),  # GA1: found (d1), duplicated (d2)
    (1, A, [100, 0, 10, 10]),  # GA2: found only as class B (d3, Cls)
    (1, A, [200, 0, 10, 10]),  # GA3: found with IoU 0.25 (d4, Loc)
    (1, A, [300, 0, 10, 10]),  # GA4: missed (d6 is B with IoU 0.25: Both)
    (1, A, [400, 0, 10, 10]),  # GA5: found late (d8)
    (1, B, [0, 100, 10, 10]),  # GB1: found (d7)
]
TIDE_DETS = [
    (1, A, [0, 0, 10, 10], 0.9),  # d1 TP
    (1, A, [1, 0, 10, 10], 0.85),  # d2 Dupe (IoU 9/11 with the matched GA1)
    (1, B, [100, 0, 10, 10], 0.8),  # d3 Cls
    (1, A, [206, 0, 10, 10], 0.65),  # d4 Loc (IoU 40/160)
    (1, A, [500, 500, 10, 10], 0.75),  # d5 Bkg
    (1, B, [306, 0, 10, 10], 0.97),  # d6 Both (B on an A gt, IoU 0.25)
    (1, B, [0, 100, 10, 10], 0.95),  # d7 TP
    (1, A, [400, 0, 10, 10], 0.3),  # d8 TP
    (1, A, [600, 500, 10, 10], 0.7),  # d9 Bkg
]
