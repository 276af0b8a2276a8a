"""Parity with MMDetection 3.3's RetinaNet (``../shared/golden/retinanet_r50_coco80``, see the
golden README "Golden outputs of six more MMDetection 3.3.0 detectors" and zoo_spec §2).

The golden directory comes from ``VARIFOCAL_GOLDEN_RETINANET`` (default
``retinanet_r50_coco80``), the trunk from ``VARIFOCAL_GOLDEN_TRUNK``. Class count, neck/head
width, test scale and test_cfg are read from the golden, so any golden of the same format
passes. Tolerances are the README's.
"""

from __future__ import annotations

import pytest
import torch

from varifocal.checkpoint import read_checkpoint
from varifocal.models.detectors.retinanet import retinanet

from . import _zoo

pytestmark = pytest.mark.golden

GOLDEN_DIR = _zoo.golden_dir("RETINANET", "retinanet_r50_coco80")


@pytest.fixture(scope="module")
def golden():
    return _zoo.load_golden(GOLDEN_DIR)


@pytest.fixture(scope="module")
def model(golden):
    model = retinanet(
        num_classes=int(golden["num_classes"]),
        neck_channels=_zoo.width(golden),
        scale=_zoo.golden_scale(golden),
        test_cfg=_zoo.golden_test_cfg(golden),
    )
    _zoo.load_weights(model, GOLDEN_DIR)
    return model.eval()


@pytest.fixture(scope="module")
def eval_outputs(model, golden):
    return _zoo.head_outputs(model, golden)


@pytest.fixture(scope="module")
def targets(model, eval_outputs, golden):
    sizes = [tuple(c.shape[-2:]) for c in eval_outputs.cls_scores]
    labels = [lab.long() for lab in golden["gt_labels"]]
    return model.bbox_head.get_targets(sizes, golden["gt_bboxes"], labels, golden["metas"])


@pytest.fixture(scope="module")
def train_run(model, golden):
    return _zoo.train_step(model, golden)


def _per_image(per_level: list[torch.Tensor], num_imgs: int, i: int) -> torch.Tensor:
    """Image i's entries of image-major per-level targets, levels concatenated."""
    return torch.cat([t.reshape(num_imgs, -1)[i] for t in per_level])


def test_class_names_come_from_checkpoint_meta(model, golden):
    names = read_checkpoint(GOLDEN_DIR / "checkpoint.pth")["class_names"]
    if names is None:
        pytest.skip("this golden checkpoint has no meta.CLASSES")
    assert model.class_names == list(names)
    assert model.class_names == list(golden["classes"])


def test_state_dict_keys_equal_the_golden_checkpoint(model):
    _zoo.assert_state_dict_keys(model, GOLDEN_DIR)


def test_raw_head_outputs(eval_outputs, golden):
    step = int(golden.get("cls_scores_channel_step", 1))
    assert eval_outputs.cls_scores[0].shape[1] == 9 * int(golden["num_classes"])
    for lvl, (ref_cls, ref_reg) in enumerate(zip(golden["cls_scores"], golden["bbox_preds"], strict=True)):
        ours_cls = eval_outputs.cls_scores[lvl][:, ::step]
        assert ours_cls.shape == ref_cls.shape, f"level {lvl}"
        assert float((ours_cls - ref_cls.float()).abs().max()) <= 1e-3, f"logits, level {lvl}"
        assert eval_outputs.bbox_preds[lvl].shape == ref_reg.shape
        assert float((eval_outputs.bbox_preds[lvl] - ref_reg.float()).abs().max()) <= 1e-3, f"deltas, level {lvl}"


def test_priors_equal_the_golden(model, golden):
    sizes = [tuple(s) for s in golden["featmap_sizes"]]
    anchors = model.bbox_head.prior_generator.grid_anchors(sizes)
    for lvl, (ours, ref) in enumerate(zip(anchors, golden["priors"], strict=True)):
        assert ours.shape == ref.shape
        assert float((ours - ref.float()).abs().max()) <= 1e-4, f"level {lvl}"


