"""Image decoding: any Pillow-readable file to an 8-bit RGB tensor (spec §6.1).

Images are decoded with Pillow, EXIF orientation applied, and converted to 8-bit RGB (see
:func:`load_image`). A corrupt, truncated or missing image raises :class:`DataError`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor

from .errors import DataError, _one_line

__all__ = ["load_image"]

logger = logging.getLogger("varifocal.data")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# EXIF orientations 5-8 swap width and height.
_EXIF_ORIENTATION_TAG = 0x0112
_warned_truncated = False


def load_image(path: str | os.PathLike) -> Tensor:
    """Decode an image file into an 8-bit RGB tensor.

    EXIF orientation is applied (``ImageOps.exif_transpose``). Every mode becomes 8-bit RGB:
    grayscale is replicated to three channels, RGBA/LA drop alpha, palette images go through
    RGBA, 16-bit grayscale (``I;16*`` and ``I``, values 0-65535) keeps the high byte
    (``value >> 8``, as OpenCV does), float (``F``) is clipped to 0-255 and rounded.

    Truncated files are errors: this relies on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` being
    ``False`` (Pillow's default; this module never changes it) and forces the full decode with
    ``.load()``.

    Args:
        path: image file.

    Returns:
        uint8 tensor ``[3, H, W]``, RGB.

    Raises:
        DataError: the file is missing, unreadable, not an image, corrupt or truncated; the
            message names the file.
    """
    global _warned_truncated
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated:
        _warned_truncated = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code): truncated images load silently"
        )
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            array = _to_rgb8(im)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, FileNotFoundError) else "file not found"
        raise DataError(_one_line(f"{path}: cannot read image ({reason})")) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB array of a decoded Pillow image, any mode."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.array(im).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.array(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _image_size_from_header(path: str) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, read from the header only."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:
        raise DataError(_one_line(f"{path}: cannot read image size ({type(exc).__name__}: {exc})")) from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return int(width), int(height)
