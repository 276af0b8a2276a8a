"""Training, written to be read top to bottom.

``train(cfg)`` runs in one process or under ``torchrun`` (DDP: gloo on CPU, nccl on CUDA).
Every epoch it writes ``last.pth`` atomically (model, optimizer, RNG states, epoch, iteration,
resolved config, class names) and, after evaluation, ``best.pth`` by COCO AP (by the VOC mAP
when ``eval.metric`` is ``voc07`` / ``voc12``). ``resume=True``
restarts from ``last.pth`` at the start of the next epoch; since the data order and the
augmentation of every sample are functions of (seed, epoch, index), a resumed run ends with
the same weights as an uninterrupted one.

The steps live beside this file: :mod:`.steps` (data, model and optimizer, resume, the
evaluation and checkpoints after an epoch), :mod:`.run_dir` (the out dir, its config check,
the logger), :mod:`.build` (datasets, model), :mod:`.state` (set-up, seeding, resume,
checkpoints), :mod:`.evaluate` (inference and COCO evaluation); their public names are
importable from here too.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, save_config
from ..utils.io import run_lock
from ..utils.precision import autocast
from .build import build_datasets, model_from_config, model_kwargs_from_config
from .evaluate import evaluate, run_inference
from .optim import LrSchedule, resolve_schedule
from .run_dir import _check_run_config, _Logger, _setup_output
from .state import _seed_everything, _setup_distributed
from .steps import (
    TrainingError,
    _build_data,
    _build_model_and_optimizer,
    _check_recipe,
    _epoch_loader,
    _evaluate_and_checkpoint,
    _resume,
    train_precision,
)

__all__ = [
    "TrainingError",
    "train",
    "train_one_epoch",
    "evaluate",
    "build_datasets",
    "model_from_config",
    "run_inference",
]


# ------------------------------------------------------------------------------ training
def train(cfg: Config, resume: bool = False, max_iters: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` with the recipe of ``cfg.train`` (spec §6).

    Args:
        cfg: the resolved configuration (saved beside the checkpoints).
        resume: continue from ``<out_dir>/last.pth`` (or ``cfg.train.resume`` if set).
        max_iters: stop after this many iterations in total (tests and smoke runs); the
            checkpoint of a partial epoch is not written.

    Returns:
        ``{'epoch', 'iteration', 'best_ap', 'last_metrics', 'model', 'warnings'}`` (the
        trained model, unwrapped from DDP; ``warnings``: the lines of
        :func:`~varifocal.engine.schedule_check.check_training`, printed as ``warning: …``
        before the first iteration).

    ``<out_dir>/config.yaml`` is written once the set-up (datasets, model, resume) succeeded;
    an out dir whose ``config.yaml`` is another run's is refused unless resuming.

    Raises:
        TrainingError: non-finite loss (the last good checkpoint stays), a class-count mismatch
            between model and data, or ``resume`` without a checkpoint.
        ConfigError: ``out_dir`` holds another run's ``config.yaml`` and ``resume`` is off.
        DataError: a training set without images or without any box.
    """
    t = cfg.train
    rank, world, device = _setup_distributed()
    is_main = rank == 0
    _check_run_config(cfg, Path(t.out_dir), resume or bool(t.resume))
    out_dir, log = _setup_output(Path(t.out_dir), is_main)
    with run_lock(out_dir) if is_main else contextlib.nullcontext():
        _seed_everything(t.seed)
        train_ds, val_ds, sampler = _build_data(cfg, rank, world)
        model, loss_module, optimizer, scaler, use_amp = _build_model_and_optimizer(cfg, train_ds, device, world)
        start_epoch, iteration, best_ap = 0, 0, -1.0
        if resume or t.resume:
            start_epoch, iteration, best_ap = _resume(cfg, out_dir, model, optimizer, scaler, use_amp, log)
        if is_main:  # only now that data, model and resume state are valid
            save_config(cfg, out_dir / "config.yaml")
        schedule = resolve_schedule(t, sampler.batches_per_epoch())
        warnings = _check_recipe(cfg, train_ds, sampler, model, world, log)

        class_info = {"class_names": list(train_ds.class_names), "cat_ids": list(train_ds.cat_ids)}
        model_kwargs = model_kwargs_from_config(cfg)
        last_metrics: dict[str, Any] = {}
        for epoch in range(start_epoch, t.epochs):
            loader = _epoch_loader(train_ds, sampler, epoch, cfg.data.num_workers)
            iteration = train_one_epoch(
                model,
                loss_module,
                loader,
                optimizer,
                scaler,
                device,
                epoch,
                iteration,
                cfg,
                log,
                use_amp=use_amp,
                precision=train_precision(cfg, device),
                last_path=out_dir / "last.pth",
                max_iters=max_iters,
                schedule=schedule,
            )
            if max_iters is not None and iteration >= max_iters:
                break
            if is_main:  # the main process evaluates and writes; the others wait
                last_metrics, best_ap = _evaluate_and_checkpoint(
                    cfg,
                    model,
                    optimizer,
                    scaler,
                    val_ds,
                    device,
                    out_dir,
                    log,
                    epoch,
                    iteration,
                    best_ap,
                    last_metrics,
                    class_info,
                    model_kwargs,
                )
            if world > 1:
                torch.distributed.barrier()
    return {
        "epoch": epoch + 1 if t.epochs > start_epoch else start_epoch,
        "iteration": iteration,
        "best_ap": best_ap,
        "last_metrics": last_metrics,
        "model": model,
        "warnings": warnings,
    }


