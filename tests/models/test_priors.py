"""Anchor / point generators and valid flags (zoo_spec §1.1, §1.5, §1.6)."""

import math

import pytest
import torch

from varifocal.models.priors import AnchorGenerator, grid_points, valid_flags

R2 = math.sqrt(2.0)

# zoo_spec §1.5 table, RetinaNet base anchors at stride 8 (a = 0..8, ratio-major).
RETINA_S8 = [
    (-22.6274, -11.3137, 22.6274, 11.3137),
    (-28.5088, -14.2544, 28.5088, 14.2544),
    (-35.9188, -17.9594, 35.9188, 17.9594),
    (-16.0, -16.0, 16.0, 16.0),
    (-20.1587, -20.1587, 20.1587, 20.1587),
    (-25.3984, -25.3984, 25.3984, 25.3984),
    (-11.3137, -22.6274, 11.3137, 22.6274),
    (-14.2544, -28.5088, 14.2544, 28.5088),
    (-17.9594, -35.9188, 17.9594, 35.9188),
]


def retinanet():
    return AnchorGenerator(
        strides=[8, 16, 32, 64, 128],
        ratios=[0.5, 1.0, 2.0],
        octave_base_scale=4,
        scales_per_octave=3,
    )


def test_retinanet_base_anchors_match_spec_table():
    gen = retinanet()
    assert gen.num_base_anchors == 9
    base = gen.base_anchors[0]
    assert base.dtype == torch.float32 and base.shape == (9, 4)
    torch.testing.assert_close(base, torch.tensor(RETINA_S8), atol=1e-4, rtol=0)
    # 4·2^(1/3) = 5.039684, 4·2^(2/3) = 6.349604.
    torch.testing.assert_close(gen.scales, torch.tensor([4.0, 5.039684, 6.349604]), atol=1e-6, rtol=0)
    # Other levels scale linearly with the stride (128 = 16·8).
    torch.testing.assert_close(gen.base_anchors[4], 16 * torch.tensor(RETINA_S8), atol=2e-3, rtol=0)


def test_rpn_base_anchors_stride_4():
    gen = AnchorGenerator(strides=[4, 8, 16, 32, 64], ratios=[0.5, 1.0, 2.0], scales=[8])
    assert gen.num_base_anchors == 3
    expected = torch.tensor(
        [
            [-22.6274, -11.3137, 22.6274, 11.3137],
            [-16.0, -16.0, 16.0, 16.0],
            [-11.3137, -22.6274, 11.3137, 22.6274],
        ]
    )
    torch.testing.assert_close(gen.base_anchors[0], expected, atol=1e-4, rtol=0)


def test_grid_anchors_2x2_stride8_three_anchors():
    # b = 8, scale 1: r=.5 -> w = 8·√2, h = 8/√2, half sizes (4√2, 2√2) = (5.656854,
    # 2.828427);
    # r=1 -> 8x8, half 4; r=2 -> half (2√2, 4√2).
    gen = AnchorGenerator(strides=[8], ratios=[0.5, 1.0, 2.0], scales=[1.0])
    base = [
        [-4 * R2, -2 * R2, 4 * R2, 2 * R2],
        [-4.0, -4.0, 4.0, 4.0],
        [-2 * R2, -4 * R2, 2 * R2, 4 * R2],
    ]
    rows = []
    # Row (y·W + x)·A + a, shift (8x, 8y, 8x, 8y): (0,0), (0,1)->x+8, (1,0)->y+8, (1,1).
    for y in range(2):
        for x in range(2):
            for a in range(3):
                x1, y1, x2, y2 = base[a]
                rows.append([x1 + 8 * x, y1 + 8 * y, x2 + 8 * x, y2 + 8 * y])
    (anchors,) = gen.grid_anchors([(2, 2)])
    assert anchors.shape == (12, 4) and anchors.dtype == torch.float32
    torch.testing.assert_close(anchors, torch.tensor(rows), atol=1e-5, rtol=0)
    # Spot values written out: row 4 = loc (y=0, x=1), a=1 -> (4, -4, 12, 4);
    # row 9 = loc (1, 1), a=0 -> (8 - 5.656854, 8 - 2.828427, 13.656854, 10.828427).
    torch.testing.assert_close(anchors[4], torch.tensor([4.0, -4.0, 12.0, 4.0]))
    torch.testing.assert_close(anchors[9], torch.tensor([2.343146, 5.171573, 13.656854, 10.828427]), atol=1e-5, rtol=0)


