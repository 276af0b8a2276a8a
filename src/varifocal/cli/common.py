"""Shared pieces of the ``varifocal`` command: argument types, output-path checks, devices and
rebuilding a model from a checkpoint.

Every check here fails with one line that names the argument or file and the fix: argument
types raise ``argparse.ArgumentTypeError`` (argparse turns it into a one-line usage error),
the others :class:`UsageError` or :class:`~varifocal.checkpoint.CheckpointError` (exit 2).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_state_into, read_checkpoint
from ..models.zoo import build_model, list_models

__all__ = [
    "UsageError",
    "probability",
    "non_negative_int",
    "device_name",
    "resolve_device",
    "check_out_dir",
    "check_out_file",
    "unknown_model_hint",
    "model_from_checkpoint",
    "model_and_kwargs_from_checkpoint",
]


class UsageError(ValueError):
    """A bad argument or output path; the message is one line naming it and the fix (exit 2)."""


# ------------------------------------------------------------------------------ argument types
def probability(text: str) -> float:
    """argparse type: a finite float in [0, 1] (score thresholds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a finite number in [0, 1], got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (image counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def device_name(text: str) -> str:
    """argparse type: a torch device string that exists here (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text}: no CUDA GPU is available to this torch {torch.__version__}; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0 … "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: unsupported device type {dev.type!r}; use cpu, cuda or cuda:N")
    return text


def resolve_device(name: str | None) -> torch.device:
    """``--device`` (already checked by :func:`device_name`), or CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------ output paths
def check_out_dir(path: str | os.PathLike, what: str) -> Path:
    """Fail early, with one line, if folder ``path`` cannot be created or written. Creates nothing.

    Raises:
        UsageError: ``path`` (or a parent) is a file, or the nearest existing parent is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path}: is a file, not a folder; pass a folder path")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{what} {path}: {ancestor} is a file, so the folder cannot be created; pick another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {ancestor} is not writable; pick a folder you can write to")
    return path


def check_out_file(path: str | os.PathLike, what: str) -> Path:
    """Fail early, with one line, if file ``path`` cannot be written. Creates nothing.

    Raises:
        UsageError: ``path`` is a folder, its folder cannot be created, or it is read-only.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path}: is a folder; give a file name, e.g. {path / 'model.pth'}")
    check_out_dir(path.parent if str(path.parent) else Path("."), f"{what} {path}: its folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{what} {path}: the file is read-only; pick another output file")
    return path


# ------------------------------------------------------------------------------ models
def unknown_model_hint(name: str) -> str:
    """``"did you mean …?"`` (or the list of names) for a model name that is not in the zoo."""
    close = difflib.get_close_matches(str(name), list_models(), n=3)
    return f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(list_models())}"


def model_and_kwargs_from_checkpoint(
    path: str | os.PathLike, overrides: dict | None = None, meta_out: dict | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild and load the model stored in a varifocal checkpoint (name + kwargs inside).

    Returns:
        ``(model, stored builder kwargs)``; ``overrides`` (builder kwargs; ``test_cfg`` is merged
        field by field over the stored one) win over the stored kwargs. ``meta_out``, when
        given, receives the checkpoint's ``meta`` (e.g. ``best_score_thr``).

    Raises:
        CheckpointError: unreadable file, no model name, a model name this version does not
            have, or a stored builder argument it does not know (one line naming the file).
    """
    from .. import __version__

    ckpt = read_checkpoint(path)
    if ckpt["format"] != "varifocal" or not ckpt["model_name"]:
        raise CheckpointError(f"{path}: not a varifocal checkpoint with a model name; pass a config with model.name")
    name = ckpt["model_name"]
    if name not in list_models():
        raise CheckpointError(
            f"{path}: model {name!r} is not in varifocal {__version__} ({unknown_model_hint(name)}); "
            "use the varifocal version that wrote it"
        )
    stored = dict(ckpt["model_kwargs"])
    if meta_out is not None and isinstance(ckpt["raw"].get("meta"), dict):
        meta_out.update(ckpt["raw"]["meta"])
    kwargs = dict(stored)
    overrides = dict(overrides or {})
    test_cfg = {**dict(kwargs.get("test_cfg") or {}), **dict(overrides.pop("test_cfg", None) or {})}
    kwargs.update(overrides)
    if test_cfg:
        kwargs["test_cfg"] = test_cfg
    try:
        model = build_model(name, **kwargs)
    except TypeError as exc:
        match = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if not match:
            raise
        raise CheckpointError(
            f"{path}: stored builder argument {match.group(1)!r} of {name} is not known to varifocal "
            f"{__version__}; use the version that wrote the checkpoint, or re-save it without that argument"
        ) from None
    except ValueError as exc:  # e.g. a stored test_cfg value out of range
        raise CheckpointError(f"{path}: cannot rebuild {name} from its stored arguments ({exc})") from None
    load_state_into(model, ckpt, path)
    return model, stored


def model_from_checkpoint(
    path: str | os.PathLike, overrides: dict | None = None, meta_out: dict | None = None
) -> torch.nn.Module:
    """Rebuild and load the model stored in a varifocal checkpoint (name + kwargs inside);
    ``meta_out`` as in :func:`model_and_kwargs_from_checkpoint`.

    Raises:
        CheckpointError: see :func:`model_and_kwargs_from_checkpoint`.
    """
    return model_and_kwargs_from_checkpoint(path, overrides, meta_out)[0]


# ------------------------------------------------------------------------------ precision
def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision {auto,fp32,bf16,fp16}`` (issue 12; :mod:`varifocal.utils.precision`)."""
    from ..utils.precision import PRECISIONS

    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="compute precision of the model: fp32; bf16 (autocast, channels-last on the CPU); fp16 (CUDA); "
        "auto = bf16 on a CPU with bfloat16 matrix units (AMX), fp32 elsewhere ('varifocal info' says which)",
    )


def precision_for(args: argparse.Namespace, model: torch.nn.Module, device: torch.device) -> str:
    """The resolved ``--precision`` for ``device``, with ``model`` put in its layout.

    Raises:
        UsageError: a precision the device cannot run (e.g. fp16 on the CPU).
    """
    from ..utils.precision import prepare_model, resolve_precision

    try:
        precision = resolve_precision(getattr(args, "precision", "auto"), device)
    except ValueError as exc:
        raise UsageError(f"--precision: {exc}") from None
    prepare_model(model, precision, device, inference=True)
    return precision
