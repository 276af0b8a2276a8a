"""Image preprocessing: keep-ratio resize, normalisation and padding (spec §6.1).

This is the one place where images are turned into the network's input tensor. A detector
holds an instance as ``model.preprocessor``; replace or reconfigure it to change the test
scale or the normalisation. Nothing else in the model resizes or normalises.

Per-image metadata ("metas") are plain dicts with MMDetection's field names:

- ``ori_shape``: ``(h, w)`` of the image as given, pixels.
- ``img_shape``: ``(h, w)`` after the resize, before any padding.
- ``scale_factor``: ``(w_scale, h_scale)`` = new size / original size, per axis.
- ``pad_shape``: ``(h, w)`` of ``img_shape`` rounded up to ``size_divisor``.
- ``batch_input_shape``: ``(h, w)`` of the padded batch tensor.
- ``flip``: whether the image was flipped horizontally (training augmentation only).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["keep_ratio_size", "Preprocessor", "IMAGENET_MEAN", "IMAGENET_STD"]

#: ImageNet statistics on 0-255 RGB, as used by every MMDetection ResNet config (spec §6.1).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def keep_ratio_size(width: int, height: int, scale: Sequence[int]) -> tuple[int, int]:
    """Size of an image after MMDetection's keep-ratio resize (spec §6.1 item 4).

    The factor is ``min(max(scale) / long_side, min(scale) / short_side)`` and each side is
    rounded as ``int(side * factor + 0.5)``. Reproduces
    ``../shared/golden/vfnet_r50_coco80/resize_cases.json``.

    Args:
        width, height: original image size in pixels.
        scale: ``(long_edge, short_edge)`` target, e.g. ``(1333, 800)``; order does not matter.

    Returns:
        ``(new_width, new_height)`` in pixels.

    Raises:
        ValueError: if a size or a scale entry is not positive.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if len(scale) != 2 or min(scale) <= 0:
        raise ValueError(f"scale must be two positive edges (long, short), got {tuple(scale)}")
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(width, height), short_edge / min(width, height))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


