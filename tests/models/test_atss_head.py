"""ATSSHead with hand-computed values (zoo_spec §4, §4.8, §1.15)."""

from __future__ import annotations

import math

import pytest
import torch

from varifocal.models.heads.atss_head import ATSSHead, ATSSOutputs, anchor_centerness_target

LOG2 = math.log(2.0)
EPS32 = torch.finfo(torch.float32).eps


def small_head(**kw) -> ATSSHead:
    torch.manual_seed(0)
    kw.setdefault("strides", (8,))
    return ATSSHead(num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1, num_groups=4, **kw)


def outputs(
    n: int, h: int, w: int, num_classes: int = 2, deltas: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
) -> ATSSOutputs:
    """One level of constant outputs: logits 0 (p = 0.5), the given deltas, centerness logit 0."""
    cls = torch.zeros(n, num_classes, h, w, requires_grad=True)
    reg = torch.tensor(deltas).view(1, 4, 1, 1).expand(n, 4, h, w).clone().requires_grad_(True)
    ctr = torch.zeros(n, 1, h, w, requires_grad=True)
    return ATSSOutputs([cls], [reg], [ctr])


def _f(t: torch.Tensor) -> float:
    return float(t.detach())


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# A 4×4 map at stride 8: anchors of side 64 centred at (8x, 8y). The gt (7, 7, 17, 17) is centred
# at (12, 12), equidistant from the 4 anchors centred at (8|16, 8|16); with top-k 4 these are the
# candidates, their IoUs are equal (std 0), so all four are positive.
GT = torch.tensor([[7.0, 7.0, 17.0, 17.0]])
POS_ROWS = [5, 6, 9, 10]  # (y, x) = (1, 1), (1, 2), (2, 1), (2, 2) → row y·4 + x
CT = 1.0 / 9.0  # each centre is 1 px from two sides and 9 px from the other two: √(1/9 · 1/9)
METAS = [{"pad_shape": (32, 32)}, {"pad_shape": (16, 16)}]  # image 1: only a 2×2 corner is valid
GTS = [GT, torch.zeros((0, 4))]
LABELS = [torch.tensor([1]), torch.zeros((0,), dtype=torch.long)]


def test_anchors_are_squares_of_side_8s_at_multiples_of_the_stride():
    head = small_head(strides=(8, 16))
    a8, a16 = head.anchor_generator.grid_anchors([(2, 3), (1, 2)])
    # row y·W + x: (x, y) = (2, 1) is row 5, centre (16, 8), half side 32
    assert a8[5].tolist() == [-16.0, -24.0, 48.0, 40.0]
    assert a8[0].tolist() == [-32.0, -32.0, 32.0, 32.0]
    assert a16[1].tolist() == [16.0 - 64.0, -64.0, 16.0 + 64.0, 64.0]
    assert a8.shape == (6, 4) and a16.shape == (2, 4)


def test_centerness_target_by_hand():
    # centre (10, 20) in (0, 0, 40, 30): l 10, r 30, t 20, b 10 → √(10/30 · 10/20) = √(1/6)
    anchor = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    ct = anchor_centerness_target(anchor, torch.tensor([[0.0, 0.0, 40.0, 30.0]]))
    assert float(ct) == pytest.approx(math.sqrt(1.0 / 6.0), rel=1e-6)
    with pytest.raises(ValueError):
        anchor_centerness_target(torch.tensor([[50.0, 50.0, 60.0, 60.0]]), torch.tensor([[0.0, 0.0, 40.0, 30.0]]))


def test_targets_positives_weights_and_invalid_anchors():
    head = small_head(atss_topk=4)
    t = head.get_targets([(4, 4)], GTS, LABELS, METAS)
    labels = t.labels[0].view(2, 16)
    assert torch.nonzero(labels[0] < 2).squeeze(1).tolist() == POS_ROWS
    assert set(labels[0][POS_ROWS].tolist()) == {1}
    assert bool((labels[1] == 2).all())
    weights = t.label_weights[0].view(2, 16)
    assert bool((weights[0] == 1).all())
    # image 1 (pad 16×16): valid cells x, y < ceil(16/8) = 2 → rows 0, 1, 4, 5
    assert torch.nonzero(weights[1]).squeeze(1).tolist() == [0, 1, 4, 5]
    assert t.assign_records[1]["assigned_gt_inds"].tolist().count(-2) == 12
    assert torch.equal(t.bbox_targets[0][POS_ROWS], GT.expand(4, 4))
    assert t.num_pos == [4, 0]
    iou = 100.0 / 4096.0  # the gt lies inside each 64×64 anchor
    assert t.assign_records[0]["max_overlaps"][POS_ROWS].tolist() == pytest.approx([iou] * 4, rel=1e-6)


