"""RefineDet: the hand-computable tests of ``refinedet_spec.md`` §18 (anchors, coding, TCB,
matching, negative anchor filtering, hard negative mining, normalisers, the detached refined
anchors and the inference rules)."""

from __future__ import annotations

import math

import pytest
import torch

from varifocal.assigners.ssd_matcher import SSDMatcher
from varifocal.models.box_coders import SSDBoxCoder
from varifocal.models.heads.refinedet_head import RefineDetHead, RefineDetOutputs
from varifocal.models.priors import ssd_anchors
from varifocal.models.zoo import build_model
from varifocal.samplers.hard_negative import hard_negative_mining

LEVELS_320 = [(40, 40), (20, 20), (10, 10), (5, 5)]
STRIDES = [8, 16, 32, 64]
SIZES = [32, 64, 128, 256]


# ------------------------------------------------------------------------- anchors (§18.3-4)
def test_anchor_counts_320_and_512():
    assert ssd_anchors(LEVELS_320, STRIDES, SIZES).shape == (6375, 4)
    assert ssd_anchors([(64, 64), (32, 32), (16, 16), (8, 8)], STRIDES, SIZES).shape == (16320, 4)


def test_anchor_values_of_spec_section_3():
    a = ssd_anchors(LEVELS_320, STRIDES, SIZES) / 320
    expected_first = torch.tensor(
        [
            [-0.0375, -0.0375, 0.0625, 0.0625],
            [-0.058211, -0.022855, 0.083211, 0.047855],
            [-0.022855, -0.058211, 0.047855, 0.083211],
        ]
    )
    assert torch.allclose(a[:3], expected_first, atol=1e-6)
    # Last cell of level 3 (row 4, col 4, centre 288 px): a=1 then a=1/2 (the last anchor).
    assert torch.allclose(a[-3], torch.tensor([0.5, 0.5, 1.3, 1.3]), atol=1e-6)
    assert torch.allclose(a[-1], torch.tensor([0.617157, 0.334315, 1.182843, 1.465685]), atol=1e-6)


# --------------------------------------------------------------------------- coding (§18.6-7)
def test_coder_round_trip_and_spec_example():
    coder = SSDBoxCoder()
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(50, 2, generator=g) * 200
    ref = torch.cat([ref, ref + 5 + torch.rand(50, 2, generator=g) * 100], 1)
    gt = torch.rand(50, 2, generator=g) * 200
    gt = torch.cat([gt, gt + 5 + torch.rand(50, 2, generator=g) * 100], 1)
    assert torch.allclose(coder.decode(ref, coder.encode(ref, gt)), gt, atol=1e-4)
    anchor = torch.tensor([[128.0, 128.0, 192.0, 192.0]])  # centre (160, 160), 64 x 64
    box = coder.decode(anchor, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(box, torch.tensor([[134.4, 128.0, 198.4, 192.0]]), atol=1e-4)
    wide = coder.decode(anchor, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))
    assert wide[0, 2] - wide[0, 0] == pytest.approx(64 * math.exp(0.2), abs=1e-3)  # 78.170


def _head(num_classes: int = 3, **kw) -> RefineDetHead:
    torch.manual_seed(0)
    return RefineDetHead(num_classes, [8, 8, 8, 8], tcb_channels=8, **kw)


def _outs(head: RefineDetHead, n: int = 1, sizes=LEVELS_320[:0] or [(4, 4), (2, 2), (1, 1), (1, 1)]):
    """Zero outputs for maps of ``sizes`` (strides 8…64)."""
    a, c = head.num_anchors, head.num_classes + 1

    def z(ch):
        return [torch.zeros(n, a * ch, h, w, requires_grad=True) for h, w in sizes]

    return RefineDetOutputs(z(2), z(4), z(c), z(4))


def test_two_step_decode_with_zero_offsets_gives_the_anchors():
    head = _head()
    outs = _outs(head)
    anchors = head.anchors(outs)
    _, arm_reg, _, odm_reg = head.flat_outputs(outs)
    refined = head.refined_anchors(anchors, arm_reg)
    assert torch.allclose(refined[0], anchors, atol=1e-5)
    assert torch.allclose(head.coder.decode(refined, odm_reg)[0], anchors)


