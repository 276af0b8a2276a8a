"""COCO bbox evaluation (spec §5.3)."""

from .coco_eval import (
    STAT_NAMES,
    CocoEvaluator,
    detections_to_coco,
    evaluate_file,
    format_summary,
    write_json_atomic,
    write_predictions,
)

__all__ = [
    "STAT_NAMES",
    "CocoEvaluator",
    "detections_to_coco",
    "evaluate_file",
    "format_summary",
    "write_json_atomic",
    "write_predictions",
]