def test_focal_losses_and_normalisers_by_hand():
    """A = max(4, 1) + max(0, 1) = 5 (image 1 has no gt); Σct = 4/9 < 1 so B = 1."""
    head = small_head(atss_topk=4)
    losses = head.loss(outputs(2, 4, 4), GTS, LABELS, METAS)
    a = 5.0
    # Logit 0: a negative element costs (1 − α)·0.5²·log 2, a positive one α·0.5²·log 2; the
    # 16 + 4 valid anchors × 2 classes enter, 4 of those 40 elements are positive.
    neg, pos = 0.75 * 0.25 * LOG2, 0.25 * 0.25 * LOG2
    assert _f(losses["loss_cls"]) == pytest.approx((36 * neg + 4 * pos) / (a + EPS32), rel=1e-6)
    # Deltas 0 decode to the anchor itself; the gt is inside it so GIoU = IoU = 100/4096.
    giou = 100.0 / 4096.0
    assert _f(losses["loss_bbox"]) == pytest.approx(2.0 * 4 * CT * (1 - giou) / (1 + EPS32) / 1.0, rel=1e-6)
    # BCE(logit 0, any target) = log 2.
    assert _f(losses["loss_centerness"]) == pytest.approx(4 * LOG2 / (a + EPS32), rel=1e-6)
    sum(losses.values()).backward()  # the graph is intact


def test_box_normaliser_is_the_centerness_sum_when_above_one():
    """A larger gt (−20, −20, 44, 44), centred at (12, 12), gives the same 4 positives with
    ct = 28/36 each: B = 4·28/36 > 1 and loss_bbox = 2·Σct(1 − GIoU)/B = 2·(1 − GIoU)."""
    head = small_head(atss_topk=4)
    gt = torch.tensor([[-20.0, -20.0, 44.0, 44.0]])
    losses = head.loss(outputs(1, 4, 4), [gt], [torch.tensor([0])], METAS[:1])
    inter = 60.0 * 60.0  # anchor (−24, −24, 40, 40) ∩ gt
    union = 2 * 64.0 * 64.0 - inter
    hull = 68.0 * 68.0
    giou = inter / union - (hull - union) / hull
    assert _f(losses["loss_bbox"]) == pytest.approx(2.0 * (1 - giou), rel=1e-5)


def test_level_without_positives_gives_connected_zero():
    head = small_head(atss_topk=4)
    out = outputs(1, 4, 4)
    losses = head.loss(out, [torch.zeros((0, 4))], [torch.zeros((0,), dtype=torch.long)], METAS[:1])
    assert _f(losses["loss_bbox"]) == 0.0 and _f(losses["loss_centerness"]) == 0.0
    assert _f(losses["loss_cls"]) == pytest.approx(32 * 0.75 * 0.25 * LOG2 / (1 + EPS32), rel=1e-6)
    sum(losses.values()).backward()
    assert out.bbox_preds[0].grad is not None and float(out.bbox_preds[0].grad.abs().max()) == 0.0


def test_vfl_target_is_the_iou_of_the_own_decoded_prediction():
    """With dw = dh = log(1/2) (δ = log(1/2)/0.2), each positive anchor decodes to a 32×32 box
    around its centre, e.g. (−8, −8, 24, 24), which contains the 10×10 gt: q = 100/1024. The VFL
    counts every anchor (no label weights: image 1's 12 invalid anchors are negatives too):
    loss_cls = (Σ_neg 0.75·0.5²·log 2 + Σ_pos q·log 2) / A."""
    head = small_head(atss_topk=4, use_vfl=True)
    d = math.log(0.5) / 0.2
    losses = head.loss(outputs(2, 4, 4, deltas=(0.0, 0.0, d, d)), GTS, LABELS, METAS)
    q = 100.0 / 1024.0
    a = 5.0
    num_elements = 2 * 16 * 2
    expected = ((num_elements - 4) * 0.75 * 0.25 * LOG2 + 4 * q * LOG2) / (a + EPS32)
    assert _f(losses["loss_cls"]) == pytest.approx(expected, rel=1e-5)
    # The 2.10 normaliser of the VFL variant: B = Σct = 4/9 (no clamp to 1) → 2·(1 − q).
    assert _f(losses["loss_bbox"]) == pytest.approx(2.0 * (1 - q), rel=1e-5)
    assert _f(losses["loss_centerness"]) == pytest.approx(4 * LOG2 / (a + EPS32), rel=1e-6)