class Preprocessor(nn.Module):
    """Resize (keep ratio), normalise and pad a list of images into one batch tensor.

    Args:
        scale: ``(long_edge, short_edge)`` of the keep-ratio resize; ``None`` keeps the size.
        mean, std: per-channel statistics on the 0-255 scale, in the network's channel order.
        size_divisor: each image is zero-padded (after normalisation) at the bottom/right to a
            multiple of this; the batch is then padded to its largest image.
        pad_value: value of the padded pixels after normalisation (0, spec §6.1 item 7).
        channel_order: ``'rgb'`` or ``'bgr'``: the order the network takes. Inputs are always
            RGB; ``'bgr'`` flips them before normalising (MMDetection's caffe-style configs with
            ``bgr_to_rgb=False``, e.g. FCOS, zoo_spec §1.4).
        keep_ratio: ``False`` warps every image to exactly ``scale`` read as ``(width, height)``
            (SSD / RefineDet, ``refinedet_spec.md`` §1); ``scale_factor`` then differs per axis.

    Inputs are ``[3, H, W]`` RGB tensors on the 0-255 scale (float or uint8), of any size.
    The resize is bilinear with half-pixel centres (OpenCV's ``INTER_LINEAR``), no antialias.
    """

    def __init__(
        self,
        scale: Sequence[int] | None = (1333, 800),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        size_divisor: int = 32,
        pad_value: float = 0.0,
        channel_order: str = "rgb",
        keep_ratio: bool = True,
    ) -> None:
        super().__init__()
        self.keep_ratio = bool(keep_ratio)
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.channel_order = channel_order
        self.scale = tuple(scale) if scale is not None else None
        self.size_divisor = int(size_divisor)
        self.pad_value = float(pad_value)
        # Non-persistent buffers: they follow .to(device) but never enter a checkpoint.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale}, mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}, "
            f"size_divisor={self.size_divisor}, channel_order={self.channel_order!r}"
            + ("" if self.keep_ratio else ", keep_ratio=False")
        )

    @staticmethod
    def _check_image(image: Tensor) -> None:
        if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"expected an RGB image tensor of shape [3, H, W], got {shape}")

    def resize(self, image: Tensor, boxes: Tensor | None = None) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
        """Keep-ratio resize of one image and its boxes.

        Args:
            image: ``[3, H, W]`` RGB, 0-255.
            boxes: optional ``[K, 4]`` xyxy in original-image pixels.

        Returns:
            ``(image [3, h, w] float32, boxes [K, 4] xyxy in resized pixels, clipped to the
            image, meta)`` with ``ori_shape``, ``img_shape`` and ``scale_factor`` set.

        Raises:
            ValueError: if ``image`` is not ``[3, H, W]``.
        """
        self._check_image(image)
        height, width = int(image.shape[1]), int(image.shape[2])
        image = image.float()
        if self.scale is None:
            new_w, new_h = width, height
        elif self.keep_ratio:
            new_w, new_h = keep_ratio_size(width, height, self.scale)
        else:
            new_w, new_h = int(self.scale[0]), int(self.scale[1])
        if (new_w, new_h) != (width, height):
            image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
        w_scale, h_scale = new_w / width, new_h / height
        if boxes is not None:
            factors = boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
            boxes = boxes * factors
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
        meta = {"ori_shape": (height, width), "img_shape": (new_h, new_w), "scale_factor": (w_scale, h_scale)}
        return image, boxes, meta

    def pad_batch(
        self, images: Sequence[Tensor], metas: Sequence[dict[str, Any]]
    ) -> tuple[Tensor, list[dict[str, Any]]]:
        """Normalise already-resized images and pad them into one batch.

        Args:
            images: N tensors ``[3, h_i, w_i]`` RGB 0-255 (already resized).
            metas: one dict per image (``img_shape`` etc.); copied, then ``pad_shape`` and
                ``batch_input_shape`` are added.

        Returns:
            ``(batch [N, 3, H, W] float32, metas)`` where H, W are multiples of
            ``size_divisor`` and padded pixels equal ``pad_value``.

        Raises:
            ValueError: if the list is empty or an image is not ``[3, H, W]``.
        """
        if len(images) == 0:
            raise ValueError("cannot build a batch from an empty list of images")
        div = self.size_divisor
        pad_shapes = []
        for image in images:
            self._check_image(image)
            h, w = int(image.shape[1]), int(image.shape[2])
            pad_shapes.append((int(math.ceil(h / div)) * div, int(math.ceil(w / div)) * div))
        batch_h = max(s[0] for s in pad_shapes)
        batch_w = max(s[1] for s in pad_shapes)
        device = images[0].device
        batch = torch.full((len(images), 3, batch_h, batch_w), self.pad_value, dtype=torch.float32, device=device)
        mean, std = self.mean.to(device), self.std.to(device)
        out_metas = []
        for i, (image, meta) in enumerate(zip(images, metas)):
            h, w = int(image.shape[1]), int(image.shape[2])
            pixels = image.float() if self.channel_order == "rgb" else image.float().flip(0)
            batch[i, :, :h, :w] = (pixels - mean) / std
            meta = dict(meta)
            meta.setdefault("img_shape", (h, w))
            meta.setdefault("ori_shape", (h, w))
            meta.setdefault("scale_factor", (1.0, 1.0))
            meta["pad_shape"] = pad_shapes[i]
            meta["batch_input_shape"] = (batch_h, batch_w)
            out_metas.append(meta)
        return batch, out_metas

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[Tensor, list[dict[str, Any]], list[dict[str, Tensor]] | None]:
        """Resize, normalise and pad ``images`` (and resize the boxes of ``targets``).

        Args:
            images: N tensors ``[3, H_i, W_i]``, RGB, 0-255, any sizes.
            targets: optional N dicts with ``boxes`` ``[K_i, 4]`` xyxy in original pixels and
                ``labels`` ``[K_i]``.

        Returns:
            ``(batch [N, 3, H, W], metas, targets)``, the targets' boxes now in resized pixels.
        """
        resized, metas, new_targets = [], [], [] if targets is not None else None
        for i, image in enumerate(images):
            boxes = targets[i]["boxes"] if targets is not None else None
            image, boxes, meta = self.resize(image, boxes)
            resized.append(image)
            metas.append(meta)
            if new_targets is not None:
                target = dict(targets[i])
                target["boxes"] = boxes
                new_targets.append(target)
        batch, metas = self.pad_batch(resized, metas)
        return batch, metas, new_targets
