"""Tests for RefineDet's backbone parts: VGG16Atrous and its ImageNet loading, L2Norm, Caffe xavier,
and the ResNet-variant BN blocks (``refinedet_spec.md`` §2.1–2.4, §12, §18 items 1 and 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from varifocal.checkpoint import CheckpointError
from varifocal.models.backbones.vgg import (
    CAFFE_LAYER_NAMES,
    VGG16_CONV_INDICES,
    VGG16Atrous,
    load_vgg16_imagenet,
)
from varifocal.models.layers.init import caffe_xavier_
from varifocal.models.layers.l2norm import L2Norm
from varifocal.models.layers.refinedet_blocks import ProjectionBottleneck, conv_bn, deconv_bn


def _meta_vgg(**kw) -> VGG16Atrous:
    with torch.device("meta"):
        return VGG16Atrous(**kw)


@pytest.fixture(scope="module")
def vgg() -> VGG16Atrous:
    torch.manual_seed(0)
    return VGG16Atrous().eval()


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A synthetic torchvision vgg16 ImageNet-format state dict (random init) saved to a file:
    ``(path, state_dict, torchvision's features module holding those weights)``."""
    torch.manual_seed(1)
    model = torchvision.models.vgg16(weights=None).eval()
    sd = model.state_dict()
    path = tmp_path_factory.mktemp("vgg") / "vgg16-synthetic.pth"
    torch.save(sd, path)
    return path, sd, model.features


@pytest.fixture(scope="module")
def loaded(tv_file) -> VGG16Atrous:
    """VGG16Atrous filled from ``tv_file`` by :func:`load_vgg16_imagenet` (read only by the tests)."""
    m = VGG16Atrous().eval()
    assert load_vgg16_imagenet(m, str(tv_file[0])) is None  # a str path, as a builder passes it
    return m


# ---------------------------------------------------------------------------------------------- VGG


