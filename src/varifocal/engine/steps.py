"""The set-up and bookkeeping steps of :func:`~varifocal.engine.trainer.train`, in the order
it calls them: the data (:func:`_build_data`), the recipe warnings (:func:`_check_recipe`),
the model, optimizer and grad scaler (:func:`_build_model_and_optimizer`, :func:`train_precision`),
resuming (:func:`_resume`), each epoch's loader (:func:`_epoch_loader`) and the evaluation and
checkpoints after an epoch (:func:`_evaluate_and_checkpoint`, :func:`_final_report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, ConfigError
from ..data import AspectRatioGroupedBatchSampler, DataError, collate
from ..data.sampler import RepeatDataset
from ..evaluation import write_json_atomic
from ..utils.precision import prepare_model, resolve_precision
from . import state
from .build import build_datasets, model_from_config
from .evaluate import evaluate, ranking_value
from .optim import build_optimizer
from .run_dir import _Logger
from .schedule_check import check_training, model_strides
from .sliced import SliceSettings


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, class-count mismatch, missing resume file)."""


class _LossModule(nn.Module):
    """``forward`` = ``detector.loss`` on a preprocessed batch, so that DDP can wrap it."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, batch, metas, gt_bboxes, gt_labels):  # noqa: D102
        return self.detector.loss(batch, metas, gt_bboxes, gt_labels)


def _build_data(cfg: Config, rank: int, world: int) -> tuple[Any, Any, AspectRatioGroupedBatchSampler]:
    """Training set (checked against ``model.num_classes``), validation set (``None`` when
    ``train.eval_interval`` is 0) and this rank's aspect-ratio-grouped batch sampler."""
    t = cfg.train
    train_ds, val_ds = build_datasets(cfg, train=True, val=t.eval_interval > 0)
    if val_ds is not None and val_slicing(cfg) is not None:  # sliced evaluation takes the original images
        val_ds.transforms = None
    if len(train_ds) == 0 or not any(len(r.boxes) for r in train_ds.records):
        what = "no images" if len(train_ds) == 0 else f"no boxes in any of its {len(train_ds)} images"
        raise DataError(
            f"{train_ds.source}: the training set has {what}; check data.train_ann / data.train_images "
            "(and data.min_size, data.drop_empty)"
        )
    if train_ds.num_classes != cfg.model.num_classes:
        raise TrainingError(
            f"model.num_classes={cfg.model.num_classes} but {train_ds.source} has {train_ds.num_classes} classes "
            f"({', '.join(train_ds.class_names[:5])}…); set model.num_classes={train_ds.num_classes}"
        )
    sampler = AspectRatioGroupedBatchSampler(
        train_ds,
        t.batch_size,
        shuffle=True,
        seed=t.seed,
        rank=rank,
        world_size=world,
        repeat=cfg.data.repeat,
        min_batches_per_epoch=cfg.data.min_iters_per_epoch,
    )
    return train_ds, val_ds, sampler


def _check_recipe(
    cfg: Config, train_ds: Any, sampler: AspectRatioGroupedBatchSampler, model: nn.Module, world: int, log: _Logger
) -> list[str]:
    """The warnings of :func:`~varifocal.engine.schedule_check.check_training` for this run,
    printed (main process) as one ``warning: …`` line each; the run goes on (issue 16)."""
    lines = check_training(
        cfg,
        len(train_ds),
        sampler.batches_per_epoch(),
        world,
        getattr(train_ds, "records", None),
        model_strides(model),
        sampler.repeat,
    )
    for line in lines:
        log.print(f"warning: {line}")
    return lines


def _build_model_and_optimizer(
    cfg: Config, train_ds: Any, device: torch.device, world: int
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.amp.GradScaler, bool]:
    """``(model, loss_module, optimizer, scaler, use_amp)``; ``loss_module`` computes the
    losses of ``model`` and is DDP-wrapped when ``world > 1``; ``use_amp``: float16 with a grad
    scaler (``train.precision: fp16`` or ``train.amp``, CUDA only); the model is in the layout of
    ``train.precision`` (:func:`train_precision`)."""
    t = cfg.train
    model = model_from_config(cfg).to(device)
    model.class_names = list(train_ds.class_names)
    prepare_model(model, train_precision(cfg, device), device)
    optimizer = build_optimizer(model, t.lr, t.momentum, t.weight_decay, t.bias_lr_mult, t.bias_decay_mult)
    use_amp = train_precision(cfg, device) == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_module: nn.Module = _LossModule(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model, loss_module, optimizer, scaler, use_amp


def train_precision(cfg: Config, device: torch.device) -> str:
    """The resolved ``train.precision`` (``train.amp`` means fp16 on CUDA and nothing on the CPU).

    Raises:
        ConfigError: a precision the device cannot run (fp16 on the CPU).
    """
    if cfg.train.amp and cfg.train.precision == "fp32":
        return "fp16" if device.type == "cuda" else "fp32"
    try:
        return resolve_precision(cfg.train.precision, device)
    except ValueError as exc:
        raise ConfigError(f"train.precision: {exc}") from None


def _resume(
    cfg: Config,
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    use_amp: bool,
    log: _Logger,
) -> tuple[int, int, float]:
    """``(start_epoch, iteration, best_ap)`` restored from ``cfg.train.resume`` or ``last.pth``."""
    resume = cfg.train.resume
    resume_path = Path(resume) if resume and resume != "auto" else out_dir / "last.pth"
    if not resume_path.is_file():
        raise TrainingError(f"{resume_path}: no checkpoint to resume from")
    start_epoch, iteration, best_ap = state.restore(resume_path, model, optimizer, scaler, use_amp)
    log.print(f"resumed from {resume_path}: epoch {start_epoch}, iteration {iteration}")
    return start_epoch, iteration, best_ap


def _epoch_loader(train_ds: Any, sampler: AspectRatioGroupedBatchSampler, epoch: int, num_workers: int) -> DataLoader:
    """The training loader of ``epoch`` (data order and augmentation are set by the epoch);
    with a repeat factor the dataset is read through :class:`RepeatDataset`."""
    dataset = RepeatDataset(train_ds, sampler.repeat) if sampler.repeat > 1 else train_ds
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate)


