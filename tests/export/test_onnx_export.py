"""ONNX export of the detectors and ONNX Runtime parity (issue 14).

The VFNet tests use the bundled BCCD model (a Lite0 VFNet) at a small test scale (320×240, padded
to 320×256) on real BCCD images; RetinaNet, FCOS and ATSS use Lite0 models with random heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'varifocal[export]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'varifocal[export]')")

from varifocal.cli.common import model_from_checkpoint  # noqa: E402
from varifocal.data.images import load_image  # noqa: E402
from varifocal.export import OnnxDetector, export_onnx, read_metadata  # noqa: E402
from varifocal.export.check import match_detections  # noqa: E402
from varifocal.models.zoo import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "vfnet_lite0_bccd.pth"
IMAGES = REPO / "data" / "bccd" / "JPEGImages"
SCALE = (320, 240)


@pytest.fixture(scope="module")
def bccd_model():
    if not MODEL.is_file() or not IMAGES.is_dir():
        pytest.skip(f"{MODEL} or {IMAGES} is absent")
    return model_from_checkpoint(MODEL, {"scale": list(SCALE)}).eval()


def _batch(model, names, size=None):
    images = [load_image(IMAGES / n).float() for n in names]
    batch, _, _ = model.preprocessor(images)
    if size is not None:  # resize keep-ratio to another scale, same normalisation
        model.preprocessor.scale, old = size, model.preprocessor.scale
        batch, _, _ = model.preprocessor(images)
        model.preprocessor.scale = old
    return batch


def _eager(model, batch):
    meta = {"img_shape": tuple(batch.shape[2:]), "scale_factor": (1.0, 1.0)}
    with torch.no_grad():
        dets = model.predict(batch, [meta] * batch.shape[0], rescale=False)
    return [{k: v.numpy() for k, v in d.items()} for d in dets]


def _assert_parity(ref, out, min_dets=1, near_ties=False):
    """Every top-100 detection matched (``near_ties``: but for score ties at the top-100 cut)."""
    for r, o in zip(ref, out):
        assert len(r["scores"]) >= min_dets
        m = match_detections(r, o, top=100, match_iou=0.99, max_per_img=100)
        assert m["n_ref"] == m["n_other"]
        if near_ties:
            assert m["matched"] + m["excused"] >= m["n_ref"] and m["excused"] <= 4, m
        else:
            assert m["matched"] == m["n_ref"], m
        assert m["max_score_diff"] <= 1e-4
        assert m["max_box_diff"] <= 1e-2


@pytest.fixture(scope="module", params=["portable", "deformconv"])
def exported(request, bccd_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / f"vfnet_{request.param}.onnx"
    meta = export_onnx(bccd_model, path, input_size=(320, 256), deform=request.param, dynamic=True)
    return path, meta, request.param


def test_vfnet_parity_on_bccd(bccd_model, exported):
    path, _, _ = exported
    batch = _batch(bccd_model, ["BloodImage_00000.jpg", "BloodImage_00001.jpg"])
    assert tuple(batch.shape) == (2, 3, 256, 320)
    out = OnnxDetector(path, threads=1)(batch.numpy())
    _assert_parity(_eager(bccd_model, batch), out, min_dets=100)
    assert out[0]["labels"].dtype == np.int64 and set(out[0]["labels"].tolist()) <= {0, 1, 2}


def test_vfnet_dynamic_second_size(bccd_model, exported):
    path, _, _ = exported
    batch = _batch(bccd_model, ["BloodImage_00002.jpg"], size=(256, 192))
    assert tuple(batch.shape) == (1, 3, 192, 256)
    _assert_parity(_eager(bccd_model, batch), OnnxDetector(path, threads=1)(batch.numpy()), min_dets=50)


def test_metadata_round_trip(bccd_model, exported):
    path, meta, deform = exported
    back = read_metadata(path)
    assert back == meta
    assert OnnxDetector(path, threads=1).metadata == meta
    assert back["class_names"] == ["RBC", "WBC", "Platelets"]
    assert back["test_scale"] == [320, 240] and back["size_divisor"] == 32
    np.testing.assert_allclose(back["mean"], [123.675, 116.28, 103.53], atol=1e-4)
    np.testing.assert_allclose(back["std"], [58.395, 57.12, 57.375], atol=1e-4)
    assert back["deform"] == deform and back["dynamic"] is True and back["opset"] == 19
    assert back["test_cfg"]["nms_iou"] == 0.6 and back["test_cfg"]["max_per_img"] == 100
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "NonMaxSuppression" in ops
    assert ("DeformConv" in ops) == (deform == "deformconv") and ("GridSample" in ops) == (deform == "portable")


def test_static_graph_rejects_other_sizes(bccd_model, tmp_path):
    path = tmp_path / "static.onnx"
    export_onnx(bccd_model, path, input_size=(320, 256))
    det = OnnxDetector(path, threads=1)
    assert det.metadata["dynamic"] is False and det.metadata["input_size"] == [320, 256]
    with pytest.raises(ValueError, match=r"static graph of input 320x256, got 256x192"):
        det(np.zeros((1, 3, 192, 256), np.float32))


def test_bad_arguments(bccd_model, tmp_path):
    path = tmp_path / "x.onnx"
    with pytest.raises(ValueError, match="'fp16' is not supported"):
        export_onnx(bccd_model, path, input_size=(320, 256), precision="fp16")
    with pytest.raises(ValueError, match="opset 17 is out of range for deform='deformconv'"):
        export_onnx(bccd_model, path, input_size=(320, 256), deform="deformconv", opset=17)
    with pytest.raises(ValueError, match="multiple of the size divisor 32"):
        export_onnx(bccd_model, path, input_size=(300, 256))
    assert not path.exists()


def test_dcn_model_is_refused(tmp_path):
    model = build_model("vfnet_lite0_fpn", num_classes=2, dcn_on_last_conv=True).eval()
    with pytest.raises(ValueError, match="cannot export DCNv2 layers"):
        export_onnx(model, tmp_path / "dcn.onnx", input_size=(64, 64))


@pytest.mark.parametrize(
    "name",
    [
        "retinanet_lite0_fpn",
        "fcos_lite0_fpn",
        "atss_lite0_fpn",
        "fovea_lite0_fpn",
        "reppoints_moment_lite0_fpn",
        "vfnet_lite0_fpn",
    ],
)
def test_other_detectors_parity(name, tmp_path):
    """Random-head detectors at 128×96. The head convs are re-drawn wider so that scores spread,
    but random heads still give scores within ~1e-7 of each other near the top-100 cut, whose
    order is a coin toss in float32: those near-ties (one pair each side) are excused."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, scale=(128, 96), test_cfg={"score_thr": 0.0}).eval()
    for m in model.bbox_head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, input_size=(128, 96), dynamic=True)
    batch = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    _assert_parity(_eager(model, batch), OnnxDetector(path, threads=1)(batch.numpy()), min_dets=20, near_ties=True)


