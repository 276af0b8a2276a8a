"""Tests for the ResNet / ResNeXt (+DCNv2) backbone (spec §1.1, §6.3, §8, Appendix A)."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from varifocal.models.backbones import resnet as R
from varifocal.models.layers.dcn import ModulatedDeformConv2d

GOLDEN_CKPT = Path(__file__).resolve().parents[2].parent / "shared/golden/vfnet_r50_coco80/checkpoint.pth"


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _meta(builder, **kw):
    # Shape-only tests: build on the meta device (no memory, no init cost).
    with torch.device("meta"):
        return builder(**kw)


@pytest.fixture(scope="module")
def golden_backbone_shapes():
    if not GOLDEN_CKPT.is_file():
        pytest.skip(f"golden checkpoint absent: {GOLDEN_CKPT} (../shared not available)")
    sd = torch.load(GOLDEN_CKPT, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("backbone.") :]: tuple(v.shape) for k, v in sd.items() if k.startswith("backbone.")}


def test_resnet50_keys_equal_golden_checkpoint(golden_backbone_shapes):
    ours = _shapes(_meta(R.resnet50))
    assert len(golden_backbone_shapes) == 318  # spec §8.2
    assert list(ours) == list(golden_backbone_shapes)  # same names, same order
    assert ours == golden_backbone_shapes


def test_resnet50_param_count_matches_spec():
    m = _meta(R.resnet50)
    assert sum(p.numel() for p in m.parameters()) == 23_508_032  # spec §8.2


def test_dcn_variant_adds_only_offset_convs(golden_backbone_shapes):
    ours = _shapes(_meta(R.resnet50, stage_with_dcn=(False, True, True, True)))
    extra = {k: v for k, v in ours.items() if k not in golden_backbone_shapes}
    assert all(ours[k] == v for k, v in golden_backbone_shapes.items())
    expected = {}
    for stage, planes, blocks in ((2, 128, 4), (3, 256, 6), (4, 512, 3)):
        for b in range(blocks):
            expected[f"layer{stage}.{b}.conv2.conv_offset.weight"] = (27, planes, 3, 3)
            expected[f"layer{stage}.{b}.conv2.conv_offset.bias"] = (27,)
    assert extra == expected


def test_dcn_variant_modules():
    m = _meta(R.resnet50, stage_with_dcn=(False, True, True, True))
    assert isinstance(m.layer2[0].conv2, ModulatedDeformConv2d)
    assert m.layer2[0].conv2.stride == (2, 2)
    assert isinstance(m.layer1[0].conv2, nn.Conv2d)
    assert "layer2.0.conv2.bias" not in m.state_dict()


def test_resnet101_and_resnext_shapes():
    r101 = _shapes(_meta(R.resnet101))
    assert {int(k.split(".")[1]) for k in r101 if k.startswith("layer3.")} == set(range(23))
    x32 = _shapes(_meta(R.resnext101_32x4d))
    assert x32["layer1.0.conv2.weight"] == (128, 4, 3, 3)
    assert x32["layer1.0.conv3.weight"] == (256, 128, 1, 1)
    assert x32["layer4.0.conv2.weight"] == (1024, 32, 3, 3)  # floor(512*4/64)*32
    x64 = _shapes(_meta(R.resnext101_64x4d))
    assert x64["layer1.0.conv2.weight"] == (256, 4, 3, 3)
    xd = _shapes(_meta(R.resnext101_32x4d, stage_with_dcn=(False, True, True, True)))
    assert xd["layer2.0.conv2.weight"] == (256, 8, 3, 3)
    assert xd["layer2.0.conv2.conv_offset.weight"] == (27, 256, 3, 3)


def test_out_channels_attribute():
    assert _meta(R.resnet50).out_channels == [512, 1024, 2048]
    assert _meta(R.resnet50).strides == [8, 16, 32]
    assert _meta(R.resnet18, out_indices=(0, 1, 2, 3)).out_channels == [64, 128, 256, 512]
    assert _meta(R.resnext101_64x4d, out_indices=(3,)).out_channels == [2048]


def test_forward_strides_and_channels(r18):
    torch.manual_seed(0)
    m = R.resnet18(out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = m(torch.randn(2, 3, 64, 96))
        assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
        outs = r18(torch.randn(1, 3, 64, 64))  # default out_indices (1, 2, 3): C3..C5
        assert [tuple(o.shape) for o in outs] == [(1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


def test_norm_eval_keeps_bn_frozen_in_train_mode():
    torch.manual_seed(0)
    m = R.resnet18(frozen_stages=-1, norm_eval=True)
    m.train()
    assert m.training
    bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and not any(bn.training for bn in bns)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.randn(2, 3, 32, 32) * 3 + 1)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # BN affines stay trainable when not frozen
    assert m.layer2[0].bn1.weight.requires_grad and m.bn1.weight.requires_grad


def test_norm_eval_false_updates_stats_of_unfrozen_stages():
    torch.manual_seed(0)
    m = R.resnet18(frozen_stages=1, norm_eval=False).train()
    assert m.layer2[0].bn1.training and not m.layer1[0].bn1.training and not m.bn1.training
    rm_l1 = m.layer1[0].bn1.running_mean.clone()
    m(torch.randn(2, 3, 32, 32) + 1)
    assert torch.equal(m.layer1[0].bn1.running_mean, rm_l1)
    assert int(m.layer2[0].bn1.num_batches_tracked) == 1
    assert int(m.layer1[0].bn1.num_batches_tracked) == 0


def test_frozen_stages():
    m = _meta(R.resnet50, frozen_stages=1)
    for name, p in m.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        assert p.requires_grad is (not frozen), name
    m0 = _meta(R.resnet50, frozen_stages=0)
    assert not m0.conv1.weight.requires_grad and m0.layer1[0].conv1.weight.requires_grad
    mnone = _meta(R.resnet50, frozen_stages=-1)
    assert all(p.requires_grad for p in mnone.parameters())
    m3 = _meta(R.resnet50, frozen_stages=3)
    assert not m3.layer3[5].bn3.weight.requires_grad and m3.layer4[0].conv1.weight.requires_grad
    # frozen modules stay in eval even after train(), norm_eval off
    m.norm_eval = False
    m.train()
    assert not m.layer1.training and not m.bn1.training and m.layer2.training


def test_init_weights():
    torch.manual_seed(0)
    m = R.resnet50(stage_with_dcn=(False, False, False, True))
    assert torch.equal(m.layer3[0].bn2.weight, torch.ones(256))
    assert torch.equal(m.layer3[0].bn2.bias, torch.zeros(256))
    # kaiming normal, fan_out, relu: std = sqrt(2 / (out * k * k))
    w = m.layer3[0].conv2.weight
    assert abs(w.std().item() - (2.0 / (256 * 9)) ** 0.5) < 0.05 * (2.0 / (256 * 9)) ** 0.5
    off = m.layer4[1].conv2.conv_offset
    assert torch.count_nonzero(off.weight) == 0 and torch.count_nonzero(off.bias) == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        R.ResNet(42)
    with pytest.raises(ValueError, match="BasicBlock"):
        R.ResNet(18, groups=32, base_width=4)
    with pytest.raises(ValueError, match="out_indices"):
        R.ResNet(18, out_indices=(4,))


@pytest.fixture(scope="module")
def tv18_state():
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.fixture(scope="module")
def r18():
    return R.resnet18()


def _tv_features(tv: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    outs = []
    for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
        x = layer(x)
        outs.append(x)
    return outs


def test_load_torchvision_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for mod in tv.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    ours = R.resnet18(out_indices=(0, 1, 2, 3))
    missing = R.load_torchvision_weights(ours, str(path))
    assert missing == []
    ours.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), _tv_features(tv, x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # frozen flags survive loading
    assert not ours.layer1[0].conv1.weight.requires_grad


def test_load_reports_missing_keys(tmp_path, tv18_state, r18):
    sd = dict(tv18_state)
    del sd["layer4.1.bn2.running_var"]
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": sd}, path)
    assert R.load_torchvision_weights(r18, str(path)) == ["layer4.1.bn2.running_var"]


def test_load_errors_name_the_file(tmp_path, tv18_state, r18):
    sd = dict(tv18_state)
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    model = r18
    bad = tmp_path / "misshaped.pth"
    torch.save(sd, bad)
    with pytest.raises(ValueError, match=r"misshaped\.pth.*conv1\.weight") as e:
        R.load_torchvision_weights(model, str(bad))
    assert "\n" not in str(e.value)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"other\.pth.*none of"):
        R.load_torchvision_weights(model, str(other))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        R.load_torchvision_weights(model, str(junk))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        R.load_torchvision_weights(model, str(tmp_path / "nope.pth"))


def test_load_from_url_uses_hub(monkeypatch, tv18_state, r18):
    sd = tv18_state
    calls = {}

    def fake(url, **kw):
        calls["url"], calls["kw"] = url, kw
        return sd

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake)
    m = r18
    assert R.load_torchvision_weights(m, "https://example.org/r18.pth") == []
    assert calls["url"] == "https://example.org/r18.pth" and calls["kw"]["weights_only"] is True
    assert torch.equal(m.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])


def test_dcn_with_doubled_weights_equals_plain_network():
    # A fresh DCN samples the regular grid with mask 0.5, so DCN(2w) == conv(w) exactly.
    torch.manual_seed(0)
    plain = R.resnet50(out_indices=(3,)).eval()
    with torch.device("meta"):  # skip a second random init: every tensor is loaded below
        dcn = R.resnet50(out_indices=(3,), stage_with_dcn=(False, False, True, True))
    dcn = dcn.to_empty(device="cpu").eval()
    missing = dcn.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert len(missing) == 2 * (6 + 3) and all("conv_offset" in k for k in missing)
    with torch.no_grad():
        for mod in dcn.modules():
            if isinstance(mod, ModulatedDeformConv2d):
                mod.init_offset()
                mod.weight.mul_(2.0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dcn(x)[0], plain(x)[0], rtol=1e-4, atol=1e-4)
