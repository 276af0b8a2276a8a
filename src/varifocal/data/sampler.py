"""Aspect-ratio grouped, seeded, distributed-aware batch sampling and the collate function
(spec §6.1 items 8-9).

A batch holds only landscape or only portrait images, so padding to the batch's largest image
wastes little. The batches of an epoch are a pure function of ``(seed, epoch)``; every rank
computes the same global list and takes its own share, so ranks never need to communicate.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["AspectRatioGroupedBatchSampler", "RepeatDataset", "collate"]


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, each from one aspect-ratio group.

    One epoch (the same computation on every rank):

    1. split the indices by group (0 = portrait or square, 1 = landscape);
    2. ``shuffle=True``: permute each group with a ``torch.Generator`` seeded with
       ``seed + epoch``;
    3. cut each group into batches of ``batch_size``. A group's incomplete last batch is
       completed with the group's first indices (MMDetection's ``GroupSampler`` padding, so
       every batch is full; a few images appear twice per epoch), or dropped when
       ``drop_last=True``;
    4. ``shuffle=True``: permute the list of batches with the same generator;
    5. distributed: the batches above are *global* batches of ``batch_size * world_size``
       indices, and rank ``r`` takes the slice ``[r * batch_size, (r + 1) * batch_size)`` of
       each. So every rank gets the same number of batches, and ``world_size`` processes with
       ``batch_size`` images each step on exactly the images one process with
       ``batch_size * world_size`` images would (the DDP equivalence of spec §4.5).

    Repeat factor ``r > 1`` (issue 16, MMDetection ``RepeatDataset``): step 2 draws ``r``
    permutations of each group one after the other (each pass over the group shuffled anew)
    and step 3 cuts their concatenation, so an epoch has ``ceil(r·n_g / global batch)`` batches
    per group ``g``. The indices are then those of the dataset repeated ``r`` times: ``p·n + i``
    is pass ``p`` of image ``i`` (``n = len(group_ids)``); wrap the dataset in
    :class:`RepeatDataset` to read them (each pass gets its own augmentation draws). With
    ``r = 1`` the batches are exactly those without repetition.

    Resuming mid-epoch: ``set_epoch(epoch, start_batch=k)`` skips this rank's first ``k``
    batches of that epoch (``len()`` then counts the remaining ones).

    Args:
        group_ids: a dataset with ``aspect_ratio_groups()`` (all datasets of
            :mod:`varifocal.data.base`), or one integer group id per dataset index.
        batch_size: images per batch on this rank.
        shuffle: shuffle within groups and the batch order (training); ``False`` keeps index
            order.
        seed: base seed; must be the same on every rank.
        rank, world_size: this process's rank and the number of processes.
        drop_last: drop incomplete batches instead of padding them.
        repeat: passes over the data per epoch (>= 1).
        min_batches_per_epoch: raise the repeat factor to the smallest ``r >= repeat`` whose
            epoch has at least this many batches per rank (0: off). The result is
            :attr:`repeat`.

    Raises:
        ValueError: ``batch_size < 1``, ``world_size < 1``, rank outside ``[0, world_size)``,
            an empty ``group_ids``, ``repeat < 1`` or ``min_batches_per_epoch < 0``.
    """

    def __init__(
        self,
        group_ids: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        repeat: int = 1,
        min_batches_per_epoch: int = 0,
    ) -> None:
        if hasattr(group_ids, "aspect_ratio_groups"):
            group_ids = group_ids.aspect_ratio_groups()
        self.group_ids = np.asarray(group_ids, dtype=np.int64).reshape(-1)
        if self.group_ids.size == 0:
            raise ValueError("AspectRatioGroupedBatchSampler needs at least one index")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.start_batch = 0
        self.groups = sorted(int(g) for g in np.unique(self.group_ids))
        n = len(self.group_ids)
        if repeat < 1 or min_batches_per_epoch < 0:
            raise ValueError(f"need repeat >= 1 and min_batches_per_epoch >= 0, got {repeat}, {min_batches_per_epoch}")
        self.repeat = int(repeat)
        if min_batches_per_epoch > self.batches_per_epoch():
            # batches_per_epoch(r) >= r·n/G - #groups grows with r: bisect up to a sure bound
            low, high = self.repeat, math.ceil((min_batches_per_epoch + len(self.groups)) * self.global_batch_size / n)
            while low < high:
                mid = (low + high) // 2
                low, high = (low, mid) if self.batches_per_epoch(mid) >= min_batches_per_epoch else (mid + 1, high)
            self.repeat = low

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (changes the shuffle) and skip this rank's first ``start_batch``
        batches (for a resume in the middle of an epoch)."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    @property
    def global_batch_size(self) -> int:
        """Images per step summed over all ranks."""
        return self.batch_size * self.world_size

    def batches_per_epoch(self, repeat: int | None = None) -> int:
        """Batches this rank gets in a full epoch (ignoring ``start_batch``), with the repeat
        factor ``repeat`` (default: :attr:`repeat`)."""
        repeat = self.repeat if repeat is None else int(repeat)
        total = 0
        for g in self.groups:
            n = int((self.group_ids == g).sum()) * repeat
            total += n // self.global_batch_size if self.drop_last else math.ceil(n / self.global_batch_size)
        return total

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def global_batches(self) -> list[list[int]]:
        """All global batches (``batch_size * world_size`` indices) of the current epoch in
        order, before sharding (the same on every rank)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches: list[list[int]] = []
        n = len(self.group_ids)
        for g in self.groups:
            members = np.flatnonzero(self.group_ids == g)
            indices = []
            for p in range(self.repeat):  # one pass: a permutation of the group
                perm = members[torch.randperm(len(members), generator=generator).numpy()] if self.shuffle else members
                indices.extend((perm + p * n).tolist())
            size = self.global_batch_size
            for start in range(0, len(indices), size):
                batch = indices[start : start + size]
                if len(batch) < size:
                    if self.drop_last:
                        continue
                    # Complete with the group's first indices, cycling if the group is tiny.
                    missing = size - len(batch)
                    batch = batch + [indices[k % len(indices)] for k in range(missing)]
                batches.append(batch)
        if self.shuffle and batches:
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[k] for k in order]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.global_batches()[self.start_batch :]:
            yield batch[lo:hi]


class RepeatDataset(torch.utils.data.Dataset):
    """A dataset seen ``repeat`` times: item ``p·n + i`` is item ``i`` of ``dataset`` in pass
    ``p`` (``n = len(dataset)``), the indices that :class:`AspectRatioGroupedBatchSampler`
    yields with a repeat factor (issue 16).

    Each pass gets its own augmentation draws: for ``set_epoch(e)``, item ``p·n + i`` is
    ``dataset[i]`` after ``dataset.set_epoch(e·repeat + p)`` (so no two (epoch, pass) pairs
    share a draw, and the draws stay a pure function of (seed, epoch, index)). A dataset
    without ``set_epoch`` is read as it is.

    Args:
        dataset: any map-style dataset with ``__len__``.
        repeat: passes (>= 1).

    Raises:
        ValueError: ``repeat < 1`` or an empty dataset; IndexError: an index outside
            ``[0, repeat·n)``.
    """

    def __init__(self, dataset: Any, repeat: int) -> None:
        if repeat < 1 or len(dataset) == 0:
            raise ValueError(f"RepeatDataset needs repeat >= 1 and a non-empty dataset, got {repeat}, {len(dataset)}")
        self.dataset = dataset
        self.repeat = int(repeat)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (see the class docstring)."""
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch * self.repeat)

    def __getitem__(self, index: int) -> Any:
        n = len(self.dataset)
        if not 0 <= index < n * self.repeat:
            raise IndexError(f"index {index} out of range for {self.repeat} passes over {n} items")
        p, i = divmod(int(index), n)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch * self.repeat + p)
        return self.dataset[i]


def collate(batch: Sequence[tuple[Any, Any, Any]]) -> tuple[list[Any], list[Any], list[Any]]:
    """DataLoader ``collate_fn``: a list of ``(image, target, meta)`` -> three lists.

    Images are not stacked (they have different sizes); the model's
    ``Preprocessor.pad_batch(images, metas)`` pads and normalises them.

    Returns:
        ``(images, targets, metas)``: N ``[3, h_i, w_i]`` tensors, N target dicts, N meta dicts.

    Raises:
        ValueError: an empty batch or an item that is not a 3-tuple.
    """
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    images, targets, metas = [], [], []
    for i, item in enumerate(batch):
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise ValueError(f"collate: item {i} is not an (image, target, meta) triple")
        images.append(item[0])
        targets.append(item[1])
        metas.append(item[2])
    return images, targets, metas
