"""Parity with MMDetection 3.3's ATSS (``atss_r50_fpn_1x_coco``) on the zoo golden
(``../shared/golden/README.md``, "Golden outputs of six more MMDetection 3.3.0 detectors" and
``atss_r50_coco80/``).

The golden directory comes from ``VARIFOCAL_GOLDEN_ATSS`` (default ``atss_r50_coco80``), the
trunk from ``VARIFOCAL_GOLDEN_TRUNK``. Class count, widths, test scale and test_cfg are read from
the golden, so any golden of the same format passes. Tolerances are the README's.
"""

from __future__ import annotations

import pytest
import torch

from varifocal.models.detectors.atss import atss

from . import _zoo

pytestmark = pytest.mark.golden

GOLDEN_DIR = _zoo.golden_dir("ATSS", "atss_r50_coco80")


@pytest.fixture(scope="module")
def golden():
    return _zoo.load_golden(GOLDEN_DIR)


@pytest.fixture(scope="module")
def model(golden):
    model = atss(
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
def train_run(model, golden):
    return _zoo.train_step(model, golden)


def test_raw_head_outputs(eval_outputs, golden):
    for name in ("cls_scores", "bbox_preds", "centernesses"):
        ours, refs = getattr(eval_outputs, name), golden[name]
        assert len(ours) == len(refs)
        for lvl, (a, ref) in enumerate(zip(ours, refs)):
            assert a.shape == ref.shape, f"{name} level {lvl}: {tuple(a.shape)} vs {tuple(ref.shape)}"
            err = float((a - ref.float()).abs().max())
            assert err <= 1e-3, f"{name} level {lvl}: max |Δ| {err:.2e}"


def test_priors_equal_golden(model, golden):
    anchors = model.bbox_head.anchor_generator.grid_anchors(_zoo.featmap_sizes(golden))
    assert len(anchors) == len(golden["priors"])
    for lvl, (ours, ref) in enumerate(zip(anchors, golden["priors"])):
        assert torch.equal(ours, ref.float()), f"level {lvl}"


def test_assignment_records(model, golden):
    num_imgs = len(golden["metas"])
    targets = model.bbox_head.get_targets(
        _zoo.featmap_sizes(golden), golden["gt_bboxes"], [lab.long() for lab in golden["gt_labels"]], golden["metas"]
    )
    for i, ref in enumerate(golden["assign"]):
        rec = targets.assign_records[i]
        ref_inds = ref["assigned_gt_inds"].long()
        assert torch.equal(rec["valid_flags"], ref["valid_flags"].bool()), f"image {i}: valid flags"
        assert torch.equal(rec["assigned_gt_inds"], ref_inds), (
            f"image {i}: {int((rec['assigned_gt_inds'] != ref_inds).sum())} assigned_gt_inds differ"
        )
        labels = torch.cat([lvl.view(num_imgs, -1)[i] for lvl in targets.labels])
        weights = torch.cat([lvl.view(num_imgs, -1)[i] for lvl in targets.label_weights])
        assert torch.equal(labels, ref["target_labels"].long()), f"image {i}: target labels"
        assert torch.equal(weights > 0, ref["target_label_weights"].bool()), f"image {i}: label weights"
        # mmdet stores −INF (−1e8) for negatives where ours holds 0; the IoUs of positives compare.
        pos = ref_inds > 0
        assert int(pos.sum()) > 0, f"image {i}: no positives (vacuous)"
        err = float((rec["max_overlaps"][pos] - ref["max_overlaps"][pos].float()).abs().max())
        assert err <= 1e-5, f"image {i}: max_overlaps max |Δ| {err:.2e}"
        assert bool((rec["max_overlaps"][~rec["valid_flags"]] == -1).all()), f"image {i}: invalid priors"


def test_losses(train_run, golden):
    losses, _ = train_run
    _zoo.assert_losses(losses, golden)


def test_losses_per_level(model, golden):
    model.eval()
    with torch.no_grad():
        outs = model.bbox_head(model.extract_feat(golden["inputs"].float()))
        per_level = model.bbox_head.loss_by_level(
            outs, golden["gt_bboxes"], [lab.long() for lab in golden["gt_labels"]], golden["metas"]
        )
    assert set(golden["losses_per_level"]) <= set(per_level)
    for name, refs in golden["losses_per_level"].items():
        assert len(per_level[name]) == len(refs)
        for lvl, (ours, ref) in enumerate(zip(per_level[name], refs)):
            ours, ref = float(ours), float(ref)
            assert abs(ours - ref) <= 1e-4 * max(abs(ref), 1e-12), f"{name} level {lvl}: {ours} vs {ref}"


def test_gradients(train_run, golden):
    _, grads = train_run
    _zoo.assert_grads(grads, golden)


def test_detections(model, eval_outputs, golden):
    results = model.bbox_head.predict(eval_outputs, golden["metas"], rescale=True)
    _zoo.assert_detections(results, golden)


def test_state_dict_keys_equal_golden(model):
    _zoo.assert_state_dict_keys(model, GOLDEN_DIR)


def test_full_width_keys_and_head_parameter_count():
    """Appendix A.3 / §4.7 at width 256: 318 backbone + 16 neck + 35 head keys = 369, and the
    head's parameter count derived from the layer table of §4.1."""
    model = atss(num_classes=80)
    sd = model.state_dict()
    assert len(sd) == 369
    assert sum(k.startswith("backbone.") for k in sd) == 318

    c, k3 = 256, 9
    expected = {}
    for i, cin in enumerate((512, 1024, 2048)):
        expected[f"neck.lateral_convs.{i}.conv.weight"] = (c, cin, 1, 1)
        expected[f"neck.lateral_convs.{i}.conv.bias"] = (c,)
    for i in range(5):  # P3-P5 outputs, then P6 (from the P5 output) and P7
        expected[f"neck.fpn_convs.{i}.conv.weight"] = (c, c, 3, 3)
        expected[f"neck.fpn_convs.{i}.conv.bias"] = (c,)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(4):
            expected[f"bbox_head.{tower}.{i}.conv.weight"] = (c, c, 3, 3)
            expected[f"bbox_head.{tower}.{i}.gn.weight"] = (c,)
            expected[f"bbox_head.{tower}.{i}.gn.bias"] = (c,)
    for name, out in (("atss_cls", 80), ("atss_reg", 4), ("atss_centerness", 1)):
        expected[f"bbox_head.{name}.weight"] = (out, c, 3, 3)
        expected[f"bbox_head.{name}.bias"] = (out,)
    for i in range(5):
        expected[f"bbox_head.scales.{i}.scale"] = ()
    ours = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("backbone.")}
    assert ours == expected

    # 8 tower convs (no bias) + GN affine, three predictors with bias, five 0-dim scales.
    head_params = 8 * (c * c * k3 + 2 * c) + (80 + 4 + 1) * (c * k3 + 1) + 5
    assert head_params == 4_918_618
    assert sum(p.numel() for p in model.bbox_head.parameters()) == head_params
