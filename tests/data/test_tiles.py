"""Tiled training (issue 16): the tile grid, box clipping with the visibility rule, and the
TiledDataset (coverage, jitter, determinism from (seed, epoch, index), the config and builder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from varifocal.config import ConfigError, config_from_dict
from varifocal.data import CocoDetection, ImageRecord, build_train_transforms
from varifocal.data.tiles import TiledDataset, crop_boxes, crop_record, jitter_starts, tile_grid, tile_starts

from .helpers import tiny_coco


# ------------------------------------------------------------------------------ the grid
def test_tile_starts_of_a_1000x600_image_hand_computed():
    # step = 400 - round(0.2 * 400) = 320; the last tile ends flush with the border
    assert tile_starts(1000, 400, 0.2) == [0, 320, 600]
    assert tile_starts(600, 400, 0.2) == [0, 200]
    assert tile_grid(1000, 600, (400, 400), 0.2) == [
        (0, 0, 400, 400),
        (320, 0, 720, 400),
        (600, 0, 1000, 400),
        (0, 200, 400, 600),
        (320, 200, 720, 600),
        (600, 200, 1000, 600),
    ]


def test_tile_starts_edge_cases():
    assert tile_starts(1000, 400, 0.0) == [0, 400, 600]  # no overlap: only the flush tile overlaps
    assert tile_starts(720, 400, 0.2) == [0, 320]  # 320 + 400 = 720 already ends at the border
    assert tile_starts(400, 400, 0.2) == [0] and tile_starts(300, 400, 0.2) == [0]
    # an image no larger than a tile is one tile, the whole image; a short side is not cut
    assert tile_grid(300, 200, (400, 400), 0.2) == [(0, 0, 300, 200)]
    assert tile_grid(1000, 300, (400, 400), 0.2) == [(0, 0, 400, 300), (320, 0, 720, 300), (600, 0, 1000, 300)]
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(1000, 400, 1.0)
    with pytest.raises(ValueError, match="positive"):
        tile_grid(1000, 600, (0, 400), 0.2)


def test_jitter_keeps_the_ends_and_stays_within_half_the_overlap():
    # starts 0, 320, 600 (tile 400): overlaps 80 and 120, so the middle start moves by ±40
    seen = set()
    for seed in range(200):
        xs = jitter_starts([0, 320, 600], 1000, 400, np.random.default_rng(seed))
        assert xs[0] == 0 and xs[2] == 600 and 280 <= xs[1] <= 360
        seen.add(xs[1])
    assert len(seen) > 40  # it does move
    assert jitter_starts([0, 200], 600, 400, np.random.default_rng(0)) == [0, 200]  # no interior tile


# ------------------------------------------------------------------------------ boxes
def test_crop_boxes_visibility_rule_hand_computed():
    window = (320, 0, 720, 400)
    boxes = np.array(
        [
            [100, 100, 200, 200],  # outside the tile: 0 visible
            [300, 50, 400, 150],  # x 320..400 visible: 80 * 100 / 10000 = 0.8
            [700, 300, 800, 400],  # x 700..720 visible: 20 * 100 / 10000 = 0.2
            [400, 350, 500, 450],  # y 350..400 visible: exactly 0.5 (kept: >=)
        ],
        dtype=np.float32,
    )
    out, keep = crop_boxes(boxes, window, 0.5)
    assert keep.tolist() == [1, 3]
    np.testing.assert_array_equal(out, [[0, 50, 80, 150], [80, 350, 180, 400]])  # tile pixels
    out, keep = crop_boxes(boxes, window, 0.2)
    assert keep.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(out[1], [380, 300, 400, 400])
    out, keep = crop_boxes(boxes, window, 0.81)
    assert keep.tolist() == []


def test_visibility_is_relative_to_the_part_inside_the_image():
    box = np.array([[950, 550, 1050, 650]], dtype=np.float32)  # hangs over a 1000x600 image
    window = (600, 200, 1000, 600)
    out, keep = crop_boxes(box, window, 0.5, image_size=(1000, 600))  # 2500 / 2500 visible
    assert keep.tolist() == [0]
    np.testing.assert_array_equal(out, [[350, 350, 400, 400]])
    assert crop_boxes(box, window, 0.5)[1].tolist() == []  # of the whole box: 2500 / 10000


def test_a_sliver_under_one_pixel_is_dropped():
    out, keep = crop_boxes(np.array([[399.5, 0, 401, 10]], dtype=np.float32), (0, 0, 400, 400), 0.3)
    assert keep.tolist() == []  # 0.5 px wide inside the tile (visible 1/3 >= 0.3, but degenerate)


def test_crop_record_clips_crowd_boxes_that_overlap():
    rec = ImageRecord(
        "x.jpg",
        7,
        1000,
        600,
        boxes=np.array([[300, 50, 400, 150], [0, 0, 10, 10]], dtype=np.float32),
        labels=np.array([2, 1]),
        crowd_boxes=np.array([[700, 300, 900, 500], [0, 500, 100, 600]], dtype=np.float32),
        crowd_labels=np.array([0, 1]),
    )
    tile = crop_record(rec, (320, 0, 720, 400), 0.5)
    assert (tile.width, tile.height, tile.image_id, tile.file_name) == (400, 400, 7, "x.jpg")
    np.testing.assert_array_equal(tile.boxes, [[0, 50, 80, 150]])
    assert tile.labels.tolist() == [2]
    # a crowd (ignore) region is kept whenever it overlaps, whatever its visible fraction
    np.testing.assert_array_equal(tile.crowd_boxes, [[380, 300, 400, 400]])
    assert tile.crowd_labels.tolist() == [0]


# ------------------------------------------------------------------------------ the dataset
def _pattern_png(path, width, height):
    """A lossless image whose pixels encode their position (so a crop can be checked)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x % 251, y % 241, (x // 7 + y // 5) % 239], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return torch.from_numpy(pixels).permute(2, 0, 1)


@pytest.fixture()
def two_images(tmp_path):
    big = _pattern_png(tmp_path / "big.png", 1000, 600)
    small = _pattern_png(tmp_path / "small.png", 300, 200)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [300, 50, 100, 100]},  # [300, 50, 400, 150]
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [700, 300, 100, 100]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [900, 500, 50, 50], "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [10, 20, 30, 40]},
    ]
    ann = tiny_coco(tmp_path, [("big.png", 1000, 600), ("small.png", 300, 200)], anns)
    return CocoDetection(tmp_path, ann), big, small


