"""Exportable form of a 3×3 deformable conv with free offsets (RepPoints' ``reppoints_cls_conv`` and
``reppoints_pts_refine_conv``, zoo_spec §6.1-6.2; issue 14).

:class:`~varifocal.models.layers.deform_conv.DeformConv2d` runs a CPU kernel that no exporter can
trace. For ONNX it is replaced by :class:`ExportDeformConv2d`, in one of the two ``deform`` modes
of :mod:`.star_conv`:

* ``'portable'`` (:func:`deform_conv2d_portable`): the nine bilinear taps are sampled with
  ``grid_sample`` (zero padding, ``align_corners=False``) at ``(i − 1 + ky + Δy, j − 1 + kx + Δx)``
  into a ``[N, C·9, H, W]`` column tensor, then one MatMul with the weight as ``[O, C·9]``;
* ``'deformconv'``: one ONNX ``DeformConv`` node (opset ≥ 19), :class:`~.star_conv.OnnxDeformConv`.

Both sample like ``torchvision.ops.deform_conv2d`` (a neighbour counts only inside the map); the
normalised grid costs a few float32 ulps of the sample position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .star_conv import DEFORM_MODES, OnnxDeformConv, _size

__all__ = ["deform_conv2d_portable", "ExportDeformConv2d"]


def deform_conv2d_portable(x: Tensor, offset: Tensor, weight: Tensor) -> Tensor:
    """3×3 deformable conv (stride 1, padding 1, one group, no bias) from ``grid_sample`` and a
    MatMul (module docstring).

    Args:
        x: ``[N, C, H, W]`` float32 features.
        offset: ``[N, 18, H, W]`` (Δy, Δx) per tap ``k = 3·ky + kx``, input pixels (torchvision
            layout).
        weight: ``[O, C, 3, 3]``.

    Returns:
        ``[N, O, H, W]``, equal to ``torchvision.ops.deform_conv2d(x, offset, weight,
        padding=1)`` up to float32 rounding.

    Raises:
        ValueError: ``weight`` is not ``[O, C, 3, 3]`` or ``offset`` has not 18 channels.
    """
    n, c = x.shape[0], x.shape[1]
    if weight.dim() != 4 or weight.shape[1] != c or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"deform_conv2d_portable: weight must be [O, {c}, 3, 3], got {tuple(weight.shape)}")
    if offset.dim() != 4 or offset.shape[1] != 18:
        raise ValueError(f"deform_conv2d_portable: offset must be [N, 18, H, W], got {tuple(offset.shape)}")
    h_f, w_f = _size(x, 2), _size(x, 3)
    iy = torch.arange(x.shape[2], dtype=x.dtype, device=x.device).view(1, 1, -1, 1)
    jx = torch.arange(x.shape[3], dtype=x.dtype, device=x.device).view(1, 1, 1, -1)
    taps = torch.arange(9, device=x.device)
    ky = (taps // 3).to(x.dtype).view(1, 9, 1, 1)
    kx = (taps % 3).to(x.dtype).view(1, 9, 1, 1)
    rows = (iy - 1 + ky) + offset[:, 0::2]  # [N, 9, H, W], the float ops of torchvision
    cols = (jx - 1 + kx) + offset[:, 1::2]
    grid = torch.stack([(2 * cols + 1) / w_f - 1, (2 * rows + 1) / h_f - 1], dim=-1)  # [N, 9, H, W, 2]
    grid = grid.reshape(n, -1, x.shape[3], 2)  # tap k is the row block k·H … (k + 1)·H − 1
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N, C, 9·H, W]
    columns = sampled.reshape(n, c * 9, -1)  # column c·9 + k, as weight.reshape(O, C·9)
    out = torch.matmul(weight.reshape(weight.shape[0], c * 9), columns)  # [N, O, H·W]
    return out.reshape(n, weight.shape[0], x.shape[2], x.shape[3])


class ExportDeformConv2d(nn.Module):
    """Drop-in replacement of a 3×3 / stride 1 / padding 1 / one-group ``DeformConv2d`` without
    bias for export (shares its ``weight``).

    Args:
        weight: the ``[O, C, 3, 3]`` parameter of the replaced layer.
        mode: ``'portable'`` or ``'deformconv'`` (module docstring).

    ``forward(x [N, C, H, W], offset [N, 18, H, W]) → [N, O, H, W]``.

    Raises:
        ValueError: an unknown ``mode``.
    """

    def __init__(self, weight: Tensor, mode: str = "portable") -> None:
        super().__init__()
        if mode not in DEFORM_MODES:
            raise ValueError(f"deform must be one of {DEFORM_MODES}, got {mode!r}")
        self.weight = weight
        self.mode = mode

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        if self.mode == "portable":
            return deform_conv2d_portable(x, offset, self.weight)
        return OnnxDeformConv.apply(x, self.weight, offset.to(x.dtype))