# ---------------------------------------------------------------------------- TCB (§18.1-2)
def test_tcb_shapes_and_size_mismatch_error():
    head = RefineDetHead(3, [512, 512, 1024, 512])
    feats = [torch.zeros(1, c, s, s) for c, s in zip([512, 512, 1024, 512], [40, 20, 10, 5])]
    outs = head(feats)
    assert [tuple(x.shape) for x in outs.odm_cls_scores] == [(1, 12, s, s) for s in (40, 20, 10, 5)]
    assert [tuple(x.shape) for x in outs.arm_cls_scores] == [(1, 6, s, s) for s in (40, 20, 10, 5)]
    small = _head()
    bad = [torch.zeros(1, 8, 26, 26), torch.zeros(1, 8, 13, 13), torch.zeros(1, 8, 7, 7), torch.zeros(1, 8, 4, 4)]
    with pytest.raises(ValueError, match="multiples of 64"):
        small(bad)


def test_lite0_detector_source_and_tcb_shapes_at_320():
    model = build_model("refinedet320_lite0", num_classes=3).eval()
    batch = torch.zeros(1, 3, 320, 320)
    with torch.no_grad():
        sources = model.neck(model.backbone(batch))
        assert [tuple(x.shape[1:]) for x in sources] == [(40, 40, 40), (112, 20, 20), (320, 10, 10), (512, 5, 5)]
        outs = model.bbox_head(sources)
    assert sum(x.shape[-1] * x.shape[-2] * 3 for x in outs.odm_bbox_preds) == 6375


# ------------------------------------------------------------------------- matching (§18.9)
def _box(cx, cy, w, h):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_matching_bipartite_low_iou_gt_owns_its_best_anchor():
    anchors = torch.tensor([_box(0, 0, 10, 10), _box(50, 50, 10, 10), _box(100, 100, 10, 10)])
    gt = torch.tensor([[45.0, 45.0, 60.0, 60.0]])  # IoU with anchor 1: 100/225 = 0.444 < 0.5
    res = SSDMatcher().assign(anchors, gt, torch.tensor([2]), 3)
    assert res.gt_inds.tolist() == [0, 1, 0]
    assert res.labels.tolist() == [3, 2, 3]


def test_matching_two_gts_want_one_anchor_and_per_prediction_argmax():
    # Anchor 0 overlaps gt 0 (IoU 0.8) and gt 1 (IoU 0.6); anchor 1 is gt 1's next best.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0], [0.0, 0.0, 10.0, 8.5]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 6.0]])
    # IoUs: a0: 0.8, 0.6; a1: 0.375, 0.5; a2: 8/8.5=0.941, 6/8.5=0.706.
    res = SSDMatcher().assign(anchors, gt, torch.tensor([0, 1]), 2)
    # Bipartite: (a2, g0) 0.941 first; then the best free pair for g1 is a0 (0.6).
    # Per-prediction: a1's best IoU 0.5 >= 0.5 -> g1.
    assert res.gt_inds.tolist() == [2, 2, 1]
    # An anchor with IoU 0.55 and 0.6 to two gts goes to the 0.6 one.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100, 110, 110], [200.0, 200, 210, 210]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 5.5], [0.0, 0.0, 10.0, 6.0], [100.0, 100, 110, 110], [200.0, 200, 210, 210]])
    res = SSDMatcher().assign(anchors, gt, torch.arange(4), 4)
    # Bipartite gives a1->g2, a2->g3 (IoU 1), then a0->g1 (0.6 > 0.55).
    assert res.gt_inds.tolist() == [2, 3, 4]


