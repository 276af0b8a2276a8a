"""Training / test transforms on ``(image, target, meta)`` triples (spec §6.1 items 4-5, §6.3).

Every transform is a callable ``(image, target, meta) -> (image, target, meta)``:

* ``image``: ``[3, H, W]`` tensor, RGB 0-255 (uint8 stays uint8, float stays float);
* ``target``: dict with ``boxes`` float32 ``[K, 4]`` xyxy in the current image's pixels and
  ``labels`` int64 ``[K]`` (other keys pass through);
* ``meta``: dict with ``ori_shape`` ``(h, w)``, ``img_shape`` ``(h, w)``, ``scale_factor``
  ``(w_scale, h_scale)`` (current size / original size), ``flip`` (bool).

Randomness: a transform built with ``generator=None`` (the default) draws from torch's global
CPU generator. The datasets in :mod:`varifocal.data.base` reseed that generator from
``(seed, epoch, index)`` around each sample's transforms when they are given a ``seed``, which
makes every draw reproducible, independent of workers and resume point. Pass an explicit
``torch.Generator`` only to drive a transform by hand (tests, demos). Python's ``random`` and
numpy are never used.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.preprocess import keep_ratio_size

__all__ = ["Compose", "Resize", "RandomHorizontalFlip", "build_train_transforms", "build_test_transforms"]

Triple = tuple[Tensor, dict[str, Any], dict[str, Any]]


def _check_scale(scale: Sequence[int], what: str) -> tuple[int, int]:
    try:
        values = tuple(int(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two positive integers (long, short), got {scale!r}") from None
    if len(values) != 2 or min(values) <= 0 or any(v != s for v, s in zip(values, scale)):
        raise ValueError(f"{what} must be two positive integers (long, short), got {tuple(scale)}")
    return values  # type: ignore[return-value]


class Compose:
    """Apply transforms in order.

    Args:
        transforms: callables ``(image, target, meta) -> (image, target, meta)``.
    """

    def __init__(self, transforms: Sequence[Callable[..., Triple]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, target: dict[str, Any], meta: dict[str, Any]) -> Triple:
        for t in self.transforms:
            image, target, meta = t(image, target, meta)
        return image, target, meta

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Resize:
    """Keep-ratio resize (MMDetection 2.x ``Resize(keep_ratio=True)``, spec §6.1 item 4, §6.3).

    The new size is :func:`varifocal.models.preprocess.keep_ratio_size` of the target scale;
    the image is resized with ``F.interpolate(mode='bilinear', align_corners=False)`` (no
    antialias); a uint8 image is rounded back to uint8. Boxes are multiplied by
    ``(w_scale, h_scale, w_scale, h_scale)`` with ``w_scale = new_w / w`` and
    ``h_scale = new_h / h``, then clipped to ``[0, new_w] x [0, new_h]``.
    ``meta['img_shape']`` becomes ``(new_h, new_w)`` and ``meta['scale_factor']`` the size
    relative to ``meta['ori_shape']``.

    Args:
        scale: ``(long_edge, short_edge)`` used when ``multiscale_mode`` is ``None``.
        multiscale_mode: ``None`` (always ``scale``); ``'value'``: one of ``scales``, uniformly;
            ``'range'``: MMDetection's ``random_sample``: long edge a uniform integer in
            ``[min, max]`` of the scales' long edges and short edge a uniform integer in
            ``[min, max]`` of their short edges. With ``[(1333, 480), (1333, 960)]`` the long
            edge is 1333 and the short edge is uniform in ``[480, 960]``.
        scales: the candidate ``(long, short)`` pairs of the multiscale modes (at least one for
            ``'value'``, at least two for ``'range'``).
        generator: optional ``torch.Generator`` for the draws (default: global CPU RNG).
        keep_ratio: ``False`` warps (stretches) the image to exactly ``(width, height)`` =
            the drawn scale as given, the SSD/RefineDet resize (``refinedet_spec.md`` §1).

    Raises:
        ValueError: bad mode or scales.
    """

    def __init__(
        self,
        scale: Sequence[int] = (1333, 800),
        multiscale_mode: Literal["value", "range"] | None = None,
        scales: Sequence[Sequence[int]] | None = None,
        generator: torch.Generator | None = None,
        keep_ratio: bool = True,
    ) -> None:
        if multiscale_mode not in (None, "value", "range"):
            raise ValueError(f"multiscale_mode must be None, 'value' or 'range', got {multiscale_mode!r}")
        self.scale = _check_scale(scale, "scale")
        self.multiscale_mode = multiscale_mode
        self.scales = [_check_scale(s, "scales entry") for s in (scales or [])]
        if multiscale_mode == "value" and not self.scales:
            raise ValueError("multiscale_mode='value' needs at least one entry in scales")
        if multiscale_mode == "range" and len(self.scales) < 2:
            raise ValueError(f"multiscale_mode='range' needs at least two scales, got {self.scales}")
        self.generator = generator
        self.keep_ratio = bool(keep_ratio)

    def __repr__(self) -> str:
        if self.multiscale_mode is None:
            return f"Resize(scale={self.scale})" if self.keep_ratio else f"Resize(scale={self.scale}, keep_ratio=False)"
        return f"Resize(multiscale_mode={self.multiscale_mode!r}, scales={self.scales})"

    def _randint(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]`` (both inclusive)."""
        return int(torch.randint(low, high + 1, (1,), generator=self.generator).item())

    def sample_scale(self) -> tuple[int, int]:
        """Draw the ``(long_edge, short_edge)`` target for one image."""
        if self.multiscale_mode is None:
            return self.scale
        if self.multiscale_mode == "value":
            return self.scales[self._randint(0, len(self.scales) - 1)]
        longs = [max(s) for s in self.scales]
        shorts = [min(s) for s in self.scales]
        return self._randint(min(longs), max(longs)), self._randint(min(shorts), max(shorts))

    def __call__(self, image: Tensor, target: dict[str, Any], meta: dict[str, Any]) -> Triple:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        scale = self.sample_scale()
        new_w, new_h = keep_ratio_size(width, height, scale) if self.keep_ratio else scale
        if (new_w, new_h) != (width, height):
            resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
            if image.dtype == torch.uint8:
                resized = resized.round_().clamp_(0, 255).to(torch.uint8)
            image = resized
        w_scale, h_scale = new_w / width, new_h / height
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None:
            boxes = boxes * boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
            target["boxes"] = boxes
        meta = dict(meta)
        ori_h, ori_w = meta.get("ori_shape", (height, width))
        meta["ori_shape"] = (ori_h, ori_w)
        meta["img_shape"] = (new_h, new_w)
        meta["scale_factor"] = (new_w / ori_w, new_h / ori_h)
        return image, target, meta