# ------------------------------------------------------------------------------ one epoch
def train_one_epoch(
    model: nn.Module,
    loss_module: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    epoch: int,
    iteration: int,
    cfg: Config,
    log: _Logger,
    use_amp: bool = False,
    last_path: Path | None = None,
    max_iters: int | None = None,
    schedule: LrSchedule | None = None,
    precision: str = "fp32",
) -> int:
    """One pass over ``loader`` (epoch ``epoch``, 0-based), starting at global ``iteration``.

    Per batch: the learning rate of the schedule (spec §6), forward under the autocast of
    ``precision`` (``use_amp``: float16 with the grad scaler), a non-finite check, backward, optional gradient clipping, optimizer step.
    The main process (``log.enabled``) logs every ``train.log_interval`` iterations and at
    the epoch's end. Stops early once ``max_iters`` iterations are done in total. ``schedule``
    (default: :func:`~varifocal.engine.optim.resolve_schedule` of ``cfg.train`` for the
    sampler's full epoch) gives the lr of each batch.

    Returns:
        the global iteration count after the epoch.

    Raises:
        TrainingError: a non-finite loss (the message names ``last_path`` when it exists).
    """
    t = cfg.train
    model.train()
    iters_per_epoch = len(loader)
    batch_sampler = getattr(loader, "batch_sampler", None)
    first_batch = int(getattr(batch_sampler, "start_batch", 0))  # a resume mid-epoch skips these
    if schedule is None:
        full_epoch = batch_sampler.batches_per_epoch() if hasattr(batch_sampler, "batches_per_epoch") else None
        schedule = resolve_schedule(t, max(1, full_epoch or iters_per_epoch + first_batch))
    progress = _progress_bar(log.enabled, iters_per_epoch, f"epoch {epoch + 1}/{t.epochs}")
    epoch_start = time.time()
    skipped = 0
    for step, (images, targets, metas) in enumerate(loader):
        factor = schedule.factor(iteration, epoch, first_batch + step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        skipped += sum(len(m.get("skipped_files", ())) for m in metas)

        losses, loss = _forward(model, loss_module, images, targets, metas, device, use_amp, precision)
        _check_finite(losses, loss, epoch, iteration, last_path)
        _backward_and_step(model, optimizer, scaler, loss, t.grad_clip)
        iteration += 1

        if log.enabled and (iteration % t.log_interval == 0 or step == iters_per_epoch - 1):
            _log_step(
                log, progress, losses, loss, optimizer, epoch, t.epochs, iteration, step, iters_per_epoch, epoch_start
            )
        if progress is not None:
            progress.set_postfix({k: f"{float(v):.3f}" for k, v in losses.items()}, refresh=False)
            progress.update(1)
        if max_iters is not None and iteration >= max_iters:
            break
    if progress is not None:
        progress.close()
    if skipped and log.enabled:
        log.print(f"epoch {epoch + 1}: skipped {skipped} bad images")
    return iteration


# ------------------------------------------------------------------------------ steps of an iteration
def _progress_bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar on an interactive terminal of the main process (when tqdm is installed)."""
    if enabled and sys.stdout.isatty():
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc)
        except ImportError:
            return None
    return None


def _forward(
    model: nn.Module,
    loss_module: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict],
    metas: list[dict],
    device: torch.device,
    use_amp: bool,
    precision: str = "fp32",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(losses, total loss)`` of one batch (padded by ``model.preprocessor``), the forward
    under the autocast of ``precision`` (``use_amp``: float16)."""
    batch, metas = model.preprocessor.pad_batch([im.to(device) for im in images], metas)
    gt_bboxes = [tg["boxes"].to(device) for tg in targets]
    gt_labels = [tg["labels"].to(device) for tg in targets]
    with autocast("fp16" if use_amp else precision, device):
        losses = loss_module(batch, metas, gt_bboxes, gt_labels)
    return losses, sum(losses.values())


def _check_finite(
    losses: dict[str, torch.Tensor], loss: torch.Tensor, epoch: int, iteration: int, last_path: Path | None
) -> None:
    if not torch.isfinite(loss):
        values = {k: float(v.detach()) for k, v in losses.items()}
        raise TrainingError(
            f"non-finite loss at epoch {epoch + 1}, iteration {iteration}: {values}; "
            f"the last good checkpoint is {last_path if last_path is not None and last_path.exists() else 'none yet'}"
        )


def _backward_and_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss: torch.Tensor,
    grad_clip: float,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def _log_step(
    log: _Logger,
    progress: Any,
    losses: dict[str, torch.Tensor],
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    epochs: int,
    iteration: int,
    step: int,
    iters_per_epoch: int,
    epoch_start: float,
) -> None:
    """A ``train`` record in the metrics; a plain progress line when there is no tqdm bar."""
    values = {k: round(float(v.detach()), 5) for k, v in losses.items()}
    values.update(loss=round(float(loss.detach()), 5), lr=optimizer.param_groups[0]["lr"], epoch=epoch + 1)
    log.record("train", iteration, values)
    if progress is None:
        eta = (time.time() - epoch_start) / (step + 1) * (iters_per_epoch - step - 1)
        terms = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k.startswith("loss"))
        log.print(
            f"epoch {epoch + 1}/{epochs} iter {step + 1}/{iters_per_epoch} {terms} lr {values['lr']:.5f} eta {eta:.0f}s"
        )
