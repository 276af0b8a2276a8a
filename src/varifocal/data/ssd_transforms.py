"""The SSD / RefineDet training augmentation as ``(image, target, meta)`` transforms
(``refinedet_spec.md`` §11, §17 item 18).

The pipeline of :func:`build_ssd_train_transforms` runs, for every image:
:class:`PhotometricDistort` → :class:`Expand` (zoom out onto a mean-coloured canvas) →
:class:`MinIoURandomCrop` (SSD's batch sampler, centre-in-crop rule) → :class:`WarpResize`
(stretch to the fixed network size, random interpolation) →
:class:`~varifocal.data.transforms.RandomHorizontalFlip`. Mean subtraction stays in the model's
``Preprocessor``.

The contract is the one of :mod:`varifocal.data.transforms`: ``image`` ``[3, H, W]`` RGB 0-255
(uint8 stays uint8, a float image stays float); ``target['boxes']`` float32 ``[K, 4]`` xyxy
pixels, ``target['labels']`` int64 ``[K]``; ``meta`` with ``ori_shape``, ``img_shape``,
``scale_factor``, ``flip``. Randomness comes from torch's global CPU generator unless a
``torch.Generator`` is given; every transform makes a fixed number of draws per call
(whatever its probabilities), except the crop's final choice among its candidates.

Decisions and deviations from the Caffe reference (``sfzhang15/RefineDet``):

* Photometric distortion runs in floating point on RGB: each op's result is clamped to
  ``[0, 255]`` (Caffe's uint8 saturation) but not rounded, and a uint8 image is rounded back
  once at the end. HSV is computed exactly in float (Caffe goes through OpenCV's uint8 HSV,
  with H quantised to 2° steps). The hue shift wraps around the circle (Caffe adds the shift to
  the uint8 H channel, which saturates at 0 for negative shifts of reds).
* Crops are whole pixels: the normalised crop ``(x, y, w, h)`` becomes
  ``left = floor(x·W)``, ``top = floor(y·H)``, ``width = max(1, round(w·W))``,
  ``height = max(1, round(h·H))`` (always inside the image), and the IoU constraint is checked
  on that integer crop, so the crop that is used satisfies it (Caffe checks the unrounded box
  and truncates when it cuts).
* On an image without GT boxes the samplers with a minimum IoU cannot be satisfied; the
  whole image and the samplers with only a maximum IoU (sampler (g): any crop) remain, since no
  GT exceeds the maximum (Caffe would keep only the whole image there).
* A chosen crop may keep no GT (as in Caffe: the constraint asks for an overlap, not for a
  centre inside the crop); such a sample has empty boxes.
* The warp interpolation is drawn from ``F.interpolate``'s ``bilinear``, ``area``, ``nearest``
  and ``bicubic`` (OpenCV's linear, area, nearest, cubic); OpenCV's Lanczos4 has no
  ``F.interpolate`` mode and is left out. ``area`` equals OpenCV's INTER_AREA when shrinking
  and is nearest-like when enlarging (OpenCV's is bilinear-like there); ``bicubic`` uses
  ``a = -0.75`` as OpenCV does and is clamped to ``[0, 255]``; no antialiasing.
* ``meta['scale_factor']`` is the true per-axis pixel scale from the original image to the
  output: expansion and cropping leave it unchanged and :class:`WarpResize` multiplies it by
  its own ``new / old`` factors (for an image that is only warped this equals
  :class:`~varifocal.data.transforms.Resize`'s ``new / ori``). After an expansion or a crop the
  output is no longer a rescaled original (there is an offset), so training metas should only
  be read for ``img_shape`` (and the ``pad_shape`` that the ``Preprocessor`` adds).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .transforms import Compose, RandomHorizontalFlip

__all__ = [
    "PhotometricDistort",
    "DistortParams",
    "Expand",
    "MinIoURandomCrop",
    "WarpResize",
    "build_ssd_train_transforms",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "SSD_MEAN_RGB",
    "WARP_INTERPOLATIONS",
]

Triple = tuple[Tensor, dict[str, Any], dict[str, Any]]

SSD_MEAN_RGB = (123.0, 117.0, 104.0)
"""SSD's BGR mean (104, 117, 123) in RGB order: the expansion canvas colour (spec §11 item 2)."""

