"""Tests for the FPN neck (spec §1.2, §8.2, §10 item 16)."""

from pathlib import Path

import pytest
import torch

from varifocal.models.necks import FPN

GOLDEN_CKPT = Path(__file__).resolve().parents[2].parent / "shared/golden/vfnet_r50_coco80/checkpoint.pth"


def test_keys_equal_golden_neck():
    if not GOLDEN_CKPT.is_file():
        pytest.skip(f"golden checkpoint absent: {GOLDEN_CKPT} (../shared not available)")
    sd = torch.load(GOLDEN_CKPT, map_location="cpu", weights_only=True)["state_dict"]
    golden = {k[len("neck.") :]: tuple(v.shape) for k, v in sd.items() if k.startswith("neck.")}
    with torch.device("meta"):
        fpn = FPN([512, 1024, 2048], 256, num_outs=5, add_extra_convs="on_output")
    ours = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    assert list(ours) == list(golden) and ours == golden
    assert sum(v.numel() for v in fpn.state_dict().values()) == 3_868_672  # spec §8.2


@pytest.mark.parametrize("mode", ["on_output", "on_input", "on_lateral", "none"])
def test_level_sizes_800x1216(mode):
    torch.manual_seed(0)
    fpn = FPN([3, 5, 7], 4, num_outs=5, add_extra_convs=mode)
    feats = [torch.randn(1, 3, 100, 152), torch.randn(1, 5, 50, 76), torch.randn(1, 7, 25, 38)]
    with torch.no_grad():
        outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [
        (1, 4, 100, 152),
        (1, 4, 50, 76),
        (1, 4, 25, 38),
        (1, 4, 13, 19),
        (1, 4, 7, 10),
    ]
    n_convs = 3 if mode == "none" else 5
    assert len(fpn.fpn_convs) == n_convs
    if mode == "on_input":
        assert fpn.fpn_convs[3].conv.weight.shape == (4, 7, 3, 3)


def _set_identity(fpn: FPN, biases: list[float]) -> None:
    """1×1 laterals = identity, 3×3 convs = identity at the centre tap, given biases."""
    convs = [h.conv for h in fpn.lateral_convs] + [h.conv for h in fpn.fpn_convs]
    with torch.no_grad():
        for conv, b in zip(convs, biases):
            conv.weight.zero_()
            k = conv.kernel_size[0] // 2
            for c in range(conv.out_channels):
                conv.weight[c, c, k, k] = 1.0
            conv.bias.fill_(b)


def test_top_down_sum_and_extra_levels_analytic():
    # 2 channels everywhere; C3 8×10, C4 5×5, C5 3×3 (non-2× sizes exercise size-based nearest).
    torch.manual_seed(0)
    fpn = FPN([2, 2, 2], 2, num_outs=5, add_extra_convs="on_output")
    b_lat, b_out, b6, b7 = [1.0, 2.0, 3.0], [0.5, -0.5, 0.25], -4.0, 0.125
    _set_identity(fpn, b_lat + b_out + [b6, b7])
    c3, c4, c5 = torch.randn(1, 2, 8, 10), torch.randn(1, 2, 5, 5), torch.randn(1, 2, 3, 3)
    with torch.no_grad():
        p3, p4, p5, p6, p7 = fpn([c3, c4, c5])
    # nearest, dst -> floor(dst * in / out): 3 -> 5 rows/cols: [0, 0, 1, 1, 2];
    # 5 -> 8 rows: [0, 0, 1, 1, 2, 3, 3, 4]; 5 -> 10 cols: [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    i53 = torch.tensor([0, 0, 1, 1, 2])
    r85, c105 = torch.tensor([0, 0, 1, 1, 2, 3, 3, 4]), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    l5 = c5 + 3.0
    l4 = c4 + 2.0 + l5[..., i53, :][..., :, i53]
    l3 = c3 + 1.0 + l4[..., r85, :][..., :, c105]
    torch.testing.assert_close(p5, l5 + 0.25)
    torch.testing.assert_close(p4, l4 - 0.5)
    torch.testing.assert_close(p3, l3 + 0.5)
    # P6 = conv3×3/2(P5 output), no ReLU: centre taps at (0, 0), (0, 2), (2, 0), (2, 2)
    exp6 = p5[..., ::2, ::2] + b6
    assert (exp6 < 0).any()  # the no-ReLU path matters
    torch.testing.assert_close(p6, exp6)
    # P7 = conv3×3/2(ReLU(P6)): the centre tap of the single output reads P6[0, 0]
    torch.testing.assert_close(p7, exp6[..., :1, :1].clamp(min=0) + b7)