def test_predict_thresholds_the_raw_score_before_the_centerness_product():
    """2×2 map at stride 8 (anchors of side 64 centred at (0|8, 0|8)), img_shape 32×32,
    scale_factor 0.5. Deltas shrink every box to 16×16 (dw = log(1/4)/0.2) and shift it:
    loc 3 → A (0, 0, 16, 16) raw 0.9, ctr 0.5;  loc 2 → A again, raw 0.8 (suppressed, IoU 1);
    loc 1 → B (0, 5, 16, 21) raw 0.06, ctr 0.1: kept with 0.006 although 0.006 < score_thr;
    IoU(A, B) = 176/336 = 0.524 < 0.6 so NMS keeps it; loc 0 raw 0.04, ctr ≈ 1: dropped."""
    head = small_head()
    cls = torch.full((1, 2, 2, 2), -10.0)
    ctr = torch.zeros(1, 1, 2, 2)
    reg = torch.zeros(1, 4, 2, 2)
    dwh = math.log(0.25) / 0.2
    reg[0, 2:] = dwh
    # location (y, x): 3 = (1, 1) centre (8, 8); 2 = (1, 0) centre (0, 8); 1 = (0, 1) centre (8, 0)
    cls[0, 0, 1, 1], ctr[0, 0, 1, 1] = logit(0.9), 0.0
    cls[0, 0, 1, 0], ctr[0, 0, 1, 0] = logit(0.8), 0.0
    reg[0, 0, 1, 0] = 8.0 / 6.4  # cx = 0 + 64·0.1·dx = 8
    cls[0, 0, 0, 1], ctr[0, 0, 0, 1] = logit(0.06), logit(0.1)
    reg[0, 1, 0, 1] = 13.0 / 6.4  # cy = 0 + 64·0.1·dy = 13
    cls[0, 1, 0, 0], ctr[0, 0, 0, 0] = logit(0.04), 10.0
    meta = {"img_shape": (32, 32), "scale_factor": (0.5, 0.5)}
    out = ATSSOutputs([cls], [reg], [ctr])

    (det,) = head.predict(out, [meta], rescale=True)
    assert det["labels"].tolist() == [0, 0]
    assert det["scores"].tolist() == pytest.approx([0.45, 0.006], rel=1e-5)
    assert det["boxes"].tolist()[0] == pytest.approx([0.0, 0.0, 32.0, 32.0], abs=1e-4)
    assert det["boxes"].tolist()[1] == pytest.approx([0.0, 10.0, 32.0, 42.0], abs=1e-4)

    # The same scene at NMS 0.5 suppresses B (IoU 0.524 > 0.5): 0.6 is what keeps it.
    (det05,) = small_head(test_cfg={"nms_iou": 0.5}).predict(out, [meta], rescale=True)
    assert det05["scores"].tolist() == pytest.approx([0.45], rel=1e-5)
    assert head.test_cfg.nms_iou == 0.6 and head.test_cfg.min_bbox_size == 0.0


def test_forward_shapes_centerness_from_reg_tower_and_init():
    head = small_head(strides=(8, 16))
    assert _f(head.atss_cls.bias[0]) == pytest.approx(-4.59512, abs=1e-5)
    assert _f(head.atss_reg.bias.abs().max()) == 0.0 and _f(head.scales[0].scale) == 1.0
    feats = [torch.randn(2, 8, 4, 6), torch.randn(2, 8, 2, 3)]
    out = head(feats)
    assert [tuple(c.shape) for c in out.cls_scores] == [(2, 2, 4, 6), (2, 2, 2, 3)]
    assert [tuple(b.shape) for b in out.bbox_preds] == [(2, 4, 4, 6), (2, 4, 2, 3)]
    assert [tuple(c.shape) for c in out.centernesses] == [(2, 1, 4, 6), (2, 1, 2, 3)]
    with torch.no_grad():
        head.cls_convs[0].conv.weight.mul_(3.0)
        head.scales[1].scale.fill_(2.0)
    out2 = head(feats)
    assert not torch.equal(out2.cls_scores[0], out.cls_scores[0])
    assert torch.equal(out2.centernesses[0], out.centernesses[0])  # centerness: reg tower only
    assert torch.allclose(out2.bbox_preds[1], 2.0 * out.bbox_preds[1])  # Scale multiplies deltas
    with pytest.raises(ValueError):
        head(feats[:1])
