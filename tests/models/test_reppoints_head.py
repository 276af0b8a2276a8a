"""RepPointsHead, its point-set geometry and the PointAssigner with hand-computed values
(zoo_spec §6, §1.6, §1.12-§1.16, §6.8, §8)."""

from __future__ import annotations

import math

import pytest
import torch

from varifocal.assigners import PointAssigner
from varifocal.models.heads.reppoints_head import REPPOINTS_TEST_CFG, RepPointsHead, RepPointsOutputs
from varifocal.models.heads.reppoints_points import dcn_base_offset, moment_boxes, offsets_to_points
from varifocal.models.heads.reppoints_targets import vfl_iou_targets

LN2 = math.log(2.0)
EPS32 = torch.finfo(torch.float32).eps
SQRT_075 = math.sqrt(0.75)  # unbiased std of {−1, 0, 1} × 3: √(6 / 8)


def one_level_head(**kw) -> RepPointsHead:
    """A single stride-8 level; 2 classes, channels 8, 1 conv per tower, GN(2)."""
    torch.manual_seed(0)
    args = dict(
        num_classes=2,
        in_channels=8,
        feat_channels=8,
        point_feat_channels=8,
        stacked_convs=1,
        norm_groups=2,
        strides=(8,),
    )
    args.update(kw)
    return RepPointsHead(**args)


def grid_set(half_px: float, stride: int = 8, shape=(1, 1, 4, 4)) -> torch.Tensor:
    """``[N, 18, H, W]`` (dy, dx) 3×3 grids in strides whose moment box (transfer 0) has the
    half-size ``half_px`` pixels: offsets ±a with a·√0.75·s = half_px."""
    a = half_px / stride / SQRT_075
    return (dcn_base_offset(3).float() * a).expand(shape[0], 18, *shape[2:]).clone()


# ---------------------------------------------------------------------- layers (§6.1, §1.16)
def test_default_hyper_parameters_layers_and_init():
    head = RepPointsHead(num_classes=80, in_channels=32, feat_channels=32, point_feat_channels=32)
    assert head.strides == (8, 16, 32, 64, 128) and head.point_base_scale == 4 and head.num_points == 9
    assert head.gradient_mul == 0.1 and head.moment_mul == 0.01
    assert (head.init_assigner.scale, head.init_assigner.pos_num) == (4.0, 1)
    r = head.refine_assigner
    assert (r.pos_iou_thr, r.neg_iou_thr, r.min_pos_iou, r.match_low_quality) == (0.5, 0.4, 0.0, True)
    assert (head.loss_cls.alpha, head.loss_cls.gamma) == (0.25, 2.0)
    assert head.loss_pts_init.beta == head.loss_pts_refine.beta == 0.11
    assert (head.loss_pts_init.loss_weight, head.loss_pts_refine.loss_weight) == (0.5, 1.0)
    assert head.test_cfg == REPPOINTS_TEST_CFG and head.test_cfg.nms_iou == 0.5 and head.test_cfg.min_bbox_size == 0
    # 3 GN convs per tower; the two DCNs have no bias; 1×1 outputs; moment_transfer [2] = 0.
    assert len(head.cls_convs) == len(head.reg_convs) == 3 and head.cls_convs[0].conv.bias is None
    assert head.reppoints_cls_conv.bias is None and head.reppoints_pts_refine_conv.bias is None
    assert head.reppoints_cls_out.kernel_size == (1, 1) and head.reppoints_pts_init_out.out_channels == 18
    assert head.moment_transfer.shape == (2,) and float(head.moment_transfer.detach().abs().max()) == 0.0
    keys = set(head.state_dict())
    assert "moment_transfer" in keys and "reppoints_cls_conv.bias" not in keys and "dcn_base_offset" not in keys
    assert float(head.reppoints_cls_out.bias.detach()[0]) == pytest.approx(-4.59512, abs=1e-5)
    assert float(head.reppoints_pts_init_out.bias.detach().abs().max()) == 0.0
    assert 0.008 < float(head.reppoints_pts_init_conv.weight.detach().std()) < 0.012


def test_dcn_base_offset_layout():
    """(dy, dx) = (ky − 1, kx − 1) for tap 3·ky + kx, y first (§6.1)."""
    base = dcn_base_offset(3).flatten().tolist()
    assert base == [-1, -1, -1, 0, -1, 1, 0, -1, 0, 0, 0, 1, 1, -1, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="must be odd"):
        dcn_base_offset(4)
    with pytest.raises(ValueError, match="odd square"):
        one_level_head(num_points=4)


