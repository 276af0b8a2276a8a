"""RetinaHead behaviour with hand-computed values (zoo_spec §2, §1.5, §1.10, §1.13-§1.16, §2.7)."""

from __future__ import annotations

import math

import pytest
import torch

from varifocal.models.heads.retina_head import RETINA_TEST_CFG, RetinaHead, RetinaOutputs

LN2 = math.log(2.0)
EPS32 = torch.finfo(torch.float32).eps


def one_level_head(**kw) -> RetinaHead:
    """A single stride-16 level; channels 8, one tower conv."""
    torch.manual_seed(0)
    args = dict(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1, strides=(16,))
    args.update(kw)
    return RetinaHead(**args)


def test_default_hyper_parameters_and_init():
    head = RetinaHead(num_classes=80, in_channels=32, feat_channels=32)
    assert head.num_base_priors == 9
    assert head.retina_cls.weight.shape == (720, 32, 3, 3) and head.retina_reg.weight.shape == (36, 32, 3, 3)
    assert len(head.cls_convs) == 4 and head.cls_convs[0].gn is None and head.cls_convs[0].conv.bias is not None
    assert head.test_cfg == RETINA_TEST_CFG and head.test_cfg.nms_iou == 0.5 and head.test_cfg.min_bbox_size == 0.0
    assert (head.assigner.pos_iou_thr, head.assigner.neg_iou_thr, head.assigner.min_pos_iou) == (0.5, 0.4, 0.0)
    assert head.assigner.match_low_quality
    # §1.16: N(0, 0.01) weights, zero biases, cls prior bias −log(99).
    assert float(head.retina_cls.bias.detach()[0]) == pytest.approx(-4.59512, abs=1e-5)
    assert (
        float(head.retina_reg.bias.detach().abs().max()) == 0.0
        and float(head.cls_convs[0].conv.bias.detach().abs().max()) == 0.0
    )
    assert 0.009 < float(head.cls_convs[0].conv.weight.detach().std()) < 0.011
    # Base anchors of stride 8, a = r_idx·3 + s_idx (§1.5 table): a0 and a5.
    base = head.prior_generator.base_anchors[0]
    assert base[0].tolist() == pytest.approx([-22.6274, -11.3137, 22.6274, 11.3137], abs=1e-4)
    assert base[5].tolist() == pytest.approx([-25.3984, -25.3984, 25.3984, 25.3984], abs=1e-4)


def test_forward_channel_layout_is_anchor_major():
    """Channel a·C + c is class c of anchor a: with zero features every logit is its bias."""
    head = one_level_head(octave_base_scale=1.0, scales_per_octave=1, ratios=(0.25, 1.0, 4.0))
    with torch.no_grad():
        head.retina_cls.bias.copy_(torch.arange(6.0))
    (cls,), (reg,) = head([torch.zeros(1, 8, 2, 2)])
    assert cls.shape == (1, 6, 2, 2) and reg.shape == (1, 12, 2, 2)
    assert torch.equal(cls[0, :, 1, 0], torch.arange(6.0))


def test_cls_channel_order_matches_anchor_order_in_the_loss():
    """Anchors ratios (¼, 1, 4), size = stride 16, 2×2 cells. The gt equals the tall anchor
    (a = 2, 8×32) of cell (y=1, x=1): (12, 0, 20, 32). Its neighbours overlap it by IoU 1/3
    (square of the same cell, 128/384; tall of cell (0, 1)), so it is the only positive: prior
    row (1·2 + 1)·3 + 2 = 11, class 0. A confident logit at channel a·C + c = 4 of that cell
    gives ~0 focal loss; the class-major channel c·A + a = 2 gives ~30."""
    head = one_level_head(octave_base_scale=1.0, scales_per_octave=1, ratios=(0.25, 1.0, 4.0))
    gt = [torch.tensor([[12.0, 0.0, 20.0, 32.0]])]
    metas = [{"pad_shape": (32, 32), "img_shape": (32, 32)}]
    t = head.get_targets([(2, 2)], gt, [torch.tensor([0])], metas)
    expected = torch.full((12,), 2)
    expected[11] = 0
    assert torch.equal(t.labels[0], expected)
    assert t.anchors[0][11].tolist() == [12.0, 0.0, 20.0, 32.0]
    assert t.max_overlaps[0][[5, 10, 11]].tolist() == pytest.approx([1 / 3, 1 / 3, 1.0], abs=1e-6)

    def loss_with_high_channel(channel: int) -> float:
        cls = torch.full((1, 6, 2, 2), -30.0)
        cls[0, channel, 1, 1] = 30.0
        outs = RetinaOutputs([cls], [torch.zeros(1, 12, 2, 2)])
        return float(head.loss(outs, gt, [torch.tensor([0])], metas)["loss_cls"])

    assert loss_with_high_channel(4) < 1e-6
    assert loss_with_high_channel(2) == pytest.approx(0.25 * 30 + 0.75 * 30, rel=1e-3)


