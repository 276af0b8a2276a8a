"""The precision setting, one word everywhere: ``fp32``, ``bf16``, ``fp16`` or ``auto`` (issue 12).

What runs in which dtype:

* ``fp32``: everything in float32 (the reference).
* ``bf16``: the model's forward under ``torch.autocast(device, dtype=torch.bfloat16)``. Convs,
  linear layers and the star / DCN tap GEMMs run in bfloat16; the star conv's sample positions
  and bilinear weights stay float32 (``models/layers/star_deform_conv.py``); post-processing
  (decoding, NMS) and the losses run in float32 (the heads cast their outputs up). On the CPU
  the model is also put in channels-last memory layout, which oneDNN's bf16 kernels want.
* ``fp16``: CUDA only (``torch.autocast('cuda', dtype=torch.float16)``; training adds a grad
  scaler).
* ``auto``: ``bf16`` on a CPU with bfloat16 *matrix* units (Intel AMX), ``fp32`` on any other
  CPU and on CUDA (opt in there with ``bf16`` / ``fp16``); ``VARIFOCAL_PRECISION`` pins it.

Why AMX and not AVX512-BF16: on a CPU with AVX512-BF16 dot products but no AMX tiles, oneDNN's
bf16 GEMM is *slower* than its float32 one (measured on this project's CI host, a Sapphire Rapids
VM without AMX exposed: 2048³ matmul 193 GFLOP/s in bf16 against 317 in float32; a P3-sized 3×3
conv 92 ms against 56 ms). With AMX the same conv is ~2.9× faster in bf16 (issue 12). So
``auto`` only picks bf16 where it is the faster choice.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "autocast",
    "cpu_has_bf16_matrix_units",
    "default_precision",
    "prepare_model",
    "resolve_precision",
]

#: The accepted values of ``--precision`` / ``train.precision`` / ``eval.precision``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16_matrix_units() -> bool:
    """True when this CPU has bfloat16 matrix units (Intel AMX tiles, as torch reports them)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - a private probe: any failure means "not known to be there"
        return False


def default_precision(device: torch.device | str) -> str:
    """What ``auto`` means on ``device``: ``'bf16'`` on a CPU with AMX, else ``'fp32'``; the
    environment variable ``VARIFOCAL_PRECISION`` (``fp32``, ``bf16``, ``fp16``) overrides it
    (e.g. to pin a container's default, or the test suite's).

    Raises:
        ValueError: ``VARIFOCAL_PRECISION`` holds another value.
    """
    device = torch.device(device)
    pinned = os.environ.get("VARIFOCAL_PRECISION", "").strip()
    if pinned:
        if pinned not in PRECISIONS or pinned == "auto":
            raise ValueError(f"VARIFOCAL_PRECISION must be fp32, bf16 or fp16, got {pinned!r}")
        return pinned
    if device.type == "cpu" and cpu_has_bf16_matrix_units():
        return "bf16"
    return "fp32"


def resolve_precision(precision: str | None, device: torch.device | str) -> str:
    """``precision`` checked against ``device`` (``None`` / ``'auto'`` → :func:`default_precision`).

    Raises:
        ValueError: an unknown name, ``fp16`` on a CPU, or ``bf16`` on a CUDA device without
            bfloat16 support (one line naming the fix).
    """
    device = torch.device(device)
    if precision is None or precision == "auto":
        return default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16")
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """The autocast region of a resolved ``precision`` on ``device`` (nothing for ``fp32``)."""
    device = torch.device(device)
    if precision == "fp32":
        yield
        return
    if precision not in _DTYPES:
        raise ValueError(f"autocast needs a resolved precision (fp32, bf16, fp16), got {precision!r}")
    with torch.autocast(device.type, dtype=_DTYPES[precision]):
        yield


def prepare_model(model: nn.Module, precision: str, device: torch.device | str, inference: bool = False) -> nn.Module:
    """Put ``model`` in the memory layout it runs fastest in on ``device``: channels-last on the
    CPU for bf16 (oneDNN's bf16 convs) and, with ``inference``, for every precision (VFNet-R50 at
    1333×800 in float32: 2176 ms against 2907 contiguous, ``varifocal benchmark``); unchanged
    otherwise (float32 training keeps the contiguous layout: its backward was not measured in
    channels-last). Returns ``model`` (changed in place)."""
    if torch.device(device).type == "cpu" and (precision == "bf16" or inference):
        model.to(memory_format=torch.channels_last)
    return model
