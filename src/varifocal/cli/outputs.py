"""Drawings of ``predict`` and ``val --draw``: safe output names, atomic PNG writes.

Naming rule (documented in the README): the drawing of ``photos/a.jpg`` is ``<out>/a.png``
when that name is unambiguous. When two inputs of the run share a stem (``a.jpg`` and
``a.png``), or ``<out>/a.png`` is itself one of the inputs (``--out-dir`` is the photos'
folder), the drawing keeps the extension in its name: ``a_jpg.png``, ``a_png.png``; if that is
still taken (same file name in two folders, or an input of that name) a counter follows,
``a_jpg_2.png``. So a run never writes over one of its inputs (compared by path and by inode,
hard links and symlinks included) nor over another output of the same run.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

from ..data import load_image
from ..utils.io import atomic_write

__all__ = ["drawing_paths", "draw_detections", "save_png", "draw_dataset"]


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def drawing_paths(inputs: Sequence[str | os.PathLike], out_dir: Path) -> list[Path]:
    """One distinct ``.png`` path in ``out_dir`` per input image, none of them an input file
    (rule in the module docstring). Names compare case-insensitively, so the result is also
    safe on case-insensitive file systems."""
    inputs = [Path(p) for p in inputs]
    protected_paths = {os.path.normcase(os.path.abspath(p)) for p in inputs}
    protected_ids = {i for i in map(_file_id, inputs) if i is not None}
    stems = Counter(p.stem.casefold() for p in inputs)
    taken: set[str] = set()

    def free(name: str) -> bool:
        target = out_dir / name
        if name.casefold() in taken or os.path.normcase(os.path.abspath(target)) in protected_paths:
            return False
        return _file_id(target) is None or _file_id(target) not in protected_ids

    paths = []
    for p in inputs:
        base = f"{p.stem}_{p.suffix[1:].lower()}" if p.suffix else f"{p.stem}_img"
        first = [f"{p.stem}.png"] if stems[p.stem.casefold()] == 1 else []
        candidates = itertools.chain(first, [f"{base}.png"], (f"{base}_{k}.png" for k in itertools.count(2)))
        name = next(n for n in candidates if free(n))
        taken.add(name.casefold())
        paths.append(out_dir / name)
    return paths


def draw_detections(
    image: torch.Tensor, det: dict, class_names: Sequence[str] | None, score_thr: float | Sequence[float]
) -> torch.Tensor:
    """``uint8 [3, H, W]`` image with the detections above ``score_thr`` drawn (torchvision);
    ``score_thr`` is one number or one per class (:func:`.thresholds.keep_mask`)."""
    from torchvision.utils import draw_bounding_boxes

    from .thresholds import keep_mask

    keep = keep_mask(det["scores"], det["labels"], score_thr)
    labels = [
        f"{class_names[int(l)] if class_names else int(l)} {float(s):.2f}"
        for l, s in zip(det["labels"][keep], det["scores"][keep])
    ]
    palette = ["red", "lime", "blue", "yellow", "cyan", "magenta", "orange", "white", "purple", "pink"]
    colors = [palette[int(l) % len(palette)] for l in det["labels"][keep]]
    width = max(1, round(max(image.shape[1:]) / 400))
    return draw_bounding_boxes(image, det["boxes"][keep], labels=labels, width=width, colors=colors)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write ``uint8 [3, H, W]`` as PNG, atomically, with normal permissions (``utils.io``)."""
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def draw_dataset(records, detections, class_names, out_dir: Path, score_thr, limit: int) -> None:
    """Draw the already computed ``detections`` on the first ``limit`` of ``records`` (the
    evaluated images, in order: ``detections[i]`` belongs to ``records[i]``)."""
    records = list(records)[:limit]
    targets = drawing_paths([rec.file_name for rec in records], out_dir)
    for rec, det, target in zip(records, detections, targets):
        save_png(draw_detections(load_image(rec.file_name), det, class_names, score_thr), target)
    from .thresholds import describe_score_thr

    print(f"drew {len(records)} images with detections {describe_score_thr(score_thr, class_names)} into {out_dir}")
