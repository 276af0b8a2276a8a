"""VFNetHead behaviour with hand-computed values (spec §2, §3, §4, §5)."""

from __future__ import annotations

import math

import pytest
import torch

from varifocal.models.heads.vfnet_head import VFNetHead, VFNetOutputs
from varifocal.models.priors import grid_points

STRIDES = (8, 16, 32, 64, 128)


def small_head(**kw) -> VFNetHead:
    torch.manual_seed(0)
    return VFNetHead(num_classes=3, in_channels=32, feat_channels=32, stacked_convs=2, num_groups=8, **kw)


def feats_for(h: int, w: int, c: int = 32, n: int = 1, fill: float | None = None) -> list[torch.Tensor]:
    out = []
    for s in STRIDES:
        size = (n, c, math.ceil(h / s), math.ceil(w / s))
        out.append(torch.full(size, fill) if fill is not None else torch.randn(size))
    return out


def test_points_have_offset_zero():
    (p8, p16) = grid_points([(2, 3), (1, 2)], [8, 16])
    assert p8.tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]]
    assert p16.tolist() == [[0, 0], [16, 0]]


def test_zero_features_give_reg_denom_distances_and_prior_logits():
    """With zero input every conv output is its bias (0 for the box branches, GN of a
    constant is 0), so init = exp(0)·reg_denom = 8·stride, refine = exp(0)·init, and the
    logits equal the prior bias −log(99) (spec §2.2, §2.4)."""
    head = small_head()
    assert head.reg_denoms == (64.0, 128.0, 256.0, 512.0, 1024.0)
    cls_scores, init, refine = head(feats_for(64, 64, fill=0.0))
    for lvl, s in enumerate(STRIDES):
        assert torch.equal(init[lvl], torch.full_like(init[lvl], 8.0 * s))
        assert torch.equal(refine[lvl], init[lvl])
        assert torch.allclose(cls_scores[lvl], torch.full_like(cls_scores[lvl], -math.log(99.0)))


def test_stride_norm_type_uses_strides():
    head = small_head(bbox_norm_type="stride")
    _, init, _ = head(feats_for(64, 64, fill=0.0))
    assert [float(x.detach().flatten()[0]) for x in init] == [8.0, 16.0, 32.0, 64.0, 128.0]


def test_initialisation_follows_spec():
    head = small_head()
    assert float(head.vfnet_cls.bias[0]) == pytest.approx(-4.59512, abs=1e-5)
    assert float(head.vfnet_reg.bias.abs().max()) == 0.0
    # N(0, 0.01) on conv and star-DCN weights: the sample std of 9216 values is close to 0.01.
    for w in (head.cls_convs[0].conv.weight, head.vfnet_cls_dconv.weight, head.vfnet_reg_refine_dconv.weight):
        assert 0.009 < float(w.std()) < 0.011
    assert all(float(s.scale) == 1.0 for s in head.scales)


def _toy_scene():
    head = small_head()
    feats = feats_for(64, 96, n=2)
    metas = [{"pad_shape": (64, 96), "img_shape": (60, 90)}, {"pad_shape": (32, 64), "img_shape": (30, 50)}]
    gt_bboxes = [torch.tensor([[10.0, 12.0, 50.0, 40.0], [60.0, 5.0, 90.0, 60.0]]), torch.zeros((0, 4))]
    gt_labels = [torch.tensor([0, 2]), torch.zeros((0,), dtype=torch.long)]
    return head, feats, metas, gt_bboxes, gt_labels


def test_targets_valid_flags_and_background():
    head, feats, metas, gt_bboxes, gt_labels = _toy_scene()
    sizes = [tuple(f.shape[-2:]) for f in feats]
    labels, weights, targets = head.get_targets(sizes, gt_bboxes, gt_labels, metas, torch.device("cpu"))
    # Level 0 (stride 8) is 8×12 per image. Image 1's own pad shape is 32×64: only rows < 4
    # and columns < 8 are valid (spec §3.1); its other points get weight 0 and background.
    w1 = weights[0][96:].view(8, 12)
    assert int(w1.sum()) == 4 * 8 and bool(w1[:4, :8].all())
    assert bool((labels[0][96:] == 3).all())  # image 1 has no gt: all background
    assert bool(weights[0][:96].all())
    # Image 0 has positives for both classes and their targets are the gt boxes.
    all_labels = torch.cat([l[: l.numel() // 2] for l in labels])
    all_targets = torch.cat([t[: t.shape[0] // 2] for t in targets])
    assert set(all_labels.unique().tolist()) == {0, 2, 3}
    pos = all_labels < 3
    for lab, box in zip(all_labels[pos], all_targets[pos]):
        assert box.tolist() == gt_bboxes[0][0 if lab == 0 else 1].tolist()


def test_losses_finite_and_image_without_gt_backpropagates():
    head, feats, metas, _, _ = _toy_scene()
    empty = [torch.zeros((0, 4)), torch.zeros((0, 4))]
    empty_labels = [torch.zeros((0,), dtype=torch.long)] * 2
    losses = head.loss(head(feats), empty, empty_labels, metas)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_bbox"]) == 0.0 and float(losses["loss_bbox_rf"]) == 0.0
    assert float(losses["loss_cls"]) > 0.0  # negatives still pay the focal-style term
    (losses["loss_bbox"] + losses["loss_bbox_rf"]).backward()
    # The zero box losses are connected to the graph: the box branch receives (zero) grads.
    assert head.vfnet_reg.weight.grad is not None and float(head.vfnet_reg.weight.grad.abs().max()) == 0.0
    assert head.vfnet_reg_refine.weight.grad is not None


def test_vfl_normaliser_is_num_pos_and_targets_are_refined_iou():
    """loss_cls equals a direct Varifocal computation over all points and classes divided by
    the positive count, with T[i, c*] = IoU(refined box, gt) (spec §3.5, §4.2)."""
    from varifocal.losses import varifocal_loss
    from varifocal.structures.boxes import bbox_overlaps, distance2bbox

    head, feats, metas, gt_bboxes, gt_labels = _toy_scene()
    outs = head(feats)
    losses = head.loss(outs, gt_bboxes, gt_labels, metas)
    sizes = [tuple(f.shape[-2:]) for f in feats]
    labels, _, targets = head.get_targets(sizes, gt_bboxes, gt_labels, metas, torch.device("cpu"))
    labels, targets = torch.cat(labels), torch.cat(targets)
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, 3) for c in outs[0]])
    refine = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, 4) for b in outs[2]])
    points = torch.cat([p.repeat(2, 1) for p in grid_points(sizes, STRIDES)])
    pos = labels < 3
    ious = bbox_overlaps(distance2bbox(points[pos], refine[pos]), targets[pos], is_aligned=True).clamp(min=1e-6)
    target = torch.zeros_like(cls)
    target[pos.nonzero().squeeze(1), labels[pos]] = ious
    expected = varifocal_loss(cls, target).sum() / int(pos.sum())
    assert float(losses["loss_cls"]) == pytest.approx(float(expected), rel=1e-5)


