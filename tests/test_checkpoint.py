"""Checkpoint reading, loading, saving and conversion (spec §8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import varifocal
from varifocal.checkpoint import (
    CheckpointError,
    convert_mmdet_checkpoint,
    infer_model_name,
    read_checkpoint,
    save_checkpoint,
)

from .conftest import shared_path


def golden_ckpt():
    return shared_path("golden", "vfnet_r50_coco80", "checkpoint.pth")


def test_mmdet_checkpoint_loads_verbatim_with_class_names():
    path = golden_ckpt()
    model = varifocal.build_model("vfnet_r50_fpn", num_classes=80)
    info = varifocal.load_checkpoint(model, path)
    assert info["format"] == "mmdet" and info["missing"] == [] and info["unexpected"] == []
    assert model.class_names[:3] == ["person", "bicycle", "car"] and len(model.class_names) == 80
    ref = torch.load(path, weights_only=True)["state_dict"]
    # float16 storage is cast to the model's float32; values are identical.
    assert model.bbox_head.vfnet_cls.weight.dtype == torch.float32
    assert torch.equal(model.bbox_head.vfnet_cls.weight, ref["bbox_head.vfnet_cls.weight"].float())
    assert torch.equal(model.backbone.layer1[0].bn1.running_var, ref["backbone.layer1.0.bn1.running_var"].float())


def test_wrong_class_count_lists_mis_shaped_keys():
    path = golden_ckpt()
    model = varifocal.build_model("vfnet_r50_fpn", num_classes=3)
    with pytest.raises(CheckpointError) as err:
        varifocal.load_checkpoint(model, path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert (
        "2 mis-shaped" in msg
        and "bbox_head.vfnet_cls.weight: checkpoint [80, 256, 3, 3] vs model [3, 256, 3, 3]" in msg
    )
    assert err.value.mismatched and not err.value.missing


def test_other_architecture_lists_missing_and_unexpected_keys():
    path = golden_ckpt()
    with torch.device("meta"):
        model = varifocal.build_model("vfnet_r50_fpn_dcn", num_classes=80)
    with pytest.raises(CheckpointError, match=r"missing \(backbone\.layer2\.0\.conv2\.conv_offset\.weight"):
        varifocal.load_checkpoint(model, path)


def test_roundtrip_and_partial_load(tmp_path):
    torch.manual_seed(0)
    model = varifocal.build_model("vfnet_r18_fpn", num_classes=3)
    model.class_names = ["a", "b", "c"]
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, model_name="vfnet_r18_fpn", model_kwargs={"num_classes": 3})
    ckpt = read_checkpoint(path)
    assert ckpt["format"] == "varifocal" and ckpt["model_name"] == "vfnet_r18_fpn"
    assert ckpt["model_kwargs"] == {"num_classes": 3}
    torch.manual_seed(1)
    other = varifocal.build_model("vfnet_r18_fpn", num_classes=3)
    varifocal.load_checkpoint(other, path, prefixes=("bbox_head.",))
    assert torch.equal(other.bbox_head.vfnet_cls.weight, model.bbox_head.vfnet_cls.weight)
    assert not torch.equal(other.neck.fpn_convs[0].conv.weight, model.neck.fpn_convs[0].conv.weight)
    varifocal.load_checkpoint(other, path)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))
    assert other.class_names == ["a", "b", "c"]


def test_refuses_pickled_objects_and_garbage(tmp_path):
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Path("/etc")}, bad)
    model = varifocal.build_model("vfnet_r18_fpn", num_classes=3)
    with pytest.raises(CheckpointError, match="not a loadable weights-only torch checkpoint"):
        varifocal.load_checkpoint(model, bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=str(junk)):
        varifocal.load_checkpoint(model, junk)
    with pytest.raises(CheckpointError, match="not found"):
        varifocal.load_checkpoint(model, tmp_path / "absent.pth")


def test_infer_model_name_from_keys():
    for name, classes in [
        ("vfnet_r50_fpn", 80),
        ("vfnet_r101_fpn_dcn", 3),
        ("vfnet_x101_64x4d_fpn_dcn", 80),
        ("vfnet_x101_32x4d_fpn", 5),
        ("vfnet_r18_fpn", 2),
        ("vfnet_lite0_fpn", 3),
        ("retinanet_r50_fpn", 80),
        ("retinanet_x101_64x4d_fpn", 7),
        ("retinanet_lite0_fpn", 3),
        ("fcos_r50_caffe_fpn_gn_head", 80),
        ("fcos_r50_caffe_fpn_gn_head_tricks", 4),
        ("fcos_r101_caffe_fpn_gn_head", 2),
        ("fcos_x101_64x4d_fpn_gn_head", 80),
        ("fcos_lite0_fpn", 3),
        ("atss_r50_fpn", 80),
        ("atss_r101_fpn", 6),
        ("atss_lite0_fpn", 3),
        ("fovea_r50_fpn", 80),
        ("fovea_r101_fpn", 5),
        ("fovea_lite0_fpn", 3),
        ("reppoints_moment_r50_fpn_gn", 80),
        ("reppoints_moment_r101_fpn_gn", 4),
        ("reppoints_moment_lite0_fpn", 3),
    ]:
        with torch.device("meta"):
            model = varifocal.build_model(name, num_classes=classes)
        assert infer_model_name(model.state_dict()) == (name, {"num_classes": classes})


def test_unknown_head_is_refused_in_one_line():
    with pytest.raises(
        CheckpointError, match=r"not a checkpoint of a detector this package builds \(bbox_head modules: \['foo'\]\)"
    ):
        infer_model_name({"bbox_head.foo.weight": torch.zeros(1)})


def test_legacy_fcos_predictor_names_load(tmp_path):
    """Zoo files from before MMDetection's July 2020 refactor call the predictors fcos_cls,
    fcos_reg, fcos_centerness (zoo_spec §1.18); they load into conv_* and convert by name."""
    torch.manual_seed(0)
    model = varifocal.build_model("fcos_lite0_fpn", num_classes=3)
    legacy = {k.replace("bbox_head.conv_", "bbox_head.fcos_"): v for k, v in model.state_dict().items()}
    assert "bbox_head.fcos_centerness.weight" in legacy and "bbox_head.conv_cls.weight" not in legacy
    src = tmp_path / "fcos_legacy.pth"
    torch.save({"state_dict": legacy, "meta": {"CLASSES": ("a", "b", "c")}}, src)
    fresh = varifocal.build_model("fcos_lite0_fpn", num_classes=3)
    varifocal.load_checkpoint(fresh, src)
    assert torch.equal(fresh.bbox_head.conv_centerness.weight, model.bbox_head.conv_centerness.weight)
    info = convert_mmdet_checkpoint(src, tmp_path / "converted.pth")
    assert info["model_name"] == "fcos_lite0_fpn" and info["class_names"] == ["a", "b", "c"]


def test_legacy_fovea_predictor_names_load(tmp_path):
    """FoveaBox zoo files from before MMDetection's July 2020 refactor call the predictors
    fovea_cls and fovea_reg (zoo_spec §1.18, §5.7); they load into conv_* and convert by name."""
    torch.manual_seed(0)
    model = varifocal.build_model("fovea_lite0_fpn", num_classes=3)
    legacy = {k.replace("bbox_head.conv_", "bbox_head.fovea_"): v for k, v in model.state_dict().items()}
    assert "bbox_head.fovea_reg.weight" in legacy and "bbox_head.conv_cls.weight" not in legacy
    src = tmp_path / "fovea_legacy.pth"
    torch.save({"state_dict": legacy, "meta": {"CLASSES": ("a", "b", "c")}}, src)
    fresh = varifocal.build_model("fovea_lite0_fpn", num_classes=3)
    varifocal.load_checkpoint(fresh, src)
    assert torch.equal(fresh.bbox_head.conv_reg.weight, model.bbox_head.conv_reg.weight)
    assert torch.equal(fresh.bbox_head.conv_cls.bias, model.bbox_head.conv_cls.bias)
    info = convert_mmdet_checkpoint(src, tmp_path / "converted.pth")
    assert info["model_name"] == "fovea_lite0_fpn" and info["class_names"] == ["a", "b", "c"]
    assert "bbox_head.conv_cls.weight" in read_checkpoint(tmp_path / "converted.pth")["state_dict"]


def test_reppoints_checkpoint_round_trip_and_refusals(tmp_path):
    """An MMDetection-layout RepPoints file loads (``moment_transfer`` included) and converts by
    name (zoo_spec §6.7); the minmax / grid variants (no ``moment_transfer``) and the non-GN R-50
    layout are refused in one line."""
    torch.manual_seed(0)
    model = varifocal.build_model("reppoints_moment_lite0_fpn", num_classes=3)
    with torch.no_grad():
        model.bbox_head.moment_transfer.copy_(torch.tensor([0.25, -0.5]))
    src = tmp_path / "reppoints.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"CLASSES": ("a", "b", "c")}}, src)
    fresh = varifocal.build_model("reppoints_moment_lite0_fpn", num_classes=3)
    varifocal.load_checkpoint(fresh, src)
    assert fresh.bbox_head.moment_transfer.detach().tolist() == [0.25, -0.5]
    info = convert_mmdet_checkpoint(src, tmp_path / "converted.pth")
    assert info["model_name"] == "reppoints_moment_lite0_fpn" and info["class_names"] == ["a", "b", "c"]
    minmax = {k: v for k, v in model.state_dict().items() if k != "bbox_head.moment_transfer"}
    with pytest.raises(ValueError, match="without bbox_head.moment_transfer"):
        infer_model_name(minmax)
    with torch.device("meta"):
        plain = varifocal.build_model("reppoints_moment_r50_fpn_gn", num_classes=80, norm_groups=None)
    assert "bbox_head.cls_convs.0.conv.bias" in plain.state_dict()
    with pytest.raises(ValueError, match="zoo has no 'reppoints_moment_r50_fpn'"):
        infer_model_name(plain.state_dict())


def test_convert_mmdet_checkpoint(tmp_path):
    src = golden_ckpt()
    dst = tmp_path / "converted.pth"
    info = convert_mmdet_checkpoint(src, dst)
    assert info["model_name"] == "vfnet_r50_fpn" and info["num_classes"] == 80
    ckpt = read_checkpoint(dst)
    assert ckpt["format"] == "varifocal" and ckpt["class_names"][0] == "person"
    ref = torch.load(src, weights_only=True)["state_dict"]
    assert list(ckpt["state_dict"]) == list(ref)
    assert torch.equal(ckpt["state_dict"]["neck.fpn_convs.4.conv.weight"], ref["neck.fpn_convs.4.conv.weight"].float())


def test_slim_checkpoint_keeps_weights_in_half_precision(tmp_path):
    from varifocal.checkpoint import slim_checkpoint

    torch.manual_seed(0)
    model = varifocal.build_model("vfnet_r18_fpn", num_classes=2)
    full = tmp_path / "last.pth"
    save_checkpoint(
        full,
        model,
        model_name="vfnet_r18_fpn",
        model_kwargs={"num_classes": 2},
        class_names=["a", "b"],
        extra={"optimizer": {"state": {}, "param_groups": []}, "epoch": 12},
    )
    info = slim_checkpoint(full, tmp_path / "slim.pth")
    slim = read_checkpoint(tmp_path / "slim.pth")
    assert "optimizer" not in slim["raw"] and slim["raw"]["meta"]["epoch"] == 12
    assert slim["state_dict"]["bbox_head.vfnet_cls.weight"].dtype == torch.float16
    assert info["bytes"] < full.stat().st_size * 0.6
    fresh = varifocal.build_model("vfnet_r18_fpn", num_classes=2)
    varifocal.load_checkpoint(fresh, tmp_path / "slim.pth")
    w = model.bbox_head.vfnet_cls.weight
    assert torch.equal(fresh.bbox_head.vfnet_cls.weight, w.half().float())
    assert fresh.class_names == ["a", "b"]


def test_convert_checkpoint_slims_a_varifocal_checkpoint(tmp_path):
    from varifocal.checkpoint import convert_checkpoint

    model = varifocal.build_model("vfnet_r18_fpn", num_classes=2)
    full = tmp_path / "last.pth"
    save_checkpoint(
        full,
        model,
        model_name="vfnet_r18_fpn",
        model_kwargs={"num_classes": 2},
        extra={"optimizer": {"state": {}, "param_groups": []}},
    )
    info = convert_checkpoint(full, tmp_path / "slim.pth")
    assert info["kind"] == "slim" and info["num_tensors"] == len(model.state_dict())
    slim = read_checkpoint(tmp_path / "slim.pth")
    assert "optimizer" not in slim["raw"]
    assert slim["state_dict"]["bbox_head.vfnet_cls.weight"].dtype == torch.float32  # half=False
