"""Aspect-ratio grouped batch sampler and collate (spec §6.1 items 8-9)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from varifocal.data import AspectRatioGroupedBatchSampler, CocoDetection, build_train_transforms, collate

from ..conftest import shared_path

GROUPS = [0, 1, 0, 1, 1, 0, 1, 1, 0, 1]  # 4 portrait (0, 2, 5, 8), 6 landscape


def _all(sampler):
    return [list(b) for b in sampler]


def test_batches_are_group_pure_and_cover_everything():
    sampler = AspectRatioGroupedBatchSampler(GROUPS, batch_size=3, seed=0)
    batches = _all(sampler)
    # portrait: 4 -> 2 batches (last one completed), landscape: 6 -> 2 batches
    assert len(batches) == len(sampler) == 4
    for batch in batches:
        assert len(batch) == 3 and len({GROUPS[i] for i in batch}) == 1
    assert set(sum(batches, [])) == set(range(10))


def test_padding_completes_from_the_same_group_in_index_order_without_shuffle():
    sampler = AspectRatioGroupedBatchSampler(GROUPS, batch_size=3, shuffle=False)
    assert _all(sampler) == [[0, 2, 5], [8, 0, 2], [1, 3, 4], [6, 7, 9]]
    sampler = AspectRatioGroupedBatchSampler(GROUPS, batch_size=3, shuffle=False, drop_last=True)
    assert _all(sampler) == [[0, 2, 5], [1, 3, 4], [6, 7, 9]] and len(sampler) == 3


def test_deterministic_given_seed_and_epoch():
    a = AspectRatioGroupedBatchSampler(GROUPS, batch_size=2, seed=3)
    b = AspectRatioGroupedBatchSampler(GROUPS, batch_size=2, seed=3)
    assert _all(a) == _all(b)
    a.set_epoch(1)
    epoch1 = _all(a)
    assert epoch1 == _all(a)  # iterating again gives the same epoch
    assert epoch1 != _all(b)  # epoch 0 differs
    b.set_epoch(1)
    assert _all(b) == epoch1
    torch.manual_seed(99)  # the global RNG plays no part
    assert _all(b) == epoch1


def test_distributed_ranks_split_the_global_batches():
    """2 ranks × 1 image step on the same images as 1 process × 2 images (spec §4.5)."""
    full = AspectRatioGroupedBatchSampler(GROUPS, batch_size=2, seed=5)
    global_batches = _all(full)  # 2 portrait + 3 landscape = 5 batches
    assert len(global_batches) == 5
    ranks = [AspectRatioGroupedBatchSampler(GROUPS, batch_size=1, seed=5, rank=r, world_size=2) for r in range(2)]
    shards = [_all(s) for s in ranks]
    assert [len(s) for s in shards] == [len(s) for s in ranks] == [5, 5]
    assert [a + b for a, b in zip(*shards)] == global_batches
    dropped = [
        _all(AspectRatioGroupedBatchSampler(GROUPS, 1, seed=5, rank=r, world_size=2, drop_last=True)) for r in range(2)
    ]
    # portrait: 4 → 2 full global batches; landscape: 6 → 3; nothing to drop
    assert [len(s) for s in dropped] == [5, 5]
    dropped3 = AspectRatioGroupedBatchSampler(GROUPS, 1, seed=5, rank=0, world_size=3, drop_last=True)
    assert len(_all(dropped3)) == 1 + 2  # 4 // 3 portrait + 6 // 3 landscape


def test_resume_mid_epoch_skips_batches():
    sampler = AspectRatioGroupedBatchSampler(GROUPS, batch_size=2, seed=1)
    sampler.set_epoch(4)
    whole = _all(sampler)
    sampler.set_epoch(4, start_batch=2)
    assert _all(sampler) == whole[2:] and len(sampler) == len(whole) - 2
    sampler.set_epoch(5)
    assert len(sampler) == len(whole)


def test_bad_arguments():
    with pytest.raises(ValueError):
        AspectRatioGroupedBatchSampler(GROUPS, batch_size=0)
    with pytest.raises(ValueError):
        AspectRatioGroupedBatchSampler(GROUPS, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError):
        AspectRatioGroupedBatchSampler([], batch_size=2)


def test_collate():
    items = [
        (torch.zeros(3, 2, 4), {"boxes": torch.zeros(0, 4)}, {"image_id": 1}),
        (torch.zeros(3, 5, 3), {"boxes": torch.ones(1, 4)}, {"image_id": 2}),
    ]
    images, targets, metas = collate(items)
    assert [tuple(i.shape) for i in images] == [(3, 2, 4), (3, 5, 3)]
    assert [m["image_id"] for m in metas] == [1, 2] and targets[1]["boxes"].shape == (1, 4)
    with pytest.raises(ValueError):
        collate([])


def test_dataloader_augmentation_independent_of_workers():
    bccd = shared_path("data", "bccd")
    ds = CocoDetection(
        bccd / "JPEGImages",
        bccd / "annotations" / "instances_val.json",
        seed=11,
        transforms=build_train_transforms((96, 48), "range", [(96, 32), (96, 64)]),
    )
    ds.records = ds.records[:6]
    sampler = AspectRatioGroupedBatchSampler(ds, batch_size=2, seed=11)  # all 640x480: one group

    def run(workers):
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        return [
            (m["image_id"], m["img_shape"], m["flip"], t["boxes"].sum().item())
            for images, targets, metas in loader
            for t, m in zip(targets, metas)
        ]

    single = run(0)
    assert len(single) == 6 and len({s[1] for s in single}) > 1
    assert all(32 <= s[1][0] <= 64 for s in single)
    assert run(2) == single
