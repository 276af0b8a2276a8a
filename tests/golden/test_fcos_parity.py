"""Parity with MMDetection 3.3's FCOS (``fcos_r50-caffe_fpn_gn-head_1x_coco``), against the
golden of ``../shared/golden`` (its README, ``fcos_r50_caffe_coco80/``; zoo_spec §3).

The golden directory comes from ``VARIFOCAL_GOLDEN_FCOS`` (default ``fcos_r50_caffe_coco80``),
the trunk from ``VARIFOCAL_GOLDEN_TRUNK``. Class count, widths, test scale and test_cfg are read
from the golden. Tolerances are those of the golden README.
"""

from __future__ import annotations

import pytest
import torch

from varifocal.models.detectors.fcos import CAFFE_MEAN, fcos
from varifocal.models.heads.fcos_head import FCOSHead

from ..conftest import SHARED
from ._zoo import (
    assert_detections,
    assert_grads,
    assert_losses,
    assert_state_dict_keys,
    golden_dir,
    golden_scale,
    golden_test_cfg,
    head_outputs,
    load_golden,
    load_weights,
    train_step,
    width,
)

pytestmark = pytest.mark.golden

GOLDEN_DIR = golden_dir("FCOS", "fcos_r50_caffe_coco80")


@pytest.fixture(scope="module")
def golden():
    return load_golden(GOLDEN_DIR)


@pytest.fixture(scope="module")
def model(golden):
    pre = golden["data_preprocessor"]
    model = fcos(
        num_classes=int(golden["num_classes"]),
        neck_channels=width(golden),
        scale=golden_scale(golden),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        test_cfg=golden_test_cfg(golden),
    )
    load_weights(model, GOLDEN_DIR)
    return model.eval()


@pytest.fixture(scope="module")
def eval_outputs(model, golden):
    return head_outputs(model, golden)


@pytest.fixture(scope="module")
def train_run(model, golden):
    return train_step(model, golden)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-6)).max())


def test_golden_is_the_base_config(golden):
    """The golden preprocessor is the caffe one this builder defaults to (zoo_spec §1.4)."""
    pre = golden["data_preprocessor"]
    assert pre["bgr_to_rgb"] is False
    assert tuple(pre["mean"]) == pytest.approx(CAFFE_MEAN)
    assert tuple(pre["std"]) == (1.0, 1.0, 1.0)


def test_raw_head_outputs(eval_outputs, golden):
    cls_scores, bbox_preds, centernesses = eval_outputs
    assert len(cls_scores) == len(golden["cls_scores"]) == 5
    for lvl in range(5):
        ref_cls = golden["cls_scores"][lvl].float()
        assert cls_scores[lvl].shape == ref_cls.shape
        assert list(cls_scores[lvl].shape[-2:]) == list(golden["featmap_sizes"][lvl])
        assert float((cls_scores[lvl] - ref_cls).abs().max()) <= 1e-3, f"logits, level {lvl}"
        assert _max_rel(bbox_preds[lvl], golden["bbox_preds"][lvl].float()) <= 1e-3, f"distances, level {lvl}"
        ref_ctr = golden["centernesses"][lvl].float()
        assert float((centernesses[lvl] - ref_ctr).abs().max()) <= 1e-3, f"centerness, level {lvl}"
    # Distances are positive pixels (exp), not stride units.
    assert all(float(b.min()) > 0 for b in bbox_preds)


def test_priors_are_offset_half_points(model, golden):
    sizes = [tuple(int(v) for v in s) for s in golden["featmap_sizes"]]
    points = model.bbox_head.points(sizes)
    for lvl, (ours, ref) in enumerate(zip(points, golden["priors"], strict=True)):
        assert torch.equal(ours, ref.float()), f"level {lvl}"


def test_assignment_records(model, golden):
    sizes = [tuple(int(v) for v in s) for s in golden["featmap_sizes"]]
    num_classes = int(golden["num_classes"])
    targets = model.bbox_head.get_targets(sizes, golden["gt_bboxes"], [lab.long() for lab in golden["gt_labels"]])
    for i, ref in enumerate(golden["assign"]):
        labels = targets.labels[i]
        assert torch.equal(labels, ref["target_labels"].long()), (
            f"image {i}: {int((labels != ref['target_labels'].long()).sum())} labels differ"
        )
        assert torch.equal(targets.assigned_gt_inds[i], ref["assigned_gt_inds"].long()), f"image {i}: gt indices"
        assert float((targets.bbox_targets[i] - ref["bbox_targets"].float()).abs().max()) <= 1e-4, f"image {i}: targets"
        # Both images have positives, so the comparison is not vacuous.
        assert int((labels < num_classes).sum()) > 0


def test_losses(train_run, golden):
    losses, _ = train_run
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
    assert_losses(losses, golden, rel=1e-4)


def test_gradients(train_run, golden):
    _, grads = train_run
    assert_grads(grads, golden, rel=1e-3)
    # The caffe trunk freezes every BN affine: no BN parameter has a gradient.
    assert not any(".bn" in n or "downsample.1" in n for n in grads if n.startswith("backbone."))