# Toy target case: stride 16, one square 32×32 anchor per cell (scale 2, ratio 1), 3×3 cells,
# centres (16x, 16y); pad_shape (32, 48) → ceil(32/16) = 2 valid rows, row y = 2 invalid.
# gt (2, 0, 38, 32), area 1152. IoUs with the anchors of the valid rows (hand-computed):
#   (0,0) (-16,-16,16,16): 14·16 = 224 / 1952 = 0.1148  negative
#   (0,1) (0,-16,32,16):   30·16 = 480 / 1696 = 0.2830  negative
#   (0,2) (16,-16,48,16):  22·16 = 352 / 1824 = 0.1930  negative
#   (1,0) (-16,0,16,32):   14·32 = 448 / 1728 = 0.2593  negative
#   (1,1) (0,0,32,32):     30·32 = 960 / 1216 = 0.7895  positive
#   (1,2) (16,0,48,32):    22·32 = 704 / 1472 = 0.4783  ignored (in [0.4, 0.5))
# Delta target of (1,1): anchor centre (16, 16), size 32; gt centre (20, 16), size 36×32:
#   (4/32, 0, log(36/32), 0) = (0.125, 0, 0.117783, 0).
TOY_GT = torch.tensor([[2.0, 0.0, 38.0, 32.0]])
TOY_METAS = [
    {"pad_shape": (32, 48), "img_shape": (32, 48), "scale_factor": (1.0, 1.0)},
    {"pad_shape": (32, 48), "img_shape": (32, 48), "scale_factor": (1.0, 1.0)},
]


def toy_head(**kw) -> RetinaHead:
    return one_level_head(octave_base_scale=2.0, scales_per_octave=1, ratios=(1.0,), **kw)


