"""Parity with MMDetection 3.3's FoveaBox (``fovea_r50_fpn_4xb4-1x_coco``) on the zoo golden
(``../shared/golden/README.md``, "Golden outputs of six more MMDetection 3.3.0 detectors" and
``fovea_r50_coco80/``; zoo_spec §5).

The golden directory comes from ``VARIFOCAL_GOLDEN_FOVEA`` (default ``fovea_r50_coco80``), the
trunk from ``VARIFOCAL_GOLDEN_TRUNK``. Class count, neck/head width, test scale and test_cfg are
read from the golden, so any golden of the same format passes. Tolerances are the README's.
"""

from __future__ import annotations

import pytest
import torch

import varifocal
from varifocal.checkpoint import infer_model_name, read_checkpoint
from varifocal.models.detectors.fovea import fovea

from . import _zoo

pytestmark = pytest.mark.golden

GOLDEN_DIR = _zoo.golden_dir("FOVEA", "fovea_r50_coco80")


@pytest.fixture(scope="module")
def golden():
    return _zoo.load_golden(GOLDEN_DIR)


def _build(golden) -> torch.nn.Module:
    return fovea(
        num_classes=int(golden["num_classes"]),
        neck_channels=_zoo.width(golden),
        scale=_zoo.golden_scale(golden),
        test_cfg=_zoo.golden_test_cfg(golden),
    )


@pytest.fixture(scope="module")
def model(golden):
    model = _build(golden)
    _zoo.load_weights(model, GOLDEN_DIR)
    return model.eval()


@pytest.fixture(scope="module")
def eval_outputs(model, golden):
    return _zoo.head_outputs(model, golden)


@pytest.fixture(scope="module")
def train_run(model, golden):
    return _zoo.train_step(model, golden)


def test_golden_test_cfg_has_no_size_filter(model, golden):
    """zoo §1.15 FoveaBox row: ``min_bbox_size`` is absent, so nothing is size-filtered."""
    assert "min_bbox_size" not in golden["test_cfg"]
    assert model.bbox_head.test_cfg.min_bbox_size is None


def test_raw_head_outputs(eval_outputs, golden):
    for name in ("cls_scores", "bbox_preds"):
        ours, refs = getattr(eval_outputs, name), golden[name]
        assert len(ours) == len(refs) == 5
        for lvl, (a, ref) in enumerate(zip(ours, refs)):
            assert a.shape == ref.shape, f"{name} level {lvl}: {tuple(a.shape)} vs {tuple(ref.shape)}"
            assert list(a.shape[-2:]) == list(golden["featmap_sizes"][lvl])
            err = float((a - ref.float()).abs().max())
            assert err <= 1e-3, f"{name} level {lvl}: max |Δ| {err:.2e}"


def test_priors_are_offset_half_points(model, golden):
    points = model.bbox_head.points(_zoo.featmap_sizes(golden))
    assert len(points) == len(golden["priors"])
    for lvl, (ours, ref) in enumerate(zip(points, golden["priors"])):
        assert torch.equal(ours, ref.float()), f"level {lvl}"


def test_assignment_records(model, golden):
    num_classes = int(golden["num_classes"])
    labels = [lab.long() for lab in golden["gt_labels"]]
    targets = model.bbox_head.get_targets(_zoo.featmap_sizes(golden), golden["gt_bboxes"], labels)
    for i, ref in enumerate(golden["assign"]):
        ours = targets.labels[i]
        ref_labels = ref["target_labels"].long()
        assert torch.equal(ours, ref_labels), f"image {i}: {int((ours != ref_labels).sum())} target labels differ"
        err = float((targets.bbox_targets[i] - ref["bbox_targets"].float()).abs().max())
        assert err <= 1e-4, f"image {i}: bbox_targets max |Δ| {err:.2e}"
        pos = ours < num_classes
        assert int(pos.sum()) > 0, f"image {i}: no positives (vacuous)"
        assert torch.equal(targets.assigned_gt_inds[i] > 0, pos)
        # The painted gt has the cell's label.
        gt_of_cell = targets.assigned_gt_inds[i][pos] - 1
        assert torch.equal(labels[i][gt_of_cell], ours[pos])


def test_losses(train_run, golden):
    losses, _ = train_run
    assert set(losses) == set(golden["losses"]) == {"loss_cls", "loss_bbox"}
    _zoo.assert_losses(losses, golden)


