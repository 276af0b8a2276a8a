"""Score thresholds of ``predict`` / ``val --draw``: one number, or each class's best-F1 threshold (issue 15).

``--score-thr`` takes:

* a number in ``[0, 1]``: keep detections with ``score > thr`` (every class);
* ``best``: the per-class best-F1 thresholds saved with the checkpoint (``meta.best_score_thr``,
  written by ``varifocal train``'s final evaluation), keeping ``score >= thr[class]``;
* a path to a ``metrics.json`` of ``varifocal val --report`` (its ``best_score_thr``): the same,
  for a checkpoint that was evaluated but not trained here (e.g. a converted MMDetection model).

A class without a best-F1 threshold (no true positive in the evaluation) keeps nothing above 1.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .common import UsageError

__all__ = ["ScoreThr", "score_thr_arg", "resolve_score_thr", "keep_mask", "describe_score_thr"]

#: What ``--score-thr`` parses to: a number, ``"best"`` or a metrics file.
ScoreThr = float | str | Path


def score_thr_arg(text: str) -> ScoreThr:
    """argparse type of ``--score-thr``: a number in ``[0, 1]``, ``best`` or an existing JSON file."""
    if text == "best":
        return "best"
    try:
        value = float(text)
    except ValueError:
        path = Path(text)
        if path.suffix.lower() == ".json":
            if not path.is_file():
                raise argparse.ArgumentTypeError(f"{text}: no such metrics file") from None
            return path
        raise argparse.ArgumentTypeError(
            f"expected a number in [0, 1], 'best' or a metrics.json of 'varifocal val --report', got {text!r}"
        ) from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _per_class(table: Any, class_names: Sequence[str], source: str) -> list[float]:
    if not isinstance(table, Mapping) or not table:
        raise UsageError(f"{source}: has no per-class thresholds ('best_score_thr')")
    missing = [name for name in class_names if name not in table]
    if missing:
        raise UsageError(f"{source}: no threshold for class(es) {', '.join(missing[:5])} of the model")
    values = []
    for name in class_names:
        value = table[name]
        if value is None:
            values.append(math.inf)  # the class never had a true positive: keep none of it
        elif isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0:
            values.append(float(value))
        else:
            raise UsageError(f"{source}: threshold of class {name!r} is {value!r}, not a number in [0, 1]")
    return values


def resolve_score_thr(
    value: ScoreThr, class_names: Sequence[str], checkpoint_meta: Mapping[str, Any], checkpoint: str
) -> float | list[float]:
    """The threshold(s) to apply: a float, or one float per class (``inf``: keep none).

    Raises:
        UsageError: ``best`` for a checkpoint without saved thresholds, an unreadable metrics
            file, or thresholds whose classes are not the model's.
    """
    if isinstance(value, float):
        return value
    if value == "best":
        table = checkpoint_meta.get("best_score_thr")
        if not table:
            raise UsageError(
                f"{checkpoint}: has no saved per-class thresholds; run 'varifocal val … --report' and pass "
                "--score-thr <out_dir>/metrics.json"
            )
        return _per_class(table, class_names, checkpoint)
    path = Path(value)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a readable metrics JSON ({type(exc).__name__})") from None
    table = data.get("best_score_thr") if isinstance(data, dict) else None
    if not table:
        raise UsageError(f"{path}: has no 'best_score_thr' (write it with 'varifocal val … --report')")
    return _per_class(table, class_names, str(path))


def keep_mask(scores: torch.Tensor, labels: torch.Tensor, score_thr: float | Sequence[float]) -> torch.Tensor:
    """``[N]`` bool: ``scores > thr`` for one number, ``scores >= thr[labels]`` per class."""
    if isinstance(score_thr, (int, float)):
        return scores > float(score_thr)
    table = torch.tensor(list(score_thr), dtype=scores.dtype)
    return scores >= table[labels.long()]


def describe_score_thr(score_thr: float | Sequence[float], class_names: Sequence[str]) -> str:
    """``above 0.3`` or ``at or above the best-F1 thresholds (RBC 0.42, WBC 0.61, …)``."""
    if isinstance(score_thr, (int, float)):
        return f"above {score_thr}"
    parts = [f"{n} {'none' if math.isinf(t) else f'{t:.3f}'}" for n, t in zip(class_names, score_thr)]
    return "at or above the best-F1 thresholds (" + ", ".join(parts) + ")"
