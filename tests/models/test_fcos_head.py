"""FCOSHead behaviour with hand-computed values (zoo_spec §3, §1.6, §1.15, §1.16, §3.8)."""

from __future__ import annotations

import math

import pytest
import torch

from varifocal.models.heads.fcos_head import FCOSHead, FCOSOutputs

INF = 1e8
LOG2 = math.log(2.0)


def one_level_head(**kw) -> FCOSHead:
    """Stride 8 only, every distance in range, 2 classes, a narrow tower."""
    torch.manual_seed(0)
    kw.setdefault("strides", (8,))
    kw.setdefault("regress_ranges", ((-1, INF),))
    return FCOSHead(num_classes=2, in_channels=16, feat_channels=16, stacked_convs=1, num_groups=4, **kw)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_points_sit_at_half_stride_offsets():
    head = one_level_head(strides=(8, 16), regress_ranges=((-1, 64), (64, INF)))
    p8, p16 = head.points([(2, 3), (1, 2)])
    assert p8.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert p16.tolist() == [[8, 8], [24, 8]]


def test_min_area_wins_and_ties_go_to_the_lowest_index():
    """Points at 4, 12, 20, 28 (stride 8). g0 = 32×32 (area 1024), g1 and g2 = the same 16×16
    box (area 256, a tie)."""
    head = one_level_head()
    boxes = torch.tensor([[0.0, 0, 32, 32], [0, 0, 16, 16], [0, 0, 16, 16]])
    t = head.get_targets([(4, 4)], [boxes], [torch.tensor([0, 1, 0])])
    labels, targets, inds = t.labels[0], t.bbox_targets[0], t.assigned_gt_inds[0]
    grid = inds.reshape(4, 4)
    # The 2×2 top-left points lie in all three boxes: g1 (smallest, lowest of the tie) wins.
    assert grid.tolist() == [[2, 2, 1, 1], [2, 2, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert labels.reshape(4, 4)[0].tolist() == [1, 1, 0, 0]
    assert targets[0].tolist() == [4, 4, 12, 12]  # point (4, 4) in g1
    assert targets[5].tolist() == [12, 12, 4, 4]  # point (12, 12) in g1
    assert targets[10].tolist() == [20, 20, 12, 12]  # point (20, 20) in g0


def test_points_on_a_box_edge_and_empty_images_are_negative():
    head = one_level_head()
    boxes = torch.tensor([[4.0, 4, 20, 20]])  # the points at x = 4 or y = 4 have l or t = 0
    t = head.get_targets([(4, 4)], [boxes, torch.zeros((0, 4))], [torch.tensor([1]), torch.zeros(0, dtype=torch.long)])
    # Only (12, 12) is strictly inside; x or y = 20 has r or b = 0 too.
    assert t.assigned_gt_inds[0].reshape(4, 4).tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert t.labels[1].tolist() == [2] * 16 and t.assigned_gt_inds[1].tolist() == [0] * 16


def test_regress_ranges_are_inclusive_at_both_ends():
    """Level 0 (stride 8) takes max distance ≤ 12, level 1 (stride 16) ≥ 12.
    Image 0: box [0, 0, 24, 24]; point (12, 12) of level 0 has all four distances = 12 = hi.
    Image 1: box [-4, -4, 20, 20]; point (8, 8) of level 1 has all four distances = 12 = lo."""
    head = one_level_head(strides=(8, 16), regress_ranges=((-1, 12), (12, INF)))
    sizes = [(3, 3), (2, 2)]  # level 0 points 4, 12, 20; level 1 points 8, 24
    boxes = [torch.tensor([[0.0, 0, 24, 24]]), torch.tensor([[-4.0, -4, 20, 20]])]
    t = head.get_targets(sizes, boxes, [torch.tensor([0]), torch.tensor([1])])
    lvl0, lvl1 = t.assigned_gt_inds[0].split([9, 4])
    assert lvl0.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]  # only (12, 12): max 12 ≤ 12
    # Level 1, image 0: (8, 8) has (8, 8, 16, 16), max 16 ≥ 12; the others are outside the box.
    assert lvl1.tolist() == [1, 0, 0, 0]
    lvl0, lvl1 = t.assigned_gt_inds[1].split([9, 4])
    # Image 1, level 0: (4, 4) → max 16, (12, 12) → max 16: above 12, not positive.
    assert lvl0.tolist() == [0] * 9
    assert lvl1.tolist() == [1, 0, 0, 0]  # (8, 8): max 12 ≥ 12
    assert t.bbox_targets[1][9].tolist() == [12, 12, 12, 12]
    assert t.labels[1][9].item() == 1


def test_center_sampling_keeps_points_strictly_inside_the_clipped_centre_box():
    """Radius 1.5 at stride 8: centre box c ± 12. Box [0, 0, 48, 48]: centre box [12, 36]; the
    points 12 and 36 lie on its edge (excluded), 20 and 28 inside: 2 × 2 positives. A small box
    [0, 0, 16, 16]: centre box [-4, 20] clipped to [0, 16]: the 4 points inside the box."""
    head = one_level_head(center_sampling=True, center_sample_radius=1.5)
    t = head.get_targets([(6, 6)], [torch.tensor([[0.0, 0, 48, 48]])], [torch.tensor([0])])
    grid = t.assigned_gt_inds[0].reshape(6, 6)
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[2:4, 2:4] = 1
    assert torch.equal(grid, expected)
    # The regression targets are still the distances to the gt box, not to the centre box.
    assert t.bbox_targets[0][2 * 6 + 2].tolist() == [20, 20, 28, 28]
    t = head.get_targets([(6, 6)], [torch.tensor([[0.0, 0, 16, 16]])], [torch.tensor([1])])
    assert int(t.assigned_gt_inds[0].sum()) == 4
    # Without centre sampling the big box has 6 × 6 = 36 positives (every point is inside).
    t = one_level_head().get_targets([(6, 6)], [torch.tensor([[0.0, 0, 48, 48]])], [torch.tensor([0])])
    assert int((t.assigned_gt_inds[0] > 0).sum()) == 36


def test_norm_on_bbox_divides_targets_by_the_stride():
    head = one_level_head(norm_on_bbox=True)
    t = head.get_targets([(4, 4)], [torch.tensor([[0.0, 0, 16, 16]])], [torch.tensor([0])])
    assert t.bbox_targets[0][0].tolist() == [0.5, 0.5, 1.5, 1.5]  # (4, 4, 12, 12) / 8


def constructed_outputs(dist: float = 8.0, num_imgs: int = 1, requires_grad: bool = False) -> FCOSOutputs:
    """4×4 level, zero logits everywhere, every distance = ``dist``."""
    cls = torch.zeros(num_imgs, 2, 4, 4, requires_grad=requires_grad)
    box = torch.full((num_imgs, 4, 4, 4), dist, requires_grad=requires_grad)
    ctr = torch.zeros(num_imgs, 1, 4, 4, requires_grad=requires_grad)
    return FCOSOutputs([cls], [box], [ctr])


GT = [torch.tensor([[0.0, 0, 16, 16]])]  # positives: the 4 points (4|12, 4|12), ct = 1/3 each
IOU_8 = 144 / 368  # pred [-4, -4, 12, 12] (distances 8 at (4, 4)) vs gt [0, 0, 16, 16]


def test_loss_values_and_normalisers_by_hand():
    """16 points × 2 classes, zero logits: focal element = log2·α_t·0.5²; 4 positives.
    - loss_cls = log2·(4·0.25·0.25 + 28·0.75·0.25) / num_pos 4 = 1.375·log2;
    - loss_bbox = Σ ct·(−log IoU) / Σ ct = −log(144/368) (every positive has IoU 144/368);
    - loss_centerness = 4·BCE(0, 1/3) / num_pos = log2 (not / Σ ct, which would give 3·log2)."""
    head = one_level_head()
    losses = head.loss(constructed_outputs(8.0), GT, [torch.tensor([0])])
    assert float(losses["loss_cls"]) == pytest.approx(1.375 * LOG2, rel=1e-6)
    assert float(losses["loss_bbox"]) == pytest.approx(-math.log(IOU_8), rel=1e-6)
    assert float(losses["loss_centerness"]) == pytest.approx(LOG2, rel=1e-6)


def test_giou_and_norm_on_bbox_losses_by_hand():
    """GIoU: the enclosing box of [-4, -4, 12, 12] and [0, 0, 16, 16] is 20×20 = 400, so
    GIoU = 144/368 − (400 − 368)/400. With norm_on_bbox the train-mode distances are in stride
    units (1 = 8 px): both boxes shrink about the same point, the loss is unchanged."""
    expected = 1 - (IOU_8 - 32 / 400)
    giou = one_level_head(loss_bbox="giou").loss(constructed_outputs(8.0), GT, [torch.tensor([0])])
    assert float(giou["loss_bbox"]) == pytest.approx(expected, rel=1e-6)
    normed = one_level_head(loss_bbox="giou", norm_on_bbox=True).loss(constructed_outputs(1.0), GT, [torch.tensor([0])])
    assert float(normed["loss_bbox"]) == pytest.approx(expected, rel=1e-6)
    assert float(normed["loss_centerness"]) == pytest.approx(LOG2, rel=1e-6)


def test_num_pos_is_a_batch_count_and_zero_positives_give_connected_zeros():
    head = one_level_head()
    outs = constructed_outputs(8.0, num_imgs=2, requires_grad=True)
    losses = head.loss(outs, [GT[0], torch.zeros((0, 4))], [torch.tensor([0]), torch.zeros(0, dtype=torch.long)])
    # 4 positives in 2 × 16 points: (4·0.0625 + 60·0.1875)·log2 / 4.
    assert float(losses["loss_cls"].detach()) == pytest.approx((0.25 + 60 * 0.1875) * LOG2 / 4, rel=1e-6)
    outs = constructed_outputs(8.0, requires_grad=True)
    losses = head.loss(outs, [torch.zeros((0, 4))], [torch.zeros(0, dtype=torch.long)])
    assert float(losses["loss_cls"].detach()) == pytest.approx(
        32 * 0.1875 * LOG2 / 1.0, rel=1e-6
    )  # num_pos clamped to 1
    assert float(losses["loss_bbox"].detach()) == 0.0 and float(losses["loss_centerness"].detach()) == 0.0
    sum(losses.values()).backward()  # the zeros are part of the graph
    assert outs.bbox_preds[0].grad is not None and float(outs.bbox_preds[0].grad.abs().sum()) == 0.0


def test_vfl_target_is_the_iou_of_the_own_decoded_prediction():
    """Project proposal (zoo_spec §3.8): T[pos, gt class] = IoU(decode(p, pred).detach(), gt),
    0 elsewhere, normaliser num_pos. The point (12, 12) predicts (4, 4, 4, 4) → [8, 8, 16, 16],
    IoU 64/256 with the gt; the other positives predict distances 8 → IoU 144/368."""
    head = one_level_head(use_vfl=True)
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self, real):
            super().__init__()
            self.real = real

        def forward(self, pred, target, avg_factor=None):
            seen.update(target=target.clone(), avg_factor=avg_factor)
            return self.real(pred, target, avg_factor=avg_factor)

    head.loss_cls = Recorder(head.loss_cls)
    outs = constructed_outputs(8.0)
    outs.bbox_preds[0][0, :, 1, 1] = 4.0  # the point (12, 12)
    losses = head.loss(outs, GT, [torch.tensor([1])])
    target = seen["target"]
    assert seen["avg_factor"] == 4.0
    expected = torch.zeros(16, 2)
    expected[[0, 1, 4], 1] = IOU_8  # points (4, 4), (12, 4), (4, 12)
    expected[5, 1] = 0.25  # point (12, 12)
    assert torch.allclose(target, expected, atol=1e-6)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}


