"""Tests for ModulatedDeformConv2d (DCNv2, spec §8.3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from varifocal.models.layers.dcn import ModulatedDeformConv2d


def _layer(cin=4, cout=6, **kw):
    torch.manual_seed(0)
    return ModulatedDeformConv2d(cin, cout, **kw)


def test_state_dict_keys_and_shapes():
    m = ModulatedDeformConv2d(128, 128, 3, stride=2, padding=1)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "weight": (128, 128, 3, 3),
        "conv_offset.weight": (27, 128, 3, 3),
        "conv_offset.bias": (27,),
    }
    mb = ModulatedDeformConv2d(8, 16, 3, bias=True, deform_groups=2)
    shapes = {k: tuple(v.shape) for k, v in mb.state_dict().items()}
    assert shapes == {
        "weight": (16, 8, 3, 3),
        "bias": (16,),
        "conv_offset.weight": (54, 8, 3, 3),
        "conv_offset.bias": (54,),
    }


def test_fresh_layer_is_half_a_plain_conv():
    # conv_offset is zero: offsets 0 and masks sigmoid(0) = 0.5 exactly.
    m = _layer(bias=True)
    assert torch.count_nonzero(m.conv_offset.weight) == 0
    x = torch.randn(2, 4, 7, 9)
    ref = F.conv2d(x, m.weight, None, padding=1) * 0.5 + m.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_strided_and_dilated_match_plain_conv():
    m = _layer(stride=2, padding=2, dilation=2)
    x = torch.randn(1, 4, 9, 8)
    ref = F.conv2d(x, m.weight, None, stride=2, padding=2, dilation=2) * 0.5
    out = m(x)
    assert out.shape == (1, 6, 5, 4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _shift_padded(x, dy, dx):
    """Zero-pad by 1, then read the padded image at (i + dy, j + dx); outside reads 0."""
    xp = F.pad(x, (1, 1, 1, 1))
    out = torch.zeros_like(xp)
    h, w = xp.shape[-2:]
    out[..., : h - dy, : w - dx] = xp[..., dy:, dx:]
    return out


def test_offset_plus_one_in_x_is_a_shifted_conv():
    # Channels 0..17 of conv_offset are cat(o1, o2) = (dy, dx) pairs per tap; set every dx = +1.
    # Tap (ky, kx) of output (i, j) then reads padded input (i + ky, j + kx + 1).
    m = _layer()
    with torch.no_grad():
        m.conv_offset.bias[1:18:2] = 1.0
    x = torch.randn(1, 4, 6, 7)
    ref = F.conv2d(_shift_padded(x, 0, 1), m.weight, None) * 0.5
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    # and it is not the unshifted result
    assert (m(x) - F.conv2d(x, m.weight, None, padding=1) * 0.5).abs().max() > 0.1


def test_offset_plus_one_in_y_is_a_shifted_conv():
    m = _layer()
    with torch.no_grad():
        m.conv_offset.bias[0:18:2] = 1.0
    x = torch.randn(1, 4, 6, 7)
    ref = F.conv2d(_shift_padded(x, 1, 0), m.weight, None) * 0.5
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_half_pixel_offset_is_bilinear_average():
    # dx = +0.5 everywhere: each tap reads the mean of two horizontal neighbours of the padded
    # input (zero outside).
    m = _layer()
    with torch.no_grad():
        m.conv_offset.bias[1:18:2] = 0.5
    x = torch.randn(1, 4, 5, 5)
    avg = 0.5 * (_shift_padded(x, 0, 0) + _shift_padded(x, 0, 1))
    ref = F.conv2d(avg, m.weight, None) * 0.5
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_mask_channels_are_the_third_chunk():
    # Raise the mask of tap 4 (the centre) to sigmoid(log 3) = 0.75; other taps stay 0.5.
    m = _layer()
    with torch.no_grad():
        m.conv_offset.bias[18 + 4] = math.log(3.0)
    x = torch.randn(1, 4, 5, 6)
    w = m.weight.detach().clone() * 0.5
    w[:, :, 1, 1] *= 1.5
    torch.testing.assert_close(m(x), F.conv2d(x, w, None, padding=1), rtol=1e-5, atol=1e-5)


def test_groups_32():
    m = _layer(64, 64, groups=32, stride=2)
    assert m.weight.shape == (64, 2, 3, 3)
    x = torch.randn(1, 64, 8, 8)
    ref = F.conv2d(x, m.weight, None, stride=2, padding=1, groups=32) * 0.5
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_bad_groups_raise():
    with pytest.raises(ValueError, match="groups"):
        ModulatedDeformConv2d(6, 8, groups=4)
    with pytest.raises(ValueError, match="deform_groups"):
        ModulatedDeformConv2d(6, 8, deform_groups=4)


def test_gradients_reach_weight_and_offset_conv():
    m = _layer()
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    m(x).square().sum().backward()
    assert m.weight.grad.abs().sum() > 0
    assert m.conv_offset.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_runs_under_cpu_bf16_autocast():
    m = _layer()
    with torch.no_grad():
        m.conv_offset.bias[1:18:2] = 0.25
    x = torch.randn(1, 4, 6, 6)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = m(x)
        out16 = m(x.bfloat16())
    assert out32.dtype == torch.float32 and out16.dtype == torch.bfloat16
    torch.testing.assert_close(out32, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out16.float(), ref, rtol=5e-2, atol=5e-2)
    # Plain bf16 (no autocast) also works: CPU deform_conv2d has no bf16 kernel, fp32 is used.
    mb = _layer().bfloat16()
    assert mb(x.bfloat16()).dtype == torch.bfloat16
