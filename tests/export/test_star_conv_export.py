"""The exportable star conv (varifocal.export.star_conv) equals torchvision's deform_conv2d (issue 14)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from varifocal.export.star_conv import ExportStarDeformConv2d, star_deform_conv2d_portable
from varifocal.models.layers.star_deform_conv import star_offsets


@pytest.mark.parametrize("size", [(7, 9), (1, 1), (1, 3), (5, 2)])
def test_portable_equals_torchvision(size):
    """GridSample + MatMul vs deform_conv2d(star_offsets(d)); distances reach outside the map
    (zero padding), are fractional, zero and negative; 1-pixel maps included (P7 of small inputs)."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    x = torch.randn(2, 5, h, w, generator=g)
    d = torch.rand(2, 4, h, w, generator=g) * 6 - 1.0
    d[0, :, 0, 0] = 0.0  # all taps on the centre cell
    weight = torch.randn(6, 5, 3, 3, generator=g)
    ref = deform_conv2d(x, star_offsets(d), weight, padding=1)
    out = star_deform_conv2d_portable(x, d, weight)
    assert out.shape == (2, 6, h, w)
    assert torch.allclose(out, ref, atol=1e-4, rtol=0)


def test_portable_integer_distances_hand_value():
    """d = (l, t, r, b) = 1 everywhere: the star is the ordinary 3×3 neighbourhood, so the
    result is a plain conv2d with padding 1 (an independent, hand-checkable reference)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 4, 6, generator=g)
    weight = torch.randn(2, 3, 3, 3, generator=g)
    d = torch.ones(1, 4, 4, 6)
    out = star_deform_conv2d_portable(x, d, weight)
    assert torch.allclose(out, torch.nn.functional.conv2d(x, weight, padding=1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["portable", "deformconv"])
def test_export_layer_modes_agree(mode):
    g = torch.Generator().manual_seed(2)
    weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=g))
    x = torch.randn(1, 3, 5, 5, generator=g)
    d = torch.rand(1, 4, 5, 5, generator=g) * 3
    out = ExportStarDeformConv2d(weight, mode)(x, d)
    ref = deform_conv2d(x, star_offsets(d), weight, padding=1)
    assert torch.allclose(out, ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="deform must be one of"):
        ExportStarDeformConv2d(weight, "cuda")
