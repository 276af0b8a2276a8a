"""Inference over a dataset and its COCO bbox evaluation (spec §5.3).

Bad images: evaluation never substitutes one image for another (training does, with
``skip_bad_images``). An unreadable image is left out of the inference and of the scored
images, and reported in the metrics (``num_skipped_images``, ``skipped_images``); every
evaluated image appears once.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import DataError, collate
from ..evaluation import CocoEvaluator, detections_to_coco

__all__ = ["run_inference", "evaluate"]


class _NoSubstitution(Dataset):
    """``dataset`` whose item ``i`` is image ``i`` or, when that image is bad and the dataset
    skips bad images, ``(None, None, {"image_id", "file_name", "skipped": True})``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, dict[str, Any]]:
        load_sample = getattr(self.dataset, "load_sample", None)
        if load_sample is None:  # a plain dataset without substitution
            return self.dataset[index]
        sample = load_sample(index, substitute=False)
        if sample is None:
            record = self.dataset.records[index]
            return None, None, {"image_id": record.image_id, "file_name": record.file_name, "skipped": True}
        return sample


def _collate_skipping(batch: Sequence[tuple[Any, Any, dict[str, Any]]]) -> tuple[list, list, list, list[str]]:
    """:func:`~varifocal.data.collate` of the readable samples, plus the skipped file names."""
    kept = [item for item in batch if not item[2].get("skipped", False)]
    skipped = [item[2]["file_name"] for item in batch if item[2].get("skipped", False)]
    images, targets, metas = collate(kept) if kept else ([], [], [])
    return images, targets, metas, skipped


@torch.no_grad()
def _inference(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], list[int], list[str]]:
    """:func:`run_inference` that also returns the file names of the skipped bad images."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        _NoSubstitution(dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_skipping,
    )
    detections, image_ids, skipped_files = [], [], []
    iterator = loader
    if progress and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            iterator = tqdm(loader, desc="eval", leave=False)
        except ImportError:
            pass
    for images, _, metas, skipped in iterator:
        skipped_files.extend(skipped)
        if not images:
            continue
        batch, metas = model.preprocessor.pad_batch([im.to(device) for im in images], metas)
        for det, meta in zip(model.predict(batch, metas), metas):
            detections.append({k: v.cpu() for k, v in det.items()})
            image_ids.append(int(meta["image_id"]))
    model.train(was_training)
    if len(set(image_ids)) != len(image_ids):
        seen: set[int] = set()
        repeated = sorted({i for i in image_ids if i in seen or seen.add(i)})
        raise RuntimeError(f"inference saw image ids {repeated[:5]} more than once; evaluation would count them twice")
    return detections, image_ids, skipped_files


def run_inference(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Detections of ``model`` on every readable image of ``dataset`` (its transforms must
    resize only).

    With ``dataset.skip_bad_images`` an unreadable image is left out (never replaced by
    another image); :func:`evaluate` reports such images. Without it, :class:`DataError`.

    Returns:
        ``(detections, image_ids)``: one dict per evaluated image (``boxes`` xyxy in original
        pixels, ``scores``, ``labels``, on the CPU) and the images' ids (each once), in
        dataset order.

    Raises:
        DataError: a bad image when the dataset does not skip them.
    """
    detections, image_ids, _ = _inference(model, dataset, device, batch_size, num_workers, progress)
    return detections, image_ids


def evaluate(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """COCO bbox metrics of ``model`` on ``dataset`` (spec §5.3).

    The ground truth is the dataset's own (:meth:`to_coco_dict`: the boxes it kept). Images
    that could not be read (``skip_bad_images``) are neither predicted nor scored.

    Returns:
        ``(metrics, COCO results list, detections)``; ``metrics`` as
        :meth:`CocoEvaluator.evaluate` gives them, with ``num_skipped_images`` /
        ``skipped_images`` (file names of the bad images left out) and ``dropped_boxes`` /
        ``ignored_boxes`` (annotations of the evaluated images that the dataset dropped, not
        scored); ``detections`` are those of :func:`run_inference`, one dict per evaluated
        image in dataset order.

    Raises:
        DataError: a bad image without ``skip_bad_images``, or no readable image at all.
    """
    detections, image_ids, skipped = _inference(model, dataset, device, batch_size, num_workers, progress)
    if not image_ids and skipped:
        source = getattr(dataset, "source", type(dataset).__name__)
        raise DataError(f"{source}: no readable image left (all {len(skipped)} images failed to load)")
    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    evaluator = CocoEvaluator(dataset, dataset.class_names, dataset.cat_ids)
    metrics = evaluator.evaluate(results, image_ids=image_ids, skipped_images=skipped)
    return metrics, results, detections