def test_vgg_keys_follow_torchvision_and_caffe_names():
    own = {k: tuple(v.shape) for k, v in _meta_vgg().state_dict().items()}
    with torch.device("meta"):
        tv = {k: tuple(v.shape) for k, v in torchvision.models.vgg16().features.state_dict().items()}
    assert [k for k in own if k.startswith("features.")] == [f"features.{k}" for k in tv]
    assert all(own[f"features.{k}"] == s for k, s in tv.items())
    assert VGG16_CONV_INDICES == (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert own["fc6.weight"] == (1024, 512, 3, 3) and own["fc6.bias"] == (1024,)
    assert own["fc7.weight"] == (1024, 1024, 1, 1) and own["fc7.bias"] == (1024,)
    assert len(own) == 30
    # 14,714,688 conv1_1..conv5_3 parameters (VGG-16) + fc6 4,719,616 + fc7 1,049,600
    assert sum(math.prod(s) for s in own.values()) == 20_483_904
    assert CAFFE_LAYER_NAMES["conv1_1"] == "features.0"
    assert CAFFE_LAYER_NAMES["conv4_3"] == "features.21"
    assert CAFFE_LAYER_NAMES["conv5_3"] == "features.28"
    assert len(CAFFE_LAYER_NAMES) == 15


def test_vgg_layer_config():
    m = _meta_vgg()
    assert m.fc6.dilation == (3, 3) and m.fc6.padding == (3, 3) and m.fc6.kernel_size == (3, 3)
    pools = [layer for layer in m.features if isinstance(layer, nn.MaxPool2d)]
    assert len(pools) == 5
    assert all(p.kernel_size == 2 and p.stride == 2 and p.ceil_mode for p in pools)  # pool5 is 2×2/2
    assert m.out_channels == (512, 512, 1024) and m.strides == (8, 16, 32)
    assert not any(isinstance(layer, nn.Dropout) for layer in m.modules())


@pytest.mark.parametrize("size, maps", [(320, (40, 20, 10)), (512, (64, 32, 16))])
def test_vgg_source_shapes(vgg, size, maps):
    with torch.no_grad():
        feats = vgg(torch.rand(1, 3, size, size) * 255 - 120)
    assert [tuple(f.shape) for f in feats] == [
        (1, 512, maps[0], maps[0]),
        (1, 512, maps[1], maps[1]),
        (1, 1024, maps[2], maps[2]),
    ]
    assert all(float(f.min()) >= 0.0 for f in feats)  # post-ReLU
    assert all(bool(torch.isfinite(f).all()) for f in feats)


def test_vgg_ceil_mode_on_odd_size():
    x = torch.empty(1, 3, 330, 330, device="meta")
    # ceil: 330 → 165 → 83 → 42 (conv4_3) → 21 (conv5_3) → 11 (fc7); floor: 165 → 82 → 41 → 20 → 10
    assert [f.shape[-1] for f in _meta_vgg()(x)] == [42, 21, 11]
    assert [f.shape[-1] for f in _meta_vgg(ceil_mode=False)(x)] == [41, 20, 10]


def test_vgg_outputs_equal_torchvision_features(tv_file, loaded):
    _, sd, features = tv_file  # torchvision's pools use floor mode: the same sizes at 64
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c4, c5, fc7 = loaded(x)
        torch.testing.assert_close(c4, features[:23](x), rtol=0, atol=0)  # conv4_3 after ReLU
        torch.testing.assert_close(c5, features[:30](x), rtol=0, atol=0)  # conv5_3 after ReLU
        pool5 = F.max_pool2d(c5, 2, 2)
        w6 = sd["classifier.0.weight"].view(4096, 512, 7, 7)[::4][:, :, ::3, ::3]
        y6 = F.relu(F.conv2d(pool5, w6, sd["classifier.0.bias"][::4], padding=3, dilation=3))
        y7 = F.relu(F.conv2d(y6, sd["classifier.3.weight"][::4, ::4, None, None], sd["classifier.3.bias"][::4]))
    assert fc7.shape == (1, 1024, 2, 2)
    torch.testing.assert_close(fc7, y7)


# --------------------------------------------------------------------------------- ImageNet loading


def test_load_vgg16_imagenet_subsamples_fc_layers(tv_file, loaded):
    _, sd, _ = tv_file
    own = loaded.state_dict()
    for i in VGG16_CONV_INDICES:
        assert torch.equal(own[f"features.{i}.weight"], sd[f"features.{i}.weight"])
        assert torch.equal(own[f"features.{i}.bias"], sd[f"features.{i}.bias"])
    w6 = sd["classifier.0.weight"]
    assert torch.equal(own["fc6.weight"], w6.view(4096, 512, 7, 7)[::4][:, :, ::3, ::3])
    assert torch.equal(own["fc6.bias"], sd["classifier.0.bias"][::4])
    assert torch.equal(own["fc7.weight"][:, :, 0, 0], sd["classifier.3.weight"][::4, ::4])
    assert torch.equal(own["fc7.bias"], sd["classifier.3.bias"][::4])
    # one element by hand: fc6 output 5 ↔ fc unit 20; input channel 7, tap (1, 2) ↔ pixel (3, 6)
    assert own["fc6.weight"][5, 7, 1, 2] == w6[20, 7 * 49 + 3 * 7 + 6]
    assert own["fc7.weight"][5, 9, 0, 0] == sd["classifier.3.weight"][20, 36]


def test_fc6_dilation_reads_the_7x7_taps_0_3_6(tv_file, loaded):
    """fc6 (dilation 3) at the centre of a 7×7 pool5 map = torchvision's fc6 (every 4th unit) on
    the same map with everything but rows/columns 0, 3, 6 zeroed."""
    _, sd, _ = tv_file
    p5 = torch.randn(1, 512, 7, 7)
    keep = torch.zeros(7, 7)
    keep[::3, ::3] = 1
    with torch.no_grad():
        ours = loaded.fc6(p5)[0, :, 3, 3]
        ref = F.linear((p5 * keep).flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])[0, ::4]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_load_vgg16_atrous_keys_as_they_are(tmp_path, vgg):
    src = vgg
    path = tmp_path / "vgg16_reduced.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = VGG16Atrous()
    load_vgg16_imagenet(dst, path)
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def _one_line_error(m, path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_vgg16_imagenet(m, path)
    msg = str(info.value)
    assert "\n" not in msg
    assert isinstance(info.value, ValueError)
    return msg


def test_load_errors_are_one_line_naming_the_file(tmp_path):
    m = _meta_vgg()
    missing = tmp_path / "absent.pth"
    assert _one_line_error(m, missing) == f"{missing}: checkpoint file not found"

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a torch file" * 10)
    msg = _one_line_error(m, corrupt)
    assert msg.startswith(f"{corrupt}: not a loadable weights-only torch checkpoint")

    wrong = tmp_path / "wrong_keys.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    msg = _one_line_error(m, wrong)
    assert msg.startswith(f"{wrong}: does not fit a torchvision vgg16 state dict for VGG16Atrous: 30 missing")
    assert "first: missing features.0.weight" in msg

    shaped = tmp_path / "mis_shaped.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 5, 5), "features.0.bias": torch.zeros(64)}, shaped)
    msg = _one_line_error(m, shaped)
    assert "first: features.0.weight (64, 3, 5, 5) vs (64, 3, 3, 3) (file vs expected)" in msg

    bn = tmp_path / "vgg16_bn.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.1.running_mean": torch.zeros(64)}, bn)
    assert "a vgg16_bn file?" in _one_line_error(m, bn)


