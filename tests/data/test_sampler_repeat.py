"""Repeat factor and minimum iterations per epoch of the batch sampler (issue 16)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from varifocal.data.sampler import AspectRatioGroupedBatchSampler, RepeatDataset

GROUPS = [0, 0, 1, 1, 1]  # 2 portrait, 3 landscape images


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_repeat_one_is_the_sampler_without_repetition():
    for epoch in range(4):
        plain = AspectRatioGroupedBatchSampler(GROUPS, 2, seed=7)
        once = AspectRatioGroupedBatchSampler(GROUPS, 2, seed=7, repeat=1, min_batches_per_epoch=3)
        assert epoch_batches(once, epoch) == epoch_batches(plain, epoch)


def test_repeat_three_batches_per_epoch_and_every_pass_a_permutation():
    s = AspectRatioGroupedBatchSampler(GROUPS, 2, seed=1, repeat=3)
    # group 0: 3·2 = 6 indices → 3 batches; group 1: 3·3 = 9 → 5 batches (the last one padded)
    assert s.batches_per_epoch() == 8 and len(s) == 8
    batches = epoch_batches(s, 0)
    assert len(batches) == 8 and all(len(b) == 2 for b in batches)
    counts = Counter(v for b in batches for v in b)
    assert set(counts) <= set(range(15))  # index p·5 + i: pass p of image i
    for p in range(3):  # each pass holds every image once (one padding duplicate in all)
        assert {v % 5 for v in counts if v // 5 == p} == {0, 1, 2, 3, 4}
    assert sum(counts.values()) == 16 and sorted(counts.values()).count(2) == 1
    for b in batches:  # a batch never mixes aspect-ratio groups
        assert len({GROUPS[v % 5] for v in b}) == 1


def test_repeated_batches_are_a_pure_function_of_seed_and_epoch():
    a = AspectRatioGroupedBatchSampler(GROUPS, 2, seed=4, repeat=4)
    b = AspectRatioGroupedBatchSampler(GROUPS, 2, seed=4, repeat=4)
    assert epoch_batches(a, 3) == epoch_batches(b, 3)
    assert epoch_batches(a, 3) != epoch_batches(a, 4)
    # resume mid-epoch: the rest of the same epoch
    full = epoch_batches(a, 2)
    a.set_epoch(2, start_batch=5)
    assert list(a) == full[5:] and len(a) == len(full) - 5
    # two ranks split every global batch
    r0 = AspectRatioGroupedBatchSampler(GROUPS, 1, seed=4, rank=0, world_size=2, repeat=4)
    r1 = AspectRatioGroupedBatchSampler(GROUPS, 1, seed=4, rank=1, world_size=2, repeat=4)
    assert [x + y for x, y in zip(epoch_batches(r0, 2), epoch_batches(r1, 2))] == full


def test_min_batches_per_epoch_picks_the_smallest_repeat():
    # 6 images in one group, batch 4: ceil(6r/4) >= 200 first at r = 133 (ceil(199.5) = 200; r = 132: 198)
    s = AspectRatioGroupedBatchSampler(np.zeros(6), 4, min_batches_per_epoch=200)
    assert s.repeat == 133 and s.batches_per_epoch() == 200
    assert s.batches_per_epoch(132) == 198
    # a larger explicit repeat wins; a minimum already met changes nothing
    assert AspectRatioGroupedBatchSampler(np.zeros(6), 4, repeat=150, min_batches_per_epoch=200).repeat == 150
    assert AspectRatioGroupedBatchSampler(np.zeros(6), 4, min_batches_per_epoch=2).repeat == 1
    # drop_last: floor(6r/4) >= 10 first at r = 7 (floor(10.5))
    assert AspectRatioGroupedBatchSampler(np.zeros(6), 4, drop_last=True, min_batches_per_epoch=10).repeat == 7
    with pytest.raises(ValueError, match="repeat >= 1"):
        AspectRatioGroupedBatchSampler(np.zeros(6), 4, repeat=0)


class EpochRecorder:
    def __init__(self):
        self.epoch = 0

    def __len__(self):
        return 3

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        return (i, self.epoch)


def test_repeat_dataset_gives_each_pass_its_own_epoch():
    ds = RepeatDataset(EpochRecorder(), 2)
    assert len(ds) == 6
    ds.set_epoch(5)  # pass p of epoch 5 reads the base dataset at epoch 5·2 + p
    assert [ds[v] for v in range(6)] == [(0, 10), (1, 10), (2, 10), (0, 11), (1, 11), (2, 11)]
    with pytest.raises(IndexError, match="out of range for 2 passes over 3 items"):
        ds[6]
