"""The COCO summary as text: the names of the 12 ``COCOeval.stats`` numbers (:data:`STAT_NAMES`)
and :func:`format_summary` (the 12 lines as pycocotools prints them, a per-class table and notes
on what was left out of the evaluation).
"""

from __future__ import annotations

import os
from typing import Any

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
    largest = int(metrics.get("max_dets", 100))
    for (is_ap, iou, area, max_dets), name in zip(_SUMMARY_ROWS, STAT_NAMES):
        max_dets = largest if max_dets == 100 else max_dets
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
