"""The exportable free-offset deformable conv (varifocal.export.deform_export, RepPoints' DCNs)
equals torchvision's deform_conv2d (issue 14, zoo_spec §6.2)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from varifocal.export.deform_export import ExportDeformConv2d, deform_conv2d_portable


@pytest.mark.parametrize("size", [(7, 9), (1, 1), (2, 5)])
def test_portable_equals_torchvision(size):
    """Random (Δy, Δx) in [−3, 3) px per tap: fractional, reaching outside the map (zero
    padding); 1-pixel maps included (P7 of small inputs)."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    x = torch.randn(2, 5, h, w, generator=g)
    offset = torch.rand(2, 18, h, w, generator=g) * 6 - 3
    weight = torch.randn(6, 5, 3, 3, generator=g)
    out = deform_conv2d_portable(x, offset, weight)
    assert out.shape == (2, 6, h, w)
    assert torch.allclose(out, deform_conv2d(x, offset, weight, padding=1), atol=1e-4, rtol=0)


def test_zero_offsets_are_a_plain_conv():
    """Δ = 0: the regular 3×3 grid, i.e. conv2d with padding 1 (an independent reference)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 4, 6, generator=g)
    weight = torch.randn(2, 3, 3, 3, generator=g)
    out = deform_conv2d_portable(x, torch.zeros(1, 18, 4, 6), weight)
    assert torch.allclose(out, torch.nn.functional.conv2d(x, weight, padding=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["portable", "deformconv"])
def test_export_layer_modes_agree(mode):
    g = torch.Generator().manual_seed(2)
    weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=g))
    x = torch.randn(1, 3, 5, 5, generator=g)
    offset = torch.randn(1, 18, 5, 5, generator=g)
    out = ExportDeformConv2d(weight, mode)(x, offset)
    assert torch.allclose(out, deform_conv2d(x, offset, weight, padding=1), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="deform must be one of"):
        ExportDeformConv2d(weight, "cuda")
    with pytest.raises(ValueError, match=r"offset must be \[N, 18, H, W\]"):
        deform_conv2d_portable(x, offset[:, :8], weight)
