"""Build a large-image detection set from a COCO set: mosaics of G×G source images (issue 16).

Usage::

    .venv/bin/python tools/make_mosaics.py --ann data/bccd/annotations/instances_val.json \\
        --images data/bccd/JPEGImages --out data/bccd_mosaic --grid 4 --seed 0

COCO in, COCO out. The source images are shuffled (``--seed``) and taken in order, G² at a time,
so every source image is used exactly once; the last mosaic may hold fewer images (its other
cells stay empty) unless ``--drop-last``. ``--grid N`` gives N×N mosaics (2 ≤ N ≤ 4);
``--grid 2-4`` draws each mosaic's N uniformly from the range (same seeded generator). A cell is
as large as the largest source image (BCCD: 640×480, so a 4×4 mosaic is 2560×1920); each source
image sits at its cell's top-left corner at native resolution (objects become small relative to
the image), and uncovered pixels are grey (114, 114, 114).

Annotations keep their category, ``iscrowd`` and ``ignore`` flags; a box is clipped to its
source image (so it never reaches into a neighbouring cell; its ``area`` becomes ``w·h`` only
when the clip changed it) and shifted by its cell's corner; a box with nothing left in its
image is dropped; ``segmentation`` is left out. Each mosaic's ``images[]`` entry lists its ``sources`` (file name, id and
the cell's corner ``x``, ``y``).

Writes ``<out>/JPEGImages/<split>_<nnnnn>.jpg`` and ``<out>/annotations/instances_<split>.json``
(``<split>`` defaults to the annotation file's name without ``instances_``), each atomically.
``<out>`` must not be, lie inside, or contain the input image folder or annotation file, and
existing outputs are only replaced with ``--overwrite``. The same inputs and ``--seed`` give
the same bytes.

Exits with status 2 and one line on stderr for bad input (unreadable or invalid files, an image
whose size differs from its annotation, a bad ``--grid`` or output folder).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from varifocal.data import DataError, load_image, read_coco_json
from varifocal.utils.io import atomic_write, atomic_write_json

PAD_VALUE = 114
MIN_GRID, MAX_GRID = 2, 4


def parse_grid(text: str) -> tuple[int, int]:
    """``'4'`` → ``(4, 4)``; ``'2-4'`` → ``(2, 4)`` (inclusive range).

    Raises:
        ValueError: not N or MIN-MAX with ``2 ≤ MIN ≤ MAX ≤ 4``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not match:
        raise ValueError(f"--grid must be N or MIN-MAX (e.g. 4 or 2-4), got {text!r}")
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) else low
    if not MIN_GRID <= low <= high <= MAX_GRID:
        raise ValueError(f"--grid must lie in {MIN_GRID}..{MAX_GRID} (MIN <= MAX), got {text!r}")
    return low, high


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_out_dir(out: Path, images: Path, ann: Path) -> None:
    """Refuse an output folder that overlaps an input (module docstring).

    Raises:
        ValueError: ``out`` is, lies inside or contains the image folder or the annotation file.
    """
    out, images, ann = out.resolve(), images.resolve(), ann.resolve()
    for what, path in (("image folder", images), ("annotation folder", ann.parent)):
        if _inside(out, path):
            raise ValueError(f"--out {out}: lies inside the input {what} {path}; pick a folder outside the inputs")
    for what, path in (("image folder", images), ("annotation file", ann)):
        if _inside(path, out):
            raise ValueError(f"--out {out}: contains the input {what} {path}; pick a folder outside the inputs")


def plan_mosaics(image_ids: Sequence[int], grid: tuple[int, int], seed: int, drop_last: bool) -> list[tuple[int, list]]:
    """``[(G, [source image ids, row-major, at most G²]), …]``: every id once (or, with
    ``drop_last``, the ids of an incomplete last mosaic left out)."""
    rng = random.Random(seed)
    order = list(image_ids)
    rng.shuffle(order)
    plan, start = [], 0
    while start < len(order):
        g = rng.randint(grid[0], grid[1])
        chunk = order[start : start + g * g]
        start += g * g
        if len(chunk) < g * g and drop_last:
            break
        plan.append((g, chunk))
    return plan


