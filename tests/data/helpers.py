"""Small builders shared by the data and evaluation tests (tiny files in tmp_path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def tiny_coco(tmp_path: Path, images: list[tuple[str, int, int]], annotations: list[dict], categories=None) -> Path:
    """A COCO file in tmp_path; ``images`` are (file_name, width, height) with ids 1.."""
    categories = categories or [{"id": 3, "name": "b"}, {"id": 1, "name": "a"}]
    data = {
        "images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)],
        "annotations": annotations,
        "categories": categories,
    }
    return write_json(tmp_path / "ann.json", data)


def solid_jpeg(path: Path, width: int, height: int, color=(10, 200, 30)) -> Path:
    Image.new("RGB", (width, height), color).save(path, quality=95)
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def voc_tree(tmp_path: Path, xml: Path, jpg: Path, name: str, image_set: str = "trainval") -> Path:
    """A VOC layout (ImageSets/Main, Annotations, JPEGImages) holding one image."""
    root = tmp_path / "voc"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(xml, root / "Annotations" / f"{name}.xml")
    shutil.copy(jpg, root / "JPEGImages" / f"{name}.jpg")
    with open(root / "ImageSets" / "Main" / f"{image_set}.txt", "a") as f:
        f.write(name + "\n")
    return root