def test_on_input_and_no_relu_variants_analytic():
    torch.manual_seed(0)
    fpn = FPN([2, 2], 2, num_outs=4, add_extra_convs="on_input", relu_before_extra_convs=False)
    _set_identity(fpn, [0.0, 0.0, 0.0, 0.0, -3.0, 0.0])
    c4, c5 = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        outs = fpn([c4, c5])
    exp_p5 = c5[..., ::2, ::2] - 3.0  # from the input C5, not the output
    torch.testing.assert_close(outs[2], exp_p5)
    torch.testing.assert_close(outs[3], exp_p5[..., ::2, ::2])  # no ReLU: negatives stay


def test_none_mode_uses_max_pool_subsampling():
    fpn = FPN([2], 2, num_outs=3, add_extra_convs="none")
    _set_identity(fpn, [0.0, 0.0])
    x = torch.randn(1, 2, 5, 7)
    with torch.no_grad():
        p, q, r = fpn([x])
    torch.testing.assert_close(p, x)
    torch.testing.assert_close(q, x[..., ::2, ::2])
    torch.testing.assert_close(r, x[..., ::4, ::4])
    assert [k for k in fpn.state_dict()] == [
        "lateral_convs.0.conv.weight",
        "lateral_convs.0.conv.bias",
        "fpn_convs.0.conv.weight",
        "fpn_convs.0.conv.bias",
    ]


def test_bool_flags_and_init():
    torch.manual_seed(0)
    fpn = FPN([8, 16], 8, num_outs=4, add_extra_convs=True)
    assert fpn.add_extra_convs == "on_output"
    assert FPN([8], 8, num_outs=2, add_extra_convs=False).add_extra_convs == "none"
    for name, p in fpn.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:  # xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out))
            rf = p.shape[2] * p.shape[3]
            bound = (6.0 / (p.shape[1] * rf + p.shape[0] * rf)) ** 0.5
            assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound, name


def test_bad_arguments():
    with pytest.raises(ValueError, match="add_extra_convs"):
        FPN([8], 8, add_extra_convs="on_top")
    with pytest.raises(ValueError, match="num_outs"):
        FPN([8, 8, 8], 8, num_outs=2)
    with pytest.raises(ValueError, match="expected 2 input"):
        FPN([2, 2], 2, num_outs=2)([torch.zeros(1, 2, 4, 4)])


def test_group_norm_variant_keys_and_normalised_outputs():
    """RepPoints' FPN (zoo_spec §1.3, §6.7): every conv without bias → GN; with GN weight 1 /
    bias 0 each output level has zero mean and unit variance per group (no activation after)."""
    torch.manual_seed(0)
    fpn = FPN([3, 5, 7], 8, num_outs=5, add_extra_convs="on_input", relu_before_extra_convs=False, norm_groups=2)
    keys = set(fpn.state_dict())
    assert "lateral_convs.0.conv.bias" not in keys and "fpn_convs.4.conv.bias" not in keys
    assert {"lateral_convs.2.gn.weight", "fpn_convs.3.gn.bias"} <= keys and len(keys) == 3 * 3 + 5 * 3
    assert fpn.fpn_convs[3].conv.weight.shape == (8, 7, 3, 3)  # P6 from C5
    feats = [torch.randn(1, 3, 16, 16), torch.randn(1, 5, 8, 8), torch.randn(1, 7, 4, 4)]
    with torch.no_grad():
        outs = fpn(feats)
    for out in outs:
        groups = out.reshape(1, 2, -1)
        assert torch.allclose(groups.mean(-1), torch.zeros(1, 2), atol=1e-5)
        assert torch.allclose(groups.var(-1, unbiased=False), torch.ones(1, 2), atol=1e-3)
    assert float(outs[3].min()) < 0  # no ReLU anywhere
    with pytest.raises(ValueError, match="not divisible by norm_groups"):
        FPN([3], 6, num_outs=1, norm_groups=4)
