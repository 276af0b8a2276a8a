"""FoveaHead and FoveaAssigner with hand-computed values (zoo_spec §5, §1.6, §1.14-§1.16, §5.8, §8)."""

from __future__ import annotations

import math

import pytest
import torch

from varifocal.assigners import FoveaAssigner
from varifocal.models.heads.fovea_head import FOVEA_TEST_CFG, FoveaHead, FoveaOutputs

LN2 = math.log(2.0)
EPS32 = torch.finfo(torch.float32).eps


def one_level_head(**kw) -> FoveaHead:
    """A single stride-8 level with base edge 8 and range [1, 64]; 2 classes, channels 8."""
    torch.manual_seed(0)
    args = dict(
        num_classes=2,
        in_channels=8,
        feat_channels=8,
        stacked_convs=1,
        strides=(8,),
        base_edge_list=(8,),
        scale_ranges=((1, 64),),
    )
    args.update(kw)
    return FoveaHead(**args)


def zoo_assigner() -> FoveaAssigner:
    head = FoveaHead(num_classes=80, in_channels=8, feat_channels=8, stacked_convs=1)
    return head.assigner


def test_default_hyper_parameters_layers_and_init():
    head = FoveaHead(num_classes=80, in_channels=32, feat_channels=32)
    a = head.assigner
    assert a.strides == (8, 16, 32, 64, 128) and a.base_edge_list == (16, 32, 64, 128, 256)
    assert a.scale_ranges == ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))
    assert a.sigma == 0.4 and a.target_clamp == (1 / 16, 16.0)
    # §5.10 items 1 and 6: FL γ 1.5 α 0.4 (not .25/2), SmoothL1 β 0.11, no size filter at test.
    assert (head.loss_cls.alpha, head.loss_cls.gamma) == (0.4, 1.5) and head.loss_bbox.beta == 0.11
    assert head.test_cfg == FOVEA_TEST_CFG and head.test_cfg.min_bbox_size is None
    assert (head.test_cfg.nms_iou, head.test_cfg.nms_pre, head.test_cfg.max_per_img) == (0.5, 1000, 100)
    # §5.1: towers of 4 conv-with-bias → ReLU, no norm; reg branch registered first (A.4 order).
    assert len(head.cls_convs) == len(head.reg_convs) == 4
    assert head.cls_convs[0].gn is None and head.reg_convs[3].conv.bias is not None
    keys = list(head.state_dict())
    assert keys[0] == "reg_convs.0.conv.weight" and keys[8:10] == ["conv_reg.weight", "conv_reg.bias"]
    assert keys[-2:] == ["conv_cls.weight", "conv_cls.bias"] and not any("scale" in k for k in keys)
    # §1.16: N(0, 0.01²) weights, zero biases, classifier prior bias −log(99).
    assert float(head.conv_cls.bias.detach()[0]) == pytest.approx(-4.59512, abs=1e-5)
    assert float(head.conv_reg.bias.detach().abs().max()) == 0.0
    assert 0.008 < float(head.cls_convs[0].conv.weight.detach().std()) < 0.012


def test_forward_shapes_and_level_count():
    head = one_level_head(strides=(8, 16), base_edge_list=(8, 16), scale_ranges=((1, 64), (32, 128)))
    cls, reg = head([torch.zeros(2, 8, 6, 5), torch.zeros(2, 8, 3, 3)])
    assert [tuple(c.shape) for c in cls] == [(2, 2, 6, 5), (2, 2, 3, 3)]
    assert [tuple(r.shape) for r in reg] == [(2, 4, 6, 5), (2, 4, 3, 3)]
    with pytest.raises(ValueError, match="expects 2 feature levels, got 1"):
        head([torch.zeros(1, 8, 4, 4)])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="must be as many"):
        FoveaHead(num_classes=2, strides=(8, 16), base_edge_list=(16,), scale_ranges=((1, 64),))
    with pytest.raises(ValueError, match="sigma must be in"):
        FoveaHead(num_classes=2, sigma=0.0)
    with pytest.raises(ValueError, match="lo <= hi"):
        one_level_head(scale_ranges=((64, 1),))
    with pytest.raises(ValueError, match="vfl_clip"):
        one_level_head(vfl_clip="last_image")
    with pytest.raises(ValueError, match="unknown test_cfg"):
        one_level_head(test_cfg={"nms_thr": 0.5})