# ----------------------------------------------------------------------- mining (§18.10)
def test_hard_negative_mining_counts():
    losses = torch.arange(12, dtype=torch.float32)[None]  # distinct background losses
    pos = torch.zeros(1, 12, dtype=torch.bool)
    pos[0, :2] = True
    cand = ~pos
    sel = hard_negative_mining(losses, pos, cand)
    assert sel[0].nonzero().flatten().tolist() == [6, 7, 8, 9, 10, 11]  # the 6 largest
    cand_filtered = cand.clone()
    cand_filtered[0, 5:12] = False  # 7 filtered out by the ARM: 3 remain
    assert hard_negative_mining(losses, pos, cand_filtered)[0].nonzero().flatten().tolist() == [2, 3, 4]
    assert not hard_negative_mining(losses, torch.zeros_like(pos), cand).any()


# --------------------------------------------------------------- filtering (§18.8, §18.13)
def _single_anchor_head_outputs(head, arm_logits, odm_scores):
    """Outputs of a 1×1-cell level-0 map whose anchors get the given ARM logits and ODM class
    probabilities (log-probabilities as logits); other levels empty."""
    n_a = head.num_anchors
    c = head.num_classes + 1
    arm_cls = torch.tensor(arm_logits, dtype=torch.float32).reshape(1, n_a * 2, 1, 1)
    odm_cls = torch.log(torch.tensor(odm_scores, dtype=torch.float32)).reshape(1, n_a * c, 1, 1)
    empty = [torch.zeros(1, n_a * k, 0, 0) for k in (2, 4, c, 4)]
    return RefineDetOutputs(
        [arm_cls] + [empty[0]] * 3,
        [torch.zeros(1, n_a * 4, 1, 1)] + [empty[1]] * 3,
        [odm_cls] + [empty[2]] * 3,
        [torch.zeros(1, n_a * 4, 1, 1)] + [empty[3]] * 3,
    )


def test_negative_anchor_filtering_at_inference():
    # Four anchors per cell: object probabilities 0.5, 0.0101, 0.005, 0.0067.
    head = RefineDetHead(1, [8] * 4, ratios=(1.0, 1.0, 1.0, 1.0), tcb_channels=8, test_cfg={"nms_iou": 1.0})
    arm = [0.0, 0.0, math.log(98), 0.0, math.log(199), 0.0, 5.0, 0.0]
    odm = [0.2, 0.8] * 4  # every anchor: class score 0.8
    outs = _single_anchor_head_outputs(head, arm, odm)
    det = head.predict(outs, [{"img_shape": (8, 8), "ori_shape": (8, 8), "scale_factor": (1.0, 1.0)}])[0]
    # Anchors 3 and 4 are zeroed; 1 and 2 keep 0.8 (identical boxes survive NMS at IoU 1.0).
    assert det["scores"].tolist() == pytest.approx([0.8, 0.8])
    off = RefineDetHead(1, [8] * 4, ratios=(1.0,) * 4, tcb_channels=8, objectness_thr=0.0, test_cfg={"nms_iou": 1.0})
    det = off.predict(outs, [{"img_shape": (8, 8), "ori_shape": (8, 8), "scale_factor": (1.0, 1.0)}])[0]
    assert len(det["scores"]) == 4


def test_filtered_anchor_stays_odm_positive_and_leaves_negative_pool():
    head = RefineDetHead(1, [8] * 4, ratios=(1.0, 1.0, 1.0, 1.0), tcb_channels=8, neg_pos_ratio=10.0)
    arm = [0.0, 0.0, math.log(98), 0.0, math.log(199), 0.0, 5.0, 0.0]
    outs = _single_anchor_head_outputs(head, arm, [0.5, 0.5] * 4)
    # The four anchors are identical (32 x 32 at (4, 4)); move them apart through the ARM offsets
    # (x shift 0.1 * t * 32 px: -96, +96, 0, +192), so that no two overlap.
    offs = torch.tensor([[-30.0, 0, 0, 0], [30.0, 0, 0, 0], [0.0, 0, 0, 0], [60.0, 0, 0, 0]])
    outs.arm_bbox_preds[0] = offs.reshape(1, 16, 1, 1)
    anchors = head.anchors(outs)
    _, arm_reg, _, _ = head.flat_outputs(outs)
    refined = head.refined_anchors(anchors, arm_reg)[0]
    gt = refined[2:3].clone()  # the gt sits exactly on anchor 3 (object probability 0.005)
    _, _, odm_labels, _ = head.get_targets(anchors, refined[None], [gt], [torch.tensor([0])])
    assert odm_labels[0].tolist() == [0, 0, 1, 0]  # anchor 3 is matched: it stays an ODM positive
    losses = head.loss(outs, [gt], [torch.tensor([0])])
    # ODM: one positive (CE -log 0.5) and the eligible negatives, anchors 1 and 2 (object
    # probabilities 0.5 and 0.0101 >= 0.01) but not anchor 4 (0.0067): 3 terms of log 2, / 1.
    assert float(losses["loss_odm_cls"]) == pytest.approx(3 * math.log(2), rel=1e-5)


