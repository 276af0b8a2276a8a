"""The one-page summary of the report as Markdown and as offline HTML (relative links, no JS/CDN)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from .tide import ERROR_TYPES

__all__ = ["render_markdown", "render_html"]

_TIDE_HELP = {
    "Cls": "right box, wrong class (IoU >= t_f with a gt of another class)",
    "Loc": "right class, poor box (t_b <= IoU < t_f)",
    "Both": "wrong class and poor box",
    "Dupe": "a second detection of an already matched gt",
    "Bkg": "a detection on background (IoU <= t_b with every gt)",
    "Miss": "a gt no detection found",
}


def _f(x: Any, nd: int = 3) -> str:
    return "n/a" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _sections(
    s: Mapping[str, Any], metrics: Mapping[str, Any] | None
) -> list[tuple[str, str, list[list[str]], list[str], list[str]]]:
    """(title, text, table rows (first = header), images, data files) per section."""
    out = []
    if metrics and isinstance(metrics.get("stats"), Mapping):
        st = metrics["stats"]
        backend = metrics.get("backend") or "pycocotools"
        out.append(("COCO metrics", f"From COCOeval ({backend}), as in metrics.json.",
                    [list(st.keys()), [_f(float(v)) for v in st.values()]], [], []))  # fmt: skip
    rows = [["class", "score thr", "F1", "precision", "recall", "TP", "FP", "#gt"]]
    for b in s["best_f1"]:
        rows.append([b["name"], _f(b["score_thr"]), _f(b["f1"]), _f(b["precision"]), _f(b["recall"]),
                     str(b["tp"]), str(b["fp"]), str(b["num_gt"])])  # fmt: skip
    out.append((
        f"Best-F1 score thresholds (IoU {s['iou_thr']:.2f})",
        "Keeping the detections with score >= the threshold maximises the class's F1 (ties: the highest score).",
        rows, ["pr_curves.png", "f1_curves.png"], ["curves.csv", "best_f1.csv"],
    ))  # fmt: skip
    c = s["confusion"]
    thr = ", ".join(f"{t['name']} >= {_f(t['score_thr'])}" for t in c["score_thr"])
    out.append((
        "Confusion matrix",
        f"IoU >= {c['iou_thr']:.2f}; scores {thr} ({c['score_thr_source']}). Rows: true class, last row = "
        "detections on background (false positives, duplicates included); columns: predicted class, "
        "last column = missed gt. Same-class matches are made first (COCO greedy), then the rest by IoU.",
        [["true \\ predicted", *c["labels"]]] + [[lab, *map(str, r)] for lab, r in zip(c["labels"], c["counts"])],
        ["confusion_matrix.png"], ["confusion_counts.csv", "confusion_normalized.csv"],
    ))  # fmt: skip
    t = s["tide"]
    rows = [["error", "count", "ΔAP (points)", "meaning"]]
    rows += [[e, str(t["counts"][e]), _f(100 * t["delta_ap"][e], 2), _TIDE_HELP[e]] for e in ERROR_TYPES]
    rows += [[k, "", _f(100 * v, 2), "all false positives / negatives fixed"] for k, v in t["special"].items()]
    out.append((
        "TIDE error breakdown",
        f"AP{round(100 * t['t_f'])} = {100 * t['ap']:.2f} (COCO 101-point, mean over classes with gt); ΔAP = "
        f"AP after fixing only that error type minus AP (t_f = {t['t_f']}, t_b = {t['t_b']}; Bolya et al. 2020).",
        rows, ["tide.png"], ["tide.json"],
    ))  # fmt: skip
    cal = s["calibration"]
    rows = [["class", "matched", "mean score", "mean IoU", "Pearson", "Spearman", "ECE"]]
    for name, x in [("all", cal["overall"])] + [(p["name"], p) for p in cal["per_class"]]:
        rows.append([name, str(x["count"]), _f(x["mean_score"]), _f(x["mean_iou"]), _f(x["pearson"]),
                     _f(x["spearman"]), _f(x["ece"])])  # fmt: skip
    out.append((
        "Score vs localisation (calibration)",
        f"True positives at IoU >= {cal['iou_thr']:.2f}: does the score rank (Spearman) and equal (ECE, "
        "10 score bins) the IoU with the matched gt?",
        rows, ["calibration.png"], ["calibration_bins.csv"],
    ))  # fmt: skip
    return out


def _header(s: Mapping[str, Any]) -> str:
    return (
        f"{s['num_images']} images, {s['num_gt']} ground-truth boxes, {s['num_detections']} detections, "
        f"classes: {', '.join(b['name'] for b in s['best_f1'])}."
    )


def render_markdown(summary: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str:
    """The report as Markdown, images and data linked relative to the report folder."""
    lines = ["# Evaluation report", "", _header(summary), ""]
    for title, text, rows, images, data in _sections(summary, metrics):
        lines += [f"## {title}", "", text, ""]
        cell = [[c.replace("|", "\\|") for c in r] for r in rows]
        lines += ["| " + " | ".join(cell[0]) + " |", "|" + "---|" * len(cell[0])]
        lines += ["| " + " | ".join(r) + " |" for r in cell[1:]] + [""]
        lines += [f"![{title}: {im[:-4].replace('_', ' ')}]({im})" for im in images]
        if data:
            lines += ["", "Data: " + ", ".join(f"[{d}]({d})" for d in data)]
        lines.append("")
    return "\n".join(lines)


_CSS = (
    "body{font-family:sans-serif;max-width:1150px;margin:1em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #bbb;padding:3px 8px}"
    "th{background:#eee}img{max-width:100%;display:block;margin:.5em 0}"
)


def render_html(summary: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str:
    """The report as one self-contained HTML page: inline CSS, relative ``<img>`` links, no script."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Evaluation report</h1>",
        f"<p>{e(_header(summary))}</p>",
    ]
    for title, text, rows, images, data in _sections(summary, metrics):
        parts += [f"<h2>{e(title)}</h2>", f"<p>{e(text)}</p>", "<table>"]
        parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in rows[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
        parts.append("</table>")
        parts += [f'<img src="{e(im)}" alt="{e(title)}">' for im in images]
        if data:
            parts.append("<p>Data: " + ", ".join(f'<a href="{e(d)}">{e(d)}</a>' for d in data) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
