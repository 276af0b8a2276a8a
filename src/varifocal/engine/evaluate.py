"""Inference over a dataset and its COCO bbox evaluation (spec §5.3)."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import collate
from ..evaluation import CocoEvaluator, detections_to_coco

__all__ = ["run_inference", "evaluate"]


@torch.no_grad()
def run_inference(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Detections of ``model`` on every image of ``dataset`` (its transforms must resize only).

    Returns:
        ``(detections, image_ids)``: one dict per image (``boxes`` xyxy in original pixels,
        ``scores``, ``labels``, on the CPU) and the images' ids, in dataset order.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    detections, image_ids = [], []
    iterator = loader
    if progress and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            iterator = tqdm(loader, desc="eval", leave=False)
        except ImportError:
            pass
    for images, _, metas in iterator:
        batch, metas = model.preprocessor.pad_batch([im.to(device) for im in images], metas)
        for det, meta in zip(model.predict(batch, metas), metas):
            detections.append({k: v.cpu() for k, v in det.items()})
            image_ids.append(int(meta["image_id"]))
    model.train(was_training)
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

    Returns:
        ``(metrics, COCO results list, detections)``; ``detections`` are those of
        :func:`run_inference`, one dict per image in dataset order.
    """
    detections, image_ids = run_inference(model, dataset, device, batch_size, num_workers, progress)
    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    evaluator = CocoEvaluator(dataset, dataset.class_names, dataset.cat_ids)
    return evaluator.evaluate(results, image_ids=image_ids), results, detections
