"""The report figures (issue 15): PR and F1 curves, confusion matrix, TIDE bars, calibration.

Each function draws on a fresh ``matplotlib.figure.Figure`` with an Agg canvas (pyplot is never
imported, so an interactive backend of the caller is untouched), writes one PNG atomically and
returns the figure (for inspection in tests).

Raises (every function): ImportError with the install hint when matplotlib is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figure import new_figure, save_png
from .confusion import ConfusionMatrix
from .curves import PRCurve, best_f1
from .tide import ERROR_TYPES

__all__ = ["plot_pr_curves", "plot_f1_curves", "plot_confusion", "plot_tide", "plot_calibration"]


def _color(i: int) -> str:
    return f"C{i % 10}"


def plot_pr_curves(
    curves: Mapping[float, Sequence[PRCurve]], class_names: Sequence[str], path: str | os.PathLike
) -> Any:
    """Precision vs recall per class, one panel per IoU threshold of ``curves`` (IoU -> curves in
    ``class_names`` order); the best-F1 point of each class is marked and named in the legend."""
    fig = new_figure(5.2 * len(curves), 4.6)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (iou, cs) in zip(axes, curves.items()):
        for i, (c, name) in enumerate(zip(cs, class_names)):
            b = best_f1(c)
            if c.recall.size:
                ax.plot(np.r_[0.0, c.recall], np.r_[c.precision[0], c.precision], color=_color(i), label=name)
            else:
                ax.plot([], [], color=_color(i), label=f"{name} (no detections)")
            if b["score_thr"] is not None:
                ax.plot(b["recall"], b["precision"], "o", color=_color(i), markeredgecolor="black",
                        label=f"{name} best F1 {b['f1']:.3f} @ score {b['score_thr']:.3f}")  # fmt: skip
        ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="Recall", ylabel="Precision", title=f"PR curves, IoU = {iou:.2f}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)
    save_png(fig, path)
    return fig


def plot_f1_curves(
    curves: Mapping[float, Sequence[PRCurve]], class_names: Sequence[str], path: str | os.PathLike
) -> Any:
    """F1 vs score threshold per class, one panel per IoU threshold; the best-F1 threshold of each
    class is a dashed vertical line and a marker."""
    fig = new_figure(5.2 * len(curves), 4.6)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (iou, cs) in zip(axes, curves.items()):
        for i, (c, name) in enumerate(zip(cs, class_names)):
            ax.plot(c.score, c.f1, color=_color(i), label=name)
            b = best_f1(c)
            if b["score_thr"] is not None:
                ax.axvline(b["score_thr"], color=_color(i), linestyle="--", linewidth=0.8)
                ax.plot(b["score_thr"], b["f1"], "o", color=_color(i), markeredgecolor="black",
                        label=f"{name} best F1 {b['f1']:.3f} @ {b['score_thr']:.3f}")  # fmt: skip
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Score threshold (keep score >=)", ylabel="F1",
               title=f"F1 vs score, IoU = {iou:.2f}")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(loc="lower center", fontsize=7)
    save_png(fig, path)
    return fig


def _matrix_panel(fig: Any, ax: Any, values: np.ndarray, labels: Sequence[str], fmt: str, title: str) -> None:
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-9))
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="Predicted class", ylabel="True class", title=title)
    top = float(values.max())
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            v = values[r, c]
            ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=8,
                    color="white" if top > 0 and v > 0.6 * top else "black")  # fmt: skip


def plot_confusion(cm: ConfusionMatrix, class_names: Sequence[str], path: str | os.PathLike) -> Any:
    """Counts and row-normalised confusion matrix side by side, classes + "background"."""
    labels = [*class_names, "background"]
    n = len(labels)
    fig = new_figure(max(10.0, 2.2 * n + 3), max(4.4, 0.8 * n + 2.2))
    a, b = fig.subplots(1, 2)
    thr = sorted(set(cm.score_thr.values()))
    stated = f"score >= {thr[0]:.3f}" if len(thr) == 1 else "score >= per-class best-F1 thr."
    fig.suptitle(f"Confusion matrix at IoU >= {cm.iou_thr:.2f}, {stated}")
    _matrix_panel(fig, a, cm.counts, labels, "d", "Counts")
    _matrix_panel(fig, b, cm.normalized, labels, ".2f", "Row-normalised (rows sum to 1)")
    save_png(fig, path)
    return fig


def plot_tide(tide: Mapping[str, Any], path: str | os.PathLike) -> Any:
    """Horizontal bars of the TIDE ΔAP (AP points, x100) of the six main and two special error
    types, each with its count."""
    names = [*ERROR_TYPES, "FalsePos", "FalseNeg"]
    vals = [100 * tide["delta_ap"][e] for e in ERROR_TYPES] + [100 * tide["special"][e] for e in names[6:]]
    counts = [str(tide["counts"][e]) for e in ERROR_TYPES] + ["", ""]
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    bars = ax.barh(y, vals, color=[_color(i) for i in range(6)] + ["0.55", "0.35"])
    ax.set_yticks(y, [f"{n} (n={c})" if c else n for n, c in zip(names, counts)])
    for bar, v in zip(bars, vals):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(max(vals) * 1.2, 1.0))
    ax.set(xlabel=f"ΔAP{int(round(100 * tide['t_f']))} (AP points recovered by fixing the error)",
           title=f"TIDE errors, AP{int(round(100 * tide['t_f']))} = {100 * tide['ap']:.2f}")  # fmt: skip
    ax.grid(axis="x", alpha=0.3)
    save_png(fig, path)
    return fig


def plot_calibration(
    cal: Mapping[str, Any],
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    max_points: int = 4000,
) -> Any:
    """Left: reliability diagram (mean IoU per score bin vs mean score, overall bars and one line
    per class, the diagonal = perfectly calibrated). Right: score vs IoU of the matched detections
    per class (``pairs``: class name -> (scores, ious); at most ``max_points`` points, a fixed
    subsample) with Pearson / Spearman in the legend."""
    fig = new_figure(11.0, 4.8)
    a, b = fig.subplots(1, 2)
    ov = cal["overall"]
    full = [x for x in ov["bins"] if x["count"]]
    a.bar([(x["lo"] + x["hi"]) / 2 for x in full], [x["mean_iou"] for x in full], width=0.09, color="0.8",
          edgecolor="0.4", label=f"all classes (ECE {_f(ov['ece'])})")  # fmt: skip
    for i, pc in enumerate(cal["per_class"]):
        pts = [x for x in pc["bins"] if x["count"]]
        a.plot([x["mean_score"] for x in pts], [x["mean_iou"] for x in pts], "o-", color=_color(i),
               label=f"{pc['name']} (ECE {_f(pc['ece'])})")  # fmt: skip
    a.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="score = IoU")
    a.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Predicted score (bin mean)", ylabel="IoU with matched gt (bin mean)",
          title=f"Reliability, matched at IoU >= {cal['iou_thr']:.2f}")  # fmt: skip
    a.legend(loc="upper left", fontsize=7)
    a.grid(alpha=0.3)
    rng = np.random.default_rng(0)
    total = sum(len(s) for s, _ in pairs.values())
    for i, (name, (s, v)) in enumerate(pairs.items()):
        pc = cal["per_class"][i]
        keep = np.arange(len(s))
        if total > max_points:
            keep = rng.choice(len(s), size=max(1, int(len(s) * max_points / total)), replace=False)
        b.scatter(np.asarray(s)[keep], np.asarray(v)[keep], s=6, alpha=0.5, color=_color(i),
                  label=f"{name}: Pearson {_f(pc['pearson'])}, Spearman {_f(pc['spearman'])}")  # fmt: skip
    b.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    b.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Predicted score", ylabel="IoU with matched gt",
          title=f"Score vs IoU (all: Pearson {_f(ov['pearson'])}, Spearman {_f(ov['spearman'])})")  # fmt: skip
    b.legend(loc="lower right", fontsize=7)
    b.grid(alpha=0.3)
    save_png(fig, path)
    return fig


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
