"""Parity with MMDetection 3.3's RepPoints (``reppoints-moment_r50_fpn-gn_head-gn_1x_coco``) on the
zoo golden (``../shared/golden/README.md``, "Golden outputs of six more MMDetection 3.3.0
detectors" and ``reppoints_moment_r50_coco80/``; zoo_spec §6).

The golden directory comes from ``VARIFOCAL_GOLDEN_REPPOINTS`` (default
``reppoints_moment_r50_coco80``), the trunk from ``VARIFOCAL_GOLDEN_TRUNK``. Class count,
neck/head width, test scale and test_cfg are read from the golden, so any golden of the same
format passes. Tolerances are the README's.
"""

from __future__ import annotations

import pytest
import torch

from varifocal.checkpoint import infer_model_name, read_checkpoint
from varifocal.models.detectors.reppoints import reppoints_moment

from . import _zoo

pytestmark = pytest.mark.golden

GOLDEN_DIR = _zoo.golden_dir("REPPOINTS", "reppoints_moment_r50_coco80")


@pytest.fixture(scope="module")
def golden():
    return _zoo.load_golden(GOLDEN_DIR)


@pytest.fixture(scope="module")
def model(golden):
    model = reppoints_moment(
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
def targets(model, golden, eval_outputs):
    labels = [lab.long() for lab in golden["gt_labels"]]
    return model.bbox_head.get_targets(eval_outputs.pts_init, golden["gt_bboxes"], labels, golden["metas"])


@pytest.fixture(scope="module")
def train_run(model, golden):
    return _zoo.train_step(model, golden)


def test_raw_head_outputs(eval_outputs, golden):
    """cls logits, both point sets ((dy, dx) in strides) and the eval-mode moment boxes."""
    for name in ("cls_scores", "pts_init", "pts_refine", "bbox_preds_refine"):
        ours, refs = getattr(eval_outputs, name), golden[name]
        assert len(ours) == len(refs) == 5
        for lvl, (a, ref) in enumerate(zip(ours, refs)):
            assert a.shape == ref.shape, f"{name} level {lvl}: {tuple(a.shape)} vs {tuple(ref.shape)}"
            assert list(a.shape[-2:]) == list(golden["featmap_sizes"][lvl])
            err = float((a - ref.float()).abs().max())
            assert err <= 1e-3, f"{name} level {lvl}: max |Δ| {err:.2e}"


def test_moment_transfer_and_priors(model, golden):
    """The golden's ``moment_transfer`` is non-zero (README: [0.170, −0.156]), so the exp scaling
    is exercised; the points sit at offset 0 (zoo §1.6)."""
    t = model.bbox_head.moment_transfer.detach()
    assert t.tolist() == pytest.approx([0.170, -0.156], abs=5e-4)
    points = model.bbox_head.points(_zoo.featmap_sizes(golden))
    assert len(points) == len(golden["priors"])
    for lvl, (ours, ref) in enumerate(zip(points, golden["priors"])):
        assert torch.equal(ours, ref.float()[:, :2]), f"level {lvl}"


@pytest.mark.parametrize("stage", ["init", "refine"])
def test_assignment_records(targets, golden, stage):
    """``assign_init`` (PointAssigner) and ``assign_refine`` (MaxIoU on the init boxes) identical:
    gt indices (−2 invalid), labels, label weights, valid flags; refine also its proposals
    and max overlaps."""
    ours = getattr(targets, stage)
    num_classes = int(golden["num_classes"])
    for i, ref in enumerate(golden[f"assign_{stage}"]):
        gt_inds = ref["assigned_gt_inds"].long()
        assert int((gt_inds > 0).sum()) > 0, f"image {i}: no positives (vacuous)"
        assert torch.equal(ours.assigned_gt_inds[i], gt_inds), (
            f"{stage} image {i}: {int((ours.assigned_gt_inds[i] != gt_inds).sum())} gt indices differ"
        )
        assert torch.equal(targets.valid_flags[i], ref["valid_flags"])
        assert torch.equal(ours.labels[i], ref["target_labels"].long())
        assert torch.equal(ours.label_weights[i] > 0, ref["target_label_weights"])
        pos = gt_inds > 0
        assert torch.equal(ours.labels[i][pos], ref["assigned_labels"].long()[pos])
        assert bool((ref["assigned_labels"][~pos] == -1).all()) and bool((ours.labels[i][~pos] == num_classes).all())
        if stage == "refine":
            err = float((targets.refine_proposals[i] - ref["refine_proposals"].detach().float()).abs().max())
            assert err <= 1e-2, f"image {i}: refine proposals max |Δ| {err:.2e} px"
            err = float((ours.max_overlaps[i] - ref["max_overlaps"].detach().float()).abs().max())
            assert err <= 1e-5, f"image {i}: max_overlaps max |Δ| {err:.2e}"
    if stage == "init":  # at most one point per gt (pos_num 1); contested points exist in image 1
        for i, boxes in enumerate(golden["gt_bboxes"]):
            held = ours.assigned_gt_inds[i][ours.assigned_gt_inds[i] > 0]
            assert held.numel() == torch.unique(held).numel() <= boxes.shape[0]


def test_losses(train_run, golden):
    losses, _ = train_run
    assert set(losses) == set(golden["losses"]) == {"loss_cls", "loss_pts_init", "loss_pts_refine"}
    _zoo.assert_losses(losses, golden)


def test_losses_per_level(model, golden):
    """Every level's term (MMDetection's ``losses_per_level``), P7's zero point losses included."""
    with torch.no_grad():
        outs = model.bbox_head(model.extract_feat(golden["inputs"].float()))
        labels = [lab.long() for lab in golden["gt_labels"]]
        per_level = model.bbox_head.loss_by_level(outs, golden["gt_bboxes"], labels, golden["metas"])
    assert set(per_level) == set(golden["losses_per_level"])
    for name, refs in golden["losses_per_level"].items():
        assert len(per_level[name]) == len(refs) == 5
        for lvl, (ours, ref) in enumerate(zip(per_level[name], refs)):
            assert abs(float(ours) - float(ref)) <= 1e-4 * abs(float(ref)) + 1e-9, (
                f"{name} level {lvl}: {ours} vs {ref}"
            )


def test_gradients(train_run, golden):
    _, grads = train_run
    _zoo.assert_grads(grads, golden)


def test_detections(model, eval_outputs, golden):
    results = model.bbox_head.predict(eval_outputs, golden["metas"], rescale=True)
    _zoo.assert_detections(results, golden)
    # Clamped to [0, W] × [0, H] of img_shape (zoo §6.5), not W − 1.
    for det, meta in zip(results, golden["metas"]):
        h, w = meta["img_shape"]
        w_scale, h_scale = meta["scale_factor"]
        assert float(det["boxes"][:, 2].max()) <= w / w_scale + 1e-3
        assert float(det["boxes"][:, 3].max()) <= h / h_scale + 1e-3


def test_state_dict_keys_equal_golden(model):
    _zoo.assert_state_dict_keys(model, GOLDEN_DIR)


def test_checkpoint_is_recognised(model, golden):  # model: skips without the trunk
    """``varifocal convert`` / ``load_checkpoint`` infer the R-50 RepPoints-GN from the keys
    (``reppoints_cls_out`` + ``moment_transfer``, GN keys in the neck)."""
    state = read_checkpoint(GOLDEN_DIR / "checkpoint.pth")["state_dict"]
    trunk = {k: v for k, v in read_checkpoint(_zoo.TRUNK_CKPT)["state_dict"].items() if k.startswith("backbone.")}
    name = ("reppoints_moment_r50_fpn_gn", {"num_classes": int(golden["num_classes"])})
    assert infer_model_name({**trunk, **state}) == name


# ---------------------------------------------------------------------- full width (§6.7, A.5)
def _expected_neck_head_shapes(num_classes: int = 80, width: int = 256) -> dict[str, tuple]:
    """zoo_spec Appendix A.5 from the §6.1/§6.7 rules (not from the model)."""
    shapes: dict[str, tuple] = {}
    c_in = (512, 1024, 2048)  # C3..C5 of ResNet-50
    gn = {"gn.weight": (width,), "gn.bias": (width,)}
    for i, c in enumerate(c_in):
        shapes[f"neck.lateral_convs.{i}.conv.weight"] = (width, c, 1, 1)
        shapes.update({f"neck.lateral_convs.{i}.{k}": v for k, v in gn.items()})
    for i in range(5):
        shapes[f"neck.fpn_convs.{i}.conv.weight"] = (width, c_in[-1] if i == 3 else width, 3, 3)  # P6 from C5
        shapes.update({f"neck.fpn_convs.{i}.{k}": v for k, v in gn.items()})
    for tower in ("cls_convs", "reg_convs"):
        for i in range(3):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (width, width, 3, 3)
            shapes.update({f"bbox_head.{tower}.{i}.{k}": v for k, v in gn.items()})
    shapes["bbox_head.reppoints_cls_conv.weight"] = (width, width, 3, 3)  # DeformConv2d, no bias
    shapes["bbox_head.reppoints_cls_out.weight"] = (num_classes, width, 1, 1)
    shapes["bbox_head.reppoints_cls_out.bias"] = (num_classes,)
    shapes["bbox_head.reppoints_pts_init_conv.weight"] = (width, width, 3, 3)
    shapes["bbox_head.reppoints_pts_init_conv.bias"] = (width,)
    shapes["bbox_head.reppoints_pts_init_out.weight"] = (18, width, 1, 1)
    shapes["bbox_head.reppoints_pts_init_out.bias"] = (18,)
    shapes["bbox_head.reppoints_pts_refine_conv.weight"] = (width, width, 3, 3)
    shapes["bbox_head.reppoints_pts_refine_out.weight"] = (18, width, 1, 1)
    shapes["bbox_head.reppoints_pts_refine_out.bias"] = (18,)
    shapes["bbox_head.moment_transfer"] = (2,)
    return shapes


def test_full_width_keys_shapes_and_parameter_counts():
    with torch.device("meta"):
        model = reppoints_moment()
    state = model.state_dict()
    expected = _expected_neck_head_shapes()
    assert len(expected) == 53 and sum(k.startswith("neck.") for k in expected) == 24
    ours = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("backbone.")}
    assert ours == expected
    assert len(state) == 371 and sum(k.startswith("backbone.") for k in state) == 318
    assert "dcn_base_offset" not in "".join(state)  # a plain tensor, not a buffer (§6.1)
    neck = sum(p.numel() for p in model.neck.parameters())
    head = sum(p.numel() for p in model.bbox_head.parameters())
    assert neck == 7_999_488 and head == 5_341_558  # §6.7
    assert head == sum(torch.Size(s).numel() for k, s in expected.items() if k.startswith("bbox_head."))
