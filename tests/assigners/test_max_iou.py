"""MaxIoUAssigner on a hand-built scene (zoo_spec §1.10, §10 item 8)."""

import pytest
import torch

from varifocal.assigners import AssignResult, MaxIoUAssigner
from varifocal.assigners.atss import AssignResult as AtssAssignResult

NUM_CLASSES = 5

# Priors (xyxy; area = w·h):
PRIORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # p0
        [0.0, 0.0, 10.0, 8.0],  # p1
        [20.0, 0.0, 24.5, 10.0],  # p2
        [50.0, 0.0, 53.0, 10.0],  # p3
        [100.0, 100.0, 110.0, 110.0],  # p4 (touches no gt)
        [0.0, 0.0, 10.0, 5.0],  # p5
        [0.0, 0.0, 10.0, 4.5],  # p6
        [0.0, 0.0, 10.0, 4.0],  # p7
        [0.0, 50.0, 10.0, 53.0],  # p8
        [0.0, 57.0, 10.0, 60.0],  # p9
        [200.0, 0.0, 220.0, 10.0],  # p10 (area 200)
    ]
)
GTS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # g0, area 100, label 3
        [20.0, 0.0, 30.0, 10.0],  # g1, area 100, label 1
        [50.0, 0.0, 60.0, 10.0],  # g2, area 100, label 0
        [0.0, 50.0, 10.0, 60.0],  # g3, area 100, label 2
        [200.0, 0.0, 206.0, 10.0],  # g4, area 60, label 4
        [215.0, 0.0, 220.0, 10.0],  # g5, area 50, label 1
    ]
)
LABELS = torch.tensor([3, 1, 0, 2, 4, 1])
# Each prior overlaps at most one... except p10 (g4 and g5). A prior inside a gt has
# IoU = prior area / gt area, with union = the gt's area:
#   p0-g0 100/100 = 1      p1-g0 80/100 = .8     p2-g1 45/100 = .45   p3-g2 30/100 = .3
#   p4: 0 with all         p5-g0 50/100 = .5     p6-g0 45/100 = .45   p7-g0 40/100 = .4
#   p8-g3 30/100 = .3      p9-g3 30/100 = .3 (exact tie with p8)
#   p10-g4: inter 60, union 200 + 60 - 60 = 200 -> .3;  p10-g5: 50/200 = .25.
# max over gts per prior:
MAX_OV = [1.0, 0.8, 0.45, 0.3, 0.0, 0.5, 0.45, 0.4, 0.3, 0.3, 0.3]
# max over priors per gt: g0 1 (p0), g1 .45 (p2), g2 .3 (p3), g3 .3 (p8 = p9),
# g4 .3 (p10), g5 .25 (p10).


def assign(assigner, priors=PRIORS, gts=GTS, labels=LABELS, **kwargs):
    return assigner.assign(priors, gts, labels, NUM_CLASSES, **kwargs)


def test_retinanet_config():
    # Step 4 (pos .5, neg .4): p0, p1, p5 (exactly .5) -> g0; p3, p4, p8, p9, p10 negative;
    # p2 .45, p6 .45 and p7 .4 (not < .4) ignored.
    # Step 5 (min_pos_iou 0): g0 -> p0 (unchanged); g1 -> p2 (ignored -> positive);
    # g2 -> p3 (negative -> positive at IoU .3); g3 -> p8 and p9 (tie, both);
    # g4 -> p10, then g5 -> p10 overwrites it (gt 6 although the argmax is g4).
    res = assign(MaxIoUAssigner(0.5, 0.4, min_pos_iou=0.0))
    assert isinstance(res, AssignResult)
    assert res.gt_inds.tolist() == [1, 1, 2, 3, 0, 1, -1, -1, 4, 4, 6]
    assert res.labels.tolist() == [3, 3, 1, 0, 5, 3, 5, 5, 2, 2, 1]
    torch.testing.assert_close(res.max_overlaps, torch.tensor(MAX_OV))
    assert res.gt_inds.dtype == torch.long and res.labels.dtype == torch.long


def test_without_low_quality_matching():
    res = assign(MaxIoUAssigner(0.5, 0.4, match_low_quality=False))
    assert res.gt_inds.tolist() == [1, 1, -1, 0, 0, 1, -1, -1, 0, 0, 0]
    assert res.labels.tolist() == [3, 3, 5, 5, 5, 3, 5, 5, 5, 5, 5]


