"""ATSS assignment on hand-built scenes (spec §3.1, §3.2, §10 item 11)."""

import math
import statistics

import pytest
import torch

from varifocal.assigners import AssignResult, ATSSAssigner

NUM_CLASSES = 5


def level_anchors(stride, nx, ny, dtype=torch.float32):
    """Anchors of one level: 8*stride squares centred on (j*s, i*s), row-major (i, j)."""
    ys, xs = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
    cx = (xs.reshape(-1) * stride).to(dtype)
    cy = (ys.reshape(-1) * stride).to(dtype)
    half = 4.0 * stride
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)


def scene():
    """Level 0: stride 8, 4x4 points (anchors 64x64, indices 0..15, index = 4*i + j, point
    (8j, 8i)). Level 1: stride 16, 2x2 points (anchors 128x128, indices 16..19, points (0,0),
    (16,0), (0,16), (16,16)): fewer anchors (4) than topk (9), so all 4 are candidates."""
    anchors = torch.cat([level_anchors(8, 4, 4), level_anchors(16, 2, 2)])
    return anchors, [16, 4]


def labels_of(result):
    return result.labels.tolist()


# GT1 = (-22, -24, 42, 40): a 64x64 box centred at (10, 8) (area 4096).
# Level-0 anchor at (x, y) overlaps it by (64 - |x-10|) * (64 - |y-8|); union = 8192 - overlap.
# Squared centre distances to (10, 8): (8,8) 4, (16,8) 36, (8,0)/(8,16) 68,
# (0,8)/(16,0)/(16,16) 100, (0,0)/(0,16) 164, next (24,8) 196 -> the 9 candidates are exactly:
#   (8,8):  62*64 = 3968 / 4224 = 31/33   = 0.939394
#   (16,8): 58*64 = 3712 / 4480 = 29/35   = 0.828571
#   (8,0), (8,16):   62*56 = 3472 / 4720 = 217/295 = 0.735593
#   (0,8):  54*64 = 3456 / 4736 = 27/37   = 0.729730
#   (16,0), (16,16): 58*56 = 3248 / 4944 = 203/309 = 0.656958
#   (0,0), (0,16):   54*56 = 3024 / 5168 = 189/323 = 0.585139
# Level 1: each 128x128 anchor contains GT1 -> IoU 4096/16384 = 1/4 (x4).
# 13 candidates: sum = 0.939394 + 0.828571 + 2*0.735593 + 0.729730 + 2*0.656958
#                      + 2*0.585139 + 4*0.25 = 7.453076, mean = 0.573314;
# sum of squared deviations = 0.708706, unbiased var = 0.708706/12 = 0.059059, std = 0.243020;
# thr = 0.816334 -> positives: (8,8) idx 5 (0.939) and (16,8) idx 6 (0.829); both centres are
# inside GT1. Everything else (0.736 and below) is negative.
GT1 = [-22.0, -24.0, 42.0, 40.0]
# GT2 = (-14, -24, 50, 40): GT1 shifted by +8 in x, centred at (18, 8). By symmetry its candidate
# IoUs and threshold are GT1's mirrored: positives (16,8) idx 6 with 31/33 and (24,8) idx 7 with
# 29/35 (its level-1 anchors also contain it: 1/4 each).
GT2 = [-14.0, -24.0, 50.0, 40.0]


def test_single_gt_hand_computed():
    anchors, nla = scene()
    res = ATSSAssigner(topk=9).assign(anchors, nla, torch.tensor([GT1]), torch.tensor([3]), NUM_CLASSES)
    assert isinstance(res, AssignResult)
    assert res.gt_inds.dtype == torch.long and res.labels.dtype == torch.long
    expected_inds = [0] * 20
    expected_inds[5] = expected_inds[6] = 1
    assert res.gt_inds.tolist() == expected_inds
    assert labels_of(res) == [3 if i else NUM_CLASSES for i in expected_inds]
    expected_ov = torch.zeros(20)
    expected_ov[5], expected_ov[6] = 31 / 33, 29 / 35
    torch.testing.assert_close(res.max_overlaps, expected_ov, rtol=1e-6, atol=0)


def test_single_level_raises_threshold():
    # Level 0 alone: the 9 candidates above. mean = (7.453076 - 1) / 9 = 0.717008,
    # squared deviations sum = 0.104745, var = 0.104745 / 8 = 0.013093, std = 0.114425,
    # thr = 0.831434 -> only (8,8) idx 5 (0.939) survives; (16,8)'s 0.829 is now below.
    res = ATSSAssigner().assign(level_anchors(8, 4, 4), [16], torch.tensor([GT1]), torch.tensor([0]), NUM_CLASSES)
    assert torch.nonzero(res.gt_inds).flatten().tolist() == [5]