def test_assignment_records_are_identical(targets, golden):
    num_imgs = len(golden["metas"])
    num_classes = int(golden["num_classes"])
    total_pos = 0
    for i, rec in enumerate(golden["assign"]):
        gt_inds = targets.assigned_gt_inds[i]
        assert torch.equal(gt_inds, rec["assigned_gt_inds"].long()), (
            f"image {i}: {int((gt_inds != rec['assigned_gt_inds'].long()).sum())} assigned_gt_inds differ"
        )
        assert torch.equal(gt_inds != -2, rec["valid_flags"]), f"image {i}: valid flags"
        labels = _per_image(targets.labels, num_imgs, i)
        assert torch.equal(labels, rec["target_labels"].long()), f"image {i}: target labels"
        weights = _per_image(targets.label_weights, num_imgs, i)
        assert torch.equal(weights > 0, rec["target_label_weights"]), f"image {i}: label weights"
        assert float((targets.max_overlaps[i] - rec["max_overlaps"].float()).abs().max()) <= 1e-5, f"image {i}"
        # All three assignment states occur, so the comparison is not vacuous.
        assert {-1, 0}.issubset(set(gt_inds.unique().tolist())) and int((gt_inds > 0).sum()) > 0
        total_pos += int((labels < num_classes).sum())
    assert targets.avg_factor == float(sum(max(n, 1) for n in targets.num_pos))
    assert sum(targets.num_pos) == total_pos


def test_losses(train_run, golden):
    losses, _ = train_run
    assert set(losses) == set(golden["losses"])
    _zoo.assert_losses(losses, golden)


def test_losses_per_level(model, eval_outputs, golden):
    if "losses_per_level" not in golden:
        pytest.skip("this golden has no losses_per_level")
    labels = [lab.long() for lab in golden["gt_labels"]]
    with torch.no_grad():
        per_level = model.bbox_head.loss_by_level(eval_outputs, golden["gt_bboxes"], labels, golden["metas"])
    for name, refs in golden["losses_per_level"].items():
        assert len(per_level[name]) == len(refs)
        for lvl, (ours, ref) in enumerate(zip(per_level[name], refs)):
            ref = float(ref)
            assert abs(float(ours) - ref) <= 1e-4 * max(abs(ref), 1e-12), f"{name} level {lvl}: {float(ours)} vs {ref}"


def test_gradients(train_run, golden):
    _, grads = train_run
    _zoo.assert_grads(grads, golden)


def test_detections(model, eval_outputs, golden):
    results = model.bbox_head.predict(eval_outputs, golden["metas"], rescale=True)
    _zoo.assert_detections(results, golden)


# ---------------------------------------------------------------------- full width (§2.6, A.1)
def _expected_neck_head_shapes(num_classes: int = 80, width: int = 256, anchors: int = 9) -> dict[str, tuple]:
    """zoo_spec Appendix A.1, built from the §2.1/§2.6 rules (not from the model)."""
    shapes: dict[str, tuple] = {}
    c_in = (512, 1024, 2048)  # C3..C5 of ResNet-50
    for i, c in enumerate(c_in):
        shapes[f"neck.lateral_convs.{i}.conv.weight"] = (width, c, 1, 1)
        shapes[f"neck.lateral_convs.{i}.conv.bias"] = (width,)
    for i in range(5):
        cin = c_in[-1] if i == 3 else width  # P6 from C5 (on_input)
        shapes[f"neck.fpn_convs.{i}.conv.weight"] = (width, cin, 3, 3)
        shapes[f"neck.fpn_convs.{i}.conv.bias"] = (width,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (width, width, 3, 3)
            shapes[f"bbox_head.{tower}.{i}.conv.bias"] = (width,)
    shapes["bbox_head.retina_cls.weight"] = (anchors * num_classes, width, 3, 3)
    shapes["bbox_head.retina_cls.bias"] = (anchors * num_classes,)
    shapes["bbox_head.retina_reg.weight"] = (anchors * 4, width, 3, 3)
    shapes["bbox_head.retina_reg.bias"] = (anchors * 4,)
    return shapes


def test_full_width_keys_shapes_and_parameter_counts():
    model = retinanet()
    state = model.state_dict()
    expected = _expected_neck_head_shapes()
    assert len(expected) == 36
    ours = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("backbone.")}
    assert ours == expected
    assert len(state) == 354
    assert sum(k.startswith("backbone.") for k in state) == 318
    neck = sum(p.numel() for p in model.neck.parameters())
    head = sum(p.numel() for p in model.bbox_head.parameters())
    assert neck == sum(torch.Size(s).numel() for k, s in expected.items() if k.startswith("neck.")) == 7_997_440
    assert head == sum(torch.Size(s).numel() for k, s in expected.items() if k.startswith("bbox_head.")) == 6_463_220
    # Freshly built: the prior bias of §1.16.
    assert torch.allclose(model.bbox_head.retina_cls.bias, torch.full((720,), -4.59512), atol=1e-5)