def test_predict_thresholds_the_raw_score_and_multiplies_the_centerness_after():
    """2×2 level at stride 8 (points 4, 12). σ(cls) 0.3 with σ(ctr) 0.1 is kept (0.3 > 0.05)
    and scores 0.03; σ(cls) 0.04 with σ(ctr) ≈ 1 is dropped; boxes are clipped to img_shape."""
    head = one_level_head()
    cls = torch.full((1, 2, 2, 2), -20.0)
    ctr = torch.zeros(1, 1, 2, 2)
    box = torch.full((1, 4, 2, 2), 2.0)
    cls[0, 0, 0, 0], ctr[0, 0, 0, 0] = logit(0.3), logit(0.1)  # point (4, 4)
    cls[0, 1, 0, 1], ctr[0, 0, 0, 1] = logit(0.04), 20.0  # point (12, 4): below threshold
    cls[0, 0, 1, 0], ctr[0, 0, 1, 0] = logit(0.8), 0.0  # point (4, 12): 0.8·0.5
    cls[0, 1, 1, 1] = logit(0.6)  # point (12, 12): 0.6·0.5, box reaches x = -88 → clipped
    box[0, 0, 1, 1] = 100.0
    meta = {"img_shape": (16, 16), "scale_factor": (0.5, 0.5)}
    (det,) = head.predict(FCOSOutputs([cls], [box], [ctr]), [meta], rescale=False)
    assert det["scores"].tolist() == pytest.approx([0.4, 0.3, 0.03], rel=1e-5)
    assert det["labels"].tolist() == [0, 1, 0]
    assert det["boxes"].tolist() == [[2, 10, 6, 14], [0, 10, 14, 14], [2, 2, 6, 6]]
    (det,) = head.predict(FCOSOutputs([cls], [box], [ctr]), [meta], rescale=True)
    assert det["boxes"][0].tolist() == [4, 20, 12, 28]  # ÷ scale factor 0.5
    assert head.test_cfg.nms_iou == 0.5 and head.test_cfg.min_bbox_size == 0.0


