"""Inference over a dataset and its COCO bbox evaluation (spec §5.3).

Bad images: evaluation never substitutes one image for another (training does, with
``skip_bad_images``). An unreadable image is left out of the inference and of the scored
images, and reported in the metrics (``num_skipped_images``, ``skipped_images``); every
evaluated image appears once.

Sliced inference (issue 16): with ``slicing`` (a :class:`~varifocal.engine.sliced.SliceSettings`)
each image is predicted slice by slice by :func:`~varifocal.engine.sliced.sliced_predict` and
scored on the whole image as usual. The dataset must then give images at their original size
(no resize transform); the slices are resized by the model's preprocessor.

Precision (issue 12): ``precision`` is a resolved name of :mod:`varifocal.utils.precision`
(``fp32``, ``bf16``, ``fp16``); the model's forward runs under that autocast, its post-processing
in float32. ``backend`` and ``max_dets`` go to :class:`~varifocal.evaluation.CocoEvaluator`.

VOC metrics (``eval.metric``, issue "RefineDet" item 3): with ``metric='voc07'`` or ``'voc12'``
the same detections are also scored by :func:`~varifocal.evaluation.voc_eval.evaluate_voc`
(IoU 0.5, the dataset's crowd boxes, i.e. VOC ``difficult=1``, ignored, devkit "+1" boxes) and
the metrics gain ``<metric>_mAP`` and ``<metric>`` (the per-class result);
:func:`ranking_value` is the number a run ranks its checkpoints by.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data import DataError, collate
from ..evaluation import CocoEvaluator, detections_to_coco
from ..evaluation.voc_eval import evaluate_voc, voc_ground_truths
from ..utils.precision import autocast
from .sliced import SliceSettings, sliced_predict

__all__ = ["run_inference", "evaluate", "voc_metrics", "ranking_value", "METRICS"]

#: the values of ``eval.metric`` / ``varifocal val --metric``
METRICS = ("coco", "voc07", "voc12")


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
    slicing: SliceSettings | None = None,
    precision: str = "fp32",
) -> tuple[list[dict[str, torch.Tensor]], list[int], list[str]]:
    """:func:`run_inference` that also returns the file names of the skipped bad images."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        _NoSubstitution(dataset),
        batch_size=batch_size if slicing is None else 1,
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
        if slicing is not None:
            (image,), (meta,) = images, metas
            if tuple(meta["img_shape"]) != tuple(meta["ori_shape"]):
                raise ValueError(
                    f"{meta['file_name']}: sliced inference needs the image at its original size, got it resized "
                    f"from {meta['ori_shape']} to {meta['img_shape']}; give the dataset no resize transform"
                )
            with autocast(precision, device):
                det = sliced_predict(model, image.to(device), **slicing.kwargs())
            detections.append({k: v.cpu() for k, v in det.items()})
            image_ids.append(int(meta["image_id"]))
            continue
        batch, metas = model.preprocessor.pad_batch([im.to(device) for im in images], metas)
        with autocast(precision, device):
            batch_dets = model.predict(batch, metas)
        for det, meta in zip(batch_dets, metas):
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
    slicing: SliceSettings | None = None,
    precision: str = "fp32",
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """Detections of ``model`` on every readable image of ``dataset`` (its transforms must
    resize only; with ``slicing``, sliced inference, and the dataset must not resize: module
    docstring).

    With ``dataset.skip_bad_images`` an unreadable image is left out (never replaced by
    another image); :func:`evaluate` reports such images. Without it, :class:`DataError`.

    Returns:
        ``(detections, image_ids)``: one dict per evaluated image (``boxes`` xyxy in original
        pixels, ``scores``, ``labels``, on the CPU) and the images' ids (each once), in
        dataset order.

    Raises:
        DataError: a bad image when the dataset does not skip them.
        ValueError: ``slicing`` with a dataset that resizes its images.
    """
    detections, image_ids, _ = _inference(model, dataset, device, batch_size, num_workers, progress, slicing, precision)
    return detections, image_ids