def test_detections(model, eval_outputs, golden):
    assert_detections(model.bbox_head.predict(eval_outputs, golden["metas"], rescale=True), golden)


def test_state_dict_keys(model):
    assert_state_dict_keys(model, GOLDEN_DIR)


def test_preprocessor_reproduces_the_reference_input(model, golden):
    """model.preprocessor turns the original RGB photo into mmdet's BGR, mean-only input (sizes
    exact; pixels within JPEG-decoder/resize rounding), and model(images) reports boxes in that
    photo's pixels. With std 1 the input is ≈58× larger than the ImageNet-normalised one, so the
    VFNet test's tolerances (0.01 mean, 0.05 max) are scaled by 58."""
    import numpy as np
    from PIL import Image

    for i, meta in enumerate(golden["metas"]):
        image_path = SHARED / "data" / "coco_subset" / meta["img_path"]
        if not image_path.is_file():
            pytest.skip(f"{image_path} is absent")
        image = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB")).copy()).permute(2, 0, 1).float()
        batch, metas, _ = model.preprocessor([image])
        assert tuple(metas[0]["ori_shape"]) == tuple(meta["ori_shape"])
        assert tuple(metas[0]["img_shape"]) == tuple(meta["img_shape"])
        assert tuple(metas[0]["pad_shape"]) == tuple(meta["pad_shape"])
        assert metas[0]["scale_factor"] == pytest.approx(tuple(meta["scale_factor"]), abs=1e-12)
        h, w = meta["img_shape"]
        diff = (batch[0, :, :h, :w] - golden["inputs"][i, :, :h, :w].float()).abs()
        assert float(diff.mean()) < 0.01 * 58 and float(diff.max()) < 0.05 * 58
        if i == 1:
            model.eval()
            with torch.no_grad():
                (det,) = model([image])
                (ref,) = model.predict(batch, metas)
            assert torch.equal(det["boxes"], ref["boxes"]) and det["boxes"].shape[0] > 0
            assert float(det["boxes"][:, 2].max()) <= meta["ori_shape"][1] + 1e-3
            assert float(det["boxes"][:, 3].max()) <= meta["ori_shape"][0] + 1e-3


def _expected_neck_head(c: int, num_classes: int, tricks: bool) -> dict[str, tuple[int, ...]]:
    """Appendix A.2 key names and shapes from the spec's rules (zoo_spec §3.1, §3.7)."""
    keys: dict[str, tuple[int, ...]] = {}
    for i, cin in enumerate((512, 1024, 2048)):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (c, cin, 1, 1)
        keys[f"neck.lateral_convs.{i}.conv.bias"] = (c,)
    for i in range(5):
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (c, c, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (c,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            keys[f"bbox_head.{tower}.{i}.conv.weight"] = (c, c, 3, 3)
            if tricks:
                keys[f"bbox_head.{tower}.{i}.conv.bias"] = (c,)
            keys[f"bbox_head.{tower}.{i}.gn.weight"] = (c,)
            keys[f"bbox_head.{tower}.{i}.gn.bias"] = (c,)
    for name, out in (("conv_cls", num_classes), ("conv_reg", 4), ("conv_centerness", 1)):
        keys[f"bbox_head.{name}.weight"] = (out, c, 3, 3)
        keys[f"bbox_head.{name}.bias"] = (out,)
    for i in range(5):
        keys[f"bbox_head.scales.{i}.scale"] = ()
    return keys


@pytest.mark.parametrize("tricks", [False, True], ids=["base", "tricks"])
def test_full_width_keys_shapes_and_parameter_counts(tricks):
    """Appendix A.2 at width 256: 16 neck keys, 35 head keys (tricks 43), 318 backbone keys;
    parameters: neck 3 868 672, head 4 918 618 (tricks 4 920 666)."""
    from varifocal.models.detectors.fcos import VARIANTS

    name = "fcos_r50_caffe_fpn_gn_head_tricks" if tricks else "fcos_r50_caffe_fpn_gn_head"
    model = fcos(**VARIANTS[name])
    sd = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _expected_neck_head(256, 80, tricks)
    ours = {k: v for k, v in sd.items() if not k.startswith("backbone.")}
    assert ours == expected
    assert sum(k.startswith("neck.") for k in expected) == 16
    assert sum(k.startswith("bbox_head.") for k in expected) == (43 if tricks else 35)
    assert len(sd) == (377 if tricks else 369)
    neck = sum(p.numel() for p in model.neck.parameters())
    head = sum(p.numel() for p in model.bbox_head.parameters())
    expected_neck = sum(int(torch.Size(s).numel()) for k, s in expected.items() if k.startswith("neck."))
    expected_head = sum(int(torch.Size(s).numel()) for k, s in expected.items() if k.startswith("bbox_head."))
    assert (neck, head) == (expected_neck, expected_head)
    assert (neck, head) == (3_868_672, 4_920_666 if tricks else 4_918_618)
    assert isinstance(model.bbox_head, FCOSHead)
    if tricks:
        assert model.bbox_head.test_cfg.nms_iou == 0.6
        assert model.preprocessor.mean.flatten().tolist() == pytest.approx([103.530, 116.280, 123.675])