def test_focal_loss_switch():
    head = small_head(use_vfl=False)
    _, feats, metas, gt_bboxes, gt_labels = _toy_scene()
    losses = head.loss(head(feats), gt_bboxes, gt_labels, metas)
    assert type(head.loss_cls).__name__ == "FocalLoss"
    assert all(torch.isfinite(v) for v in losses.values())


def _one_hot_outputs(num_classes=3):
    """Two levels (strides 8, 16) of a 4×4 / 2×2 map, everything at logit −10 except
    location (1, 2) of level 0 (point (16, 8)) with class 1 at logit 2."""
    cls0 = torch.full((1, num_classes, 4, 4), -10.0)
    cls0[0, 1, 1, 2] = 2.0
    cls1 = torch.full((1, num_classes, 2, 2), -10.0)
    box0 = torch.full((1, 4, 4, 4), 4.0)
    box0[0, :, 1, 2] = torch.tensor([6.0, 4.0, 20.0, 30.0])  # l, t, r, b
    box1 = torch.full((1, 4, 2, 2), 4.0)
    return [cls0, cls1], [box0, box1]


@pytest.mark.parametrize("postprocess", ["mmdet3", "mmdet2"])
def test_postprocess_decodes_clamps_and_rescales(postprocess):
    head = VFNetHead(
        3,
        in_channels=32,
        feat_channels=32,
        stacked_convs=1,
        num_groups=8,
        strides=(8, 16),
        regress_ranges=((-1, 64), (64, 1e8)),
        test_cfg={"postprocess": postprocess},
    )
    cls, boxes = _one_hot_outputs()
    meta = {"img_shape": (30, 40), "scale_factor": (2.0, 0.5)}
    (det,) = head.predict(VFNetOutputs(cls, [], boxes), [meta])
    # Point (16, 8): box (16-6, 8-4, 16+20, 8+30) = (10, 4, 36, 38); clamp y to 30 → (10, 4, 36, 30);
    # rescale x / 2, y / 0.5 → (5, 8, 18, 60). Score sigmoid(2).
    assert det["labels"].tolist() == [1]
    assert det["boxes"].tolist() == [[5.0, 8.0, 18.0, 60.0]]
    assert float(det["scores"][0]) == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-6)


def test_nms_is_class_aware_at_0_6():
    head = VFNetHead(
        2, in_channels=32, feat_channels=32, stacked_convs=1, num_groups=8, strides=(8,), regress_ranges=((-1, 1e8),)
    )
    cls = torch.full((1, 2, 1, 3), -10.0)
    cls[0, 0, 0, 0], cls[0, 0, 0, 1], cls[0, 1, 0, 2] = 3.0, 2.0, 1.0
    box = torch.zeros((1, 4, 1, 3))
    # Points (0,0), (8,0), (16,0). Boxes: A=(0,0,20,20); B=(2,0,22,20) IoU(A,B)=360/440=0.82 → suppressed;
    # C (class 1) = same as B but another class → kept.
    box[0, :, 0, 0] = torch.tensor([0.0, 0.0, 20.0, 20.0])
    box[0, :, 0, 1] = torch.tensor([6.0, 0.0, 14.0, 20.0])
    box[0, :, 0, 2] = torch.tensor([14.0, 0.0, 6.0, 20.0])
    (det,) = head.predict(VFNetOutputs([cls], [], [box]), [{"img_shape": (100, 100), "scale_factor": (1.0, 1.0)}])
    assert det["labels"].tolist() == [0, 1]
    assert det["boxes"].tolist() == [[0.0, 0.0, 20.0, 20.0], [2.0, 0.0, 22.0, 20.0]]


def test_autocast_bfloat16_keeps_offsets_and_losses_in_float32():
    head, feats, metas, gt_bboxes, gt_labels = _toy_scene()
    seen = []
    head.vfnet_cls_dconv.register_forward_pre_hook(lambda m, args: seen.append((args[0].dtype, args[1].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = head(feats)
        losses = head.loss(outs, gt_bboxes, gt_labels, metas)
    assert seen and all(d == torch.float32 for _, d in seen)  # distances → offsets in float32
    assert outs[1][0].dtype == torch.float32 and outs[2][0].dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(head.vfnet_cls.weight.grad).all()