def test_gradients(train_run, golden):
    _, grads = train_run
    _zoo.assert_grads(grads, golden)


def test_detections(model, eval_outputs, golden):
    results = model.bbox_head.predict(eval_outputs, golden["metas"], rescale=True)
    _zoo.assert_detections(results, golden)
    # Boxes were clipped to img_shape − 1 before the rescale (zoo §5.5).
    for det, meta in zip(results, golden["metas"]):
        h, w = meta["img_shape"]
        w_scale, h_scale = meta["scale_factor"]
        assert float(det["boxes"][:, 2].max()) <= (w - 1) / w_scale + 1e-3
        assert float(det["boxes"][:, 3].max()) <= (h - 1) / h_scale + 1e-3


def test_state_dict_keys_equal_golden(model):
    _zoo.assert_state_dict_keys(model, GOLDEN_DIR)


def test_legacy_predictor_names_load_and_are_recognised(model, golden, tmp_path):
    """A pre-July-2020 zoo file names the predictors ``fovea_cls`` / ``fovea_reg`` (zoo §1.18):
    the golden's head under those names loads into ``conv_cls`` / ``conv_reg``, and ``varifocal
    convert`` recognises it as the R-50 FoveaBox."""
    state = read_checkpoint(GOLDEN_DIR / "checkpoint.pth")["state_dict"]
    legacy = {k.replace("bbox_head.conv_", "bbox_head.fovea_"): v for k, v in state.items()}
    assert "bbox_head.fovea_cls.weight" in legacy and "bbox_head.conv_cls.weight" not in legacy
    src = tmp_path / "fovea_legacy.pth"
    torch.save({"state_dict": legacy, "meta": {"mmdet_version": "1.0"}}, src)
    fresh = _build(golden)
    varifocal.load_checkpoint(fresh, src, prefixes=("neck.", "bbox_head."))
    own = model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in fresh.state_dict().items() if k.startswith("bbox_head."))
    trunk = {k: v for k, v in read_checkpoint(_zoo.TRUNK_CKPT)["state_dict"].items() if k.startswith("backbone.")}
    assert infer_model_name({**trunk, **legacy}) == ("fovea_r50_fpn", {"num_classes": int(golden["num_classes"])})


# ---------------------------------------------------------------------- full width (§5.7, A.4)
def _expected_neck_head_shapes(num_classes: int = 80, width: int = 256) -> dict[str, tuple]:
    """zoo_spec Appendix A.4 from the §5.1/§5.7 rules (not from the model)."""
    shapes: dict[str, tuple] = {}
    c_in = (512, 1024, 2048)  # C3..C5 of ResNet-50
    for i, c in enumerate(c_in):
        shapes[f"neck.lateral_convs.{i}.conv.weight"] = (width, c, 1, 1)
        shapes[f"neck.lateral_convs.{i}.conv.bias"] = (width,)
    for i in range(5):
        shapes[f"neck.fpn_convs.{i}.conv.weight"] = (width, c_in[-1] if i == 3 else width, 3, 3)  # P6 from C5
        shapes[f"neck.fpn_convs.{i}.conv.bias"] = (width,)
    for tower in ("reg_convs", "cls_convs"):
        for i in range(4):
            shapes[f"bbox_head.{tower}.{i}.conv.weight"] = (width, width, 3, 3)
            shapes[f"bbox_head.{tower}.{i}.conv.bias"] = (width,)
    for name, out in (("conv_reg", 4), ("conv_cls", num_classes)):
        shapes[f"bbox_head.{name}.weight"] = (out, width, 3, 3)
        shapes[f"bbox_head.{name}.bias"] = (out,)
    return shapes


def test_full_width_keys_shapes_and_parameter_counts():
    with torch.device("meta"):
        model = fovea()
    state = model.state_dict()
    expected = _expected_neck_head_shapes()
    assert len(expected) == 36
    ours = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("backbone.")}
    assert ours == expected
    assert len(state) == 354 and sum(k.startswith("backbone.") for k in state) == 318
    head = sum(p.numel() for p in model.bbox_head.parameters())
    assert head == sum(torch.Size(s).numel() for k, s in expected.items() if k.startswith("bbox_head.")) == 4_914_260
