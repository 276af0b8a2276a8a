"""``varifocal predict``: detections of images, folders or globs → ``predictions.json`` and drawings.

Drawings follow the naming rule of :mod:`.outputs` (never over an input or another drawing of
the run). ``--skip-bad-images`` skips undecodable files, counts them and lists them at the end
(``predictions.json["skipped_files"]``). Ctrl-C stops after the image in progress is dropped:
what was complete (drawings, and ``predictions.json`` with ``"interrupted": true``) is kept
and the exit status is 130.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..data import DataError, load_image
from ..engine.sliced import sliced_predict
from ..utils.precision import autocast
from .common import check_out_dir, model_from_checkpoint, precision_for, resolve_device
from .outputs import draw_detections, drawing_paths, save_png
from .slicing import slice_settings_from_args
from .thresholds import describe_score_thr, keep_mask, resolve_score_thr

__all__ = ["IMAGE_SUFFIXES", "expand_inputs", "cmd_predict"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Image files of ``inputs`` (files, folders, globs), each once, in the given order.

    Raises:
        DataError: an input that matches nothing, or no image at all.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif any(ch in item for ch in "*?["):
            files += sorted(
                Path(p) for p in glob.glob(item, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{item}: no such image, folder or glob match")
    if not files:
        raise DataError(f"no images found in {' '.join(inputs)}")
    seen: set[Path] = set()
    unique = []
    for f in files:  # the same file named twice (a folder and a glob) is predicted once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _record(path: Path, det: dict, score_thr, class_names, drawing: Path | None) -> dict:
    keep = keep_mask(det["scores"], det["labels"], score_thr)
    rec = {
        "file": str(path),
        "detections": [
            {
                "bbox_xyxy": [float(c) for c in box],
                "score": float(score),
                "label": int(label),
                "class_name": class_names[int(label)] if class_names else None,
            }
            for box, score, label in zip(det["boxes"][keep], det["scores"][keep], det["labels"][keep])
        ],
    }
    if drawing is not None:
        rec["drawing"] = str(drawing)
    return rec


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``predict``; returns the exit status (0, or 130 after Ctrl-C)."""
    from ..evaluation import write_json_atomic

    out_dir = check_out_dir(args.out_dir, "--out-dir")
    slicing = slice_settings_from_args(args)
    files = expand_inputs(args.inputs)
    json_path = out_dir / "predictions.json"
    if json_path.resolve() in {f.resolve() for f in files}:  # only reachable with an odd glob
        raise DataError(f"{json_path}: is one of the inputs; pick another --out-dir")
    meta: dict = {}
    model = model_from_checkpoint(args.checkpoint, meta_out=meta)
    score_thr = resolve_score_thr(args.score_thr, model.class_names or [], meta, args.checkpoint)
    device = resolve_device(args.device)
    model.to(device).eval()
    precision = precision_for(args, model, device)
    above = describe_score_thr(score_thr, model.class_names or [])
    if not isinstance(score_thr, float) or precision != "fp32":
        print(f"precision {precision}; keeping detections {above}")
    if slicing is not None:
        print(slicing.describe())
    drawings = drawing_paths(files, out_dir) if not args.no_draw else [None] * len(files)
    records: list[dict] = []
    skipped: list[dict] = []
    interrupted = False
    try:
        for path, drawing in zip(files, drawings):
            try:
                image = load_image(path)  # raises DataError naming the file
            except DataError as exc:
                if not args.skip_bad_images:
                    raise DataError(f"{exc} (pass --skip-bad-images to skip such files)") from None
                skipped.append({"file": str(path), "error": str(exc)})
                print(f"{path}: skipped (cannot read the image)")
                continue
            with torch.no_grad(), autocast(precision, device):
                if slicing is not None:
                    det = sliced_predict(model, image.to(device), **slicing.kwargs())
                else:
                    (det,) = model([image.to(device).float()])
            det = {k: v.cpu() for k, v in det.items()}
            if drawing is not None:
                save_png(draw_detections(image, det, model.class_names, score_thr), drawing)
            records.append(_record(path, det, score_thr, model.class_names, drawing))
            count = len(records[-1]["detections"])
            print(f"{path}: {count} detections {above if isinstance(score_thr, float) else 'kept'}")
    except KeyboardInterrupt:
        interrupted = True
    result: dict = {"class_names": model.class_names, "precision": precision, "images": records}
    if not isinstance(score_thr, float):
        result["score_thr_per_class"] = dict(
            zip(model.class_names or [], [None if t == float("inf") else t for t in score_thr])
        )
    if skipped:
        result["skipped_files"] = skipped
    if interrupted:
        result["interrupted"] = True
    write_json_atomic(json_path, result)
    if skipped:
        names = ", ".join(Path(s["file"]).name for s in skipped[:5]) + (", …" if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} bad images: {names}")
    if interrupted:
        print(
            f"varifocal predict: interrupted after {len(records)} of {len(files)} images; "
            f"{json_path} holds the finished ones",
            file=sys.stderr,
        )
        return 130
    print(f"wrote {json_path}")
    return 0