def test_scale_ranges_are_inclusive_and_overlap():
    """√(w·h) against (1, 64), (32, 128), (64, 256), (128, 512), (256, 2048), both bounds in."""
    boxes = torch.tensor(
        [
            [0.0, 0.0, 64.0, 64.0],  # side 64: the top of P3, inside P4, the bottom of P5 → 0, 1, 2
            [0.0, 0.0, 16.0, 64.0],  # side √1024 = 32: the bottom of P4 → 0, 1
            [0.0, 0.0, 31.0, 31.0],  # side 31 → 0 only
            [0.0, 0.0, 2048.0, 2048.0],  # side 2048: the top of P7 → 4
            [0.0, 0.0, 2049.0, 2048.0],  # side > 2048 → none
            [0.0, 0.0, 0.5, 1.0],  # side √0.5 < 1 → none
            [0.0, 0.0, 200.0, 200.0],  # side 200 → 2, 3 (64..256 and 128..512)
        ]
    )
    hits = zoo_assigner().scale_assignment(boxes)
    expected = [[0, 1, 2], [0, 1], [0], [4], [], [], [2, 3]]
    assert [torch.nonzero(row).flatten().tolist() for row in hits] == expected


def test_fovea_region_of_a_known_box():
    """Box (40, 24, 104, 88) at stride 8 is (5, 3, 13, 11) in cells, half size 4:
    columns ceil(5 + 0.6·4 − 0.5) = ceil(6.9) = 7 … floor(5 + 1.4·4 − 0.5) = floor(10.1) = 10,
    rows ceil(4.9) = 5 … floor(8.1) = 8. Their centres 60, 68, 76, 84 px lie in the σ-box
    72 ± 12.8 = [59.2, 84.8]; column 6 (52) and 11 (92) do not. At stride 16 the box is
    (2.5, 1.5, 6.5, 5.5), half 2: column ceil(3.2) = 4 … floor(4.8) = 4, row 3 … 3."""
    a = zoo_assigner()
    box = torch.tensor([[40.0, 24.0, 104.0, 88.0]])
    assert a.fovea_region(box, 8, (16, 16)).tolist() == [[7, 5, 10, 8]]
    assert a.fovea_region(box, 16, (8, 8)).tolist() == [[4, 3, 4, 3]]
    # Clamped to the feature map: (12.5, 0.5, 20, 5) in cells → columns ceil(14.25) = 15 …
    # floor(17.25) = 17 → 15 … 15; rows ceil(1.35) = 2 … floor(3.15) = 3.
    assert a.fovea_region(torch.tensor([[100.0, 4.0, 160.0, 40.0]]), 8, (8, 16)).tolist() == [[15, 2, 15, 3]]