def test_forward_shapes_and_level_count():
    head = one_level_head(strides=(8, 16))
    outs = head([torch.randn(2, 8, 6, 5), torch.randn(2, 8, 3, 3)])
    assert [tuple(c.shape) for c in outs.cls_scores] == [(2, 2, 6, 5), (2, 2, 3, 3)]
    assert [tuple(p.shape) for p in outs.pts_init] == [(2, 18, 6, 5), (2, 18, 3, 3)]
    assert [tuple(p.shape) for p in outs.pts_refine] == [(2, 18, 6, 5), (2, 18, 3, 3)]
    assert [tuple(b.shape) for b in outs.bbox_preds_refine] == [(2, 4, 6, 5), (2, 4, 3, 3)]
    with pytest.raises(ValueError, match="expects 2 levels, got 1"):
        head([torch.zeros(1, 8, 4, 4)])


# ---------------------------------------------------------------------- moment transform (§6.2)
def test_moment_box_of_a_known_point_set():
    """x ∈ {2, 3, 4}, y ∈ {1, 5, 9} on a 3×3 grid: μ = (3, 5); unbiased σx = √(6/8) = 0.8660
    (biased would be √(6/9) = 0.8165), σy = 4·0.8660; transfer (ln 2, −ln 2) doubles the half
    width and halves the half height: hw = 1.7321, hh = 1.7321."""
    ys, xs = torch.meshgrid(torch.tensor([1.0, 5.0, 9.0]), torch.tensor([2.0, 3.0, 4.0]), indexing="ij")
    yx = torch.stack([ys.flatten(), xs.flatten()], dim=1).reshape(1, 18)  # (y, x) pairs
    transfer = torch.tensor([LN2, -LN2])
    hw, hh = 2 * SQRT_075, 0.5 * 4 * SQRT_075
    expected = [3 - hw, 5 - hh, 3 + hw, 5 + hh]
    assert moment_boxes(yx, transfer).flatten().tolist() == pytest.approx(expected, abs=1e-6)
    xy = yx.reshape(1, 9, 2).flip(-1).reshape(1, 18)
    assert moment_boxes(xy, transfer, y_first=False).flatten().tolist() == pytest.approx(expected, abs=1e-6)
    # The same on a [N, 18, H, W] map (dim 1), per cell.
    maps = yx.reshape(1, 18, 1, 1).expand(2, 18, 3, 2)
    assert torch.allclose(moment_boxes(maps, transfer), torch.tensor(expected).view(1, 4, 1, 1).expand(2, 4, 3, 2))