def _clip_annotation(ann: dict[str, Any], width: int, height: int, dx: int, dy: int) -> dict[str, Any] | None:
    x, y, w, h = (float(v) for v in ann["bbox"])
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    out = {k: v for k, v in ann.items() if k not in ("id", "image_id", "bbox", "segmentation")}
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        out["area"] = (x2 - x1) * (y2 - y1)
    out["bbox"] = [x1 + dx, y1 + dy, x2 - x1, y2 - y1]
    return out


def make_mosaics(
    ann_file: Path,
    image_dir: Path,
    out: Path,
    grid: tuple[int, int] = (4, 4),
    seed: int = 0,
    split: str | None = None,
    drop_last: bool = False,
    quality: int = 95,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the mosaics of ``ann_file`` (module docstring) and return the written COCO dict.

    Raises:
        DataError: unreadable/invalid annotation file or image, or a size mismatch.
        ValueError: a bad grid or output folder, or outputs that exist without ``overwrite``.
    """
    check_out_dir(out, image_dir, ann_file)
    data = read_coco_json(ann_file)
    split = split or re.sub(r"^instances_", "", ann_file.stem)
    json_path = out / "annotations" / f"instances_{split}.json"
    if json_path.exists() and not overwrite:
        raise ValueError(f"{json_path}: exists; pass --overwrite to replace it")
    images = {img["id"]: img for img in data["images"]}
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    cell_w = max(img["width"] for img in images.values())
    cell_h = max(img["height"] for img in images.values())
    out_images, out_anns = [], []
    for k, (g, chunk) in enumerate(plan_mosaics(sorted(images), grid, seed, drop_last)):
        canvas = np.full((g * cell_h, g * cell_w, 3), PAD_VALUE, dtype=np.uint8)
        name = f"{split}_{k:05d}.jpg"
        sources = []
        for cell, iid in enumerate(chunk):
            img = images[iid]
            path = image_dir / img["file_name"]
            pixels = load_image(path)  # raises DataError naming the file
            h, w = int(pixels.shape[1]), int(pixels.shape[2])
            if (w, h) != (img["width"], img["height"]):
                raise DataError(f"{path}: image is {w}x{h} but {ann_file} says {img['width']}x{img['height']}")
            dy, dx = (cell // g) * cell_h, (cell % g) * cell_w
            canvas[dy : dy + h, dx : dx + w] = pixels.permute(1, 2, 0).numpy()
            sources.append({"file_name": img["file_name"], "id": iid, "x": dx, "y": dy})
            for ann in per_image[iid]:
                moved = _clip_annotation(ann, w, h, dx, dy)
                if moved is not None:
                    out_anns.append({"id": len(out_anns) + 1, "image_id": k + 1, **moved})
        out_images.append(
            {"id": k + 1, "file_name": name, "width": g * cell_w, "height": g * cell_h, "sources": sources}
        )
        picture = Image.fromarray(canvas)
        atomic_write(out / "JPEGImages" / name, lambda tmp, im=picture: im.save(tmp, format="JPEG", quality=quality))
    result = {
        "info": {
            "description": f"mosaics of {ann_file.name} (grid {grid[0]}-{grid[1]}, seed {seed}) by tools/make_mosaics.py"
        },
        "images": out_images,
        "annotations": out_anns,
        "categories": data["categories"],
    }
    atomic_write_json(json_path, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ann", required=True, type=Path, help="COCO annotation file of the source images")
    parser.add_argument("--images", required=True, type=Path, help="folder the file names are relative to")
    parser.add_argument("--out", required=True, type=Path, help="output folder (outside the inputs)")
    parser.add_argument("--grid", default="4", help="N (N×N mosaics) or MIN-MAX, within 2..4 (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle / grid seed (default 0)")
    parser.add_argument("--split", default=None, help="output name (default: from the annotation file name)")
    parser.add_argument("--drop-last", action="store_true", help="leave out an incomplete last mosaic")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 1-95 (default 95)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    try:
        grid = parse_grid(args.grid)
        if not 1 <= args.quality <= 95:
            raise ValueError(f"--quality must be in 1..95, got {args.quality}")
        result = make_mosaics(
            args.ann, args.images, args.out, grid, args.seed, args.split, args.drop_last, args.quality, args.overwrite
        )
    except (DataError, ValueError, OSError) as exc:
        print(f"make_mosaics: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    n_src = sum(len(img["sources"]) for img in result["images"])
    print(
        f"wrote {len(result['images'])} mosaics ({n_src} source images, {len(result['annotations'])} boxes) "
        f"to {os.fspath(args.out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
