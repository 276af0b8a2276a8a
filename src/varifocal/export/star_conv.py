"""Exportable forms of the VFNet star deformable 3×3 conv (spec §2.3; issue 14).

The training-time layer (:class:`~varifocal.models.layers.star_deform_conv.StarDeformConv2d`)
runs a sparse CPU kernel that no exporter can trace. For ONNX it is replaced by one of:

* ``'portable'`` (:func:`star_deform_conv2d_portable`): the nine bilinear taps are sampled with
  ``grid_sample`` (ONNX ``GridSample``, opset ≥ 16, zero padding, ``align_corners=False``) into a
  ``[N, C·9, H, W]`` column tensor, followed by one MatMul with the weight reshaped to
  ``[O, C·9]`` (a 1×1 conv). Only standard ops, so it runs on every ONNX runtime.
* ``'deformconv'`` (:class:`OnnxDeformConv`): one ONNX ``DeformConv`` node (opset ≥ 19) with the
  offsets of :func:`~varifocal.models.layers.star_deform_conv.star_offsets`; in PyTorch it runs
  ``torchvision.ops.deform_conv2d``. ONNX Runtime ≥ 1.17 has a CPU kernel.

Both sample exactly like ``torchvision.ops.deform_conv2d``: a sample's four neighbours each count
only if inside the map (zero padding). ``grid_sample`` with ``align_corners=False`` maps the
normalised coordinate ``g`` to pixel ``((g + 1)·W − 1) / 2``, so pixel ``x`` is sent as
``(2x + 1) / W − 1``; this also works on 1-pixel maps (P7 of small inputs), where
``align_corners=True`` would divide by zero. The round trip costs a few float32 ulps of the
sample position (≈ 1e-7 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from ..models.layers.star_deform_conv import star_offsets

__all__ = ["DEFORM_MODES", "star_deform_conv2d_portable", "OnnxDeformConv", "ExportStarDeformConv2d"]

#: the ``deform`` choices of :func:`varifocal.export.export_onnx`
DEFORM_MODES = ("portable", "deformconv")


def _size(x: Tensor, dim: int) -> Tensor:
    """``x.shape[dim]`` as a float32 0-d tensor that stays symbolic while tracing."""
    return torch._shape_as_tensor(x)[dim].to(torch.float32)


def star_deform_conv2d_portable(x: Tensor, distances: Tensor, weight: Tensor) -> Tensor:
    """Star deformable 3×3 conv from ``grid_sample`` and a 1×1 conv (module docstring).

    Args:
        x: [N, C, H, W] float32 features.
        distances: [N, 4, H, W] (l, t, r, b) in feature-map cells (already divided by the stride).
        weight: [O, C, 3, 3] weight (no bias).

    Returns:
        [N, O, H, W], equal to ``torchvision.ops.deform_conv2d(x, star_offsets(distances), weight,
        padding=1)`` up to float32 rounding (tests/export: ≤ 1e-4 on random inputs).

    Raises:
        ValueError: ``weight`` is not [O, C, 3, 3].
    """
    n, c = x.shape[0], x.shape[1]
    if weight.dim() != 4 or weight.shape[1] != c or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"star_deform_conv2d_portable: weight must be [O, {c}, 3, 3], got {tuple(weight.shape)}")
    h_f, w_f = _size(x, 2), _size(x, 3)
    l, t, r, b = distances.unbind(1)  # [N, H, W]
    iy = torch.arange(x.shape[2], dtype=x.dtype, device=x.device).view(1, -1, 1)
    jx = torch.arange(x.shape[3], dtype=x.dtype, device=x.device).view(1, 1, -1)
    zero = torch.zeros_like(l)
    # The float ops of torchvision: (integer base of the tap) + (offset of star_offsets).
    rows = torch.stack([(iy - 1) + (1 - t), iy + zero, (iy + 1) + (b - 1)])  # [3, N, H, W]: ky = 0, 1, 2
    cols = torch.stack([(jx - 1) + (1 - l), jx + zero, (jx + 1) + (r - 1)])  # [3, N, H, W]: kx = 0, 1, 2
    gy = (2 * rows + 1) / h_f - 1
    gx = (2 * cols + 1) / w_f - 1
    grid = torch.stack([gx.unsqueeze(0).expand(3, 3, -1, -1, -1), gy.unsqueeze(1).expand(3, 3, -1, -1, -1)], dim=-1)
    # [ky, kx, N, H, W, 2] → [N, 9·H, W, 2]: the rows of tap k = 3·ky + kx are block k.
    grid = grid.permute(2, 0, 1, 3, 4, 5).reshape(n, -1, x.shape[3], 2)
    taps = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # [N, C, 9·H, W]
    # Column c·9 + k, as in weight.reshape(O, C·9): one MatMul (a 1×1 conv; MatMul needs no static
    # channel count in the traced graph).
    cols_t = taps.reshape(n, c * 9, -1)  # [N, C·9, H·W]
    out = torch.matmul(weight.reshape(weight.shape[0], c * 9), cols_t)  # [N, O, H·W]
    return out.reshape(n, weight.shape[0], x.shape[2], x.shape[3])


class OnnxDeformConv(torch.autograd.Function):
    """``torchvision.ops.deform_conv2d`` (3×3, stride 1, padding 1, one group) that exports as one
    ONNX ``DeformConv`` node (opset 19; the legacy TorchScript exporter calls :meth:`symbolic`).

    ``apply(x [N, C, H, W], weight [O, C, 3, 3], offsets [N, 18, H, W]) → [N, O, H, W]``, offsets
    in the torchvision layout (channel 2k = Δy, 2k + 1 = Δx of tap k), which is also the layout of
    ONNX ``DeformConv`` (offset_group, kH, kW, 2 = (y, x)).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, offsets: Tensor) -> Tensor:  # noqa: D102
        return deform_conv2d(x, offsets, weight, padding=1)

    @staticmethod
    def symbolic(g, x, weight, offsets):  # noqa: D102
        return g.op(
            "DeformConv",
            x,
            weight,
            offsets,
            kernel_shape_i=[3, 3],
            pads_i=[1, 1, 1, 1],
            strides_i=[1, 1],
            dilations_i=[1, 1],
            group_i=1,
            offset_group_i=1,
        )


class ExportStarDeformConv2d(nn.Module):
    """Drop-in replacement of a ``StarDeformConv2d`` for export (shares its ``weight``).

    Args:
        weight: the [O, C, 3, 3] parameter of the replaced layer.
        mode: ``'portable'`` or ``'deformconv'`` (module docstring).

    ``forward(x [N, C, H, W], distances [N, 4, H, W] in feature cells) → [N, O, H, W]``.

    Raises:
        ValueError: an unknown ``mode``.
    """

    def __init__(self, weight: Tensor, mode: str = "portable") -> None:
        super().__init__()
        if mode not in DEFORM_MODES:
            raise ValueError(f"deform must be one of {DEFORM_MODES}, got {mode!r}")
        self.weight = weight
        self.mode = mode

    def forward(self, x: Tensor, distances: Tensor) -> Tensor:
        if self.mode == "portable":
            return star_deform_conv2d_portable(x, distances, self.weight)
        return OnnxDeformConv.apply(x, self.weight, star_offsets(distances).to(x.dtype))