WARP_INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic")
"""The ``F.interpolate`` modes the training warp draws from (spec §11 item 4, Lanczos4 left out)."""


def _check_prob(p: float, what: str) -> float:
    if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{what} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _check_range(value: Sequence[float], what: str, low: float | None = None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or (low is not None and lo < low):
        bound = f" with low >= {low}" if low is not None else ""
        raise ValueError(f"{what} must be a finite (low, high) pair with low <= high{bound}, got {tuple(value)}")
    return lo, hi


def _check_size(size: Sequence[int], what: str) -> tuple[int, int]:
    try:
        values = tuple(int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two positive integers (width, height), got {size!r}") from None
    if len(values) != 2 or min(values) <= 0 or any(v != s for v, s in zip(values, size)):
        raise ValueError(f"{what} must be two positive integers (width, height), got {tuple(size)}")
    return values  # type: ignore[return-value]


def _restore_dtype(result: Tensor, dtype: torch.dtype) -> Tensor:
    """``result`` (float, 0-255) back to ``dtype``: uint8 is rounded and clamped."""
    if dtype == torch.uint8:
        return result.round_().clamp_(0, 255).to(torch.uint8)
    return result.to(dtype)


# ---- colour ---------------------------------------------------------------------------------


def rgb_to_hsv(image: Tensor) -> Tensor:
    """RGB → HSV on a float ``[3, H, W]`` image (any value scale, e.g. 0-255).

    Returns ``[3, H, W]``: hue in ``[0, 1)`` of the circle (OpenCV's 0-180 H divided by 180),
    saturation ``(max - min) / max`` in ``[0, 1]`` (0 where ``max == 0``) and value ``max``
    (same scale as the input). Gray pixels get hue 0.
    """
    r, g, b = image.unbind(0)
    maxc = image.amax(0)
    minc = image.amin(0)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-12), torch.zeros_like(maxc))
    safe = delta.clamp(min=1e-12)
    h = torch.where(
        maxc == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = torch.remainder(h, 1.0)
    return torch.stack([h, s, maxc])


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV → RGB, the inverse of :func:`rgb_to_hsv` on ``[3, H, W]`` (hue in circles, taken
    modulo 1; saturation in ``[0, 1]``; value in the output's scale)."""
    h, s, v = hsv.unbind(0)
    h6 = torch.remainder(h, 1.0) * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long() % 6
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    # Per sector (0..5): (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
    choices = torch.stack([v, q, p, t])  # indices 0..3
    table = torch.tensor(
        [[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], dtype=torch.long, device=hsv.device
    )
    idx = table[sector]  # [H, W, 3]
    rgb = torch.gather(choices, 0, idx.permute(2, 0, 1))
    return rgb


class DistortParams(NamedTuple):
    """One draw of :class:`PhotometricDistort`: ``order_a`` (brightness, contrast, saturation,
    hue; else brightness, saturation, hue, contrast) and each op's value, ``None`` when skipped:
    brightness δ (0-255 units), contrast and saturation factors, hue δ in OpenCV degrees."""

    order_a: bool
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None


class PhotometricDistort:
    """SSD's random photometric distortion (``refinedet_spec.md`` §11 item 1).

    A coin flip picks order A (brightness, contrast, saturation, hue) or order B (brightness,
    saturation, hue, contrast); each op runs independently with probability ``p``:

    * brightness: ``x + δ``, ``δ ~ U[brightness]`` (0-255 units);
    * contrast: ``x · α``, ``α ~ U[contrast]`` (a plain multiplication, no blend with the mean);
    * saturation: HSV ``S · α``, ``α ~ U[saturation]``, S clamped to ``[0, 1]``;
    * hue: HSV ``H + δ / 180`` circles (modulo 1), ``δ ~ U[hue]`` in OpenCV degrees (OpenCV's
      H runs 0-180, so 18 = 36° = 0.1 circle).

    Each result is clamped to ``[0, 255]``; the image keeps its dtype (uint8 rounded once at the
    end). See the module docstring for the deviations from Caffe's uint8 arithmetic. Nine
    uniform numbers are drawn per call (:meth:`sample_params`), then :meth:`apply` runs.

    Args:
        brightness: ``(low, high)`` of δ, default ``(-32, 32)``.
        contrast: ``(low, high)`` of α, default ``(0.5, 1.5)``, ``low >= 0``.
        saturation: ``(low, high)`` of α, default ``(0.5, 1.5)``, ``low >= 0``.
        hue: ``(low, high)`` of δ in OpenCV degrees, default ``(-18, 18)``.
        p: probability of each op.
        generator: optional ``torch.Generator`` (default: global CPU RNG).

    Raises:
        ValueError: a bad range or probability.
    """

    def __init__(
        self,
        brightness: Sequence[float] = (-32.0, 32.0),
        contrast: Sequence[float] = (0.5, 1.5),
        saturation: Sequence[float] = (0.5, 1.5),
        hue: Sequence[float] = (-18.0, 18.0),
        p: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        self.brightness = _check_range(brightness, "brightness")
        self.contrast = _check_range(contrast, "contrast", low=0.0)
        self.saturation = _check_range(saturation, "saturation", low=0.0)
        self.hue = _check_range(hue, "hue")
        self.p = _check_prob(p, "photometric op probability")
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"PhotometricDistort(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue}, p={self.p})"
        )

    def sample_params(self) -> DistortParams:
        """Draw one image's order and op parameters (nine uniform numbers; ``None``: op skipped)."""
        u = torch.rand((9,), generator=self.generator, dtype=torch.float64).tolist()

        def draw(flag: float, value: float, bounds: tuple[float, float]) -> float | None:
            return bounds[0] + (bounds[1] - bounds[0]) * value if flag < self.p else None

        return DistortParams(
            order_a=u[0] < 0.5,
            brightness=draw(u[1], u[2], self.brightness),
            contrast=draw(u[3], u[4], self.contrast),
            saturation=draw(u[5], u[6], self.saturation),
            hue=draw(u[7], u[8], self.hue),
        )

    @staticmethod
    def apply(image: Tensor, params: DistortParams) -> Tensor:
        """Apply the ops of ``params`` to ``image`` ``[3, H, W]`` (RGB 0-255) in their order;
        the result keeps ``image``'s dtype."""
        if params.brightness is None and params.contrast is None and params.saturation is None and params.hue is None:
            return image
        dtype = image.dtype
        x = image.to(dtype if dtype.is_floating_point else torch.float32)
        if params.brightness is not None:
            x = (x + params.brightness).clamp_(0.0, 255.0)
        if params.order_a and params.contrast is not None:
            x = (x * params.contrast).clamp_(0.0, 255.0)
        if params.saturation is not None or params.hue is not None:  # adjacent in both orders
            hsv = rgb_to_hsv(x)
            if params.saturation is not None:
                hsv[1] = (hsv[1] * params.saturation).clamp_(0.0, 1.0)
            if params.hue is not None:
                hsv[0] = torch.remainder(hsv[0] + params.hue / 180.0, 1.0)
            x = hsv_to_rgb(hsv).clamp_(0.0, 255.0)
        if not params.order_a and params.contrast is not None:
            x = (x * params.contrast).clamp_(0.0, 255.0)
        return _restore_dtype(x, dtype)

    def __call__(self, image: Tensor, target: dict[str, Any], meta: dict[str, Any]) -> Triple:
        return self.apply(image, self.sample_params()), target, meta


# ---- geometry ---------------------------------------------------------------------------------


class Expand:
    """SSD's zoom out (``refinedet_spec.md`` §11 item 2).

    With probability ``p``: ratio ``r ~ U[1, max_ratio]``, a canvas of
    ``(int(r·H), int(r·W))`` pixels filled with ``fill`` and the image pasted at
    ``(top, left) = (floor(U[0, rH - H]), floor(U[0, rW - W]))`` (integers); boxes are shifted
    by ``(left, top)``. ``meta['img_shape']`` becomes the canvas size (``scale_factor`` is
    unchanged: the scale does not change). Four uniform numbers are drawn per call.

    Args:
        fill: RGB canvas colour, 0-255 (default SSD's mean, :data:`SSD_MEAN_RGB`); rounded for
            uint8 images.
        max_ratio: largest expansion ratio, ``>= 1``.
        p: probability of expanding.
        generator: optional ``torch.Generator`` (default: global CPU RNG).

    Raises:
        ValueError: ``fill`` not three values in ``[0, 255]``, ``max_ratio < 1`` or a bad ``p``.
    """

    def __init__(
        self,
        fill: Sequence[float] = SSD_MEAN_RGB,
        max_ratio: float = 4.0,
        p: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        try:
            values = tuple(float(v) for v in fill)
        except (TypeError, ValueError):
            raise ValueError(f"fill must be three RGB values in [0, 255], got {fill!r}") from None
        if len(values) != 3 or not all(0.0 <= v <= 255.0 for v in values):
            raise ValueError(f"fill must be three RGB values in [0, 255], got {tuple(fill)}")
        if not isinstance(max_ratio, (int, float)) or not 1.0 <= float(max_ratio) < math.inf:
            raise ValueError(f"max_ratio must be a finite number >= 1, got {max_ratio!r}")
        self.fill = values
        self.max_ratio = float(max_ratio)
        self.p = _check_prob(p, "expand probability")
        self.generator = generator

    def __repr__(self) -> str:
        return f"Expand(fill={self.fill}, max_ratio={self.max_ratio}, p={self.p})"

    def __call__(self, image: Tensor, target: dict[str, Any], meta: dict[str, Any]) -> Triple:
        u = torch.rand((4,), generator=self.generator, dtype=torch.float64).tolist()
        if u[0] >= self.p:
            return image, target, meta
        height, width = int(image.shape[-2]), int(image.shape[-1])
        ratio = 1.0 + (self.max_ratio - 1.0) * u[1]
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        top = int(math.floor(u[2] * (canvas_h - height)))
        left = int(math.floor(u[3] * (canvas_w - width)))
        fill = torch.tensor(self.fill, dtype=torch.float64)
        if image.dtype == torch.uint8:
            fill = fill.round()
        canvas = fill.to(image.dtype).view(3, 1, 1).expand(3, canvas_h, canvas_w).clone()
        canvas[:, top : top + height, left : left + width] = image
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None:
            target["boxes"] = boxes + boxes.new_tensor([left, top, left, top])
        meta = dict(meta)
        meta["img_shape"] = (canvas_h, canvas_w)
        return canvas, target, meta


def _crop_iou(crop: Tensor, boxes: Tensor) -> Tensor:
    """IoU of ``T`` crops ``[T, 4]`` with ``K`` boxes ``[K, 4]`` (xyxy, no +1) → ``[T, K]``."""
    lt = torch.maximum(crop[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(crop[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_c = (crop[:, 2] - crop[:, 0]) * (crop[:, 3] - crop[:, 1])
    area_b = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    union = area_c[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-12)


class MinIoURandomCrop:
    """SSD's batch sampler and crop (``refinedet_spec.md`` §11 item 3).

    The samplers are: (a) the whole image; one per ``min_ious`` entry (a crop whose IoU with
    **some** GT box is ``>=`` it; SSD: 0.1, 0.3, 0.5, 0.7, 0.9); one per ``max_ious`` entry (a
    crop whose IoU with some GT box is ``<=`` it; SSD: 1.0, i.e. any crop). Each constrained
    sampler makes up to ``max_trials`` trials: scale ``s ~ U[scale]``, aspect ``a ~ U[aspect]``
    clamped to ``[s², 1/s²]``, normalised size ``(s·√a, s/√a)`` of the image sides, position
    uniform inside the image, rounded to whole pixels (module docstring); the first trial that
    satisfies the constraint is kept. One of the collected crops, (a) included, is then chosen
    uniformly.

    The GT boxes whose centre lies inside the crop (borders included) are kept, clipped to the
    crop and shifted to its origin; boxes that end with zero width or height are dropped.
    Every other tensor of ``target`` whose first dimension is ``K`` (``labels``, ...) is
    subset alike. Images without GT: see the module docstring (the whole image and the
    max-IoU samplers remain). ``meta['img_shape']`` becomes the crop size.

    Args:
        min_ious: minimum-IoU samplers, each in ``[0, 1]``.
        max_ious: maximum-IoU samplers, each in ``[0, 1]``.
        scale: ``(low, high)`` of ``s``, ``0 < low <= high <= 1``.
        aspect_ratio: ``(low, high)`` of ``a``, ``0 < low <= high``.
        max_trials: trials per sampler, ``>= 1``.
        generator: optional ``torch.Generator`` (default: global CPU RNG).

    Raises:
        ValueError: a bound outside its range.
    """

    def __init__(
        self,
        min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
        max_ious: Sequence[float] = (1.0,),
        scale: Sequence[float] = (0.3, 1.0),
        aspect_ratio: Sequence[float] = (0.5, 2.0),
        max_trials: int = 50,
        generator: torch.Generator | None = None,
    ) -> None:
        try:
            bounds = [float(v) for v in (*min_ious, *max_ious)]
        except (TypeError, ValueError):
            raise ValueError(
                f"min_ious and max_ious must be numbers in [0, 1], got {min_ious!r}, {max_ious!r}"
            ) from None
        if not all(0.0 <= v <= 1.0 for v in bounds):
            raise ValueError(f"min_ious and max_ious must lie in [0, 1], got {tuple(min_ious)}, {tuple(max_ious)}")
        self.scale = _check_range(scale, "crop scale")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
        self.aspect_ratio = _check_range(aspect_ratio, "crop aspect_ratio")
        if self.aspect_ratio[0] <= 0.0:
            raise ValueError(f"crop aspect_ratio must be positive, got {tuple(aspect_ratio)}")
        if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
            raise ValueError(f"max_trials must be a positive integer, got {max_trials!r}")
        self.max_trials = max_trials
        # (min_iou, max_iou) per constrained sampler; the whole image is sampler 0 (None, None).
        self.samplers: list[tuple[float | None, float | None]] = [(None, None)]
        self.samplers += [(float(v), None) for v in min_ious] + [(None, float(v)) for v in max_ious]
        self.generator = generator

    def __repr__(self) -> str:
        mins = tuple(m for m, _ in self.samplers[1:] if m is not None)
        maxs = tuple(m for _, m in self.samplers[1:] if m is not None)
        return (
            f"MinIoURandomCrop(min_ious={mins}, max_ious={maxs}, scale={self.scale}, "
            f"aspect_ratio={self.aspect_ratio}, max_trials={self.max_trials})"
        )

    def _trials(self, width: int, height: int) -> Tensor:
        """``max_trials`` integer pixel crops ``[T, 4]`` (float64 xyxy) of one sampler."""
        u = torch.rand((4, self.max_trials), generator=self.generator, dtype=torch.float64)
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        a = self.aspect_ratio[0] + (self.aspect_ratio[1] - self.aspect_ratio[0]) * u[1]
        a = torch.minimum(torch.maximum(a, s * s), 1.0 / (s * s))
        bw, bh = s * a.sqrt(), s / a.sqrt()
        x = u[2] * (1.0 - bw).clamp(min=0.0)  # bw <= 1 up to rounding (a <= 1/s²)
        y = u[3] * (1.0 - bh).clamp(min=0.0)
        left, top = torch.floor(x * width), torch.floor(y * height)
        crop_w = torch.round(bw * width).clamp(min=1.0)
        crop_h = torch.round(bh * height).clamp(min=1.0)
        right = torch.minimum(left + crop_w, torch.tensor(float(width), dtype=torch.float64))
        bottom = torch.minimum(top + crop_h, torch.tensor(float(height), dtype=torch.float64))
        left = torch.minimum(left, right - 1.0)
        top = torch.minimum(top, bottom - 1.0)
        return torch.stack([left, top, right, bottom], dim=1)

    def sample_crops(
        self, width: int, height: int, boxes: Tensor | None
    ) -> list[tuple[int, tuple[int, int, int, int]]]:
        """The candidate crops of one image: ``(sampler index, (x1, y1, x2, y2))`` integer
        pixels, sampler 0 (the whole image) first, then one entry per constrained sampler that
        succeeded, in the order of :attr:`samplers` (``(min_iou, max_iou)`` pairs).

        Args:
            width, height: image size in pixels.
            boxes: GT boxes ``[K, 4]`` xyxy pixels (``None`` or ``K = 0``: no GT).
        """
        candidates = [(0, (0, 0, width, height))]
        gt = boxes.detach().to(torch.float64).reshape(-1, 4) if boxes is not None else torch.zeros(0, 4)
        for index, (min_iou, max_iou) in enumerate(self.samplers[1:], start=1):
            trials = self._trials(width, height)
            if gt.shape[0] == 0:
                ok = torch.full((self.max_trials,), min_iou is None)
            else:
                iou = _crop_iou(trials, gt.to(torch.float64))
                good = torch.ones_like(iou, dtype=torch.bool)
                if min_iou is not None:
                    good &= iou >= min_iou
                if max_iou is not None:
                    good &= iou <= max_iou
                ok = good.any(dim=1)
            hits = torch.nonzero(ok).flatten()
            if hits.numel():
                box = trials[int(hits[0])]
                candidates.append((index, tuple(int(v) for v in box.tolist())))  # type: ignore[arg-type]
        return candidates

    def __call__(self, image: Tensor, target: dict[str, Any], meta: dict[str, Any]) -> Triple:
        height, width = int(image.shape[-2]), int(image.shape[-1])
        boxes = target.get("boxes")
        candidates = self.sample_crops(width, height, boxes)
        pick = int(torch.randint(len(candidates), (1,), generator=self.generator).item())
        x1, y1, x2, y2 = candidates[pick][1]
        if (x1, y1, x2, y2) != (0, 0, width, height):
            image = image[:, y1:y2, x1:x2].contiguous()
        target = dict(target)
        if boxes is not None:
            num = int(boxes.shape[0])
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            inside = (centres[:, 0] >= x1) & (centres[:, 0] <= x2) & (centres[:, 1] >= y1) & (centres[:, 1] <= y2)
            clipped = boxes.clone()
            clipped[:, 0::2] = clipped[:, 0::2].clamp(x1, x2) - x1
            clipped[:, 1::2] = clipped[:, 1::2].clamp(y1, y2) - y1
            keep = inside & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
            for key, value in list(target.items()):
                if key != "boxes" and isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == num:
                    target[key] = value[keep]
            target["boxes"] = clipped[keep]
        meta = dict(meta)
        meta["img_shape"] = (y2 - y1, x2 - x1)
        return image, target, meta


class WarpResize:
    """Warp (stretch) to a fixed ``(width, height)`` with a random interpolation
    (``refinedet_spec.md`` §11 item 4).

    The mode is drawn uniformly from ``interpolations`` (``F.interpolate`` modes; bilinear and
    bicubic with ``align_corners=False``, no antialias; see the module docstring for OpenCV's
    modes); the result is clamped to ``[0, 255]`` and uint8 is rounded back. Boxes are scaled
    per axis by ``(new_w / w, new_h / h)`` and clipped to the new image.
    ``meta['img_shape']`` becomes ``(height, width)`` and ``meta['scale_factor']`` is
    multiplied by the two factors (module docstring). One integer is drawn per call.

    Args:
        size: ``(width, height)`` in pixels.
        interpolations: non-empty subset of ``('bilinear', 'area', 'nearest', 'bicubic')``.
        generator: optional ``torch.Generator`` (default: global CPU RNG).

    Raises:
        ValueError: a bad size or an unknown / empty interpolation list.
    """

    def __init__(
        self,
        size: Sequence[int] = (320, 320),
        interpolations: Sequence[str] = WARP_INTERPOLATIONS,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _check_size(size, "warp size")
        modes = tuple(interpolations) if not isinstance(interpolations, str) else (interpolations,)
        if not modes or any(m not in WARP_INTERPOLATIONS for m in modes):
            raise ValueError(f"interpolations must be a non-empty subset of {WARP_INTERPOLATIONS}, got {modes}")
        self.interpolations = modes
        self.generator = generator

    def __repr__(self) -> str:
        return f"WarpResize(size={self.size}, interpolations={self.interpolations})"

    def sample_interpolation(self) -> str:
        """Draw the ``F.interpolate`` mode of one image (uniform over :attr:`interpolations`)."""
        pick = int(torch.randint(len(self.interpolations), (1,), generator=self.generator).item())
        return self.interpolations[pick]

    def __call__(self, image: Tensor, target: dict[str, Any], meta: dict[str, Any]) -> Triple:
        mode = self.sample_interpolation()
        height, width = int(image.shape[-2]), int(image.shape[-1])
        new_w, new_h = self.size
        if (new_w, new_h) != (width, height):
            x = image[None].to(image.dtype if image.dtype.is_floating_point else torch.float32)
            align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
            resized = F.interpolate(x, size=(new_h, new_w), mode=mode, **align)[0].clamp_(0.0, 255.0)
            image = _restore_dtype(resized, image.dtype)
        w_scale, h_scale = new_w / width, new_h / height
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None:
            boxes = boxes * boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
            target["boxes"] = boxes
        meta = dict(meta)
        old_w, old_h = meta.get("scale_factor", (1.0, 1.0))
        meta["img_shape"] = (new_h, new_w)
        meta["scale_factor"] = (old_w * w_scale, old_h * h_scale)
        return image, target, meta


def build_ssd_train_transforms(
    size: Sequence[int] = (320, 320),
    fill: Sequence[float] = SSD_MEAN_RGB,
    flip_prob: float = 0.5,
    expand_ratio: float = 4.0,
) -> Compose:
    """SSD / RefineDet training pipeline (``refinedet_spec.md`` §11, §17 item 18):
    :class:`PhotometricDistort` → :class:`Expand` (``fill``, ratio up to ``expand_ratio``, p 0.5) →
    :class:`MinIoURandomCrop` → :class:`WarpResize` to ``size`` → ``RandomHorizontalFlip``
    (``flip_prob``; left out when 0). Mean subtraction is the model ``Preprocessor``'s job.

    Args:
        size: ``(width, height)`` of the network input, pixels.
        fill: RGB expansion canvas colour (default SSD's mean in RGB order).
        flip_prob: horizontal flip probability.
        expand_ratio: largest zoom-out ratio (SSD: 4).

    Raises:
        ValueError: a bad size, fill, probability or ``expand_ratio < 1``.
    """
    transforms: list[Callable[..., Triple]] = [
        PhotometricDistort(),
        Expand(fill=fill, max_ratio=expand_ratio),
        MinIoURandomCrop(),
        WarpResize(size),
    ]
    _check_prob(flip_prob, "flip probability")
    if flip_prob > 0:
        transforms.append(RandomHorizontalFlip(flip_prob))
    return Compose(transforms)