def test_tiled_dataset_items_hand_computed(two_images):
    base, big, small = two_images
    ds = TiledDataset(base, (400, 400), 0.2, 0.5, jitter=False)
    assert len(ds) == 7 and ds.num_tiles(0) == 6 and ds.num_tiles(1) == 1
    assert ds.aspect_ratio_groups().tolist() == [0] * 6 + [1]  # square tiles, then the landscape image
    assert ds.records is base.records and ds.class_names == ["a", "b"] and ds.num_classes == 2
    image, target, meta = ds[1]  # tile (320, 0, 720, 400)
    assert meta["tile"] == (320, 0, 720, 400) and meta["ori_shape"] == (400, 400) and meta["image_id"] == 1
    torch.testing.assert_close(image, big[:, 0:400, 320:720], rtol=0, atol=0)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 50, 80, 150]]))  # 0.8 visible
    assert target["labels"].tolist() == [0]  # category 1 is label 0; box 2 (0.2 visible) dropped
    image, target, meta = ds[5]  # tile (600, 200, 1000, 600): box 2 is [100, 100, 200, 200] inside it
    torch.testing.assert_close(target["boxes"], torch.tensor([[100.0, 100, 200, 200]]))
    assert target["labels"].tolist() == [1]
    image, target, meta = ds[6]  # the small image passes unchanged
    torch.testing.assert_close(image, small, rtol=0, atol=0)
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 20, 40, 60]]))
    assert meta["tile"] == (0, 0, 300, 200)


def test_every_epoch_covers_every_pixel_and_jitter_moves_tiles(two_images):
    base, _, _ = two_images
    ds = TiledDataset(base, (400, 300), 0.2, 0.5, seed=5)  # x starts 0 320 600, y 0 240 300
    middles = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        covered = np.zeros((600, 1000), dtype=bool)
        for k in range(ds.num_tiles(0)):
            x0, y0, x1, y1 = ds.window(0, k)
            assert (x1 - x0, y1 - y0) == (400, 300) and 0 <= x0 and x1 <= 1000 and 0 <= y0 and y1 <= 600
            covered[y0:y1, x0:x1] = True
        assert covered.all()
        middles.add(ds.window(0, 1)[0])
    assert len(middles) > 1 and all(280 <= x <= 360 for x in middles)