def test_moment_mul_scales_the_transfer_gradient():
    """∂x2/∂t0 = σx·e^{t0}·moment_mul: 1 % of the gradient (value unchanged, §6.10 item 4)."""
    pts = torch.tensor([[0.0, -1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])  # x = −1, 0, 1, 0 × 6
    sigma_x = float(torch.std(torch.tensor([-1.0, 0, 1, 0, 0, 0, 0, 0, 0])))
    for mul in (0.01, 1.0):
        transfer = torch.tensor([0.3, 0.0], requires_grad=True)
        box = moment_boxes(pts, transfer, moment_mul=mul)
        box[0, 2].backward()
        assert float(box[0, 2].detach()) == pytest.approx(sigma_x * math.exp(0.3), rel=1e-6)
        assert float(transfer.grad[0]) == pytest.approx(mul * sigma_x * math.exp(0.3), rel=1e-5)
        assert float(transfer.grad[1]) == 0.0


def test_gradient_mul_scales_only_the_offset_path():
    """cls and refine reach the init branch only through the DCN offsets, whose gradient is
    scaled by gradient_mul (§6.2 item 3); refine's ``+ init.detach()`` carries none."""
    feats = [torch.randn(1, 8, 5, 5, generator=torch.Generator().manual_seed(1))]

    def init_bias_grad(mul: float, which: str) -> torch.Tensor:
        head = one_level_head(gradient_mul=mul)
        with torch.no_grad():
            head.reppoints_pts_init_out.weight.normal_(0, 0.2)
        outs = head(feats)
        getattr(outs, which)[0].sum().backward()
        return head.reppoints_pts_init_out.bias.grad.clone()

    for which in ("cls_scores", "pts_refine"):
        full, tenth, none = init_bias_grad(1.0, which), init_bias_grad(0.1, which), init_bias_grad(0.0, which)
        assert float(full.abs().max()) > 1e-4
        assert torch.allclose(tenth, 0.1 * full, rtol=1e-4, atol=1e-9)
        assert float(none.abs().max()) == 0.0


# ---------------------------------------------------------------------- offset layout (§6.10 items 1-2)
def _bilinear(img: torch.Tensor, y: float, x: float) -> float:
    """Zero-padded bilinear read of a [H, W] map at (y, x), input pixels."""
    y0, x0 = math.floor(y), math.floor(x)
    out = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < img.shape[0] and 0 <= xx < img.shape[1]:
                out += wy * wx * float(img[yy, xx])
    return out


def test_dcn_samples_at_the_predicted_points():
    """With constant init points (tap t at (dy, dx) = (0.3·t − 1.1, 0.9 − 0.25·t) cells) and a
    cls DCN whose output channel t reads input channel 0 at tap t only, output[t, i, j] is the
    bilinear read of the cls feature at (i + dy_t, j + dx_t): the offsets are (dy, dx) pairs
    and the base grid is subtracted."""
    head = one_level_head(stacked_convs=0, num_classes=2, in_channels=9, feat_channels=9, point_feat_channels=9)
    dy = [0.3 * t - 1.1 for t in range(9)]
    dx = [0.9 - 0.25 * t for t in range(9)]
    with torch.no_grad():
        head.reppoints_pts_init_out.weight.zero_()
        head.reppoints_pts_init_out.bias.copy_(torch.tensor([v for pair in zip(dy, dx) for v in pair]))
        head.reppoints_cls_conv.weight.zero_()
        for t in range(9):
            head.reppoints_cls_conv.weight[t, 0, t // 3, t % 3] = 1.0
    captured = {}
    head.reppoints_cls_conv.register_forward_hook(lambda m, i, o: captured.setdefault("out", o.detach()))
    x = torch.randn(1, 9, 6, 7, generator=torch.Generator().manual_seed(2))
    outs = head([x])
    assert torch.allclose(outs.pts_init[0][0, :, 2, 3], head.reppoints_pts_init_out.bias.detach())
    out = captured["out"][0]
    for t in range(9):
        for i, j in ((0, 0), (2, 3), (5, 6), (3, 1)):
            assert float(out[t, i, j]) == pytest.approx(_bilinear(x[0, 0], i + dy[t], j + dx[t]), abs=1e-5), (t, i, j)


def test_offsets_to_points_swaps_to_xy_pixels():
    """Cell (i, j) = (1, 0) of a 2×3 level at stride 8 is the point (0, 8); its tap 0 at
    (dy, dx) = (1, 2) strides lies at (x, y) = (0 + 16, 8 + 8) px."""
    pred = torch.zeros(1, 18, 2, 3)
    pred[0, 0, 1, 0], pred[0, 1, 1, 0] = 1.0, 2.0
    points = torch.tensor([[0.0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]])
    pix = offsets_to_points(pred, points, 8)
    assert pix.shape == (1, 6, 18)
    assert pix[0, 3, :4].tolist() == [16.0, 16.0, 0.0, 8.0]


# ---------------------------------------------------------------------- PointAssigner (§1.12)
def test_point_assigner_levels_truncate_toward_zero():
    """(log2(w/4) + log2(h/4)) / 2 truncated: 63×63 → log2 15.75 = 3.98 → 3; 64×64 → 4; 32×128
    → (3 + 5)/2 = 4; 3×3 → log2 0.75 = −0.415 → 0 (floor would give −1); clamped to [3, 7]."""
    a = PointAssigner()
    boxes = torch.tensor([[0.0, 0, 63, 63], [0, 0, 64, 64], [0, 0, 32, 128], [0, 0, 3, 3], [0, 0, 2000, 2000]])
    assert a.gt_levels(boxes, -5, 9).tolist() == [3, 4, 4, 0, 8]
    assert a.gt_levels(boxes).tolist() == [3, 4, 4, 3, 7]


def test_point_assigner_toy_scene():
    """Points of strides 8 (4×4 cells) and 32 (1×1) only, level 4 absent:

    - gt 0 (5, 5, 21, 21), level 3, nearest point (16, 16) at (3/16, 3/16) → 0.265;
    - gt 1 (2, 2, 34, 34), level 3, nearest (16, 16) at (2/32, 2/32) → 0.088: it takes the
      contested point although it comes later, so gt 0 gets none (pos_num 1);
    - gt 2 (0, 0, 64, 64), level 4: no point of its level, no positive;
    - gt 3 (0, 0, 256, 256), level 6 → clamped to the highest level present, 5: the stride-32
      point (0, 0)."""
    xs = torch.arange(4.0) * 8
    yy, xx = torch.meshgrid(xs, xs, indexing="ij")
    p8 = torch.stack([xx.flatten(), yy.flatten(), torch.full((16,), 8.0)], 1)
    points = torch.cat([p8, torch.tensor([[0.0, 0.0, 32.0]])])
    gts = torch.tensor([[5.0, 5, 21, 21], [2, 2, 34, 34], [0, 0, 64, 64], [0, 0, 256, 256]])
    labels = torch.tensor([0, 1, 0, 1])
    for order in ([0, 1, 2, 3], [1, 0, 3, 2]):  # the nearer gt wins in either input order
        res = PointAssigner().assign(points, gts[order], labels[order], num_classes=2)
        expected = torch.zeros(17, dtype=torch.long)
        expected[10] = order.index(1) + 1  # point (16, 16)
        expected[16] = order.index(3) + 1
        assert torch.equal(res.gt_inds, expected), order
        assert res.labels[10] == 1 and res.labels[16] == 1 and int((res.labels < 2).sum()) == 2
        assert float(res.distances[10]) == pytest.approx(math.hypot(2 / 32, 2 / 32), rel=1e-6)
        assert math.isinf(float(res.distances[0]))
    empty = PointAssigner().assign(points, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 2)
    assert int(empty.gt_inds.abs().sum()) == 0
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        PointAssigner().assign(points[:, :2], gts, labels, 2)


# ---------------------------------------------------------------------- targets and losses (§6.3-6.4)
def _scene(init_half: float, refine_half: float, refine_shift: float = 0.0, init_dx: float = 0.0):
    """Two 32×32 images, one stride-8 level of 4×4 cells; image 1 has the gt (8, 8, 24, 24),
    class 1, centred on the point (16, 16) (cell 10). Every cell predicts a 3×3 grid whose
    moment box has half-size ``init_half`` px moved ``init_dx`` strides along x (init) /
    ``refine_half`` px moved ``refine_shift`` strides along x and y (refine); zero logits."""
    init = grid_set(init_half, shape=(2, 18, 4, 4))
    init[:, 1::2] += init_dx
    refine = grid_set(refine_half, shape=(2, 18, 4, 4)) + refine_shift
    cls = torch.zeros(2, 2, 4, 4, requires_grad=True)
    init.requires_grad_(True)
    refine.requires_grad_(True)
    outs = RepPointsOutputs([cls], [init], [refine], [torch.zeros(2, 4, 4, 4)])
    gts = [torch.zeros(0, 4), torch.tensor([[8.0, 8.0, 24.0, 24.0]])]
    labels = [torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    metas = [{"pad_shape": (32, 32), "img_shape": (32, 32)}] * 2
    return outs, gts, labels, metas


def test_two_stage_targets_and_loss_normalisers():
    """Init box of cell 10 (10, 10, 22, 22): IoU 144/256 = 0.5625 ≥ 0.5, so the refine stage
    makes it positive; its neighbours (IoU ≤ 0.22) are negatives. avg_init = avg_ref =
    max(0, 1) + 1 = 2.

    - loss_cls: FL at p = ½: α·¼·ln 2 on the positive element, (1 − α)·¼·ln 2 on the 63
      others, / 2;
    - loss_pts_init: |10 − 8| / (4·8) = 0.0625 < β: 4 · ½·0.0625²/0.11, × 0.5, / 2;
    - loss_pts_refine: the refined box (12, 12, 20, 20): 4/32 = 0.125 ≥ β: 4·(0.125 − 0.055),
      / 2."""
    head = one_level_head()
    outs, gts, labels, metas = _scene(init_half=6.0, refine_half=4.0)
    t = head.get_targets(outs.pts_init, gts, labels, metas)
    assert t.refine_proposals[1][10].tolist() == pytest.approx([10, 10, 22, 22], abs=1e-4)
    assert t.init.assigned_gt_inds[1].tolist() == [0] * 10 + [1] + [0] * 5
    assert t.refine.assigned_gt_inds[1].tolist() == [0] * 10 + [1] + [0] * 5
    assert t.init.avg_factor == t.refine.avg_factor == 2.0 and t.refine.num_pos == [0, 1]
    assert float(t.refine.max_overlaps[1][10]) == pytest.approx(0.5625, rel=1e-5)
    losses = head.loss(outs, gts, labels, metas)
    q = 0.25 * LN2
    assert float(losses["loss_cls"].detach()) == pytest.approx((0.25 * q + 63 * 0.75 * q) / (2 + EPS32), rel=1e-5)
    d = 2 / 32
    init = 0.5 * 4 * (0.5 * d * d / 0.11) / (2 + EPS32)
    assert float(losses["loss_pts_init"].detach()) == pytest.approx(init, rel=1e-4)
    assert float(losses["loss_pts_refine"].detach()) == pytest.approx(4 * (0.125 - 0.055) / (2 + EPS32), rel=1e-4)
    # The refine labels, not the init ones, drive loss_cls (§6.10 item 7): an init box that
    # misses the gt (half 1 px: IoU 4/256) leaves no refine positive except by low-quality
    # matching, which still picks cell 10 (its best prior).
    outs, gts, labels, metas = _scene(init_half=1.0, refine_half=4.0)
    t = head.get_targets(outs.pts_init, gts, labels, metas)
    assert int((t.refine.assigned_gt_inds[1] > 0).sum()) == 1 and float(t.refine.max_overlaps[1][10]) < 0.5


def test_refine_stage_labels_drive_the_classification_loss():
    """§6.10 item 7. Init boxes half 8 px moved +4 px in x: cells 10 (12, 8, 28, 24) and 9
    (4, 8, 20, 24) both have IoU 192/320 = 0.6 with the gt, so the refine stage has 2
    positives (avg_ref = 1 + 2 = 3) while the PointAssigner keeps 1 (avg_init = 2).

    - loss_cls: 2 positive elements α·¼·ln 2, 62 others (1 − α)·¼·ln 2, / 3;
    - loss_pts_init (cell 10 only): x1, x2 off by 4 px: 2·(0.125 − 0.055), × 0.5, / 2;
    - loss_pts_refine: cell 10 (12, 12, 20, 20) 4·0.07, cell 9 (4, 12, 12, 20) off by
      (4, 4, 12, 4) px: 3·0.07 + (0.375 − 0.055), / 3."""
    head = one_level_head()
    outs, gts, labels, metas = _scene(init_half=8.0, refine_half=4.0, init_dx=0.5)
    t = head.get_targets(outs.pts_init, gts, labels, metas)
    assert torch.nonzero(t.init.assigned_gt_inds[1] > 0).flatten().tolist() == [10]
    assert torch.nonzero(t.refine.assigned_gt_inds[1] > 0).flatten().tolist() == [9, 10]
    assert (t.init.avg_factor, t.refine.avg_factor) == (2.0, 3.0)
    losses = head.loss(outs, gts, labels, metas)
    q = 0.25 * LN2
    assert float(losses["loss_cls"].detach()) == pytest.approx((2 * 0.25 * q + 62 * 0.75 * q) / (3 + EPS32), rel=1e-5)
    assert float(losses["loss_pts_init"].detach()) == pytest.approx(0.5 * 2 * 0.07 / (2 + EPS32), rel=1e-4)
    refine = (4 * 0.07 + 3 * 0.07 + 0.32) / (3 + EPS32)
    assert float(losses["loss_pts_refine"].detach()) == pytest.approx(refine, rel=1e-4)


def test_points_outside_the_pad_shape_get_no_weight():
    """Image 0 padded to 16×32 of the 32×32 batch: rows 2-3 (y ≥ ceil(16 / 8)) are invalid in
    both stages (gt index −2, label weight 0); the cls loss counts 64 − 16 elements."""
    head = one_level_head()
    outs, gts, labels, metas = _scene(init_half=6.0, refine_half=4.0)
    metas = [{"pad_shape": (16, 32), "img_shape": (16, 32)}, metas[1]]
    t = head.get_targets(outs.pts_init, gts, labels, metas)
    assert t.valid_flags[0].tolist() == [True] * 8 + [False] * 8 and bool(t.valid_flags[1].all())
    for stage in (t.init, t.refine):
        assert stage.assigned_gt_inds[0].tolist() == [0] * 8 + [-2] * 8
        assert stage.label_weights[0].tolist() == [1.0] * 8 + [0.0] * 8
    q = 0.25 * LN2
    losses = head.loss(outs, gts, labels, metas)
    assert float(losses["loss_cls"].detach()) == pytest.approx((0.25 * q + 47 * 0.75 * q) / (2 + EPS32), rel=1e-5)


def test_level_without_positives_gives_connected_zero_point_losses():
    head = one_level_head()
    outs, _, _, metas = _scene(init_half=6.0, refine_half=4.0)
    empty = [torch.zeros(0, 4)] * 2
    no_labels = [torch.zeros(0, dtype=torch.long)] * 2
    losses = head.loss(outs, empty, no_labels, metas)
    assert float(losses["loss_pts_init"].detach()) == 0.0 and losses["loss_pts_init"].requires_grad
    assert float(losses["loss_cls"].detach()) == pytest.approx(64 * 0.75 * 0.25 * LN2 / (2 + EPS32), rel=1e-5)


def test_vfl_target_is_the_unclamped_iou_of_the_refined_box():
    """§6.8: the refined box (12, 12, 20, 20) of cell 10 has IoU 64/256 = ¼ with its gt, the
    VFL target of [cell 10, class 1]; shifted 3 strides away, (36, 36, 44, 44) misses the gt
    and the target is exactly 0 (no 1e-6 floor), so that element is a VFL negative.
    Zero logits: BCE = ln 2 everywhere; weight q at q > 0, α·½² = 0.1875 elsewhere; / 2."""
    head = one_level_head(use_vfl=True)
    for shift, q in ((0.0, 0.25), (3.0, 0.0)):
        outs, gts, labels, metas = _scene(init_half=6.0, refine_half=4.0, refine_shift=shift)
        losses = head.loss(outs, gts, labels, metas)
        pos_weight = q if q > 0 else 0.1875
        expected = (pos_weight * LN2 + 63 * 0.1875 * LN2) / (2 + EPS32)
        assert float(losses["loss_cls"].detach()) == pytest.approx(expected, rel=1e-5), shift
    boxes = torch.tensor([[12.0, 12, 20, 20], [36, 36, 44, 44], [0, 0, 1, 1]])
    gt = torch.tensor([[8.0, 8, 24, 24]] * 3)
    targets = vfl_iou_targets(torch.zeros(3, 2), boxes, gt, torch.tensor([1, 0, 2]), num_classes=2)
    assert targets.tolist() == [[0.0, 0.25], [0.0, 0.0], [0.0, 0.0]]


# ---------------------------------------------------------------------- inference (§6.5)
def test_predict_decodes_clamps_to_w_and_drops_empty_boxes():
    """A 30×20 (h×w) image, scale_factor 2, one 4×4 level at stride 8. Cell (1, 1) (point
    (8, 8)) predicts the box (−1, −0.5, 2, 3) strides → (0, 4, 24, 32) px → clamp x to
    [0, 20] (W, not W − 1) and y to [0, 30] → (0, 4, 20, 30) → ÷ 2. Cell (0, 3) (point
    (24, 0)) is clamped to the empty box x1 = x2 = 20 and dropped (min_bbox_size 0)."""
    head = one_level_head()
    cls = torch.full((1, 2, 4, 4), -10.0)
    cls[0, 1, 1, 1] = 3.0
    cls[0, 0, 0, 3] = 2.0
    boxes = torch.zeros(1, 4, 4, 4)
    boxes[0, :, 1, 1] = torch.tensor([-1.0, -0.5, 2.0, 3.0])
    boxes[0, :, 0, 3] = torch.tensor([0.5, 0.0, 1.0, 1.0])  # x1 = 28 > 20
    outs = RepPointsOutputs([cls], [torch.zeros(1, 18, 4, 4)], [torch.zeros(1, 18, 4, 4)], [boxes])
    (det,) = head.predict(outs, [{"img_shape": (30, 20), "scale_factor": (2.0, 2.0)}])
    assert det["labels"].tolist() == [1]
    assert det["scores"].tolist() == pytest.approx([torch.sigmoid(torch.tensor(3.0)).item()], abs=1e-6)
    assert det["boxes"].tolist() == [[0.0, 2.0, 10.0, 15.0]]
