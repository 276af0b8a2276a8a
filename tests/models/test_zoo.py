"""Every zoo builder's state_dict has exactly the official MMDetection key names and shapes
(spec §8.2, §8.3, Appendix A). The expected layout is derived here from the spec's rules,
independently of the model code, and for R-50 also checked against the golden checkpoint."""

from __future__ import annotations

import pytest
import torch

import varifocal

from ..conftest import shared_path

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _bn(prefix: str, c: int) -> dict[str, tuple]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def expected_backbone(depth: int, groups: int = 1, base_width: int = 64, dcn: bool = False) -> dict[str, tuple]:
    keys = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for stage, n in enumerate(STAGE_BLOCKS[depth]):
        planes = 64 * 2**stage
        for b in range(n):
            p = f"backbone.layer{stage + 1}.{b}"
            if bottleneck:
                width = (planes * base_width // 64) * groups
                keys[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
                keys.update(_bn(f"{p}.bn1", width))
                keys[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
                if dcn and stage >= 1:
                    keys[f"{p}.conv2.conv_offset.weight"] = (27, width, 3, 3)
                    keys[f"{p}.conv2.conv_offset.bias"] = (27,)
                keys.update(_bn(f"{p}.bn2", width))
                keys[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
                keys.update(_bn(f"{p}.bn3", planes * 4))
            else:
                keys[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                keys.update(_bn(f"{p}.bn1", planes))
                keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                keys.update(_bn(f"{p}.bn2", planes))
            if b == 0 and (stage > 0 or inplanes != planes * expansion):
                keys[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", planes * expansion))
            inplanes = planes * expansion
    return keys


def expected_neck(in_channels, out: int = 256) -> dict[str, tuple]:
    keys = {}
    for i, c in enumerate(in_channels):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (out, c, 1, 1)
        keys[f"neck.lateral_convs.{i}.conv.bias"] = (out,)
    for i in range(5):
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (out, out, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (out,)
    return keys


def expected_head(num_classes: int, dcn: bool, c: int = 256, stacked: int = 3) -> dict[str, tuple]:
    keys = {}
    for tower in ("cls_convs", "reg_convs"):
        for i in range(stacked):
            keys[f"bbox_head.{tower}.{i}.conv.weight"] = (c, c, 3, 3)
            if dcn and i == stacked - 1:
                keys[f"bbox_head.{tower}.{i}.conv.conv_offset.weight"] = (27, c, 3, 3)
                keys[f"bbox_head.{tower}.{i}.conv.conv_offset.bias"] = (27,)
            keys[f"bbox_head.{tower}.{i}.gn.weight"] = (c,)
            keys[f"bbox_head.{tower}.{i}.gn.bias"] = (c,)
    keys.update(
        {
            "bbox_head.vfnet_reg_conv.conv.weight": (c, c, 3, 3),
            "bbox_head.vfnet_reg_conv.gn.weight": (c,),
            "bbox_head.vfnet_reg_conv.gn.bias": (c,),
            "bbox_head.vfnet_reg.weight": (4, c, 3, 3),
            "bbox_head.vfnet_reg.bias": (4,),
            "bbox_head.vfnet_reg_refine_dconv.weight": (c, c, 3, 3),
            "bbox_head.vfnet_reg_refine.weight": (4, c, 3, 3),
            "bbox_head.vfnet_reg_refine.bias": (4,),
            "bbox_head.vfnet_cls_dconv.weight": (c, c, 3, 3),
            "bbox_head.vfnet_cls.weight": (num_classes, c, 3, 3),
            "bbox_head.vfnet_cls.bias": (num_classes,),
        }
    )
    for i in range(5):
        keys[f"bbox_head.scales.{i}.scale"] = ()
        keys[f"bbox_head.scales_refine.{i}.scale"] = ()
    return keys


ZOO = {
    # name: (depth, groups, base_width, dcn)
    "vfnet_r18_fpn": (18, 1, 64, False),
    "vfnet_r34_fpn": (34, 1, 64, False),
    "vfnet_r50_fpn": (50, 1, 64, False),
    "vfnet_r50_fpn_dcn": (50, 1, 64, True),
    "vfnet_r101_fpn": (101, 1, 64, False),
    "vfnet_r101_fpn_dcn": (101, 1, 64, True),
    "vfnet_x101_32x4d_fpn": (101, 32, 4, False),
    "vfnet_x101_32x4d_fpn_dcn": (101, 32, 4, True),
    "vfnet_x101_64x4d_fpn": (101, 64, 4, False),
    "vfnet_x101_64x4d_fpn_dcn": (101, 64, 4, True),
}


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("num_classes", [80, 3])
def test_zoo_state_dict_has_official_keys_and_shapes(name, num_classes):
    depth, groups, base_width, dcn = ZOO[name]
    with torch.device("meta"):
        model = varifocal.build_model(name, num_classes=num_classes)
    in_channels = [128, 256, 512] if depth < 50 else [512, 1024, 2048]
    expected = {
        **expected_backbone(depth, groups, base_width, dcn),
        **expected_neck(in_channels),
        **expected_head(num_classes, dcn),
    }
    got = _shapes(model)
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_r50_matches_the_golden_checkpoint_exactly():
    path = shared_path("golden", "vfnet_r50_coco80", "checkpoint.pth")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert len(state) == 373  # spec §8.2
    with torch.device("meta"):
        model = varifocal.build_model("vfnet_r50_fpn", num_classes=80)
    assert list(_shapes(model)) == list(state)  # same names, same order
    assert _shapes(model) == {k: tuple(v.shape) for k, v in state.items()}
    # R-50 parameter counts of spec §8.2.
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.")) == 23_508_032
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("neck.")) == 3_868_672
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("bbox_head.")) == 5_514_850


def test_list_and_unknown_model():
    names = varifocal.list_models()
    zoo = {
        "retinanet_r50_fpn",
        "retinanet_r101_fpn",
        "retinanet_x101_32x4d_fpn",
        "retinanet_x101_64x4d_fpn",
        "fcos_r50_caffe_fpn_gn_head",
        "fcos_r101_caffe_fpn_gn_head",
        "fcos_x101_64x4d_fpn_gn_head",
        "fcos_r50_caffe_fpn_gn_head_tricks",
        "atss_r50_fpn",
        "atss_r101_fpn",
        "fovea_r50_fpn",
        "fovea_r101_fpn",
        "reppoints_moment_r50_fpn_gn",
        "reppoints_moment_r101_fpn_gn",
    }
    lite = {
        "vfnet_lite0_fpn",
        "retinanet_lite0_fpn",
        "fcos_lite0_fpn",
        "atss_lite0_fpn",
        "fovea_lite0_fpn",
        "reppoints_moment_lite0_fpn",
    }
    refinedet = {f"refinedet{size}_{trunk}" for size in (320, 512) for trunk in ("vgg16", "r101", "lite0")}
    assert set(ZOO) | zoo | lite | refinedet == set(names) and names == sorted(names)
    with pytest.raises(ValueError, match="did you mean vfnet_r50_fpn"):
        varifocal.build_model("vfnet_r5O_fpn")


def test_whole_detector_under_bfloat16_autocast():
    """Spec §2.2: distances and losses stay float32 under autocast (bfloat16 on CPU)."""
    torch.manual_seed(0)
    model = varifocal.build_model("vfnet_r18_fpn", num_classes=3, scale=(96, 64))
    images = [torch.rand(3, 64, 96) * 255, torch.rand(3, 50, 70) * 255]
    targets = [
        {"boxes": torch.tensor([[10.0, 5.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)},
    ]
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
        outs = model.bbox_head(model.extract_feat(model.preprocessor(images)[0]))
    assert outs[0][0].dtype == torch.bfloat16  # logits in the autocast dtype
    assert outs[1][0].dtype == torch.float32 and outs[2][0].dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        dets = model(images)
    assert len(dets) == 2 and dets[0]["boxes"].dtype == torch.float32


def test_variant_test_cfg_merges_with_the_callers():
    """FCOS tricks tests at NMS 0.6 (zoo_spec §1.15); a config's score_thr keeps that NMS."""
    with torch.device("meta"):
        tricks = varifocal.build_model("fcos_r50_caffe_fpn_gn_head_tricks", test_cfg={"score_thr": 0.3})
        base = varifocal.build_model("fcos_r50_caffe_fpn_gn_head", test_cfg={"score_thr": 0.3})
    assert (tricks.bbox_head.test_cfg.nms_iou, tricks.bbox_head.test_cfg.score_thr) == (0.6, 0.3)
    assert (base.bbox_head.test_cfg.nms_iou, base.bbox_head.test_cfg.score_thr) == (0.5, 0.3)
