"""The evaluation report of issue 15: PR/F1 curves and best-F1 thresholds, confusion matrix, TIDE
error breakdown, score-vs-IoU calibration, training curves, and a one-page summary.

Entry points: :func:`write_report` (``varifocal val --report``) and :func:`plot_training_curves`
(``varifocal train``). The figures need matplotlib (``pip install 'varifocal[report]'``); the
analyses (:mod:`.matching`, :mod:`.curves`, :mod:`.confusion`, :mod:`.tide`, :mod:`.calibration`)
need only numpy.
"""

from .calibration import calibration, calibration_stats, pearson, spearman
from .confusion import ConfusionMatrix, confusion_matrix
from .curves import PRCurve, best_f1, pr_curve, pr_curves
from .matching import Matches, box_iou_xywh, match_detections
from .tide import ERROR_TYPES, coco_ap, tide_errors
from .training_plots import plot_training_curves, read_metrics_jsonl
from .writer import REPORT_DIR, write_report

__all__ = [
    "ERROR_TYPES",
    "REPORT_DIR",
    "ConfusionMatrix",
    "Matches",
    "PRCurve",
    "best_f1",
    "box_iou_xywh",
    "calibration",
    "calibration_stats",
    "coco_ap",
    "confusion_matrix",
    "match_detections",
    "pearson",
    "plot_training_curves",
    "pr_curve",
    "pr_curves",
    "read_metrics_jsonl",
    "spearman",
    "tide_errors",
    "write_report",
]