def evaluate(
    model: nn.Module,
    dataset: Any,
    device: torch.device,
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
    slicing: SliceSettings | None = None,
    backend: str = "auto",
    max_dets: int = 100,
    precision: str = "fp32",
    metric: str = "coco",
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """COCO bbox metrics of ``model`` on ``dataset`` (spec §5.3); with ``slicing``, of its sliced
    predictions (module docstring), scored on the whole images; with ``metric`` ``'voc07'`` /
    ``'voc12'`` the VOC metrics as well (:func:`voc_metrics`).

    The ground truth is the dataset's own (:meth:`to_coco_dict`: the boxes it kept). Images
    that could not be read (``skip_bad_images``) are neither predicted nor scored.

    Returns:
        ``(metrics, COCO results list, detections)``; ``metrics`` as
        :meth:`CocoEvaluator.evaluate` gives them, with ``num_skipped_images`` /
        ``skipped_images`` (file names of the bad images left out) and ``dropped_boxes`` /
        ``ignored_boxes`` (annotations of the evaluated images that the dataset dropped, not
        scored); ``detections`` are those of :func:`run_inference`, one dict per evaluated
        image in dataset order. With a VOC ``metric``, ``metrics`` also holds
        ``"<metric>_mAP"`` (float) and ``"<metric>"`` (the :func:`evaluate_voc` result).

    Raises:
        DataError: a bad image without ``skip_bad_images``, or no readable image at all.
        ValueError: ``slicing`` with a dataset that resizes its images, or an unknown ``metric``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    detections, image_ids, skipped = _inference(
        model, dataset, device, batch_size, num_workers, progress, slicing, precision
    )
    if not image_ids and skipped:
        source = getattr(dataset, "source", type(dataset).__name__)
        raise DataError(f"{source}: no readable image left (all {len(skipped)} images failed to load)")
    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    evaluator = CocoEvaluator(dataset, dataset.class_names, dataset.cat_ids, backend=backend, max_dets=max_dets)
    metrics = evaluator.evaluate(results, image_ids=image_ids, skipped_images=skipped)
    if metric != "coco":
        metrics.update(voc_metrics(dataset, detections, image_ids, metric))
    return metrics, results, detections


def voc_metrics(
    dataset: Any, detections: Sequence[dict[str, Any]], image_ids: Sequence[int], metric: str
) -> dict[str, Any]:
    """``{"<metric>_mAP": float, "<metric>": result}``: :func:`~varifocal.evaluation.voc_eval.evaluate_voc`
    of ``detections`` (one per id of ``image_ids``, boxes ``xyxy`` in original pixels) against the
    records of ``dataset`` with those ids (``boxes`` / ``labels``; ``crowd_boxes`` /
    ``crowd_labels``, VOC ``difficult=1``, as the difficult boxes), at IoU 0.5 with the devkit's
    "+1" boxes; ``metric`` ``'voc07'`` is the 11-point AP, ``'voc12'`` the all-point AP.

    Raises:
        ValueError: a metric other than ``voc07`` / ``voc12``, or an image id that is not a record of ``dataset``.
    """
    if metric not in ("voc07", "voc12"):
        raise ValueError(f"voc_metrics: metric must be voc07 or voc12, got {metric!r}")
    record_of = {r.image_id: r for r in dataset.records}
    missing = [i for i in image_ids if i not in record_of]
    if missing:
        raise ValueError(f"voc_metrics: image ids {missing[:5]} are not records of {getattr(dataset, 'source', '')}")
    ground_truths = voc_ground_truths([record_of[i] for i in image_ids])
    result = evaluate_voc(detections, ground_truths, dataset.class_names, iou_thr=0.5, use_07_metric=metric == "voc07")
    return {f"{metric}_mAP": result["mAP"], metric: result}


def ranking_value(metrics: dict[str, Any], metric: str) -> float:
    """What a run ranks its checkpoints by: COCO ``stats["AP"]`` for ``'coco'``, else ``metrics["<metric>_mAP"]``."""
    return float(metrics["stats"]["AP"] if metric == "coco" else metrics[f"{metric}_mAP"])