def test_targets_of_a_known_box_on_three_levels():
    """Side 64 hits P3 (base 16), P4 (base 32) and P5 (base 64): the bounds are inclusive.
    P3: 4×4 cells; cell (row 5, col 7) has the point (60, 44): (20, 20, 44, 44) / 16 →
    log 1.25, log 2.75. P4: one cell (3, 4), point (72, 56): (32, 32, 32, 32) / 32 = 1 → log 1
    = 0, a positive with all-zero targets. P5: (1.25, 0.75, 3.25, 2.75) in cells, half 1 →
    column ceil(1.35) = 2 … floor(2.15) = 2, row 1 … 1; point (80, 48): (40, 24, 24, 40) / 64."""
    head = FoveaHead(num_classes=3, in_channels=8, feat_channels=8, stacked_convs=1)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    t = head.get_targets(sizes, [torch.tensor([[40.0, 24.0, 104.0, 88.0]])], [torch.tensor([2])])
    labels, targets, inds = t.labels[0], t.bbox_targets[0], t.assigned_gt_inds[0]
    assert labels.shape == (256 + 64 + 16 + 4 + 1,)
    p3, p4, p5 = labels[:256].reshape(16, 16), labels[256:320].reshape(8, 8), labels[320:336].reshape(4, 4)
    assert torch.equal(p3[5:9, 7:11], torch.full((4, 4), 2))
    assert int((p3 == 2).sum()) == 16 and int((p4 == 2).sum()) == 1 and int(p4[3, 4]) == 2
    assert int((p5 == 2).sum()) == 1 and int(p5[1, 2]) == 2
    assert int((labels[336:] < 3).sum()) == 0 and int((labels == 3).sum()) == labels.numel() - 18
    assert targets[5 * 16 + 7].tolist() == pytest.approx([math.log(1.25)] * 2 + [math.log(2.75)] * 2, abs=1e-6)
    assert targets[256 + 3 * 8 + 4].tolist() == [0.0, 0.0, 0.0, 0.0]
    expected_p5 = [math.log(40 / 64), math.log(24 / 64), math.log(24 / 64), math.log(40 / 64)]
    assert targets[320 + 1 * 4 + 2].tolist() == pytest.approx(expected_p5, abs=1e-6)
    assert float(targets[labels == 3].abs().max()) == 0.0  # background: log 1
    assert torch.equal(inds > 0, labels < 3) and set(inds[inds > 0].tolist()) == {1}


def test_smaller_gt_paints_over_larger_in_either_input_order():
    """Large (0, 0, 128, 128) has the fovea cells 5 … 10 × 5 … 10 (36); small (40, 24, 104, 88)
    has 7 … 10 × 5 … 8 (16), inside it. Painting runs by descending area, so the small box
    wins its 16 cells and the large keeps 20, whichever gt comes first."""
    head = one_level_head(num_classes=3, base_edge_list=(16,), scale_ranges=((1, 1000),))
    large, small = [0.0, 0.0, 128.0, 128.0], [40.0, 24.0, 104.0, 88.0]
    for boxes, labels, small_ind in (([large, small], [0, 1], 2), ([small, large], [1, 0], 1)):
        t = head.get_targets([(16, 16)], [torch.tensor(boxes)], [torch.tensor(labels)])
        grid = t.labels[0].reshape(16, 16)
        assert torch.equal(grid[5:9, 7:11], torch.full((4, 4), 1))
        assert int((grid == 1).sum()) == 16 and int((grid == 0).sum()) == 20
        assert int(grid[5, 5]) == 0 and int(grid[10, 10]) == 0 and int(grid[4, 7]) == 3
        assert set(t.assigned_gt_inds[0].reshape(16, 16)[5:9, 7:11].flatten().tolist()) == {small_ind}
        # The small box's targets at (5, 7), point (60, 44): (20, 20, 44, 44) / 16.
        expected = [math.log(1.25)] * 2 + [math.log(2.75)] * 2
        assert t.bbox_targets[0][5 * 16 + 7].tolist() == pytest.approx(expected, abs=1e-6)


def test_target_clamp_to_1_16_and_16_before_the_log():
    """σ = 1 paints the whole box (0, 0, 64, 64) on an 8×8 map. Base 256: the point (4, 4)
    has 4/256 = 1/64 → clamped to 1/16; 60/256 stays. Base 2: 60/2 = 30 → clamped to 16."""
    for base, expected in (
        (256, [math.log(1 / 16)] * 2 + [math.log(60 / 256)] * 2),
        (2, [math.log(2.0)] * 2 + [math.log(16.0)] * 2),
    ):
        head = one_level_head(base_edge_list=(base,), sigma=1.0)
        t = head.get_targets([(8, 8)], [torch.tensor([[0.0, 0.0, 64.0, 64.0]])], [torch.tensor([1])])
        assert int((t.labels[0] == 1).sum()) == 64
        assert t.bbox_targets[0][0].tolist() == pytest.approx(expected, abs=1e-6)
    t = one_level_head(target_clamp=(0.5, 2.0), sigma=1.0).get_targets(
        [(8, 8)], [torch.tensor([[0.0, 0.0, 64.0, 64.0]])], [torch.tensor([1])]
    )
    assert t.bbox_targets[0][0].tolist() == pytest.approx([math.log(0.5)] * 2 + [math.log(2.0)] * 2, abs=1e-6)


