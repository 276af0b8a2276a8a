"""The generic fast deformable conv (DCNv1 / DCNv2) against torchvision and hand-computed values."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

import varifocal.models.layers._tap_kernels as kernels
from varifocal.models.layers.dcn import ModulatedDeformConv2d
from varifocal.models.layers.deform_conv import DeformConv2d, deform_conv2d
from varifocal.models.layers.star_deform_conv import star_deform_conv2d, star_offsets


def _case(n, c, h, w, o, k, stride, pad, dil, offsets, mask, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    weight = torch.randn(o, c, k, k, generator=g, dtype=dtype)
    if offsets == "int":  # integer positions, many on or past the border: one-sided gradients
        off = torch.randint(-3, 4, (n, 2 * k * k, ho, wo), generator=g).to(dtype)
    else:
        off = torch.randn(n, 2 * k * k, ho, wo, generator=g, dtype=dtype) * offsets
    m = torch.rand(n, k * k, ho, wo, generator=g, dtype=dtype) if mask else None
    bias = torch.randn(o, generator=g, dtype=dtype)
    return x, weight, off, m, bias


CASES = [
    # n, c, h, w, o, k, stride, pad, dil, offsets, mask
    (2, 5, 6, 7, 4, 3, 1, 1, 1, 3.0, True),  # many samples outside the map
    (1, 3, 7, 5, 2, 3, 2, 1, 1, 3.0, False),  # stride 2 (ResNet DCN stage entry), DCNv1
    (2, 4, 5, 6, 3, 3, 1, 2, 2, 1.0, True),  # dilation 2
    (2, 4, 5, 6, 3, 3, 1, 0, 1, 0.0, True),  # zero offsets, no padding
    (1, 4, 5, 6, 3, 1, 1, 0, 1, 1.0, False),  # 1x1 kernel
    (1, 2, 4, 4, 3, 5, 1, 2, 1, 20.0, True),  # 5x5, offsets far outside
    (1, 3, 6, 6, 2, 3, 1, 1, 1, "int", True),  # integer positions
]


@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_equal_torchvision_float64(case):
    n, c, h, w, o, k, stride, pad, dil, offsets, mask = case
    x, weight, off, m, bias = _case(*case)
    inputs = [t.requires_grad_() for t in (x, weight, off, bias) + ((m,) if mask else ())]
    ref = tv_deform_conv2d(x, off, weight, bias, stride=stride, padding=pad, dilation=dil, mask=m)
    out = deform_conv2d(x, off, weight, bias, stride, pad, dil, m, impl="fast")
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
    g_ref = torch.autograd.grad(ref, inputs, grad)
    g_out = torch.autograd.grad(out, inputs, grad)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * max(1.0, b.abs().max().item()))


def test_float32_at_issue_tolerances_with_masks_and_outside_samples():
    """Issue 9: forward max |Δ| ≤ 1e-4 and relative gradient error ≤ 1e-4, float32."""
    x, weight, off, m, bias = _case(2, 32, 12, 15, 24, 3, 1, 1, 1, 4.0, True, dtype=torch.float32)
    inputs = [t.requires_grad_() for t in (x, weight, off, m)]
    ref = tv_deform_conv2d(x, off, weight, padding=1, mask=m)
    out = deform_conv2d(x, off, weight, padding=1, mask=m)  # 'auto' = fast on CPU
    assert (out - ref).abs().max().item() <= 1e-4
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-4


def test_hand_computed_bilinear_sample_and_zero_padding():
    """1x1 kernel, weight 1: the output is x read at (i + Δy, j + Δx)."""
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], dtype=torch.float64)  # [1, 1, 2, 3]
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    off = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    off[0, :, 0, 0] = torch.tensor([0.5, 0.25])  # (0.5, 0.25): 1·.375 + 2·.125 + 4·.375 + 5·.125
    off[0, :, 0, 2] = torch.tensor([0.0, 0.5])  # (0, 2.5): half of x[0, 2], half outside
    off[0, :, 1, 1] = torch.tensor([-2.0, 0.0])  # (-1, 1): exactly on the border line, reads 0
    off[0, :, 1, 2] = torch.tensor([0.0, -0.75])  # (1, 1.25): 5·.75 + 6·.25
    out = deform_conv2d(x, off, weight, impl="fast")
    want = torch.tensor([[[[2.75, 2.0, 1.5], [4.0, 0.0, 5.25]]]], dtype=torch.float64)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    mask = torch.full((1, 1, 2, 3), 0.5, dtype=torch.float64)
    torch.testing.assert_close(deform_conv2d(x, off, weight, mask=mask, impl="fast"), want * 0.5)


def test_zero_offsets_equal_a_plain_conv_and_module_keys():
    layer = DeformConv2d(6, 5, 3, padding=1).double()
    assert list(layer.state_dict()) == ["weight"] and layer.weight.shape == (5, 6, 3, 3)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    out = layer(x, torch.zeros(2, 18, 7, 9, dtype=torch.float64))
    torch.testing.assert_close(out, F.conv2d(x, layer.weight, padding=1))
    assert list(DeformConv2d(6, 5, bias=True).state_dict()) == ["weight", "bias"]


def test_chunked_and_split_passes_match_one_pass(monkeypatch):
    x, weight, off, m, bias = _case(2, 6, 7, 8, 5, 3, 1, 1, 1, 2.0, True)
    inputs = [t.requires_grad_() for t in (x, weight, off, m)]
    out = deform_conv2d(x, off, weight, padding=1, mask=m, impl="fast")
    grads = torch.autograd.grad(out.sum(), inputs)
    monkeypatch.setattr(kernels, "_CHUNK_ELEMS", 9 * 6 * 5)  # 5-location chunks in backward
    monkeypatch.setattr(kernels, "_TAPS_ELEMS", 9 * 56 * 2)  # 2 output channels per pass
    out2 = deform_conv2d(x, off, weight, padding=1, mask=m, impl="fast")
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out2.sum(), inputs), grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_batch_equals_images_one_by_one_and_no_grad_equals_grad_path():
    x, weight, off, m, _ = _case(3, 4, 6, 5, 3, 3, 1, 1, 1, 2.0, True)
    with torch.no_grad():
        batch = deform_conv2d(x, off, weight, padding=1, mask=m, impl="fast")
    for i in range(3):
        one = deform_conv2d(x[i : i + 1], off[i : i + 1], weight, padding=1, mask=m[i : i + 1], impl="fast")
        torch.testing.assert_close(batch[i : i + 1], one.detach(), rtol=0, atol=1e-12)
    with_grad = deform_conv2d(x.requires_grad_(), off, weight, padding=1, mask=m, impl="fast")
    torch.testing.assert_close(with_grad.detach(), batch, rtol=0, atol=1e-12)


def test_channels_last_input_and_grad_layout():
    x, weight, off, m, _ = _case(1, 8, 6, 7, 4, 3, 1, 1, 1, 2.0, True)
    ref = deform_conv2d(x, off, weight, padding=1, mask=m, impl="fast")
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = deform_conv2d(xc, off, weight, padding=1, mask=m, impl="fast")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    (gx,) = torch.autograd.grad(out.sum(), [xc])
    x.requires_grad_()
    (gref,) = torch.autograd.grad(tv_deform_conv2d(x, off, weight, padding=1, mask=m).sum(), [x])
    torch.testing.assert_close(gx, gref, rtol=0, atol=1e-12)


def test_bfloat16_and_autocast_follow_float32():
    x, weight, off, m, _ = _case(1, 16, 8, 9, 8, 3, 1, 1, 1, 2.0, True, dtype=torch.float32)
    ref = deform_conv2d(x, off, weight, padding=1, mask=m)
    out = deform_conv2d(x.bfloat16(), off, weight.bfloat16(), padding=1, mask=m)
    assert out.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    assert (out.float() - ref).abs().max().item() <= 0.03 * scale
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = deform_conv2d(x, off, weight, padding=1, mask=m)
    assert auto.dtype == torch.bfloat16 and (auto.float() - ref).abs().max().item() <= 0.03 * scale
    tv = deform_conv2d(x.bfloat16(), off, weight.bfloat16(), padding=1, mask=m, impl="torchvision")
    assert tv.dtype == torch.bfloat16 and (tv.float() - ref).abs().max().item() <= 0.03 * scale


def test_star_conv_and_generic_dcn_share_the_kernel_and_agree():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)
    d = torch.rand(2, 4, 5, 7, generator=g, dtype=torch.float64) * 4
    weight = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64)
    star = star_deform_conv2d(x, d, weight, impl="fast")
    generic = deform_conv2d(x, star_offsets(d), weight, padding=1, impl="fast")
    torch.testing.assert_close(star, generic, rtol=0, atol=1e-12)


def test_modulated_dcn_layer_uses_the_fast_kernel_and_matches_torchvision():
    layer = ModulatedDeformConv2d(4, 6, 3, stride=2, padding=1).double()
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.3)  # real offsets and masks
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    ref_layer = ModulatedDeformConv2d(4, 6, 3, stride=2, padding=1, impl="torchvision").double()
    ref_layer.load_state_dict(layer.state_dict())
    out, ref = layer(x), ref_layer(x)
    assert out.shape == (2, 6, 5, 4)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    ga = torch.autograd.grad(out.sum(), [x, layer.conv_offset.weight, layer.weight])
    gb = torch.autograd.grad(ref.sum(), [x, ref_layer.conv_offset.weight, ref_layer.weight])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_bad_inputs_raise_value_errors():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(3, 4, 3, 3)
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d(x, torch.zeros(1, 17, 5, 5), w, padding=1)
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d(x, torch.zeros(1, 18, 3, 3), w, padding=1)
    with pytest.raises(ValueError, match="mask must be"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), w, padding=1, mask=torch.zeros(1, 8, 5, 5))
    with pytest.raises(ValueError, match="impl"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), w, padding=1, impl="cuda")
    with pytest.raises(ValueError, match="groups=1"):
        deform_conv2d(x, torch.zeros(1, 36, 5, 5), w, padding=1, impl="fast")  # 2 deform groups
    # torchvision handles grouped layouts under 'auto'
    out = deform_conv2d(x, torch.zeros(1, 36, 5, 5), w, padding=1)
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impl"):
        DeformConv2d(4, 4, impl="gpu")