def test_reppoints_deformconv_mode_parity(tmp_path):
    """RepPoints' two free-offset DCNs as ONNX ``DeformConv`` nodes (the default mode writes
    GridSample taps, covered above); one 128×96 batch of two images."""
    import onnx

    torch.manual_seed(0)
    model = build_model("reppoints_moment_lite0_fpn", num_classes=3, scale=(128, 96), test_cfg={"score_thr": 0.0})
    model.eval()
    for m in model.bbox_head.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    path = tmp_path / "reppoints_deformconv.onnx"
    export_onnx(model, path, input_size=(128, 96), deform="deformconv", dynamic=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("DeformConv") == 2 * 5 and "GridSample" not in ops  # 2 DCNs × 5 levels
    batch = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    _assert_parity(_eager(model, batch), OnnxDetector(path, threads=1)(batch.numpy()), min_dets=20, near_ties=True)


def test_reppoints_other_dcn_kernels_are_refused(tmp_path):
    model = build_model("reppoints_moment_lite0_fpn", num_classes=2, num_points=25).eval()
    with pytest.raises(ValueError, match=r"cannot export the deformable conv bbox_head.reppoints_cls_conv: only 3x3"):
        export_onnx(model, tmp_path / "rp25.onnx", input_size=(64, 64))
    assert not (tmp_path / "rp25.onnx").exists()
