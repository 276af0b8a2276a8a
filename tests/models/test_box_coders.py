"""DeltaXYWH and distance-point box coders (zoo_spec §1.7, §1.8)."""

import math

import pytest
import torch

from varifocal.models.box_coders import DeltaXYWHBBoxCoder, DistancePointBBoxCoder

STDS = (0.1, 0.1, 0.2, 0.2)

# Prior P = (0, 0, 10, 20): centre (5, 10), size 10 x 20.
# Gt    G = (2, 4, 12, 44): centre (7, 24), size 10 x 40.
# d = ((7-5)/10, (24-10)/20, log(10/10), log(40/20)) = (0.2, 0.7, 0, log 2 = 0.693147).
# With stds (.1, .1, .2, .2): (2, 7, 0, log(2)/0.2 = 3.465736).
PRIOR = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
GT = torch.tensor([[2.0, 4.0, 12.0, 44.0]])


def test_encode_hand_example():
    d = DeltaXYWHBBoxCoder().encode(PRIOR, GT)
    torch.testing.assert_close(d, torch.tensor([[0.2, 0.7, 0.0, math.log(2.0)]]))
    d = DeltaXYWHBBoxCoder(stds=STDS).encode(PRIOR, GT)
    torch.testing.assert_close(d, torch.tensor([[2.0, 7.0, 0.0, math.log(2.0) / 0.2]]))
    # Means are subtracted before dividing: (0.2 - 0.1)/1 = 0.1 etc.
    d = DeltaXYWHBBoxCoder(means=(0.1, 0.2, 0.0, 0.5)).encode(PRIOR, GT)
    torch.testing.assert_close(d, torch.tensor([[0.1, 0.5, 0.0, math.log(2.0) - 0.5]]))


def test_decode_hand_example():
    coder = DeltaXYWHBBoxCoder(stds=STDS)
    out = coder.decode(PRIOR, torch.tensor([[2.0, 7.0, 0.0, math.log(2.0) / 0.2]]))
    torch.testing.assert_close(out, GT)


def test_round_trip_with_stds():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    wh = torch.rand(50, 2, generator=g) * 50 + 1
    priors = torch.cat([xy, xy + wh], dim=1)
    gxy = xy + torch.randn(50, 2, generator=g) * 5
    gwh = wh * torch.exp(torch.randn(50, 2, generator=g) * 0.5)
    gts = torch.cat([gxy, gxy + gwh], dim=1)
    coder = DeltaXYWHBBoxCoder(stds=STDS)
    back = coder.decode(priors, coder.encode(priors, gts))
    torch.testing.assert_close(back, gts, atol=1e-4, rtol=1e-5)


def test_dw_dh_clamp():
    coder = DeltaXYWHBBoxCoder()
    assert coder.max_ratio == 4.135166556742356
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    # dw = +10 -> clamped to |log(0.016)| -> w = 10/0.016 = 625; dh = -10 -> h = 10·0.016 = 0.16.
    out = coder.decode(prior, torch.tensor([[0.0, 0.0, 10.0, -10.0]], dtype=torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([[-307.5, 4.92, 317.5, 5.08]], dtype=torch.float64))
    # Values inside the band are untouched: dw = 4.0 -> w = 10·e^4.
    out = coder.decode(prior, torch.tensor([[0.0, 0.0, 4.0, 0.0]], dtype=torch.float64))
    assert out[0, 2].item() == pytest.approx(5 + 5 * math.exp(4.0), rel=1e-12)


def test_clip_to_max_shape():
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # dx = 2.5 -> cx = 30, x in (25, 35); dy = -1 -> cy = -5, y in (-10, 0).
    deltas = torch.tensor([[2.5, -1.0, 0.0, 0.0]])
    raw = DeltaXYWHBBoxCoder().decode(prior, deltas)
    torch.testing.assert_close(raw, torch.tensor([[25.0, -10.0, 35.0, 0.0]]))
    # max_shape (h=20, w=30): x in [0, 30], y in [0, 20].
    clipped = DeltaXYWHBBoxCoder().decode(prior, deltas, max_shape=(20, 30))
    torch.testing.assert_close(clipped, torch.tensor([[25.0, 0.0, 30.0, 0.0]]))
    no_clip = DeltaXYWHBBoxCoder(clip_border=False).decode(prior, deltas, max_shape=(20, 30))
    torch.testing.assert_close(no_clip, raw)


def test_class_specific_deltas():
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 30.0, 20.0]])
    # Block 0 zeros -> the prior; block 1 (0.1, 0, log 2, 0): cx + 0.1·w, width x2.
    # Prior 0: cx 5 + 1 = 6, w 20 -> (-4, 0, 16, 10).
    # Prior 1: centre (20, 15), size 20x10: cx 22, w 40 -> (2, 10, 42, 20).
    block1 = [0.1, 0.0, math.log(2.0), 0.0]
    deltas = torch.tensor([[0.0] * 4 + block1, [0.0] * 4 + block1])
    out = DeltaXYWHBBoxCoder().decode(priors, deltas)
    assert out.shape == (2, 8)
    torch.testing.assert_close(
        out,
        torch.tensor([[0.0, 0.0, 10.0, 10.0, -4.0, 0.0, 16.0, 10.0], [10.0, 10.0, 30.0, 20.0, 2.0, 10.0, 42.0, 20.0]]),
    )


