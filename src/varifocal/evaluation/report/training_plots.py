"""Loss and AP curves of a training run from its ``metrics.jsonl`` (issue 15).

The records are those of ``varifocal.engine.trainer._Logger.record``: one JSON object a line,
``{"kind": "train", "step": iteration, "loss_*": ..., "loss": ..., "lr": ..., "epoch": e}`` from
``_log_step`` and ``{"kind": "val", "step": iteration, "epoch": e, "AP": ..., "AP50": ..., ...}``
from ``_evaluate_and_checkpoint``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._figure import new_figure, save_png

__all__ = ["read_metrics_jsonl", "plot_training_curves"]


def read_metrics_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train_records, val_records)`` of a metrics.jsonl, tolerant of a crashed or resumed run.

    A missing file gives two empty lists; lines that are not a JSON object with a numeric
    ``step`` (a truncated last line, say) are skipped. After a resume the log repeats
    iterations: a train record whose step is <= the last one kept drops the kept records from
    that step on, and a val record replaces an earlier one of the same epoch (the newest wins).
    """
    p = Path(path)
    if not p.is_file():
        return [], []
    train: list[dict[str, Any]] = []
    val: dict[Any, dict[str, Any]] = {}
    with open(p, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
                continue
            if rec.get("kind") == "train":
                while train and train[-1]["step"] >= rec["step"]:
                    train.pop()
                train.append(rec)
            elif rec.get("kind") == "val":
                val.pop(rec.get("epoch", rec["step"]), None)
                val[rec.get("epoch", rec["step"])] = rec
    return train, sorted(val.values(), key=lambda r: (r.get("epoch", 0), r["step"]))


def _numeric(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    xs, ep, ys = [], [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            xs.append(float(r["step"]))
            ep.append(float(r.get("epoch", r["step"])))
            ys.append(float(v))
    return xs, ep, ys


def plot_training_curves(metrics_jsonl: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``loss_curves.png`` (every ``loss*`` term and the learning rate vs iteration) and
    ``ap_curves.png`` (AP, AP50, AP75 vs epoch) into ``out_dir`` from ``metrics_jsonl``.

    Returns the paths written: none for a missing or empty log, no AP figure without val
    records (see :func:`read_metrics_jsonl` for partial logs).

    Raises:
        ImportError: matplotlib is missing (with the install hint); OSError: ``out_dir`` not writable.
    """
    train, val = read_metrics_jsonl(metrics_jsonl)
    out = Path(out_dir)
    written: list[Path] = []
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    if train and loss_keys:
        fig = new_figure(10.0, 4.2)
        a, b = fig.subplots(1, 2, width_ratios=[2, 1])
        for k in loss_keys:
            xs, _, ys = _numeric(train, k)
            a.plot(xs, ys, label=k, linewidth=2.0 if k == "loss" else 1.2)
        a.set(xlabel="Iteration", ylabel="Loss", title="Training losses")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
        xs, _, ys = _numeric(train, "lr")
        b.plot(xs, ys, color="C7", label="lr")
        b.set(xlabel="Iteration", ylabel="Learning rate", title="Learning rate")
        b.grid(alpha=0.3)
        b.legend(fontsize=8)
        written.append(out / "loss_curves.png")
        save_png(fig, written[-1])
    if val:
        fig = new_figure(6.5, 4.2)
        ax = fig.subplots()
        for k in ("AP", "AP50", "AP75"):
            _, ep, ys = _numeric(val, k)
            if ys:
                ax.plot(ep, ys, "o-", label=k)
        ax.set(xlabel="Epoch", ylabel="COCO bbox metric", title="Validation AP", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(out / "ap_curves.png")
        save_png(fig, written[-1])
    return written