class RandomHorizontalFlip:
    """Flip horizontally with probability ``p`` (spec §6.1 item 5).

    Boxes become ``x1' = W - x2``, ``x2' = W - x1`` (``W`` = current image width, no "-1").
    ``meta['flip']`` is toggled when the image is flipped.

    Args:
        p: flip probability in ``[0, 1]``.
        generator: optional ``torch.Generator`` (default: global CPU RNG).

    Raises:
        ValueError: ``p`` outside ``[0, 1]``.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)
        self.generator = generator

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"

    def __call__(self, image: Tensor, target: dict[str, Any], meta: dict[str, Any]) -> Triple:
        # Always draw, so that the random stream does not depend on p.
        draw = float(torch.rand((1,), generator=self.generator).item())
        if draw >= self.p:
            return image, target, meta
        width = int(image.shape[-1])
        image = image.flip(-1)
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None:
            flipped = boxes.clone()
            flipped[:, 0] = width - boxes[:, 2]
            flipped[:, 2] = width - boxes[:, 0]
            target["boxes"] = flipped
        meta = dict(meta)
        meta["flip"] = not meta.get("flip", False)
        return image, target, meta


def build_train_transforms(
    scale: Sequence[int] = (1333, 800),
    multiscale_mode: Literal["value", "range"] | None = None,
    scales: Sequence[Sequence[int]] | None = None,
    flip_prob: float = 0.5,
    keep_ratio: bool = True,
) -> Compose:
    """The training pipeline of spec §6.1: keep-ratio ``Resize`` then ``RandomHorizontalFlip``;
    with ``keep_ratio=False`` the resize warps to the drawn scale read as ``(width, height)``
    (``refinedet_spec.md`` §1).

    Normalisation and padding are not here: they belong to the model's
    ``Preprocessor.pad_batch``.
    """
    transforms: list[Callable[..., Triple]] = [Resize(scale, multiscale_mode, scales, keep_ratio=keep_ratio)]
    if flip_prob > 0:
        transforms.append(RandomHorizontalFlip(flip_prob))
    return Compose(transforms)


def build_test_transforms(scale: Sequence[int] = (1333, 800), keep_ratio: bool = True) -> Compose:
    """The test pipeline of spec §6.1: keep-ratio ``Resize`` only (no flip); with
    ``keep_ratio=False`` a warp to ``scale = (width, height)`` (``refinedet_spec.md`` §1, §10)."""
    return Compose([Resize(scale, keep_ratio=keep_ratio)])
