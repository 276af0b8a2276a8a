"""Matplotlib without pyplot: an Agg canvas per figure, so a user's interactive backend is untouched."""

from __future__ import annotations

import os
from typing import Any

from varifocal.utils.io import atomic_write

__all__ = ["new_figure", "save_png"]

_HINT = "the evaluation report needs matplotlib: pip install 'varifocal[report]'"


def new_figure(width: float, height: float) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches at 100 dpi, with an Agg canvas.

    Raises:
        ImportError: matplotlib is not installed (one line with the install hint).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - exercised only without matplotlib
        raise ImportError(_HINT) from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically (temporary file beside it, then ``os.replace``)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