def test_forward_distances_exp_or_relu_times_stride():
    """Zero features: towers give 0 (GN of a constant), conv_reg gives its bias 0, so the
    base distances are exp(0) = 1 px; with norm_on_bbox relu(Scale·x) ×stride at eval."""
    feats = [torch.zeros(1, 16, 2, 2)]
    head = one_level_head().eval()
    with torch.no_grad():
        cls, box, ctr = head(feats)
    assert torch.equal(box[0], torch.ones(1, 4, 2, 2)) and box[0].dtype == torch.float32
    assert torch.allclose(cls[0], torch.full((1, 2, 2, 2), -math.log(99.0)))
    assert cls[0].shape == (1, 2, 2, 2) and ctr[0].shape == (1, 1, 2, 2)
    head = one_level_head(norm_on_bbox=True)
    with torch.no_grad():
        head.conv_reg.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        head.scales[0].scale.fill_(2.0)
        train_box = head.train()(feats).bbox_preds[0]
        eval_box = head.eval()(feats).bbox_preds[0]
    assert train_box[0, :, 0, 0].tolist() == [1.0, 0.0, 4.0, 0.0]  # relu(2·bias), stride units
    assert eval_box[0, :, 0, 0].tolist() == [8.0, 0.0, 32.0, 0.0]  # ×8 at eval


