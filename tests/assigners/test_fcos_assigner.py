"""FCOS point assignment on hand-built scenes (zoo_spec §3.3, tie rule §3.10 item 4)."""

import pytest
import torch

from varifocal.assigners import AssignResult, FCOSAssigner, FCOSAssignResult

INF = 1e8
NUM_CLASSES = 2


def grid(stride, nx, ny):
    """Points of one level at ((j + 0.5)·s, (i + 0.5)·s), row-major (i, j)."""
    ys, xs = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
    return torch.stack([(xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride], dim=1).float()


def one_level(nx=4, ny=4, **kw):
    """Stride 8, every distance in range: points 4, 12, 20, 28, ..."""
    return FCOSAssigner(((-1, INF),), **kw), grid(8, nx, ny), [nx * ny], [8]


def test_result_is_an_assign_result_with_zero_overlaps():
    assigner, points, sizes, strides = one_level()
    r = assigner.assign(points, sizes, strides, torch.tensor([[0.0, 0, 16, 16]]), torch.tensor([1]), NUM_CLASSES)
    assert isinstance(r, AssignResult) and isinstance(r, FCOSAssignResult)
    assert r.gt_inds.dtype == torch.long and r.labels.dtype == torch.long and r.target_gt_inds.dtype == torch.long
    assert r.max_overlaps.dtype == torch.float32 and r.max_overlaps.tolist() == [0.0] * 16
    # The 2×2 top-left points (4|12, 4|12) are strictly inside [0, 0, 16, 16].
    assert r.gt_inds.reshape(4, 4).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert r.labels.reshape(4, 4)[0].tolist() == [1, 1, 2, 2]


def test_min_area_wins_and_ties_go_to_the_lowest_index():
    """g0 = 32×32 (area 1024), g1 and g2 = the same 16×16 box (area 256, a tie)."""
    assigner, points, sizes, strides = one_level()
    boxes = torch.tensor([[0.0, 0, 32, 32], [0, 0, 16, 16], [0, 0, 16, 16]])
    r = assigner.assign(points, sizes, strides, boxes, torch.tensor([0, 1, 0]), NUM_CLASSES)
    # The 2×2 top-left points lie in all three boxes: g1 (smallest, lowest of the tie) wins.
    assert r.gt_inds.reshape(4, 4).tolist() == [[2, 2, 1, 1], [2, 2, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert r.labels.reshape(4, 4)[0].tolist() == [1, 1, 0, 0]
    # Every point is positive, so the regression gt is the winner (0-based).
    assert torch.equal(r.target_gt_inds, r.gt_inds - 1)


def test_points_on_a_box_edge_are_negative_and_negatives_regress_to_gt_0():
    """Box [4, 4, 20, 20]: points with x or y in {4, 20} have a zero distance."""
    assigner, points, sizes, strides = one_level()
    boxes = torch.tensor([[100.0, 100, 200, 200], [4.0, 4, 20, 20]])
    r = assigner.assign(points, sizes, strides, boxes, torch.tensor([0, 1]), NUM_CLASSES)
    # Only (12, 12) is strictly inside g1; nothing is inside g0.
    assert r.gt_inds.reshape(4, 4).tolist() == [[0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert r.labels.tolist() == [2] * 5 + [1] + [2] * 10
    expected = torch.zeros(16, dtype=torch.long)
    expected[5] = 1
    assert torch.equal(r.target_gt_inds, expected)


def test_an_image_without_gt_is_all_negative():
    assigner, points, sizes, strides = one_level()
    r = assigner.assign(points, sizes, strides, torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long), NUM_CLASSES)
    assert r.gt_inds.tolist() == [0] * 16 and r.labels.tolist() == [2] * 16
    assert r.target_gt_inds.tolist() == [0] * 16 and r.max_overlaps.tolist() == [0.0] * 16


def test_regress_ranges_are_inclusive_at_both_ends():
    """Level 0 (stride 8, points 4, 12, 20) takes max distance ≤ 12, level 1 (stride 16, points
    8, 24) ≥ 12."""
    assigner = FCOSAssigner(((-1, 12), (12, INF)))
    points = torch.cat([grid(8, 3, 3), grid(16, 2, 2)])
    sizes, strides = [9, 4], [8, 16]
    # Box [0, 0, 24, 24]: (12, 12) of level 0 has all distances 12 = hi; (8, 8) of level 1 has
    # (8, 8, 16, 16), max 16 ≥ 12; the other level-1 points are outside the box.
    r = assigner.assign(points, sizes, strides, torch.tensor([[0.0, 0, 24, 24]]), torch.tensor([0]), NUM_CLASSES)
    lvl0, lvl1 = r.gt_inds.split(sizes)
    assert lvl0.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert lvl1.tolist() == [1, 0, 0, 0]
    # Box [-4, -4, 20, 20]: level 0 (4, 4) and (12, 12) have max 16 > 12; level 1 (8, 8) has all
    # distances 12 = lo.
    r = assigner.assign(points, sizes, strides, torch.tensor([[-4.0, -4, 20, 20]]), torch.tensor([1]), NUM_CLASSES)
    lvl0, lvl1 = r.gt_inds.split(sizes)
    assert lvl0.tolist() == [0] * 9
    assert lvl1.tolist() == [1, 0, 0, 0]
    assert r.labels[9].item() == 1


def test_center_sampling_keeps_points_strictly_inside_the_clipped_centre_box():
    """Radius 1.5 at stride 8: centre box c ± 12. Box [0, 0, 48, 48]: centre box [12, 36]; the
    points 12 and 36 lie on its edge (excluded), 20 and 28 inside: 2 × 2 positives. A small box
    [0, 0, 16, 16]: centre box [-4, 20] clipped to [0, 16]: the 4 points inside the box."""
    assigner, points, sizes, strides = one_level(6, 6, center_sampling=True, center_sample_radius=1.5)
    r = assigner.assign(points, sizes, strides, torch.tensor([[0.0, 0, 48, 48]]), torch.tensor([0]), NUM_CLASSES)
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[2:4, 2:4] = 1
    assert torch.equal(r.gt_inds.reshape(6, 6), expected)
    r = assigner.assign(points, sizes, strides, torch.tensor([[0.0, 0, 16, 16]]), torch.tensor([1]), NUM_CLASSES)
    assert int(r.gt_inds.sum()) == 4
    # Radius 0.5: centre box [20, 28] of the big box holds no point strictly (20, 28 on its edge).
    small = FCOSAssigner(((-1, INF),), center_sampling=True, center_sample_radius=0.5)
    r = small.assign(points, sizes, strides, torch.tensor([[0.0, 0, 48, 48]]), torch.tensor([0]), NUM_CLASSES)
    assert int(r.gt_inds.sum()) == 0
    # Without centre sampling the big box has 6 × 6 = 36 positives (every point is inside).
    plain, *_ = one_level(6, 6)
    r = plain.assign(points, sizes, strides, torch.tensor([[0.0, 0, 48, 48]]), torch.tensor([0]), NUM_CLASSES)
    assert int((r.gt_inds > 0).sum()) == 36


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="center_sample_radius"):
        FCOSAssigner(((-1, INF),), center_sample_radius=0.0)
    with pytest.raises(ValueError, match="regress_ranges"):
        FCOSAssigner(())
    assigner, points, sizes, strides = one_level()
    box, lab = torch.tensor([[0.0, 0, 16, 16]]), torch.tensor([0])
    with pytest.raises(ValueError, match="points"):
        assigner.assign(points[:, :1], sizes, strides, box, lab, NUM_CLASSES)
    with pytest.raises(ValueError, match="gt_bboxes"):
        assigner.assign(points, sizes, strides, box[:, :3], lab, NUM_CLASSES)
    with pytest.raises(ValueError, match="gt_labels"):
        assigner.assign(points, sizes, strides, box, torch.tensor([0, 1]), NUM_CLASSES)
    with pytest.raises(ValueError, match="sum to 15"):
        assigner.assign(points, [15], strides, box, lab, NUM_CLASSES)
    with pytest.raises(ValueError, match="strides"):
        assigner.assign(points, sizes, [8, 16], box, lab, NUM_CLASSES)