def test_items_are_a_pure_function_of_seed_epoch_index(two_images):
    """A resumed run rebuilds the dataset: epoch e, index i must give the same tile, boxes and
    augmentation as the uninterrupted run, in whatever order the items are read."""
    base, _, _ = two_images
    tf = build_train_transforms((200, 150), flip_prob=0.5)

    def fresh():
        b = CocoDetection(base.image_dir, base.ann_file)
        return TiledDataset(b, (400, 300), 0.2, 0.5, transforms=tf, seed=11)

    run = fresh()
    run.set_epoch(3)
    first = [run[i] for i in range(len(run))]
    resumed = fresh()
    resumed.set_epoch(3)
    for i in reversed(range(len(resumed))):
        image, target, meta = resumed[i]
        torch.testing.assert_close(image, first[i][0], rtol=0, atol=0)
        torch.testing.assert_close(target["boxes"], first[i][1]["boxes"], rtol=0, atol=0)
        assert meta["tile"] == first[i][2]["tile"] and meta["flip"] == first[i][2]["flip"]
    run.set_epoch(4)
    assert [run.window(0, k) for k in range(9)] != [resumed.window(0, k) for k in range(9)]  # epochs differ
    assert {m["flip"] for _, _, m in first} == {True, False}  # the transforms ran, seeded per tile


def test_bad_image_is_replaced_by_a_tile_of_the_next_image(tmp_path):
    _pattern_png(tmp_path / "good.png", 300, 200)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    ann = tiny_coco(tmp_path, [("bad.png", 1000, 600), ("good.png", 300, 200)], [])
    ds = TiledDataset(CocoDetection(tmp_path, ann, skip_bad_images=True), (400, 400), 0.2, 0.5)
    image, _, meta = ds[4]  # tile 4 of the bad image → tile 4 % 1 = 0 of good.png
    assert meta["tile"] == (0, 0, 300, 200) and tuple(image.shape) == (3, 200, 300)
    assert meta["skipped_files"] and ds.num_skipped == 1


def test_tiled_dataset_refuses_a_dataset_with_transforms(two_images):
    base, _, _ = two_images
    base.transforms = build_train_transforms((200, 150))
    with pytest.raises(ValueError, match="transforms"):
        TiledDataset(base, (400, 400))
    with pytest.raises(ValueError, match="min_visibility"):
        TiledDataset(CocoDetection(base.image_dir, base.ann_file), (400, 400), 0.2, 0.0)


# ------------------------------------------------------------------------------ config and builder
def test_tiles_config_and_validation():
    cfg = config_from_dict({"data": {"tiles": {"size": 640}}})
    assert cfg.data.tiles.wh() == (640, 640) and cfg.data.tiles.overlap == 0.2
    assert config_from_dict({"data": {"tiles": {"size": [640, 480]}}}).data.tiles.wh() == (640, 480)
    assert config_from_dict({}).data.tiles.wh() is None  # off by default
    for bad, key in (
        ({"overlap": 1.0}, "overlap"),
        ({"min_visibility": 0}, "min_visibility"),
        ({"size": [0, 5]}, "size"),
    ):
        with pytest.raises(ConfigError, match=f"data.tiles.{key}"):
            config_from_dict({"data": {"tiles": bad}})


def test_build_datasets_wraps_the_training_set(two_images):
    from varifocal.engine.build import build_datasets

    base, _, _ = two_images
    d = {"root": "", "train_ann": base.ann_file, "train_images": base.image_dir, "min_size": 0, "drop_empty": False}
    d.update(train_scale=[200, 150], tiles={"size": [400, 400], "jitter": False})
    cfg = config_from_dict({"data": d, "train": {"seed": 2}})
    train_ds, _ = build_datasets(cfg, train=True, val=False)
    assert isinstance(train_ds, TiledDataset) and len(train_ds) == 7
    assert train_ds.dataset.transforms is None and train_ds.seed == 2
    image, target, meta = train_ds[1]  # 400x400 tile resized to the train scale 150x150
    assert tuple(image.shape) == (3, 150, 150) and meta["tile"] == (320, 0, 720, 400)
    expected = [[120.0, 18.75, 150, 56.25]] if meta["flip"] else [[0.0, 18.75, 30, 56.25]]  # x 0.375, flipped
    torch.testing.assert_close(target["boxes"], torch.tensor(expected))