# ------------------------------------------------------------ normalisation (§18.11-12)
def test_losses_normalised_by_their_own_positive_count_and_zero_without_positives():
    head = _head()
    outs = _outs(head, n=2)
    anchors = head.anchors(outs)
    gts = [anchors[[0, 40]].clone() + 2.0, anchors[[5, 50, 63]].clone() - 3.0]
    labels = [torch.zeros(2, dtype=torch.long), torch.ones(3, dtype=torch.long)]
    _, arm_reg, _, _ = head.flat_outputs(outs)
    arm_pos, _, odm_labels, _ = head.get_targets(anchors, head.refined_anchors(anchors, arm_reg), gts, labels)
    n_arm = arm_pos.sum(1).tolist()
    n_odm = (odm_labels > 0).sum(1).tolist()
    assert min(n_arm) >= 2 and n_arm[0] != n_arm[1]
    batch = head.loss(outs, gts, labels)
    singles = [
        head.loss(RefineDetOutputs(*[[x[i : i + 1] for x in f] for f in outs]), [g], [lb])
        for i, (g, lb) in enumerate(zip(gts, labels))
    ]
    # The batch divides the sum of both images' terms by the batch's positive count, per module.
    for key, counts in (
        ("loss_arm_cls", n_arm),
        ("loss_arm_bbox", n_arm),
        ("loss_odm_cls", n_odm),
        ("loss_odm_bbox", n_odm),
    ):
        pooled = sum(float(s[key].detach()) * c for s, c in zip(singles, counts)) / sum(counts)
        assert float(batch[key]) == pytest.approx(pooled, rel=1e-5), key
    # Zero logits: each CE term is log 2 (ARM); the image keeps its positives + 3 negatives each.
    assert float(singles[0]["loss_arm_cls"]) == pytest.approx(4 * math.log(2), rel=1e-5)
    none = head.loss(outs, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    total = sum(none.values())
    assert float(total) == 0.0
    total.backward()
    assert all(torch.isfinite(x.grad).all() for x in outs.arm_cls_scores if x.grad is not None)


def test_odm_loss_sends_no_gradient_to_the_arm_predictions():
    head = _head()
    outs = _outs(head)
    anchors = head.anchors(outs)
    losses = head.loss(outs, [anchors[[0, 7]].clone() + 1.0], [torch.tensor([0, 2])])
    (losses["loss_odm_cls"] + losses["loss_odm_bbox"]).backward()
    assert all(x.grad is None or not x.grad.any() for x in outs.arm_cls_scores + outs.arm_bbox_preds)
    assert any(x.grad is not None and x.grad.any() for x in outs.odm_cls_scores)


# ------------------------------------------------------------------- inference (§18.13)
def test_inference_threshold_nms_and_keep_top_k():
    head = RefineDetHead(1, [8] * 4, ratios=(1.0,) * 2, tcb_channels=8, objectness_thr=0.0)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    # A score of exactly 0.01 is dropped (strict >).
    det = head._postprocess(boxes, torch.tensor([[0.01], [0.02]]))
    assert det["scores"].tolist() == pytest.approx([0.02])
    # IoU 0.45 is kept, 0.46 suppressed: boxes [0, 0, 10, 10] and [0, 0, 10, h] have IoU h/10 (h < 10)...
    # use x-overlap: [0,0,10,10] vs [a,0,10+a,10]: IoU = (10-a)/(10+a).
    a45 = 10 * (1 - 0.45) / (1 + 0.45)
    a46 = 10 * (1 - 0.46) / (1 + 0.46)
    for shift, expected in ((a45 + 1e-4, 2), (a46 - 1e-4, 1)):
        pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [shift, 0.0, 10.0 + shift, 10.0]])
        assert len(head._postprocess(pair, torch.tensor([[0.9], [0.8]]))["scores"]) == expected
    # More than 500 survivors: exactly 500, sorted.
    g = torch.Generator().manual_seed(0)
    xy = torch.arange(700, dtype=torch.float32)[:, None] * 20
    many = torch.cat([xy, torch.zeros_like(xy), xy + 10, torch.full_like(xy, 10)], 1)
    det = head._postprocess(many, torch.rand(700, 1, generator=g) * 0.9 + 0.05)
    assert len(det["scores"]) == 500
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])


