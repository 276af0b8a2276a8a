"""The sliced-inference options of ``varifocal predict`` and ``val`` (issue 16):
``--tiles N|WxH``, ``--overlap``, ``--full-image``, ``--merge {nms,nmm}``, ``--merge-thr`` and
``--merge-metric {ios,iou}`` (:mod:`varifocal.engine.sliced`)."""

from __future__ import annotations

import argparse
import math
import re

from ..engine.sliced import SliceSettings
from .common import UsageError

__all__ = ["tile_size", "overlap_fraction", "add_slicing_arguments", "slice_settings_from_args"]


def tile_size(text: str) -> tuple[int, int]:
    """argparse type: ``640`` (a square slice) or ``640x480`` (width × height), positive pixels."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a slice size N or WxH in pixels (e.g. 640 or 640x480), got {text!r}"
        )
    w = int(match.group(1))
    h = int(match.group(2)) if match.group(2) is not None else w
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"slice width and height must be positive, got {text!r}")
    return w, h


def overlap_fraction(text: str) -> float:
    """argparse type: a finite float in [0, 1) (the slice overlap)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def add_slicing_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sliced-inference options to a ``predict`` or ``val`` parser."""
    group = parser.add_argument_group("sliced inference (large images)")
    group.add_argument(
        "--tiles", type=tile_size, default=None, metavar="N|WxH", help="predict slice by slice with slices of this size"
    )
    group.add_argument("--overlap", type=overlap_fraction, default=None, help="slice overlap in [0, 1) (default 0.2)")
    group.add_argument(
        "--full-image", action="store_true", help="also predict on the whole image at the test scale, then merge"
    )
    group.add_argument(
        "--merge", choices=("nms", "nmm"), default=None, help="merge slices by class-aware NMS (default) or SAHI's NMM"
    )
    group.add_argument(
        "--merge-thr",
        type=_threshold,
        default=None,
        help="merge threshold in (0, 1] (default: NMS IoU of the model; 0.5 for nmm)",
    )
    group.add_argument("--merge-metric", choices=("ios", "iou"), default=None, help="match metric of nmm (default ios)")


def slice_settings_from_args(args: argparse.Namespace, batch_size: int = 4) -> SliceSettings | None:
    """The :class:`SliceSettings` of the parsed options, or ``None`` without ``--tiles``.

    Raises:
        UsageError: a slicing option given without ``--tiles``.
    """
    if getattr(args, "tiles", None) is None:
        given = [
            flag
            for flag, value in (
                ("--overlap", args.overlap),
                ("--full-image", args.full_image or None),
                ("--merge", args.merge),
                ("--merge-thr", args.merge_thr),
                ("--merge-metric", args.merge_metric),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"{given[0]} needs --tiles N (or WxH): it only applies to sliced inference")
        return None
    return SliceSettings(
        tile_size=args.tiles,
        overlap=0.2 if args.overlap is None else args.overlap,
        full_image=bool(args.full_image),
        merge=args.merge or "nms",
        merge_thr=args.merge_thr,
        merge_metric=args.merge_metric or "ios",
        batch_size=max(1, int(batch_size)),
    )