class _Evil:  # a pickled class instance: refused by weights_only loading
    pass


def test_load_refuses_unsafe_pickle(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"features.0.weight": _Evil()}, path)
    msg = _one_line_error(_meta_vgg(), path)
    assert msg.startswith(f"{path}: not a loadable weights-only torch checkpoint: it contains Python objects")
    assert "_Evil" in msg


def test_load_rejects_a_non_path():
    msg = _one_line_error(_meta_vgg(), True)
    assert msg.startswith("vgg.py: the VGG-16 weights must be given as a local file path")


# ------------------------------------------------------------------------------------------ L2Norm


def test_l2norm_hand_values_and_zero_vector():
    norm = L2Norm(2, 10.0)
    assert torch.equal(norm.weight.detach(), torch.tensor([10.0, 10.0]))
    assert list(norm.state_dict()) == ["weight"]
    x = torch.tensor([[3.0, 0.0], [4.0, 0.0]]).view(1, 2, 1, 2).requires_grad_(True)  # (3,4) and (0,0)
    y = norm(x)
    torch.testing.assert_close(y[0, :, 0, 0], torch.tensor([6.0, 8.0]), rtol=1e-6, atol=0)
    assert torch.equal(y[0, :, 0, 1], torch.zeros(2))  # 0, not NaN
    y.sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and bool(torch.isfinite(norm.weight.grad).all())
    # at x = 0: dy_c/dx_c = s_c / sqrt(eps) = 10 / 1e-5
    torch.testing.assert_close(x.grad[0, :, 0, 1], torch.full((2,), 1e6), rtol=1e-4, atol=0)
    # d(sum y)/ds_c = Σ x_c / |x|: 3/5 and 4/5 (the zero position adds 0)
    torch.testing.assert_close(norm.weight.grad, torch.tensor([0.6, 0.8]))


def test_l2norm_per_channel_scale():
    norm = L2Norm(3, 1.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    y = norm(torch.tensor([2.0, 3.0, 6.0]).view(1, 3, 1, 1))  # |x| = 7
    torch.testing.assert_close(y.flatten(), torch.tensor([2 / 7, 6 / 7, 18 / 7]))


def test_l2norm_channels_last_and_low_precision():
    torch.manual_seed(3)
    norm = L2Norm(512, 10.0)
    x = torch.randn(2, 512, 5, 6) * 30
    ref = norm(x)
    torch.testing.assert_close(norm(x.to(memory_format=torch.channels_last)), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)
    # fp16: 300² + 400² overflows fp16 (max 65504); the float32 norm still gives (6, 8)
    y16 = L2Norm(2, 10.0)(torch.tensor([300.0, 400.0], dtype=torch.float16).view(1, 2, 1, 1))
    assert y16.dtype == torch.float16
    assert y16.flatten().tolist() == [6.0, 8.0]


def test_l2norm_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"l2norm.py: expected an input \[N, 512, H, W\], got \[1, 256, 2, 2\]"):
        L2Norm(512, 10.0)(torch.zeros(1, 256, 2, 2))


# -------------------------------------------------------------------------------------- Caffe xavier


def test_caffe_xavier_bounds():
    torch.manual_seed(4)
    conv = nn.Conv2d(64, 128, 3)  # fan_in 64·9 = 576
    deconv = nn.ConvTranspose2d(256, 128, 2, stride=2)  # weight [256, 128, 2, 2]: fan_in 128·4 = 512
    lin = nn.Linear(300, 50)
    seq = nn.Sequential(conv, nn.ReLU(), nn.Sequential(deconv, lin))
    assert caffe_xavier_(seq) is seq
    for m, fan_in in ((conv, 576), (deconv, 512), (lin, 300)):
        bound = math.sqrt(3.0 / fan_in)
        w = m.weight.detach()
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.99 * bound
        assert float(w.var()) == pytest.approx(1.0 / fan_in, rel=0.05)  # U(±b): var b²/3 = 1/fan_in
        assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias))


