"""Prior generators shared by the zoo heads: grid points, anchors and valid flags.

Implements ``../shared/docs/zoo_spec.md`` §1.5 (anchor generator), §1.6 (point generator) and the
flattening convention of §1.1: within a level the priors are enumerated row-major over the
feature-map cells ``(y, x)`` and then over the ``A`` base anchors of a cell, so the row of prior
``(y, x, a)`` is ``(y·W + x)·A + a`` — the order of
``head_output.permute(0, 2, 3, 1).reshape(-1, C)``. All coordinates are input-image pixels,
boxes are xyxy with width ``x2 - x1`` (no "+1").

These generators hold no parameters and no buffers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["grid_points", "AnchorGenerator", "valid_flags", "ssd_anchors"]


def _check_levels(featmap_sizes: Sequence[tuple[int, int]], strides: Sequence[int]) -> None:
    if len(featmap_sizes) != len(strides):
        raise ValueError(f"priors.py: got {len(featmap_sizes)} feature-map sizes for {len(strides)} strides")
    for size in featmap_sizes:
        if len(size) != 2 or int(size[0]) < 0 or int(size[1]) < 0:
            raise ValueError(f"priors.py: a feature-map size must be (H, W) >= 0, got {size}")


def grid_points(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    offset: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[Tensor]:
    """Locations of the feature-map cells in input-image pixels (zoo_spec §1.6, spec §2.5).

    Cell ``(i, j)`` (row i, column j) of a level with stride s sits at
    ``(x, y) = ((j + offset)·s, (i + offset)·s)``. Offsets: 0.5 for FCOS/FoveaBox, 0 for
    RepPoints and VFNet (ATSS mode).

    Args:
        featmap_sizes: ``(H_l, W_l)`` per level.
        strides: stride s_l per level, pixels.
        offset: fraction of a stride added to both coordinates.
        device: device of the returned tensors.
        dtype: floating dtype of the returned tensors.

    Returns:
        One ``[H_l·W_l, 2]`` tensor of ``(x, y)`` per level, pixels, row-major (index
        ``i·W_l + j``).

    Raises:
        ValueError: ``featmap_sizes`` and ``strides`` differ in length, or a size is not
            ``(H, W)`` with non-negative entries.
    """
    _check_levels(featmap_sizes, strides)
    points = []
    for (h, w), s in zip(featmap_sizes, strides):
        xs = (torch.arange(int(w), device=device, dtype=dtype) + offset) * s
        ys = (torch.arange(int(h), device=device, dtype=dtype) + offset) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1))
    return points


def valid_flags(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    pad_shape: tuple[int, int],
    num_base_anchors: int = 1,
    device: torch.device | str = "cpu",
) -> list[Tensor]:
    """Which priors of one image lie on its padded area (zoo_spec §1.5 item 4, §1.6).

    Cell ``(y, x)`` of a level with stride s and size ``(H, W)`` is valid iff
    ``x < min(ceil(pad_w / s), W)`` and ``y < min(ceil(pad_h / s), H)``; the
    ``num_base_anchors`` priors of a cell share its flag. The batch is padded to a common size, so
    an image smaller than the batch only covers the top-left part of each feature map. This is the
    rule of ``VFNetHead.get_targets`` (spec §3.1).

    Args:
        featmap_sizes: ``(H_l, W_l)`` per level.
        strides: stride s_l per level, pixels.
        pad_shape: ``(pad_h, pad_w)`` of the image, pixels (its own padded size, before the
            batch padding).
        num_base_anchors: priors per cell A (1 for point heads).
        device: device of the returned tensors.

    Returns:
        One bool ``[H_l·W_l·A]`` tensor per level, in the prior order ``(y·W + x)·A + a``.

    Raises:
        ValueError: lengths differ, a size is malformed, or ``num_base_anchors < 1``.
    """
    _check_levels(featmap_sizes, strides)
    if num_base_anchors < 1:
        raise ValueError(f"priors.py: num_base_anchors must be >= 1, got {num_base_anchors}")
    pad_h, pad_w = pad_shape[:2]
    flags = []
    for (h, w), s in zip(featmap_sizes, strides):
        h, w = int(h), int(w)
        valid_h = min(int(math.ceil(pad_h / s)), h)
        valid_w = min(int(math.ceil(pad_w / s)), w)
        flag_y = torch.arange(h, device=device) < valid_h
        flag_x = torch.arange(w, device=device) < valid_w
        cell = (flag_y[:, None] & flag_x[None, :]).reshape(-1)  # [H·W]
        flags.append(cell[:, None].expand(h * w, num_base_anchors).reshape(-1))
    return flags


class AnchorGenerator:
    """Multi-level anchor generator (zoo_spec §1.5, §10 item 1).

    Base anchors of a level with base size b (default: the stride), centred at
    ``(c, c) = (center_offset·b, center_offset·b)``: for every aspect ratio r (**r = h/w**) and
    every scale, ``w = b·scale/√r``, ``h = b·scale·√r`` and the anchor is
    ``(c - w/2, c - h/2, c + w/2, c + h/2)``. They are ordered **ratio-major, scale-minor**:
    ``a = r_idx·num_scales + s_idx``. Anchor ``(y, x, a)`` of the level is
    ``base[a] + (x·s, y·s, x·s, y·s)`` (centres at ``(x·s, y·s)``, no half-stride offset).

    Configs: RetinaNet ``strides (8..128), ratios (.5, 1, 2), octave_base_scale 4,
    scales_per_octave 3`` (A = 9); ATSS ``ratios (1,), octave_base_scale 8, scales_per_octave
    1`` (one 8·s square, A = 1); RPN ``strides (4..64), ratios (.5, 1, 2), scales (8,)`` (A = 3).

    Args:
        strides: stride of every level, pixels.
        ratios: aspect ratios h/w, all > 0.
        scales: explicit anchor scales (multiples of the base size), all > 0.
        octave_base_scale: with ``scales_per_octave`` n, the scales are
            ``octave_base_scale·2^(i/n)`` for i = 0..n-1 (computed in float64, stored float32).
        scales_per_octave: see ``octave_base_scale``.
        base_sizes: base size of every level, pixels (default: the strides).
        center_offset: anchor centre as a fraction of the base size (default 0, all zoo configs).

    Attributes:
        strides: ``list[int]``, the strides.
        base_sizes: ``list[int | float]``, the base sizes.
        scales: ``[num_scales]`` float32 tensor.
        ratios: ``[num_ratios]`` float32 tensor.
        num_base_anchors: A = ``num_ratios·num_scales`` (``int``, the same on every level).
        base_anchors: one ``[A, 4]`` float32 xyxy tensor per level, pixels (CPU).

    Raises:
        ValueError: both or neither of ``scales`` and ``(octave_base_scale,
            scales_per_octave)`` are given (or only one of the latter pair), an entry is not
            positive, a list is empty, or ``base_sizes`` and ``strides`` differ in length.
    """

    def __init__(
        self,
        strides: Sequence[int],
        ratios: Sequence[float],
        scales: Sequence[float] | None = None,
        octave_base_scale: float | None = None,
        scales_per_octave: int | None = None,
        base_sizes: Sequence[int] | None = None,
        center_offset: float = 0.0,
    ) -> None:
        if len(strides) == 0 or any(s <= 0 for s in strides):
            raise ValueError(f"priors.py: strides must be a non-empty list of > 0, got {strides}")
        if len(ratios) == 0 or any(r <= 0 for r in ratios):
            raise ValueError(f"priors.py: ratios must be a non-empty list of > 0, got {ratios}")
        octave = (octave_base_scale is not None, scales_per_octave is not None)
        if scales is not None:
            if any(octave):
                raise ValueError("priors.py: give either scales or (octave_base_scale, scales_per_octave), not both")
            if len(scales) == 0 or any(s <= 0 for s in scales):
                raise ValueError(f"priors.py: scales must be a non-empty list of > 0, got {scales}")
            scale_values = [float(s) for s in scales]
        else:
            if not all(octave):
                raise ValueError("priors.py: give either scales or both octave_base_scale and scales_per_octave")
            if octave_base_scale <= 0 or int(scales_per_octave) < 1:
                raise ValueError(
                    "priors.py: octave_base_scale must be > 0 and scales_per_octave >= 1, got "
                    f"{octave_base_scale} and {scales_per_octave}"
                )
            n = int(scales_per_octave)
            scale_values = [float(octave_base_scale) * 2.0 ** (i / n) for i in range(n)]
        if base_sizes is None:
            base_sizes = list(strides)
        elif len(base_sizes) != len(strides):
            raise ValueError(f"priors.py: got {len(base_sizes)} base sizes for {len(strides)} strides")

        self.strides = list(strides)
        self.base_sizes = list(base_sizes)
        self.center_offset = float(center_offset)
        # float64 arithmetic above, then float32 storage (zoo_spec §1.5 item 1).
        self.scales = torch.tensor(scale_values, dtype=torch.float64).to(torch.float32)
        self.ratios = torch.tensor([float(r) for r in ratios], dtype=torch.float32)
        self.num_base_anchors = int(self.scales.numel() * self.ratios.numel())
        self.base_anchors = [self._level_base_anchors(b) for b in self.base_sizes]

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels."""
        return len(self.strides)

    def _level_base_anchors(self, base_size: float) -> Tensor:
        """``[A, 4]`` float32 base anchors of one level, ratio-major / scale-minor."""
        center = self.center_offset * base_size
        h_ratios = torch.sqrt(self.ratios)  # √r
        w_ratios = 1.0 / h_ratios  # 1/√r
        ws = (base_size * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
        hs = (base_size * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
        return torch.stack([center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs], dim=-1)

    def grid_anchors(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """All anchors of every level (zoo_spec §1.5 item 3, §1.1).

        Args:
            featmap_sizes: ``(H_l, W_l)`` per level, one per stride.
            device: device of the returned tensors.

        Returns:
            One ``[H_l·W_l·A, 4]`` float32 xyxy tensor per level, pixels; row
            ``(y·W_l + x)·A + a`` is ``base_anchors[l][a] + (x·s, y·s, x·s, y·s)``.

        Raises:
            ValueError: ``len(featmap_sizes) != num_levels`` or a size is malformed.
        """
        _check_levels(featmap_sizes, self.strides)
        anchors = []
        for (h, w), s, base in zip(featmap_sizes, self.strides, self.base_anchors):
            base = base.to(device)
            shift_x = torch.arange(int(w), device=device, dtype=base.dtype) * s
            shift_y = torch.arange(int(h), device=device, dtype=base.dtype) * s
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            xx, yy = xx.reshape(-1), yy.reshape(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=-1)  # [H·W, 4]
            anchors.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
        return anchors

    def valid_flags(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        pad_shape: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """:func:`valid_flags` with this generator's strides and A (zoo_spec §1.5 item 4).

        Returns:
            One bool ``[H_l·W_l·A]`` tensor per level.
        """
        return valid_flags(featmap_sizes, self.strides, pad_shape, self.num_base_anchors, device=device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(strides={self.strides}, ratios={self.ratios.tolist()}, "
            f"scales={self.scales.tolist()}, base_sizes={self.base_sizes}, "
            f"center_offset={self.center_offset})"
        )


def ssd_anchors(
    featmap_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[float],
    ratios: Sequence[float] = (1.0, 2.0, 0.5),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """SSD-style anchors of RefineDet (Caffe ``PriorBox``; ``refinedet_spec.md`` §3).

    Cell ``(i, j)`` of level ``l`` is centred at ``((j + 0.5)·s_l, (i + 0.5)·s_l)`` (the fixed
    stride, offset 0.5, unlike the MMDetection anchors above); its anchors, in the order of
    ``ratios``, are ``w = S_l·sqrt(a)``, ``h = S_l / sqrt(a)`` (a = 2 is the wide one). Not
    clipped. Order: level (finest first), then row, column, anchor: the order of
    ``flatten_level`` on the head outputs.

    Args:
        featmap_sizes: ``(H_l, W_l)`` per level.
        strides: stride ``s_l`` per level, pixels.
        sizes: anchor size ``S_l`` per level, pixels (RefineDet: ``4·s_l``, 32…256).
        ratios: aspect ratios ``w/h`` of a cell's anchors, in order.
        device, dtype: of the result.

    Returns:
        ``[sum_l H_l·W_l·len(ratios), 4]`` xyxy in input-image pixels (6375 rows for the four
        RefineDet levels of a 320×320 input, 16320 at 512).

    Raises:
        ValueError: the level lists differ in length, a size/stride/ratio is not positive.
    """
    _check_levels(featmap_sizes, strides)
    if len(sizes) != len(strides):
        raise ValueError(f"priors.py: got {len(sizes)} anchor sizes for {len(strides)} strides")
    if any(float(v) <= 0 for v in (*strides, *sizes, *ratios)) or not ratios:
        raise ValueError(f"priors.py: strides, sizes and ratios must be positive, got {strides}, {sizes}, {ratios}")
    sqrt_ratios = torch.tensor([math.sqrt(float(a)) for a in ratios], dtype=torch.float64)
    levels = []
    for (h, w), stride, size in zip(featmap_sizes, strides, sizes):
        ys = (torch.arange(int(h), dtype=torch.float64) + 0.5) * float(stride)
        xs = (torch.arange(int(w), dtype=torch.float64) + 0.5) * float(stride)
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)  # [HW, 1]
        half_w = 0.5 * float(size) * sqrt_ratios  # [A]
        half_h = 0.5 * float(size) / sqrt_ratios
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)  # [HW, A, 4]
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels).to(device=device, dtype=dtype)