def test_tie_only_first_without_gt_max_assign_all():
    # g3's max .3 is shared by p8 and p9: only p8 (torch max: first index) gets it.
    res = assign(MaxIoUAssigner(0.5, 0.4, gt_max_assign_all=False))
    assert res.gt_inds.tolist() == [1, 1, 2, 3, 0, 1, -1, -1, 4, 0, 6]


def test_min_pos_iou_gates_low_quality_matches():
    # min_pos_iou .35: only g0 (1) and g1 (.45) qualify; g2, g3, g4, g5 (<= .3) do not.
    res = assign(MaxIoUAssigner(0.5, 0.4, min_pos_iou=0.35))
    assert res.gt_inds.tolist() == [1, 1, 2, 0, 0, 1, -1, -1, 0, 0, 0]
    assert res.labels.tolist() == [3, 3, 1, 5, 5, 3, 5, 5, 5, 5, 5]


def test_rcnn_config():
    # 0.5 / 0.5 / 0.5, no low quality: no ignore band at all.
    res = assign(MaxIoUAssigner(0.5, 0.5, min_pos_iou=0.5, match_low_quality=False))
    assert res.gt_inds.tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]


def test_tuple_neg_iou_thr():
    # Negatives: .1 <= max IoU < .4 -> p3, p8, p9, p10 (.3); p4 (IoU 0) is now ignored.
    res = assign(MaxIoUAssigner(0.5, (0.1, 0.4), match_low_quality=False))
    assert res.gt_inds.tolist() == [1, 1, -1, 0, -1, 1, -1, -1, 0, 0, 0]
    with pytest.raises(ValueError, match="max_iou.py"):
        MaxIoUAssigner(0.5, (0.1, 0.2, 0.4))


def test_no_gt():
    res = MaxIoUAssigner(0.5, 0.4).assign(PRIORS, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), NUM_CLASSES)
    assert res.gt_inds.tolist() == [0] * 11
    assert res.labels.tolist() == [NUM_CLASSES] * 11
    assert res.max_overlaps.tolist() == [0.0] * 11


def test_no_prior():
    res = MaxIoUAssigner(0.5, 0.4).assign(torch.zeros(0, 4), GTS, LABELS, NUM_CLASSES)
    assert res.gt_inds.shape == (0,) and res.labels.shape == (0,) and res.max_overlaps.shape == (0,)


def test_ignore_boxes():
    # Ignore box (100, 100, 105, 110) covers half of p4: IoF = 50/100 = .5.
    ignore = torch.tensor([[100.0, 100.0, 105.0, 110.0]])
    res = assign(MaxIoUAssigner(0.5, 0.4, ignore_iof_thr=0.4), gt_bboxes_ignore=ignore)
    assert res.gt_inds.tolist() == [1, 1, 2, 3, -1, 1, -1, -1, 4, 4, 6]
    assert res.max_overlaps[4].item() == -1.0
    # Threshold .6 > .5, or ignore_iof_thr disabled: p4 stays negative.
    for thr in (0.6, -1.0):
        res = assign(MaxIoUAssigner(0.5, 0.4, ignore_iof_thr=thr), gt_bboxes_ignore=ignore)
        assert res.gt_inds[4].item() == 0


def test_gt_without_overlap_claims_zero_iou_priors():
    # zoo_spec §1.10 step 5 as written: g1 overlaps nothing, its max IoU 0 >= min_pos_iou 0,
    # so every prior with IoU 0 for g1 (both, including g0's perfect match) goes to g1.
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    res = MaxIoUAssigner(0.5, 0.4).assign(priors, gts, torch.tensor([0, 1]), 2)
    assert res.gt_inds.tolist() == [2, 2]
    # With min_pos_iou > 0 (RPN style) that cannot happen.
    res = MaxIoUAssigner(0.5, 0.4, min_pos_iou=0.3).assign(priors, gts, torch.tensor([0, 1]), 2)
    assert res.gt_inds.tolist() == [1, 0]


def test_dtype_and_bad_input():
    res = assign(MaxIoUAssigner(0.5, 0.4), priors=PRIORS.double())
    assert res.max_overlaps.dtype == torch.float64
    assert res.gt_inds.tolist() == [1, 1, 2, 3, 0, 1, -1, -1, 4, 4, 6]
    with pytest.raises(ValueError, match="max_iou.py"):
        MaxIoUAssigner(0.5, 0.4).assign(PRIORS, GTS, LABELS[:3], NUM_CLASSES)
    with pytest.raises(ValueError, match="max_iou.py"):
        MaxIoUAssigner(0.5, 0.4).assign(PRIORS[:, :3], GTS, LABELS, NUM_CLASSES)


def test_assign_result_reexported_from_atss():
    assert AtssAssignResult is AssignResult
