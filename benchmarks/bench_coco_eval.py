"""COCOeval backends side by side: pycocotools against faster-coco-eval on the same detections.

Ground truth: the COCO 2017 subset in ``../shared/data/coco_subset`` (train + val annotation
files, 258 images, 80 categories). Detections: every ground-truth box jittered (seeded) with a
random score, plus random false positives, so both backends see a realistic mix of matches,
misses and duplicates. Reports both backends' 12 statistics, their largest difference and the
wall time of each (evaluate + accumulate + summarize; median of ``--repeat`` runs, the ground
truth loaded once per backend outside the timing), as a ratio to pycocotools.

    .venv/bin/python benchmarks/bench_coco_eval.py [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from varifocal.evaluation import CocoEvaluator  # noqa: E402

SUBSET = ROOT.parent / "shared" / "data" / "coco_subset" / "annotations"


def synthetic_detections(gt: dict, seed: int = 0, fp_per_image: int = 20) -> list[dict]:
    """Jittered copies of the ground truth (scores in [0.3, 1]) plus ``fp_per_image`` random boxes."""
    rng = np.random.default_rng(seed)
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    cat_ids = sorted(c["id"] for c in gt["categories"])
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0.0, 0.08, 4)
        dets.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids)),
                "bbox": [x + dx * w, y + dy * h, max(1.0, w * (1 + dw)), max(1.0, h * (1 + dh))],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    for image_id, (width, height) in sizes.items():
        for _ in range(fp_per_image):
            w, h = rng.uniform(8, width / 2), rng.uniform(8, height / 2)
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(cat_ids)),
                    "bbox": [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), float(w), float(h)],
                    "score": float(rng.uniform(0.0, 0.6)),
                }
            )
    return dets


def merged_ground_truth() -> dict:
    """train2017 + val2017 annotation files of the subset as one COCO dict (ids are unique)."""
    parts = [json.loads((SUBSET / f"instances_{s}2017.json").read_text()) for s in ("train", "val")]
    return {
        "images": parts[0]["images"] + parts[1]["images"],
        "annotations": parts[0]["annotations"] + parts[1]["annotations"],
        "categories": parts[0]["categories"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not SUBSET.is_dir():
        print(f"{SUBSET}: not found (needs ../shared beside the checkout)", file=sys.stderr)
        return 2
    gt = merged_ground_truth()
    dets = synthetic_detections(gt)
    out: dict = {"num_images": len(gt["images"]), "num_gt": len(gt["annotations"]), "num_dets": len(dets)}
    for backend in ("pycocotools", "faster_coco_eval"):
        try:
            evaluator = CocoEvaluator(gt, backend=backend)
        except ImportError as exc:
            print(f"{backend}: {exc}")
            continue
        times, metrics = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            metrics = evaluator.evaluate(dets)
            times.append(time.perf_counter() - start)
        out[backend] = {"label": evaluator.backend, "seconds": statistics.median(times), "stats": metrics["stats"]}
    if "pycocotools" in out and "faster_coco_eval" in out:
        a, b = out["pycocotools"]["stats"], out["faster_coco_eval"]["stats"]
        out["max_abs_stat_difference"] = max(abs(a[k] - b[k]) for k in a)
        out["time_ratio_to_pycocotools"] = out["faster_coco_eval"]["seconds"] / out["pycocotools"]["seconds"]
    print(f"{out['num_images']} images, {out['num_gt']} gt boxes, {out['num_dets']} detections, {args.repeat} runs")
    for backend in ("pycocotools", "faster_coco_eval"):
        if backend in out:
            r = out[backend]
            print(
                f"  {r['label']:<28} {r['seconds'] * 1e3:8.1f} ms  AP {r['stats']['AP']:.4f}  AP50 {r['stats']['AP50']:.4f}"
            )
    if "max_abs_stat_difference" in out:
        print(f"  max |Δ| over the 12 stats: {out['max_abs_stat_difference']:.2e}")
        print(f"  faster-coco-eval / pycocotools time: {out['time_ratio_to_pycocotools']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