def test_toy_targets_pos_neg_ignored_invalid_and_deltas():
    head = toy_head()
    t = head.get_targets([(3, 3)], [TOY_GT], [torch.tensor([1])], TOY_METAS[:1])
    assert t.assigned_gt_inds[0].tolist() == [0, 0, 0, 0, 1, -1, -2, -2, -2]
    assert t.max_overlaps[0].tolist() == pytest.approx(
        [224 / 1952, 480 / 1696, 352 / 1824, 448 / 1728, 960 / 1216, 704 / 1472, -1, -1, -1], abs=1e-6
    )
    assert t.labels[0].tolist() == [2, 2, 2, 2, 1, 2, 2, 2, 2]
    assert t.label_weights[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert t.bbox_weights[0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert t.bbox_targets[0][4].tolist() == pytest.approx([0.125, 0.0, math.log(1.125), 0.0], abs=1e-6)
    assert float(t.bbox_targets[0][[0, 1, 2, 3, 5, 6, 7, 8]].abs().max()) == 0.0
    assert t.num_pos == [1] and t.avg_factor == 1.0


def test_avg_factor_counts_an_image_without_gts_once():
    """Image 0 is the toy case (1 positive), image 1 has no gt: avg_factor = max(1,1) +
    max(0,1) = 2, not max(Σ#pos, 1) = 1. Zero logits/deltas: a negative element costs
    (1−α)·0.5²·ln2, a positive α·0.5²·ln2; 5 + 6 weighted anchors × 2 classes = 22 elements,
    one of them positive; the L1 is the target's |δ| sum."""
    head = toy_head()
    outs = RetinaOutputs([torch.zeros(2, 2, 3, 3)], [torch.zeros(2, 4, 3, 3)])
    gts = [TOY_GT, torch.zeros((0, 4))]
    labels = [torch.tensor([1]), torch.zeros((0,), dtype=torch.long)]
    t = head.get_targets([(3, 3)], gts, labels, TOY_METAS)
    assert t.num_pos == [1, 0] and t.avg_factor == 2.0
    assert t.assigned_gt_inds[1].tolist() == [0] * 6 + [-2] * 3
    losses = head.loss(outs, gts, labels, TOY_METAS)
    cls_ref = (0.25 * 0.25 * LN2 + 21 * 0.75 * 0.25 * LN2) / (2 + EPS32)
    bbox_ref = (0.125 + math.log(1.125)) / (2 + EPS32)
    assert float(losses["loss_cls"]) == pytest.approx(cls_ref, rel=1e-5)
    assert float(losses["loss_bbox"]) == pytest.approx(bbox_ref, rel=1e-5)


def test_vfl_target_is_the_iou_of_the_own_decoded_prediction_with_its_gt():
    """The positive (1,1) predicts δ = (0.25, 0, log 1.125, 0): centre 16 + 32·0.25 = 24,
    size 36×32 → box (6, 0, 42, 32); with its gt (2, 0, 38, 32): 32·32 / (2·1152 − 1024) =
    0.8. With zero logits BCE(0, q) = ln2 for any q, so loss_cls = (q·ln2 + 21·0.75·0.5²·ln2)
    / avg_factor; the box loss is unchanged (L1 on deltas)."""
    head = toy_head(use_vfl=True)
    reg = torch.zeros(2, 4, 3, 3)
    reg[0, :, 1, 1] = torch.tensor([0.25, 0.0, math.log(1.125), 0.0])
    outs = RetinaOutputs([torch.zeros(2, 2, 3, 3)], [reg])
    gts = [TOY_GT, torch.zeros((0, 4))]
    labels = [torch.tensor([1]), torch.zeros((0,), dtype=torch.long)]
    t = head.get_targets([(3, 3)], gts, labels, TOY_METAS)
    flat_reg = reg.permute(0, 2, 3, 1).reshape(-1, 4)
    q = head.vfl_targets(torch.zeros(18, 2), flat_reg, t.anchors[0].repeat(2, 1), t.labels[0], t.bbox_targets[0])
    expected = torch.zeros(18, 2)
    expected[4, 1] = 0.8
    assert torch.allclose(q, expected, atol=1e-6)
    # The decoded target is the gt box itself.
    assert head.bbox_coder.decode(t.anchors[0][4:5], t.bbox_targets[0][4:5]).tolist()[0] == pytest.approx(
        TOY_GT[0].tolist(), abs=1e-4
    )
    losses = head.loss(outs, gts, labels, TOY_METAS)
    assert float(losses["loss_cls"]) == pytest.approx((0.8 * LN2 + 21 * 0.75 * 0.25 * LN2) / 2, rel=1e-5)
    assert float(losses["loss_bbox"]) == pytest.approx((0.25 - 0.125) / 2, rel=1e-5, abs=1e-7)
    # Not clamped: a prediction disjoint from its gt gets target 0 (treated as a negative).
    far = flat_reg.clone()
    far[4] = torch.tensor([10.0, 0.0, 0.0, 0.0])
    q_far = head.vfl_targets(torch.zeros(18, 2), far, t.anchors[0].repeat(2, 1), t.labels[0], t.bbox_targets[0])
    assert float(q_far.abs().max()) == 0.0


def test_predict_decodes_clips_rescales_filters_and_runs_class_aware_nms():
    """Anchors ratios (¼, 1, 4) of size 32 (scale 2) at stride 16, 2×2 cells, A = 3, C = 2.
    The tall anchor (a = 2: w = 16, h = 64) of cell (y=0, x=1) is (8, −32, 24, 32); clipped to
    img_shape (h 30, w 28) → (8, 0, 24, 30); rescaled by (w 0.5, h 0.25) → (16, 0, 48, 120).

    - cell (0,1) a2 class 1 logit 3 (σ = 0.9526), δ = 0: that box;
    - cell (0,1) a2 class 0 logit 2 (0.8808): the same box, another class → kept;
    - cell (1,1) a2 class 1 logit 1 (0.7311), δy = −16/64 moves it onto the first → IoU 1,
      same class → suppressed by NMS 0.5;
    - cell (1,0) a2 class 0 logit 4 (0.982), δx = −4: centre −64, clipped to zero width →
      dropped by min_bbox_size 0;
    - everything else logit −3 (σ = 0.047 < 0.05): below the threshold.
    """
    head = one_level_head(octave_base_scale=2.0, scales_per_octave=1, ratios=(0.25, 1.0, 4.0))
    cls = torch.full((1, 6, 2, 2), -3.0)
    reg = torch.zeros(1, 12, 2, 2)
    cls[0, 2 * 2 + 1, 0, 1] = 3.0
    cls[0, 2 * 2 + 0, 0, 1] = 2.0
    cls[0, 2 * 2 + 1, 1, 1] = 1.0
    reg[0, 2 * 4 + 1, 1, 1] = -16.0 / 64.0
    cls[0, 2 * 2 + 0, 1, 0] = 4.0
    reg[0, 2 * 4 + 0, 1, 0] = -4.0
    meta = {"img_shape": (30, 28), "pad_shape": (32, 32), "scale_factor": (0.5, 0.25)}
    (det,) = head.predict(RetinaOutputs([cls], [reg]), [meta], rescale=True)
    assert det["labels"].tolist() == [1, 0]
    assert det["scores"].tolist() == pytest.approx([1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-2))], abs=1e-6)
    assert det["boxes"].tolist() == [pytest.approx([16.0, 0.0, 48.0, 120.0], abs=1e-4)] * 2
    (raw,) = head.predict(RetinaOutputs([cls], [reg]), [meta], rescale=False)
    assert raw["boxes"][0].tolist() == pytest.approx([8.0, 0.0, 24.0, 30.0], abs=1e-4)