def test_centerness_on_reg_reads_the_reg_tower():
    torch.manual_seed(1)
    feats = [torch.randn(1, 16, 3, 3)]
    for on_reg, tower in ((True, "reg_convs"), (False, "cls_convs")):
        head = one_level_head(centerness_on_reg=on_reg).eval()
        with torch.no_grad():
            before = head(feats).centernesses[0].clone()
            head.cls_convs[0].gn.bias.add_(0.5)  # GN would undo a weight scaling
            after = head(feats).centernesses[0]
        assert torch.equal(before, after) == on_reg, tower


@torch.no_grad()
def test_initialisation_and_keys():
    head = FCOSHead(num_classes=80, in_channels=64, feat_channels=64, conv_bias=True)
    assert float(head.conv_cls.bias[0].detach()) == pytest.approx(-4.59512, abs=1e-5)
    assert float(head.conv_reg.bias.abs().max()) == 0.0 and float(head.cls_convs[0].conv.bias.abs().max()) == 0.0
    assert 0.009 < float(head.cls_convs[0].conv.weight.std()) < 0.011
    assert float(head.cls_convs[0].gn.weight.min()) == 1.0 and float(head.cls_convs[0].gn.bias.abs().max()) == 0.0
    assert [float(s.scale) for s in head.scales] == [1.0] * 5
    keys = set(head.state_dict())
    assert {
        "conv_cls.weight",
        "conv_reg.bias",
        "conv_centerness.weight",
        "scales.4.scale",
        "reg_convs.3.conv.bias",
    } <= keys
    assert len(keys) == 43
    assert len(FCOSHead(num_classes=80, in_channels=64, feat_channels=64).state_dict()) == 35


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="regress_ranges"):
        FCOSHead(2, strides=(8, 16), regress_ranges=((-1, INF),))
    with pytest.raises(ValueError, match="loss_bbox"):
        FCOSHead(2, loss_bbox="l1")
    with pytest.raises(ValueError, match="test_cfg"):
        FCOSHead(2, test_cfg={"nms": 0.5})
    with pytest.raises(ValueError, match="feature levels"):
        one_level_head()([torch.zeros(1, 16, 2, 2)] * 2)