def test_per_class_top_k_before_nms():
    head = RefineDetHead(2, [8] * 4, tcb_channels=8, test_cfg={"nms_pre": 2, "nms_iou": 1.0})
    xy = torch.arange(4, dtype=torch.float32)[:, None] * 20
    boxes = torch.cat([xy, torch.zeros_like(xy), xy + 10, torch.full_like(xy, 10)], 1)
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.3], [0.7, 0.4], [0.6, 0.5]])
    det = head._postprocess(boxes, scores)
    got = sorted(zip(det["labels"].tolist(), [round(s, 2) for s in det["scores"].tolist()]))
    assert got == [(0, 0.8), (0, 0.9), (1, 0.4), (1, 0.5)]


def test_predict_rescales_a_warped_image_per_axis_and_clips():
    # A 640x480 image warped to 320x320: scale_factor (0.5, 2/3).
    head = RefineDetHead(1, [8] * 4, ratios=(1.0,), tcb_channels=8, objectness_thr=0.0)
    outs = _single_anchor_head_outputs(head, [0.0, 0.0], [0.1, 0.9])
    meta = {"img_shape": (320, 320), "ori_shape": (480, 640), "scale_factor": (0.5, 320 / 480)}
    det = head.predict(outs, [meta])[0]
    # The one anchor: 32 x 32 centred at (4, 4) -> [-12, -12, 20, 20] -> x / 0.5, y / (2/3), clipped at 0.
    assert det["boxes"].tolist() == [pytest.approx([0.0, 0.0, 40.0, 30.0], abs=1e-4)]
    assert det["labels"].tolist() == [0] and det["scores"].tolist() == pytest.approx([0.9])


def test_zoo_names_and_checkpoint_recognition():
    from varifocal.models.zoo import infer_model_name, list_models

    names = {f"refinedet{s}_{b}" for s in (320, 512) for b in ("vgg16", "r101", "lite0")}
    assert names <= set(list_models())
    model = build_model("refinedet512_lite0", num_classes=3)
    assert model.preprocessor.scale == (512, 512) and not model.preprocessor.keep_ratio
    assert infer_model_name(model.state_dict()) == ("refinedet320_lite0", {"num_classes": 3})
    vgg = build_model("refinedet320_vgg16", num_classes=20)
    assert infer_model_name(vgg.state_dict()) == ("refinedet320_vgg16", {"num_classes": 20})
    assert vgg.preprocessor.channel_order == "bgr" and vgg.preprocessor.mean.flatten().tolist() == [104, 117, 123]
    # VOC: 63 ODM class channels per cell (3 anchors x 21), §6.2.
    assert vgg.bbox_head.odm_conf[0].out_channels == 63
    with pytest.raises(ValueError, match="multiples of 64"):
        build_model("refinedet320_lite0", num_classes=3, scale=(320, 300))