def test_atss_single_square_anchor():
    gen = AnchorGenerator(strides=[8, 16], ratios=[1.0], octave_base_scale=8, scales_per_octave=1)
    assert gen.num_base_anchors == 1
    a8, a16 = gen.grid_anchors([(2, 3), (1, 2)])
    # Level stride 8, side 64, centre (8x, 8y), row y·3 + x.
    exp8 = [[8 * x - 32, 8 * y - 32, 8 * x + 32, 8 * y + 32] for y in range(2) for x in range(3)]
    exp16 = [[16 * x - 64, -64, 16 * x + 64, 64] for x in range(2)]
    torch.testing.assert_close(a8, torch.tensor(exp8, dtype=torch.float32))
    torch.testing.assert_close(a16, torch.tensor(exp16, dtype=torch.float32))


def test_center_offset_and_base_sizes():
    # base size 10, offset 0.5 -> centre (5, 5); one 1:1 anchor of scale 2 -> 20x20.
    gen = AnchorGenerator(strides=[8], ratios=[1.0], scales=[2.0], base_sizes=[10], center_offset=0.5)
    torch.testing.assert_close(gen.base_anchors[0], torch.tensor([[-5.0, -5.0, 15.0, 15.0]]))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),  # neither
        dict(scales=[8], octave_base_scale=4, scales_per_octave=3),  # both
        dict(octave_base_scale=4),  # half of the pair
        dict(scales=[]),
        dict(scales=[8], base_sizes=[4, 8]),
    ],
)
def test_bad_configs_raise(kwargs):
    with pytest.raises(ValueError, match="priors.py"):
        AnchorGenerator(strides=[8], ratios=[1.0], **kwargs)


def test_grid_anchors_wrong_number_of_levels():
    with pytest.raises(ValueError, match="priors.py"):
        retinanet().grid_anchors([(2, 2)])


def test_valid_flags_cut_by_pad_shape():
    # Stride 8, map 3x4 (H, W), pad_shape (h=10, w=17): ceil(10/8) = 2 rows, ceil(17/8) = 3 cols.
    # Stride 16, map 2x2: ceil(10/16) = 1 row, ceil(17/16) = 2 cols (= W).
    f8, f16 = valid_flags([(3, 4), (2, 2)], [8, 16], (10, 17))
    assert f8.dtype == torch.bool
    expected8 = [1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert f8.tolist() == [bool(v) for v in expected8]
    assert f16.tolist() == [True, True, False, False]
    # A = 2 anchors per location share the flag: location order (y·W + x), then a.
    (f2,) = valid_flags([(2, 2)], [16], (10, 17), num_base_anchors=2)
    assert f2.tolist() == [True, True, True, True, False, False, False, False]
    # Through the generator: A = 3, pad (8, 8) on a 2x2 map at stride 8 -> only cell (0, 0).
    gen = AnchorGenerator(strides=[8], ratios=[0.5, 1.0, 2.0], scales=[1.0])
    (g,) = gen.valid_flags([(2, 2)], (8, 8))
    assert g.tolist() == [True] * 3 + [False] * 9


def test_valid_flags_pad_larger_than_map():
    (f,) = valid_flags([(1, 2)], [8], (100, 100))
    assert f.tolist() == [True, True]


def test_grid_points_offsets():
    (p0,) = grid_points([(2, 3)], [8])
    assert p0.tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]]
    p_a, p_b = grid_points([(2, 3), (1, 1)], [8, 16], offset=0.5)
    assert p_a.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert p_b.tolist() == [[8, 8]]
    assert p_a.dtype == torch.float32