def test_vgg_default_init_is_caffe_xavier(vgg):
    w6 = vgg.fc6.weight.detach()  # fan_in 512·9
    assert float(w6.abs().max()) <= math.sqrt(3 / 4608)
    assert float(w6.abs().max()) > 0.999 * math.sqrt(3 / 4608)
    assert float(vgg.features[0].weight.detach().abs().max()) <= 1 / 3  # conv1_1: fan_in 27, bound sqrt(3/27) = 1/3
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in vgg.modules() if isinstance(m, nn.Conv2d))


# ---------------------------------------------------------------------------------- ResNet variant


def test_projection_bottleneck_shapes_and_keys():
    res6 = ProjectionBottleneck(2048, 128, 512, stride=2).eval()
    with torch.no_grad():
        assert tuple(res6(torch.randn(1, 2048, 10, 10)).shape) == (1, 512, 5, 5)
        inter = ProjectionBottleneck(512, 256, 256 * 4, stride=1).eval()
        assert tuple(inter(torch.randn(1, 512, 5, 5)).shape) == (1, 1024, 5, 5)
    assert res6.conv1.stride == (2, 2) and res6.conv2.stride == (1, 1)  # caffe style
    assert res6.downsample[0].stride == (2, 2)
    shapes = {k: tuple(v.shape) for k, v in res6.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert shapes["conv1.weight"] == (128, 2048, 1, 1)
    assert shapes["conv2.weight"] == (128, 128, 3, 3)
    assert shapes["conv3.weight"] == (512, 128, 1, 1)
    assert shapes["downsample.0.weight"] == (512, 2048, 1, 1)
    assert shapes["downsample.1.running_var"] == (512,)
    assert not any(k.endswith(".bias") and not k.startswith(("bn", "downsample.1")) for k in shapes)


def test_projection_bottleneck_init_statistics():
    torch.manual_seed(5)
    block = ProjectionBottleneck(2048, 128, 512, stride=2)
    for conv in (block.conv1, block.conv2, block.conv3, block.downsample[0]):
        assert conv.bias is None
        w = conv.weight.detach()
        assert float(w.std()) == pytest.approx(0.01, rel=0.03)
        assert abs(float(w.mean())) < 5e-4
    for bn in (block.bn1, block.bn2, block.bn3, block.downsample[1]):
        assert torch.equal(bn.weight.detach(), torch.ones_like(bn.weight))
        assert torch.equal(bn.bias.detach(), torch.zeros_like(bn.bias))


def test_projection_bottleneck_forward_value():
    torch.manual_seed(6)
    block = ProjectionBottleneck(8, 4, 16, stride=2).eval()
    for bn in (block.bn1, block.bn2, block.bn3, block.downsample[1]):  # non-trivial eval statistics
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.1, 0.1)
    x = torch.randn(2, 8, 7, 7)

    def bn(t, m):
        return (t - m.running_mean[:, None, None]) / torch.sqrt(m.running_var[:, None, None] + 1e-5) * m.weight[
            :, None, None
        ] + m.bias[:, None, None]

    with torch.no_grad():
        y = F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2), block.bn1))
        y = F.relu(bn(F.conv2d(y, block.conv2.weight, padding=1), block.bn2))
        y = bn(F.conv2d(y, block.conv3.weight), block.bn3)
        ref = F.relu(y + bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1]))
        out = block(x)
    assert out.shape == (2, 16, 4, 4)
    torch.testing.assert_close(out, ref)


def test_conv_bn_and_deconv_bn():
    torch.manual_seed(7)
    tcb = conv_bn(512, 256)
    assert list(dict(tcb.named_children())) == ["conv", "bn", "relu"]
    assert tcb.conv.bias is None and tcb.conv.padding == (1, 1)
    assert float(tcb.conv.weight.detach().std()) == pytest.approx(0.01, rel=0.03)
    no_relu = conv_bn(256, 256, relu=False)
    assert list(dict(no_relu.named_children())) == ["conv", "bn"]
    up = deconv_bn(256).eval()
    assert list(dict(up.named_children())) == ["deconv", "bn"]
    assert up.deconv.bias is None and tuple(up.deconv.weight.shape) == (256, 256, 2, 2)
    assert float(up.deconv.weight.detach().std()) == pytest.approx(0.01, rel=0.03)
    with torch.no_grad():
        assert tuple(up(torch.randn(1, 256, 5, 5)).shape) == (1, 256, 10, 10)  # §18 item 2
        assert tuple(tcb(torch.randn(1, 512, 5, 5)).shape) == (1, 256, 5, 5)