def test_anchor_positive_for_two_gts_takes_highest_iou():
    # Anchor idx 6 at (16,8) is positive for GT1 (IoU 29/35) and GT2 (IoU 31/33): GT2 wins.
    anchors, nla = scene()
    res = ATSSAssigner().assign(anchors, nla, torch.tensor([GT1, GT2]), torch.tensor([3, 1]), NUM_CLASSES)
    expected_inds = [0] * 20
    expected_inds[5], expected_inds[6], expected_inds[7] = 1, 2, 2
    assert res.gt_inds.tolist() == expected_inds
    expected_labels = [NUM_CLASSES] * 20
    expected_labels[5], expected_labels[6], expected_labels[7] = 3, 1, 1
    assert labels_of(res) == expected_labels
    torch.testing.assert_close(
        res.max_overlaps[[5, 6, 7]], torch.tensor([31 / 33, 31 / 33, 29 / 35]), rtol=1e-6, atol=0
    )


def test_exact_iou_tie_goes_to_lowest_gt_index():
    # Two identical gts (labels 2 and 4): same candidates and IoUs, so idx 5 and 6 are positive
    # for both with equal IoU; max() returns the first maximal index -> gt 0 (gt_inds 1).
    anchors, nla = scene()
    res = ATSSAssigner().assign(anchors, nla, torch.tensor([GT1, GT1]), torch.tensor([2, 4]), NUM_CLASSES)
    assert torch.nonzero(res.gt_inds).flatten().tolist() == [5, 6]
    assert res.gt_inds[[5, 6]].tolist() == [1, 1]
    assert res.labels[[5, 6]].tolist() == [2, 2]


def test_centre_inside_margin_removes_high_iou_anchor():
    # GT = (-22, -0.005, 42, 16.02), centre (10, 8.0075), level 0 only. Every level-0 anchor
    # (y-range [y-32, y+32]) covers GT's full height 16.025, so IoU depends on x only:
    #   x=8:  62*16.025 = 993.55 / (4096 + 2*16.025)  = 993.55/4128.05 = 0.240683
    #   x=16: 58*16.025 = 929.45 / (4096 + 6*16.025)  = 929.45/4192.15 = 0.221712
    #   x=0:  54*16.025 = 865.35 / (4096 + 10*16.025) = 865.35/4256.25 = 0.203313
    # Candidates: the same 9 points as for GT1 (3 columns x=0,8,16 times rows y=0,8,16).
    # mean = 0.221903; deviations 0.018780, -0.000191, -0.018590 (x3 each);
    # var = 3 * (0.018780^2 + 0.000190^2 + 0.018590^2) / 8 = 0.00026187, std = 0.016182;
    # thr = 0.238085 -> the x=8 column passes on IoU: (8,0) idx 1, (8,8) idx 5, (8,16) idx 9.
    # Centre test min(cx-x1, cy-y1, x2-cx, y2-cy) > 0.01:
    #   (8,0):  cy - y1 = 0.005  -> fails (inside, but not by more than the margin): removed.
    #   (8,8):  min(30, 8.005, 34, 8.02) = 8.005 -> kept.
    #   (8,16): y2 - cy = 0.02   -> kept.
    gt = torch.tensor([[-22.0, -0.005, 42.0, 16.02]])
    res = ATSSAssigner().assign(level_anchors(8, 4, 4), [16], gt, torch.tensor([1]), NUM_CLASSES)
    assert torch.nonzero(res.gt_inds).flatten().tolist() == [5, 9]
    assert res.gt_inds[1].item() == 0 and res.labels[1].item() == NUM_CLASSES
    # Without the centre test (margin -inf), idx 1 would be positive with the same IoU.
    loose = ATSSAssigner(center_margin=-math.inf).assign(
        level_anchors(8, 4, 4), [16], gt, torch.tensor([1]), NUM_CLASSES
    )
    assert torch.nonzero(loose.gt_inds).flatten().tolist() == [1, 5, 9]
    torch.testing.assert_close(loose.max_overlaps[1], res.max_overlaps[5])


