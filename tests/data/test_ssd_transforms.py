"""SSD / RefineDet training augmentation (refinedet_spec.md §11, tests §18 item 14)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from varifocal.config import config_from_dict
from varifocal.data import RandomHorizontalFlip
from varifocal.data.ssd_transforms import (
    SSD_MEAN_RGB,
    WARP_INTERPOLATIONS,
    DistortParams,
    Expand,
    MinIoURandomCrop,
    PhotometricDistort,
    WarpResize,
    build_ssd_train_transforms,
    hsv_to_rgb,
    rgb_to_hsv,
)
from varifocal.engine.build import build_datasets

BCCD = Path(__file__).resolve().parents[2] / "data" / "bccd"


def _triple(width: int, height: int, boxes, dtype=torch.uint8, image=None):
    if image is None:
        image = torch.zeros(3, height, width, dtype=dtype)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(len(boxes), dtype=torch.int64),
        "image_id": 7,
    }
    meta = {"ori_shape": (height, width), "img_shape": (height, width), "scale_factor": (1.0, 1.0), "flip": False}
    return image, target, meta


def _pixel(rgb, dtype=torch.uint8):
    return torch.tensor(rgb, dtype=dtype).view(3, 1, 1)


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# ---- photometric ------------------------------------------------------------------------------


def _only(**ops) -> DistortParams:
    values = {"order_a": True, "brightness": None, "contrast": None, "saturation": None, "hue": None}
    values.update(ops)
    return DistortParams(**values)


def test_brightness_adds_delta_and_clamps():
    image = torch.tensor([0.0, 100.0, 250.0]).view(3, 1, 1)
    out = PhotometricDistort.apply(image, _only(brightness=10.0))
    assert out.dtype == torch.float32 and out.flatten().tolist() == [10.0, 110.0, 255.0]
    out = PhotometricDistort.apply(image.to(torch.uint8), _only(brightness=-20.0))
    assert out.dtype == torch.uint8 and out.flatten().tolist() == [0, 80, 230]


def test_contrast_multiplies_and_clamps():
    image = torch.tensor([10, 100, 200], dtype=torch.uint8).view(3, 1, 1)
    out = PhotometricDistort.apply(image, _only(contrast=1.5))
    assert out.dtype == torch.uint8 and out.flatten().tolist() == [15, 150, 255]
    out = PhotometricDistort.apply(image.float(), _only(contrast=0.5))
    assert out.flatten().tolist() == [5.0, 50.0, 100.0]


def test_hue_shift_of_pure_red():
    # +18 OpenCV degrees = 36° = 0.1 circle: H = 0.1, S = 1, V = 255 -> (255, 255 * 0.6, 0).
    out = PhotometricDistort.apply(_pixel([255, 0, 0]), _only(hue=18.0))
    assert out.flatten().tolist() == [255, 153, 0]
    # -18 wraps to H = 0.9 (sector 5: (v, p, q), q = 255 * (1 - 0.4)).
    out = PhotometricDistort.apply(_pixel([255, 0, 0]), _only(hue=-18.0))
    assert out.flatten().tolist() == [255, 0, 153]
    out = PhotometricDistort.apply(_pixel([255, 0, 0], torch.float32), _only(hue=18.0))
    assert torch.allclose(out.flatten(), torch.tensor([255.0, 153.0, 0.0]), atol=1e-3)


def test_saturation_scales_hsv_s():
    pixel = _pixel([200, 100, 50])
    assert PhotometricDistort.apply(pixel, _only(saturation=0.0)).flatten().tolist() == [200, 200, 200]
    # S = 150/200 = 0.75 -> 0.375 with H, V kept: each channel halves its distance to max = V.
    assert PhotometricDistort.apply(pixel, _only(saturation=0.5)).flatten().tolist() == [200, 150, 125]
    # S is clamped at 1: (200, 100, 50) * S 2 -> S 1, same hue: (200, 66.67, 0).
    out = PhotometricDistort.apply(pixel.float(), _only(saturation=2.0))
    assert torch.allclose(out.flatten(), torch.tensor([200.0, 200.0 / 3.0, 0.0]), atol=1e-3)


def test_order_a_contrast_before_saturation_order_b_after():
    pixel = _pixel([200, 100, 50])
    # A: x2 -> (255, 200, 100) clamped; S -> 1 with (g - b)/(max - min) = 100/155 -> G = 255 * 100/155.
    out_a = PhotometricDistort.apply(pixel.float(), _only(order_a=True, contrast=2.0, saturation=2.0))
    assert torch.allclose(out_a.flatten(), torch.tensor([255.0, 255.0 * 100 / 155, 0.0]), atol=1e-3)
    # B: S -> 1 first: (200, 66.67, 0), then x2 -> (255, 133.33, 0).
    out_b = PhotometricDistort.apply(pixel.float(), _only(order_a=False, contrast=2.0, saturation=2.0))
    assert torch.allclose(out_b.flatten(), torch.tensor([255.0, 400.0 / 3.0, 0.0]), atol=1e-3)


def test_hsv_round_trip_and_known_values():
    image = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0)) * 255
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(image)), image, atol=1e-3)
    hsv = rgb_to_hsv(
        torch.tensor([[0.0, 0.0, 128.0, 0.0], [255.0, 0.0, 128.0, 0.0], [0.0, 255.0, 128.0, 0.0]])[:, :, None]
    )
    # green, blue, gray, black
    assert torch.allclose(
        hsv[:, :, 0].T, torch.tensor([[1 / 3, 1.0, 255.0], [2 / 3, 1.0, 255.0], [0, 0, 128], [0, 0, 0]])
    )


def test_photometric_draws_with_probability_and_ranges():
    distort = PhotometricDistort(generator=torch.Generator().manual_seed(3))
    draws = [distort.sample_params() for _ in range(2000)]
    for name, (lo, hi) in [("brightness", (-32, 32)), ("contrast", (0.5, 1.5)), ("saturation", (0.5, 1.5))]:
        values = [getattr(d, name) for d in draws if getattr(d, name) is not None]
        assert 900 < len(values) < 1100 and lo <= min(values) and max(values) <= hi
    hues = [d.hue for d in draws if d.hue is not None]
    assert -18 <= min(hues) < -17 and 17 < max(hues) <= 18
    assert 900 < sum(d.order_a for d in draws) < 1100
    forced = PhotometricDistort(brightness=(5, 5), contrast=(2, 2), saturation=(1, 1), hue=(0, 0), p=1.0)
    assert all(forced.sample_params()[1:] == (5.0, 2.0, 1.0, 0.0) for _ in range(5))
    never = PhotometricDistort(p=0.0).sample_params()
    assert never[1:] == (None, None, None, None)


def test_photometric_forced_call_and_reproducible():
    image, target, meta = _triple(1, 1, [], image=_pixel([10, 20, 30]))
    forced = PhotometricDistort(brightness=(5, 5), contrast=(2, 2), saturation=(1, 1), hue=(0, 0), p=1.0)
    out, out_target, out_meta = forced(image, target, meta)
    assert out.dtype == torch.uint8 and out.flatten().tolist() == [30, 50, 70]
    assert out_target is target and out_meta is meta
    image = torch.randint(0, 256, (3, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    outs = []
    for _ in range(2):
        distort = PhotometricDistort(p=1.0, generator=torch.Generator().manual_seed(11))
        outs.append(distort(image, target, meta)[0])
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], image)
    params = PhotometricDistort(p=1.0, generator=torch.Generator().manual_seed(11)).sample_params()
    assert torch.equal(PhotometricDistort.apply(image, params), outs[0])


@pytest.mark.parametrize(
    "kwargs", [{"contrast": (1.5, 0.5)}, {"saturation": (-0.1, 1.0)}, {"p": 1.5}, {"hue": (0, math.inf)}]
)
def test_photometric_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        PhotometricDistort(**kwargs)


# ---- expand -----------------------------------------------------------------------------------


def test_expand_canvas_fill_paste_and_shifted_boxes():
    assert SSD_MEAN_RGB == tuple(reversed((104.0, 117.0, 123.0)))  # the BGR mean in RGB order
    source = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seen = set()
    for seed in range(20):
        image, target, meta = _triple(5, 4, [[1, 1, 3, 4], [0, 0, 5, 4]], image=source.clone())
        out, target, meta = Expand(max_ratio=3.0, p=1.0, generator=torch.Generator().manual_seed(seed))(
            image, target, meta
        )
        canvas_h, canvas_w = out.shape[-2:]
        left, top = (target["boxes"][1, :2]).tolist()
        left, top = int(left), int(top)
        assert target["boxes"].tolist() == [[1 + left, 1 + top, 3 + left, 4 + top], [left, top, 5 + left, 4 + top]]
        assert out.dtype == torch.uint8 and meta["img_shape"] == (canvas_h, canvas_w)
        assert 0 <= top <= canvas_h - 4 and 0 <= left <= canvas_w - 5 and canvas_h <= 12 and canvas_w <= 15
        # both sides are int(r * side) for one r in [1, 3]
        assert any(int(4 * r / 1000) == canvas_h and int(5 * r / 1000) == canvas_w for r in range(1000, 3001))
        assert torch.equal(out[:, top : top + 4, left : left + 5], source)
        outside = torch.ones(canvas_h, canvas_w, dtype=torch.bool)
        outside[top : top + 4, left : left + 5] = False
        assert (out[:, outside] == torch.tensor([123, 117, 104], dtype=torch.uint8)[:, None]).all()
        assert outside.sum() == canvas_h * canvas_w - 20
        seen.add((canvas_h, canvas_w, top, left))
    assert len(seen) > 10
    image, target, meta = _triple(5, 4, [[1, 1, 3, 4]], image=source.clone())
    out, kept, _ = Expand(p=0.0)(image, target, meta)
    assert out is image and kept is target


@pytest.mark.parametrize("kwargs", [{"max_ratio": 0.5}, {"fill": (1, 2)}, {"fill": (0, 0, 300)}, {"p": -1}])
def test_expand_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        Expand(**kwargs)


# ---- crop -------------------------------------------------------------------------------------


def test_crop_only_whole_image_meets_min_iou_09():
    # GT = the whole 20x20 image; crops of scale <= 0.9 cover at most ~86% of it (IoU < 0.9).
    crop = MinIoURandomCrop(min_ious=(0.9,), max_ious=(), scale=(0.3, 0.9), generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        assert crop.sample_crops(20, 20, torch.tensor([[0.0, 0.0, 20.0, 20.0]])) == [(0, (0, 0, 20, 20))]
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out, target, meta = crop(*_triple(20, 20, [[0, 0, 20, 20]], image=image))
    assert torch.equal(out, image) and target["boxes"].tolist() == [[0, 0, 20, 20]] and meta["img_shape"] == (20, 20)
    # With the SSD samplers the 0.9 one (index 5) fails and the others still succeed and hold.
    crop = MinIoURandomCrop(scale=(0.3, 0.9), generator=torch.Generator().manual_seed(2))
    for _ in range(20):
        found = crop.sample_crops(20, 20, torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
        indices = [i for i, _ in found]
        assert indices[0] == 0 and 5 not in indices and 6 in indices
        for index, box in found[1:]:
            min_iou = crop.samplers[index][0]
            if min_iou is not None:
                assert _iou(box, (0, 0, 20, 20)) >= min_iou


def test_crop_candidates_respect_iou_and_shape_rules():
    gts = [[10.0, 10.0, 60.0, 50.0], [100.0, 20.0, 190.0, 90.0], [40.0, 60.0, 80.0, 100.0]]
    crop = MinIoURandomCrop(generator=torch.Generator().manual_seed(0))
    assert crop.samplers == [(None, None), (0.1, None), (0.3, None), (0.5, None), (0.7, None), (0.9, None), (None, 1.0)]
    counts = [0] * 7
    for _ in range(100):
        found = crop.sample_crops(200, 100, torch.tensor(gts))
        assert found[0] == (0, (0, 0, 200, 100))
        for index, (x1, y1, x2, y2) in found:
            counts[index] += 1
            assert all(isinstance(v, int) for v in (x1, y1, x2, y2))
            assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 100
            w, h = (x2 - x1) / 200, (y2 - y1) / 100
            assert 0.09 - 0.01 <= w * h <= 1.0  # s² with s in [0.3, 1], up to pixel rounding
            assert 0.5 - 0.06 <= w / h <= 2.0 + 0.2  # a in [0.5, 2], up to pixel rounding
            min_iou = crop.samplers[index][0]
            if min_iou is not None:
                assert max(_iou((x1, y1, x2, y2), g) for g in gts) >= min_iou
    assert counts[0] == counts[6] == 100 and all(c > 80 for c in counts[1:4]) and counts[4] > 0


def test_crop_without_gt_keeps_whole_image_and_any_crop_sampler():
    crop = MinIoURandomCrop(generator=torch.Generator().manual_seed(0))
    for _ in range(10):
        assert [i for i, _ in crop.sample_crops(30, 20, torch.zeros(0, 4))] == [0, 6]
        assert [i for i, _ in crop.sample_crops(30, 20, None)] == [0, 6]
    shapes = set()
    for _ in range(10):
        out, target, meta = crop(*_triple(30, 20, []))
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert tuple(out.shape[-2:]) == meta["img_shape"]
        shapes.add(meta["img_shape"])
    assert (20, 30) in shapes and len(shapes) > 1


def test_expand_then_crop_keeps_centres_inside_and_clips():
    gts = [[2, 3, 20, 15], [25, 5, 39, 29], [10, 20, 14, 24], [0, 0, 40, 30]]
    kept_total = dropped_total = 0
    for seed in range(150):
        gen = torch.Generator().manual_seed(seed)
        image, target, meta = _triple(40, 30, gts)
        target["ids"] = torch.arange(len(gts)) * 10
        image, target, meta = Expand(p=1.0, generator=gen)(image, target, meta)
        before = target["boxes"].clone()
        height, width = image.shape[-2:]
        # Encode each canvas pixel's (x, y) in the image to read the crop back.
        ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        coords = torch.stack([xs, ys, torch.zeros_like(xs)]).float()
        out, target, meta = MinIoURandomCrop(generator=gen)(coords, target, meta)
        x1, y1 = int(out[0, 0, 0]), int(out[1, 0, 0])
        x2, y2 = x1 + out.shape[-1], y1 + out.shape[-2]
        assert meta["img_shape"] == (y2 - y1, x2 - x1) and 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        ids = target["ids"].tolist()
        assert target["labels"].tolist() == [i // 10 for i in ids] and target["image_id"] == 7
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(ids), 4)
        for j in range(len(gts)):
            b = before[j].tolist()
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            clipped = [min(max(b[0], x1), x2) - x1, min(max(b[1], y1), y2) - y1]
            clipped += [min(max(b[2], x1), x2) - x1, min(max(b[3], y1), y2) - y1]
            should_keep = x1 <= cx <= x2 and y1 <= cy <= y2 and clipped[2] > clipped[0] and clipped[3] > clipped[1]
            assert (j * 10 in ids) == should_keep
            if should_keep:
                kept_total += 1
                box = target["boxes"][ids.index(j * 10)].tolist()
                assert box == pytest.approx(clipped)
                assert 0 <= box[0] < box[2] <= x2 - x1 and 0 <= box[1] < box[3] <= y2 - y1
            else:
                dropped_total += 1
    assert kept_total > 100 and dropped_total > 50


def test_crop_drops_boxes_degenerate_after_clipping():
    crop = MinIoURandomCrop(min_ious=(), max_ious=())  # whole image only
    image, target, meta = _triple(10, 10, [[2, 2, 2, 8], [1, 1, 5, 5], [3, 4, 9, 4]])
    _, target, _ = crop(image, target, meta)
    assert target["boxes"].tolist() == [[1, 1, 5, 5]] and target["labels"].tolist() == [1]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_ious": (1.5,)},
        {"max_ious": ("x",)},
        {"scale": (0.0, 1.0)},
        {"scale": (0.5, 1.2)},
        {"aspect_ratio": (0, 2)},
        {"max_trials": 0},
    ],
)
def test_crop_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        MinIoURandomCrop(**kwargs)


# ---- warp resize, flip, pipeline ---------------------------------------------------------------


def test_warp_resize_exact_size_and_per_axis_boxes():
    image, target, meta = _triple(6, 4, [[1, 1, 3, 2], [4, 0, 6, 4]])
    meta["scale_factor"] = (0.5, 1.0)
    out, target, meta = WarpResize((12, 2), ("bilinear",))(image, target, meta)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 2, 12)
    assert target["boxes"].tolist() == [[2.0, 0.5, 6.0, 1.0], [8.0, 0.0, 12.0, 2.0]]
    assert meta["img_shape"] == (2, 12) and meta["scale_factor"] == (1.0, 0.5) and meta["ori_shape"] == (4, 6)
    row = torch.tensor([10, 20], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2)
    out, _, _ = WarpResize((4, 1), ("nearest",))(*_triple(2, 1, [], image=row))
    assert out[0, 0].tolist() == [10, 10, 20, 20]
    for mode in WARP_INTERPOLATIONS:
        flat = torch.full((3, 5, 7), 77.0)
        out, _, _ = WarpResize((9, 3), (mode,))(*_triple(7, 5, [], image=flat))
        assert out.dtype == torch.float32 and tuple(out.shape) == (3, 3, 9)
        assert torch.allclose(out, torch.full_like(out, 77.0))


def test_warp_resize_draws_every_interpolation():
    warp = WarpResize(generator=torch.Generator().manual_seed(0))
    assert set(warp.interpolations) == {"bilinear", "area", "nearest", "bicubic"}
    assert {warp.sample_interpolation() for _ in range(100)} == set(WARP_INTERPOLATIONS)
    for bad in [{"size": (0, 320)}, {"interpolations": ("lanczos",)}, {"interpolations": ()}]:
        with pytest.raises(ValueError):
            WarpResize(**bad)


def test_flip_maps_x_to_width_minus_x():
    image = torch.arange(8, dtype=torch.uint8).view(1, 1, 8).expand(3, 2, 8).clone()
    out, target, meta = RandomHorizontalFlip(p=1.0)(*_triple(8, 2, [[1, 0, 3, 2], [0, 1, 8, 2]], image=image))
    assert out[0, 0].tolist() == [7, 6, 5, 4, 3, 2, 1, 0]
    assert target["boxes"].tolist() == [[5, 0, 7, 2], [0, 1, 8, 2]] and meta["flip"] is True
    normalised = target["boxes"][:, 0::2] / 8  # x ↦ 1 - x on normalised boxes
    assert normalised.tolist() == [[1 - 3 / 8, 1 - 1 / 8], [0.0, 1.0]]


def test_pipeline_order_output_and_reproducibility():
    tf = build_ssd_train_transforms()
    names = [type(t).__name__ for t in tf.transforms]
    assert names == ["PhotometricDistort", "Expand", "MinIoURandomCrop", "WarpResize", "RandomHorizontalFlip"]
    assert tf.transforms[1].fill == SSD_MEAN_RGB and tf.transforms[3].size == (320, 320)
    assert tf.transforms[1].max_ratio == 4.0
    assert build_ssd_train_transforms(expand_ratio=2).transforms[1].max_ratio == 2.0
    assert [type(t).__name__ for t in build_ssd_train_transforms((64, 32), flip_prob=0.0).transforms][
        -1
    ] == "WarpResize"
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tf = build_ssd_train_transforms((64, 32))
    results = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        out, target, meta = tf(*_triple(40, 30, [[2, 3, 20, 15], [25, 5, 39, 29]], image=image))
        assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 32, 64) and meta["img_shape"] == (32, 64)
        boxes = target["boxes"]
        assert ((boxes[:, 0] >= 0) & (boxes[:, 2] <= 64) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 32)).all()
        results.append((out, boxes))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][0], results[2][0])
    with pytest.raises(ValueError):
        build_ssd_train_transforms((320,))


# ---- wiring -----------------------------------------------------------------------------------


def _bccd_config(**data):
    base = {
        "format": "voc",
        "root": str(BCCD),
        "train_set": "test",
        "val_set": "test",
        "class_names": ["RBC", "WBC", "Platelets"],
        "num_workers": 0,
    }
    base.update(data)
    return config_from_dict({"model": {"num_classes": 3, "test_scale": [320, 320]}, "data": base})


@pytest.mark.skipif(not (BCCD / "ImageSets" / "Main" / "test.txt").is_file(), reason="bundled data/bccd is absent")
def test_build_datasets_ssd_pipeline_and_warped_validation():
    cfg = _bccd_config(pipeline="ssd", keep_ratio=False, train_scale=[320, 320], multiscale_mode=None)
    train_ds, val_ds = build_datasets(cfg)
    names = [type(t).__name__ for t in train_ds.transforms.transforms]
    assert names == ["PhotometricDistort", "Expand", "MinIoURandomCrop", "WarpResize", "RandomHorizontalFlip"]
    for index in range(2):
        image, target, meta = train_ds[index]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 320, 320) and meta["img_shape"] == (320, 320)
        assert target["boxes"].shape[0] == target["labels"].shape[0]
    image, target, meta = val_ds[0]
    h, w = meta["ori_shape"]
    assert tuple(image.shape) == (3, 320, 320) and meta["img_shape"] == (320, 320)
    assert meta["scale_factor"] == (320 / w, 320 / h) and (h, w) == (480, 640)  # warped, not keep-ratio
    # The default pipeline with keep_ratio false warps the training images to (width, height).
    cfg = _bccd_config(keep_ratio=False, train_scale=[320, 256], multiscale_mode=None, flip_prob=0.0)
    train_ds, _ = build_datasets(cfg, val=False)
    image, _, meta = train_ds[0]
    assert tuple(image.shape) == (3, 256, 320) and meta["scale_factor"] == (0.5, 256 / 480)


def test_box_sides_of_a_warp_use_both_axes():
    from types import SimpleNamespace

    from varifocal.data.stats import box_sides

    record = SimpleNamespace(width=640, height=480, boxes=[[0.0, 0.0, 100.0, 90.0]])
    # Keep-ratio to (320, 320): factor min(320/640, 320/480) = 0.5 -> sqrt(100*90)*0.5.
    assert box_sides([record], (320, 320))[0] == pytest.approx((100 * 90) ** 0.5 * 0.5)
    # Warp to 320x320: 100 -> 50 wide, 90 -> 60 high -> sqrt(50*60).
    assert box_sides([record], (320, 320), keep_ratio=False)[0] == pytest.approx((50 * 60) ** 0.5)