def test_dtypes_and_gradient():
    coder = DeltaXYWHBBoxCoder(stds=STDS)
    half = coder.decode(PRIOR.half(), torch.zeros(1, 4, dtype=torch.float16))
    assert half.dtype == torch.float32
    assert coder.encode(PRIOR.bfloat16(), GT.bfloat16()).dtype == torch.float32
    priors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 9.0, 7.0]], dtype=torch.float64)
    deltas = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: coder.decode(priors, d, max_shape=(50, 50)), (deltas,))


def test_empty_and_bad_shapes():
    coder = DeltaXYWHBBoxCoder()
    assert coder.decode(torch.zeros(0, 4), torch.zeros(0, 8)).shape == (0, 8)
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="box_coders.py"):
        coder.decode(PRIOR, torch.zeros(1, 5))
    with pytest.raises(ValueError, match="box_coders.py"):
        coder.encode(PRIOR, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="box_coders.py"):
        DeltaXYWHBBoxCoder(stds=(1.0, 1.0, 0.0, 1.0))


def test_distance_coder_round_trip_and_clamps():
    coder = DistancePointBBoxCoder()
    points = torch.tensor([[5.0, 5.0], [20.0, 8.0]])
    boxes = torch.tensor([[0.0, 2.0, 12.0, 9.0], [10.0, 0.0, 40.0, 10.0]])
    # (px - x1, py - y1, x2 - px, y2 - py).
    dist = coder.encode(points, boxes)
    torch.testing.assert_close(dist, torch.tensor([[5.0, 3.0, 7.0, 4.0], [10.0, 8.0, 20.0, 2.0]]))
    torch.testing.assert_close(coder.decode(points, dist), boxes)
    # max_dis 16, eps 0.1 -> clamp to [0, 15.9]; a point outside gives a negative -> 0.
    clamped = coder.encode(points, boxes, max_dis=16.0)
    torch.testing.assert_close(clamped[1], torch.tensor([10.0, 8.0, 15.9, 2.0]))
    outside = coder.encode(torch.tensor([[-1.0, 5.0]]), boxes[:1], max_dis=16.0)
    torch.testing.assert_close(outside, torch.tensor([[0.0, 3.0, 13.0, 4.0]]))
    # Decode clips only with max_shape (h=9, w=30) and clip_border.
    torch.testing.assert_close(
        coder.decode(points, dist, max_shape=(9, 30)),
        torch.tensor([[0.0, 2.0, 12.0, 9.0], [10.0, 0.0, 30.0, 9.0]]),
    )
    torch.testing.assert_close(DistancePointBBoxCoder(clip_border=False).decode(points, dist, max_shape=(9, 30)), boxes)