def test_fewer_anchors_than_topk_and_empty_level():
    # One level of 3 points x = 0, 8, 16 (y = 0), plus an empty level. topk 9 > 3 -> all 3 are
    # candidates. GT = the anchor at x=8 exactly: IoUs 7/9 (56*64/(8192-3584)), 1, 7/9.
    # mean = 23/27; deviations -2/27, 4/27, -2/27; var = (4+16+4)/729/2 = 12/729,
    # std = sqrt(12)/27 = 0.128300; thr = 0.851852 + 0.128300 = 0.980152 -> only idx 1.
    anchors = level_anchors(8, 3, 1)
    gt = torch.tensor([[-24.0, -32.0, 40.0, 32.0]])
    res = ATSSAssigner(topk=9).assign(anchors, [3, 0], gt, torch.tensor([4]), NUM_CLASSES)
    assert res.gt_inds.tolist() == [0, 1, 0]
    assert res.labels.tolist() == [NUM_CLASSES, 4, NUM_CLASSES]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([0.0, 1.0, 0.0]))


def test_no_gt_and_no_anchor():
    anchors, nla = scene()
    res = ATSSAssigner().assign(anchors, nla, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), NUM_CLASSES)
    assert res.gt_inds.tolist() == [0] * 20
    assert res.labels.tolist() == [NUM_CLASSES] * 20
    assert res.max_overlaps.tolist() == [0.0] * 20
    res = ATSSAssigner().assign(torch.zeros(0, 4), [0, 0], torch.tensor([GT1]), torch.tensor([1]), NUM_CLASSES)
    assert res.gt_inds.shape == res.labels.shape == res.max_overlaps.shape == (0,)


def test_bad_inputs():
    anchors, _ = scene()
    gt, lab = torch.tensor([GT1]), torch.tensor([1])
    with pytest.raises(ValueError, match="sum"):
        ATSSAssigner().assign(anchors, [16, 3], gt, lab, NUM_CLASSES)
    with pytest.raises(ValueError, match="gt_labels"):
        ATSSAssigner().assign(anchors, [16, 4], gt, torch.tensor([1, 2]), NUM_CLASSES)
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)


def _brute_force(anchors, nla, gts, labels, topk, num_classes):
    """Independent per-gt loop in plain Python (float64), straight from spec §3.2."""
    A = anchors.tolist()
    cen = [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2) for a in A]

    def iou(a, g):
        iw = max(0.0, min(a[2], g[2]) - max(a[0], g[0]))
        ih = max(0.0, min(a[3], g[3]) - max(a[1], g[1]))
        ov = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (g[2] - g[0]) * (g[3] - g[1]) - ov
        return ov / max(union, 1e-6)

    best = [(-math.inf, -1)] * len(A)  # (IoU, gt index)
    for k, g in enumerate(gts.tolist()):
        gc = ((g[0] + g[2]) / 2, (g[1] + g[3]) / 2)
        cands, start = [], 0
        for n in nla:
            idx = range(start, start + n)
            order = sorted(idx, key=lambda i: math.dist(cen[i], gc))
            cands += order[:topk]
            start += n
        ious = [iou(A[i], g) for i in cands]
        thr = statistics.mean(ious) + statistics.stdev(ious)
        for i, v in zip(cands, ious):
            cx, cy = cen[i]
            inside = min(cx - g[0], cy - g[1], g[2] - cx, g[3] - cy) > 0.01
            if v >= thr and inside and v > best[i][0]:
                best[i] = (v, k)
    inds = [k + 1 if k >= 0 else 0 for _, k in best]
    labs = [int(labels[k]) if k >= 0 else num_classes for _, k in best]
    return inds, labs


def test_matches_brute_force_on_random_scene():
    # 6 overlapping gts near the middle of a 6x5 (stride 8) + 3x3 (stride 16) grid: several
    # anchors are positive for more than one gt, so the highest-IoU rule is exercised.
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat([level_anchors(8, 6, 5, torch.float64), level_anchors(16, 3, 3, torch.float64)])
    nla = [30, 9]
    num_gt = 6
    # Centres in [8, 32] x [8, 24], sides 24..88 px (random floats: no distance ties).
    ctr = 8 + torch.rand(num_gt, 2, generator=g, dtype=torch.float64) * torch.tensor([24.0, 16.0])
    wh = 24 + torch.rand(num_gt, 2, generator=g, dtype=torch.float64) * 64
    gts = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    assigner = ATSSAssigner(topk=9)
    res = assigner.assign(anchors, nla, gts, labels, NUM_CLASSES)
    inds, labs = _brute_force(anchors, nla, gts, labels, 9, NUM_CLASSES)
    assert res.gt_inds.tolist() == inds
    assert res.labels.tolist() == labs
    # The scene really has conflicts: count anchors positive for >= 2 gts when assigned alone.
    alone = torch.stack(
        [
            assigner.assign(anchors, nla, gts[k : k + 1], labels[k : k + 1], NUM_CLASSES).gt_inds > 0
            for k in range(num_gt)
        ]
    )
    assert (alone.sum(0) >= 2).sum() >= 3
    assert (res.gt_inds > 0).sum() >= 8