def test_malformed_gts_are_refused():
    head = one_level_head()
    with pytest.raises(ValueError, match="1 gt_bboxes entries but 2 gt_labels"):
        head.get_targets([(4, 4)], [torch.zeros(0, 4)], [torch.zeros(0), torch.zeros(0)])
    with pytest.raises(ValueError, match=r"\[K, 4\] with labels \[K\]"):
        head.get_targets([(4, 4)], [torch.zeros(2, 4)], [torch.zeros(3, dtype=torch.long)])


def _cell_gt_batch(head: FoveaHead, logits: float = 0.0, preds: torch.Tensor | None = None):
    """Two 32×32 images (4×4 cells at stride 8); image 1 has the gt (8, 8, 16, 16), class 1,
    whose fovea is the one cell (1, 1) with the point (12, 12): targets log(4/8) ×4."""
    cls = torch.full((2, 2, 4, 4), logits, requires_grad=True)
    reg = torch.zeros(2, 4, 4, 4) if preds is None else preds
    reg.requires_grad_(True)
    gts = [torch.zeros(0, 4), torch.tensor([[8.0, 8.0, 16.0, 16.0]])]
    labels = [torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    return FoveaOutputs([cls], [reg]), gts, labels


def test_loss_normalisers():
    """Zero logits: p = ½, BCE = ln 2, pt^γ = ½^1.5. One positive element (α = 0.4), 63
    negatives (1 − α). loss_cls = Σ / (num_pos + num_imgs = 3); loss_bbox = SmoothL1 of
    |0 − log ½| = ln 2 > β: 4·(ln 2 − 0.055) / num_pos (1)."""
    head = one_level_head()
    outs, gts, labels = _cell_gt_batch(head)
    metas = [{"img_shape": (32, 32)}] * 2
    t = head.get_targets([(4, 4)], gts, labels)
    assert int((t.labels[1] < 2).sum()) == 1 and int(t.labels[1][5]) == 1
    assert t.bbox_targets[1][5].tolist() == pytest.approx([-LN2] * 4, abs=1e-6)
    losses = {k: v.detach() for k, v in head.loss(outs, gts, labels, metas).items()}
    s = 0.5**1.5 * LN2
    assert float(losses["loss_cls"]) == pytest.approx((0.4 * s + 63 * 0.6 * s) / (3 + EPS32), rel=1e-6)
    assert float(losses["loss_bbox"]) == pytest.approx(4 * (LN2 - 0.055) / (1 + EPS32), rel=1e-6)
    # No positives: the box loss is a graph-connected 0 and the cls normaliser is num_imgs.
    empty = [torch.zeros(0, 4)] * 2
    no_labels = [torch.zeros(0, dtype=torch.long)] * 2
    losses = head.loss(outs, empty, no_labels, metas)
    assert losses["loss_bbox"].requires_grad and float(losses["loss_bbox"].detach()) == 0.0
    assert float(losses["loss_cls"].detach()) == pytest.approx(64 * 0.6 * s / (2 + EPS32), rel=1e-6)
    sum(losses.values()).backward()
    assert float(outs.bbox_preds[0].grad.abs().max()) == 0.0 and outs.cls_scores[0].grad is not None


def test_decode_clamps_to_w_minus_1():
    """B = 16, e^t = ½ → 8 px each side of the point (4, 4): (−4, −4, 12, 12) → clamp x, y to
    [0, W − 1] = [0, 9] (not 10) in a 10×10 image."""
    points = torch.tensor([[4.0, 4.0], [40.0, 20.0]])
    preds = torch.full((2, 4), math.log(0.5))
    assert FoveaHead.decode_boxes(points, preds, 16).tolist() == [[-4, -4, 12, 12], [32, 12, 48, 28]]
    clipped = FoveaHead.decode_boxes(points, preds, 16, max_shape=(10, 10))
    assert clipped.tolist() == [[0, 0, 9, 9], [9, 9, 9, 9]]
    per_point = FoveaHead.decode_boxes(points, preds, torch.tensor([16.0, 32.0]), max_shape=(30, 50))
    assert per_point.tolist() == [[0, 0, 12, 12], [24, 4, 49, 29]]


def test_predict_clamps_to_w_minus_1_rescales_and_keeps_empty_boxes():
    """One 4×4 level in a 30×20 (h×w) image, scale_factor 2: cell (1, 1) (point (12, 12)) with
    distances 8·e^{log 2} = 16 → (−4, −4, 28, 28) → clip to (0, 0, 19, 28) → ÷ 2. Cell (0, 3)
    (point (28, 4)) is clipped to the empty box x1 = x2 = 19; FoveaBox has no size filter, so
    it is kept (RetinaNet's min_bbox_size 0 would drop it)."""
    head = one_level_head()
    cls = torch.full((1, 2, 4, 4), -10.0)
    cls[0, 1, 1, 1] = 3.0
    cls[0, 0, 0, 3] = 2.0
    reg = torch.full((1, 4, 4, 4), math.log(2.0))
    reg[0, 0, 0, 3] = math.log(0.5)  # x1 = 28 − 4 = 24 > 19 → 19
    meta = {"img_shape": (30, 20), "scale_factor": (2.0, 2.0)}
    (det,) = head.predict(FoveaOutputs([cls], [reg]), [meta])
    assert det["labels"].tolist() == [1, 0]
    assert det["scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(3.0)).item(), 0.880797], abs=1e-6)
    assert det["boxes"].tolist() == [[0.0, 0.0, 9.5, 14.0], [9.5, 0.0, 9.5, 10.0]]  # exact in binary


def test_vfl_target_is_the_iou_of_the_decoded_box_with_the_raw_gt():
    """§5.8 / §8: at the positive (point (12, 12), B = 8) the prediction (log ½, log ½, 0, 0)
    decodes to (8, 8, 20, 20); IoU with the raw gt (8, 8, 16, 16) = 64/144 = 4/9. With zero
    logits the VFL is q·ln 2 at the positive and α·½²·ln 2 = 0.1875·ln 2 at the 63
    negatives, / (num_pos + num_imgs = 3). Image 1 holds the gt and is 32×32, image 0 is 6×6:
    the authors' first-image clip squeezes the box into [0, 5]², disjoint from the gt, so
    q = the 1e-6 floor; ``vfl_clip='per_image'`` keeps 4/9."""
    preds = torch.zeros(2, 4, 4, 4)
    preds[1, 0:2, 1, 1] = math.log(0.5)
    metas = [{"img_shape": (6, 6)}, {"img_shape": (32, 32)}]

    def vfl(clip: str, img0: tuple[int, int]) -> float:
        head = one_level_head(use_vfl=True, vfl_clip=clip)
        outs, gts, labels = _cell_gt_batch(head, preds=preds.clone())
        metas[0] = {"img_shape": img0}
        losses = head.loss(outs, gts, labels, metas)
        assert float(losses["loss_bbox"].detach()) == pytest.approx(2 * (LN2 - 0.055), rel=1e-6)  # unchanged
        return float(losses["loss_cls"].detach())

    def expected(q: float) -> float:
        return (q * LN2 + 63 * 0.1875 * LN2) / (3 + EPS32)

    assert vfl("per_image", (6, 6)) == pytest.approx(expected(4 / 9), rel=1e-6)
    assert vfl("first_image", (32, 32)) == pytest.approx(expected(4 / 9), rel=1e-6)
    assert vfl("first_image", (6, 6)) == pytest.approx(expected(1e-6), rel=1e-6)
