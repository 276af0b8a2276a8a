"""Box geometry: IoU/GIoU, (l,t,r,b) <-> xyxy, xyxy <-> xywh (spec §3.2, §3.3, §4.3)."""

import math

import pytest
import torch

from varifocal.structures import (
    bbox2distance,
    bbox_overlaps,
    centerness_target,
    distance2bbox,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

# Reference pairs, all worked by hand (w = x2 - x1, no "+1").
A = [0.0, 0.0, 10.0, 10.0]  # area 100
B = [5.0, 5.0, 15.0, 15.0]  # area 100
# A vs B: overlap 5*5 = 25, union 100+100-25 = 175, IoU = 25/175 = 1/7.
#         enclosing box (0,0,15,15): 225, GIoU = 1/7 - (225-175)/225 = 1/7 - 2/9 = -5/63.
C = [0.0, 0.0, 2.0, 2.0]  # area 4
D = [4.0, 0.0, 6.0, 2.0]  # area 4, disjoint from C
# C vs D: overlap 0, union 8, IoU 0; enclosing (0,0,6,2): 12, GIoU = 0 - (12-8)/12 = -1/3.
E = [0.0, 0.0, 4.0, 4.0]  # area 16
F = [1.0, 1.0, 3.0, 3.0]  # area 4, inside E
# E vs F: overlap 4, union 16, IoU 1/4; enclosing = E: 16, GIoU = 1/4 - 0 = 1/4.


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_pairwise_iou_matrix():
    out = bbox_overlaps(t([A, C]), t([B, A, D]))
    # Row A: vs B 1/7, vs A 1, vs D: A=(0,0,10,10), D=(4,0,6,2) inside A -> 4/100.
    # Row C: vs B: no overlap -> 0; vs A: C inside A -> 4/100; vs D: 0.
    expected = t([[1 / 7, 1.0, 0.04], [0.0, 0.04, 0.0]])
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_aligned_iou_and_giou():
    b1, b2 = t([A, C, E]), t([B, D, F])
    iou = bbox_overlaps(b1, b2, is_aligned=True)
    giou = bbox_overlaps(b1, b2, mode="giou", is_aligned=True)
    assert iou.shape == (3,)
    torch.testing.assert_close(iou, t([1 / 7, 0.0, 0.25]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(giou, t([-5 / 63, -1 / 3, 0.25]), rtol=1e-6, atol=1e-7)


def test_pairwise_giou_identical_is_one():
    out = bbox_overlaps(t([A, E]), t([A, E]), mode="giou")
    # Diagonal: identical boxes -> 1. Off-diagonal A vs E: E inside A, IoU 16/100, enclosing = A
    # (area 100 = union), GIoU = 0.16.
    torch.testing.assert_close(out, t([[1.0, 0.16], [0.16, 1.0]]), rtol=1e-6, atol=1e-7)


def test_eps_clamps_degenerate_union():
    # Two identical zero-area boxes: overlap 0, union 0 -> clamped to eps: IoU = 0/eps = 0.
    # GIoU: enclosing area 0 -> eps, GIoU = 0 - (eps - eps)/eps = 0.
    p = t([[1.0, 1.0, 1.0, 1.0]])
    assert bbox_overlaps(p, p).item() == 0.0
    assert bbox_overlaps(p, p, mode="giou").item() == 0.0


@pytest.mark.parametrize("n,m", [(0, 3), (2, 0), (0, 0)])
def test_empty_inputs(n, m):
    out = bbox_overlaps(torch.zeros(n, 4), torch.zeros(m, 4))
    assert out.shape == (n, m)
    assert bbox_overlaps(torch.zeros(n, 4), torch.zeros(n, 4), is_aligned=True).shape == (n,)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mode"):
        bbox_overlaps(t([A]), t([A]), mode="iof")
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        bbox_overlaps(torch.zeros(3), t([A]))
    with pytest.raises(ValueError, match="is_aligned"):
        bbox_overlaps(t([A, B]), t([A]), is_aligned=True)


def test_distance2bbox_and_clamp():
    points = t([[10.0, 20.0], [1.0, 1.0]])
    dist = t([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    # (10-1, 20-2, 10+3, 20+4) = (9, 18, 13, 24); (1-5, 1-5, 1+5, 1+5) = (-4, -4, 6, 6).
    torch.testing.assert_close(distance2bbox(points, dist), t([[9, 18, 13, 24], [-4, -4, 6, 6]]))
    # max_shape (h=20, w=12): x in [0, 12], y in [0, 20].
    clamped = distance2bbox(points, dist, max_shape=(20, 12))
    torch.testing.assert_close(clamped, t([[9, 18, 12, 20], [0, 0, 6, 6]]))


def test_bbox2distance_no_clamp_and_round_trip():
    points = t([[10.0, 20.0], [0.0, 0.0]])
    boxes = t([[9.0, 18.0, 13.0, 24.0], [2.0, 3.0, 5.0, 7.0]])
    # (10-9, 20-18, 13-10, 24-20) = (1, 2, 3, 4); point outside: (0-2, 0-3, 5-0, 7-0).
    d = bbox2distance(points, boxes)
    torch.testing.assert_close(d, t([[1, 2, 3, 4], [-2, -3, 5, 7]]))
    torch.testing.assert_close(distance2bbox(points, d), boxes)


def test_distance_shape_errors():
    with pytest.raises(ValueError, match="points"):
        distance2bbox(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="distance"):
        distance2bbox(torch.zeros(2, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="differ"):
        bbox2distance(torch.zeros(2, 2), torch.zeros(3, 4))


def test_centerness_target_by_hand():
    """√(min(l, r)/max(l, r) · min(t, b)/max(t, b)) (zoo_spec §3.4, §4.4)."""
    # (4, 4, 12, 12): √(4/12 · 4/12) = 1/3; (20, 20, 12, 12): √(12/20 · 12/20) = 0.6;
    # (1, 2, 3, 4): √(1/3 · 2/4); the centre of its box: 1.
    ct = centerness_target(t([[4.0, 4, 12, 12], [20, 20, 12, 12], [1, 2, 3, 4], [5, 7, 5, 7]]))
    assert ct.tolist() == pytest.approx([1 / 3, 0.6, math.sqrt((1 / 3) * (2 / 4)), 1.0], rel=1e-6)
    assert centerness_target(torch.zeros((0, 4))).shape == (0,)
    # Point (10, 20) in (0, 0, 40, 30): (l, t, r, b) = (10, 20, 30, 10) → √(10/30 · 10/20) = √(1/6).
    d = bbox2distance(t([[10.0, 20.0]]), t([[0.0, 0.0, 40.0, 30.0]]))
    assert float(centerness_target(d)) == pytest.approx(math.sqrt(1.0 / 6.0), rel=1e-6)
    with pytest.raises(ValueError, match="distances"):
        centerness_target(torch.zeros(3, 2))


def test_xywh_conversions():
    xyxy = t([[1.0, 2.0, 4.0, 8.0]])
    # w = 4 - 1 = 3, h = 8 - 2 = 6 (no "+1").
    torch.testing.assert_close(xyxy_to_xywh(xyxy), t([[1.0, 2.0, 3.0, 6.0]]))
    torch.testing.assert_close(xywh_to_xyxy(t([[1.0, 2.0, 3.0, 6.0]])), xyxy)
    assert xyxy_to_xywh(torch.zeros(0, 4)).shape == (0, 4)