def val_slicing(cfg: Config) -> SliceSettings | None:
    """How a tiled run evaluates during training: sliced inference with the training tiles
    (``data.tiles.size`` / ``overlap``, NMS merging) on the whole validation images, so the
    metrics measure what the model learnt at its tile scale; ``None`` without tiling."""
    size = cfg.data.tiles.wh()
    return None if size is None else SliceSettings(tuple(size), overlap=cfg.data.tiles.overlap)


def _evaluate_and_checkpoint(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    val_ds: Any,
    device: torch.device,
    out_dir: Path,
    log: _Logger,
    epoch: int,
    iteration: int,
    best_ap: float,
    last_metrics: dict[str, Any],
    class_info: dict[str, Any],
    model_kwargs: dict[str, Any],
) -> tuple[dict[str, Any], float]:
    """After epoch ``epoch`` (0-based): evaluate every ``eval_interval`` epochs and at the end
    (``best.pth`` when the ranking value improves), write ``last.pth`` every ``checkpoint_interval``
    epochs and at the end. Returns the updated ``(last_metrics, best_ap)``.

    The ranking value is COCO AP, or with ``eval.metric`` ``voc07`` / ``voc12`` the VOC mAP
    (:func:`~varifocal.engine.evaluate.ranking_value`), which then also goes into the ``val``
    record and the epoch line (``voc07_mAP 0.xxxx``); ``best.pth`` stores it as its ``AP`` with
    ``metric`` naming it."""
    t = cfg.train
    metric = cfg.eval.metric
    final = epoch + 1 == t.epochs
    if val_ds is not None and t.eval_interval > 0 and ((epoch + 1) % t.eval_interval == 0 or final):
        last_metrics, results, _ = evaluate(
            model,
            val_ds,
            device,
            cfg.eval.batch_size,
            slicing=val_slicing(cfg),
            backend=cfg.eval.backend,
            max_dets=cfg.eval.max_dets,
            metric=metric,
        )
        ap = ranking_value(last_metrics, metric)
        line = f"epoch {epoch + 1}: AP {last_metrics['stats']['AP']:.4f} AP50 {last_metrics['stats']['AP50']:.4f}"
        values = {"epoch": epoch + 1, **last_metrics["stats"]}
        if metric != "coco":
            values[f"{metric}_mAP"] = ap
            line += f" {metric}_mAP {ap:.4f}"
        log.record("val", iteration, values)
        log.print(line)
        if final:
            _final_report(cfg, val_ds, results, last_metrics, out_dir, log, class_info)
        if ap > best_ap:
            best_ap = ap
            info = class_info if metric == "coco" else {**class_info, "metric": metric}
            state.save_best(out_dir / "best.pth", model, cfg, model_kwargs, info, epoch + 1, ap)
    if (epoch + 1) % t.checkpoint_interval == 0 or epoch + 1 == t.epochs:
        state.save_last(
            out_dir / "last.pth", model, optimizer, scaler, cfg, model_kwargs, class_info, epoch + 1, iteration, best_ap
        )
    return last_metrics, best_ap


def _final_report(
    cfg: Config,
    val_ds: Any,
    results: list[dict[str, Any]],
    metrics: dict[str, Any],
    out_dir: Path,
    log: _Logger,
    class_info: dict[str, Any],
) -> None:
    """The last epoch's evaluation: ``metrics.json``, the evaluation report and the training
    curves (``eval.report``; skipped with one line when matplotlib is missing), and the best-F1
    thresholds into ``class_info`` (so into the checkpoints written next)."""
    if cfg.eval.report:
        from ..evaluation.report import plot_training_curves
        from .report import report_for_dataset

        try:
            report_for_dataset(val_ds, results, metrics, out_dir)
            plot_training_curves(out_dir / "metrics.jsonl", out_dir)
        except ImportError as exc:
            log.print(f"no evaluation report: {exc}")
        else:
            class_info["best_score_thr"] = dict(metrics["best_score_thr"])
            log.print(f"wrote the evaluation report {out_dir / 'report' / 'report.html'} and the training curves")
    write_json_atomic(out_dir / "metrics.json", metrics)
