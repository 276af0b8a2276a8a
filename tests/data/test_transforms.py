"""Resize / flip / Compose on (image, target, meta) triples (spec §6.1 items 4-5, §6.3)."""

from __future__ import annotations

import pytest
import torch

from varifocal.data import Compose, RandomHorizontalFlip, Resize, build_test_transforms, build_train_transforms


def _triple(width: int, height: int, boxes, dtype=torch.uint8):
    image = torch.zeros(3, height, width, dtype=dtype)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
    }
    meta = {"ori_shape": (height, width), "img_shape": (height, width), "scale_factor": (1.0, 1.0), "flip": False}
    return image, target, meta


def test_resize_upsamples_with_half_pixel_bilinear():
    # One row 0, 100, 200, 250 (w=4, h=2); scale (8, 4) -> factor 2 -> 8x4.
    image, target, meta = _triple(4, 2, [[1, 0.5, 3, 2]])
    image[:] = torch.tensor([0, 100, 200, 250], dtype=torch.uint8)
    out, target, meta = Resize(scale=(8, 4))(image, target, meta)
    # Output column j samples source x = (j + 0.5) / 2 - 0.5, clamped to [0, 3].
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 4, 8)
    assert out[0, 0].tolist() == [0, 25, 75, 125, 175, 212, 238, 250]
    assert torch.equal(out[0, 0], out[2, 3])
    assert target["boxes"].tolist() == [[2.0, 1.0, 6.0, 4.0]]
    assert meta["img_shape"] == (4, 8) and meta["scale_factor"] == (2.0, 2.0) and meta["ori_shape"] == (2, 4)


def test_resize_keep_ratio_separate_axis_factors_and_clip():
    # 64x48 to (133, 80): factor min(133/64, 80/48) = 5/3 -> int(106.67 + 0.5) = 107 x 80.
    image, target, meta = _triple(64, 48, [[10, 12, 20, 24], [50, 40, 70, 50]])
    out, target, meta = Resize(scale=(133, 80))(image, target, meta)
    assert tuple(out.shape) == (3, 80, 107)
    assert meta["scale_factor"] == (107 / 64, 80 / 48)
    boxes = target["boxes"]
    assert torch.allclose(boxes[0], torch.tensor([16.71875, 20.0, 33.4375, 40.0]))
    # x2 = 70 * 1.671875 = 117.03 and y2 = 83.3 are clipped to the image (107, 80).
    assert torch.allclose(boxes[1], torch.tensor([83.59375, 66.6666667, 107.0, 80.0]))


def test_resize_keeps_float_images_float():
    image, target, meta = _triple(4, 2, [], dtype=torch.float32)
    image += 0.25
    out, _, _ = Resize(scale=(8, 4))(image, target, meta)
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full_like(out, 0.25))


def test_resize_range_mode_mmdet_semantics():
    gen = torch.Generator().manual_seed(0)
    resize = Resize(multiscale_mode="range", scales=[(1333, 480), (1333, 960)], generator=gen)
    draws = [resize.sample_scale() for _ in range(400)]
    assert {d[0] for d in draws} == {1333}
    shorts = [d[1] for d in draws]
    assert min(shorts) >= 480 and max(shorts) <= 960 and len(set(shorts)) > 200
    assert min(shorts) < 490 and max(shorts) > 950  # covers the whole interval
    # Different long edges: each edge is drawn from its own [min, max] (mmdet random_sample).
    resize = Resize(multiscale_mode="range", scales=[(1000, 400), (1200, 600)], generator=gen)
    draws = [resize.sample_scale() for _ in range(200)]
    assert all(1000 <= lo <= 1200 and 400 <= sh <= 600 for lo, sh in draws)
    assert len({lo for lo, _ in draws}) > 50


def test_resize_value_mode_picks_listed_scales():
    gen = torch.Generator().manual_seed(1)
    scales = [(1333, 640), (1333, 800), (1000, 600)]
    resize = Resize(multiscale_mode="value", scales=scales, generator=gen)
    draws = [resize.sample_scale() for _ in range(60)]
    assert set(draws) == set(scales)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"multiscale_mode": "ranges", "scales": [(1, 2), (3, 4)]},
        {"multiscale_mode": "range", "scales": [(1333, 800)]},
        {"multiscale_mode": "value", "scales": []},
        {"scale": (1333, 0)},
    ],
)
def test_resize_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Resize(**kwargs)


def test_flip_boxes_and_pixels():
    image, target, meta = _triple(10, 2, [[1, 0, 4, 2], [0, 1, 10, 2]])
    image[:, :, 0] = 9
    out, target2, meta2 = RandomHorizontalFlip(p=1.0)(image, target, meta)
    assert out[:, :, 9].tolist() == [[9, 9]] * 3 and out[:, :, 0].tolist() == [[0, 0]] * 3
    assert target2["boxes"].tolist() == [[6, 0, 9, 2], [0, 1, 10, 2]]  # x1' = W - x2, x2' = W - x1
    assert meta2["flip"] is True and meta["flip"] is False  # input meta untouched
    back, target3, meta3 = RandomHorizontalFlip(p=1.0)(out, target2, meta2)
    assert torch.equal(back, image) and torch.equal(target3["boxes"], target["boxes"]) and meta3["flip"] is False
    same, target4, meta4 = RandomHorizontalFlip(p=0.0)(image, target, meta)
    assert same is image and meta4["flip"] is False
    with pytest.raises(ValueError):
        RandomHorizontalFlip(p=1.5)


def test_flip_rate_and_generator_reproducibility():
    flips = [
        RandomHorizontalFlip(0.5, torch.Generator().manual_seed(s))(*_triple(4, 2, []))[2]["flip"] for s in range(400)
    ]
    assert 150 < sum(flips) < 250
    a = [
        RandomHorizontalFlip(0.5, g)(*_triple(4, 2, []))[2]["flip"]
        for g in [torch.Generator().manual_seed(5)]
        for _ in range(20)
    ]
    b = [
        RandomHorizontalFlip(0.5, g)(*_triple(4, 2, []))[2]["flip"]
        for g in [torch.Generator().manual_seed(5)]
        for _ in range(20)
    ]
    assert a == b


def test_compose_resize_then_flip():
    image, target, meta = _triple(4, 2, [[0, 0, 1, 1]])
    pipeline = Compose([Resize(scale=(8, 4)), RandomHorizontalFlip(p=1.0)])
    out, target, meta = pipeline(image, target, meta)
    # resized box [0, 0, 2, 2] on a width-8 image, then flipped: [6, 0, 8, 2]
    assert target["boxes"].tolist() == [[6.0, 0.0, 8.0, 2.0]]
    assert meta["img_shape"] == (4, 8) and meta["flip"] is True
    assert "Resize" in repr(pipeline) and "RandomHorizontalFlip" in repr(pipeline)


def test_builders():
    train = build_train_transforms(scale=(1333, 800), flip_prob=0.5)
    assert [type(t).__name__ for t in train.transforms] == ["Resize", "RandomHorizontalFlip"]
    assert [type(t).__name__ for t in build_train_transforms(flip_prob=0).transforms] == ["Resize"]
    test = build_test_transforms((1333, 800))
    assert len(test.transforms) == 1 and test.transforms[0].scale == (1333, 800)
