"""Training, written to be read top to bottom.

``train(cfg)`` runs in one process or under ``torchrun`` (DDP: gloo on CPU, nccl on CUDA).
Every epoch it writes ``last.pth`` atomically (model, optimizer, RNG states, epoch, iteration,
resolved config, class names) and, after evaluation, ``best.pth`` by COCO AP. ``resume=True``
restarts from ``last.pth`` at the start of the next epoch; since the data order and the
augmentation of every sample are functions of (seed, epoch, index), a resumed run ends with
the same weights as an uninterrupted one.

The steps live beside this file: :mod:`.build` (datasets, model), :mod:`.state` (set-up,
seeding, resume, checkpoints), :mod:`.evaluate` (inference and COCO evaluation); their public
names are importable from here too.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from ..config import Config, ConfigError, config_to_dict, save_config
from ..data import AspectRatioGroupedBatchSampler, DataError, collate
from ..utils.io import run_lock
from . import state
from .build import build_datasets, model_from_config, model_kwargs_from_config
from .evaluate import evaluate, run_inference
from .optim import build_optimizer, lr_factor
from .state import _seed_everything, _setup_distributed

__all__ = [
    "TrainingError",
    "train",
    "train_one_epoch",
    "evaluate",
    "build_datasets",
    "model_from_config",
    "run_inference",
]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, class-count mismatch, missing resume file)."""


class _LossModule(nn.Module):
    """``forward`` = ``detector.loss`` on a preprocessed batch, so that DDP can wrap it."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, batch, metas, gt_bboxes, gt_labels):  # noqa: D102
        return self.detector.loss(batch, metas, gt_bboxes, gt_labels)


class _Logger:
    """Progress on a terminal (tqdm when installed), plain lines otherwise; JSONL metrics;
    TensorBoard when installed."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def record(self, kind: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)


# ------------------------------------------------------------------------------ training
def train(cfg: Config, resume: bool = False, max_iters: int | None = None) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data`` with the recipe of ``cfg.train`` (spec §6).

    Args:
        cfg: the resolved configuration (saved beside the checkpoints).
        resume: continue from ``<out_dir>/last.pth`` (or ``cfg.train.resume`` if set).
        max_iters: stop after this many iterations in total (tests and smoke runs); the
            checkpoint of a partial epoch is not written.

    Returns:
        ``{'epoch', 'iteration', 'best_ap', 'last_metrics', 'model'}`` (the trained model,
        unwrapped from DDP).

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
                last_path=out_dir / "last.pth",
                max_iters=max_iters,
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
    }


# ------------------------------------------------------------------------------ steps of train()
def _config_differences(new: dict[str, Any], old: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix.rstrip(".") or "config"] if new != old else []
    keys = list(new) + [k for k in old if k not in new]
    return [d for k in keys for d in _config_differences(new.get(k), old.get(k), f"{prefix}{k}.")]


#: config keys that change how a run is executed, not which run it is
_RUN_NEUTRAL_KEYS = {
    "data.skip_bad_images",
    "data.num_workers",
    "train.resume",
    "train.log_interval",
    "eval.batch_size",
}

#: files that show that an out dir holds the results of a run
_RUN_RESULTS = ("last.pth", "best.pth", "metrics.jsonl")


def _check_run_config(cfg: Config, out_dir: Path, resume: bool) -> None:
    """Refuse to start a new run in an out dir whose ``config.yaml`` is another run's unless
    resuming it. Allowed: the same config (a re-run; keys of ``_RUN_NEUTRAL_KEYS`` such as
    ``data.skip_bad_images`` may differ), and an out dir without results (no ``last.pth``,
    ``best.pth`` or ``metrics.jsonl``: a run that failed during its set-up).

    Raises:
        ConfigError: naming the out dir, the first differing keys and the two ways out.
    """
    path = out_dir / "config.yaml"
    if resume or not path.is_file() or not any((out_dir / name).exists() for name in _RUN_RESULTS):
        return
    new = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None
    diff = [k for k in _config_differences(new, old) if k not in _RUN_NEUTRAL_KEYS]
    if diff:
        keys = ", ".join(diff[:4]) + (", …" if len(diff) > 4 else "")
        raise ConfigError(
            f"{path}: train.out_dir holds another run (its config differs in {keys}); "
            "pass --resume to continue that run, or set train.out_dir to a new folder"
        )


def _setup_output(out_dir: Path, is_main: bool) -> tuple[Path, _Logger]:
    """Create ``out_dir`` (main process) and the logger (silent on the other ranks)."""
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir, _Logger(out_dir, is_main)


def _build_data(cfg: Config, rank: int, world: int) -> tuple[Any, Any, AspectRatioGroupedBatchSampler]:
    """Training set (checked against ``model.num_classes``), validation set (``None`` when
    ``train.eval_interval`` is 0) and this rank's aspect-ratio-grouped batch sampler."""
    t = cfg.train
    train_ds, val_ds = build_datasets(cfg, train=True, val=t.eval_interval > 0)
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
        train_ds, t.batch_size, shuffle=True, seed=t.seed, rank=rank, world_size=world
    )
    return train_ds, val_ds, sampler


def _build_model_and_optimizer(
    cfg: Config, train_ds: Any, device: torch.device, world: int
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.amp.GradScaler, bool]:
    """``(model, loss_module, optimizer, scaler, use_amp)``; ``loss_module`` computes the
    losses of ``model`` and is DDP-wrapped when ``world > 1``; AMP only on CUDA."""
    t = cfg.train
    model = model_from_config(cfg).to(device)
    model.class_names = list(train_ds.class_names)
    optimizer = build_optimizer(model, t.lr, t.momentum, t.weight_decay, t.bias_lr_mult, t.bias_decay_mult)
    use_amp = bool(t.amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_module: nn.Module = _LossModule(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model, loss_module, optimizer, scaler, use_amp


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
    """The training loader of ``epoch`` (data order and augmentation are set by the epoch)."""
    train_ds.set_epoch(epoch)
    sampler.set_epoch(epoch)
    return DataLoader(train_ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate)


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
    (``best.pth`` when AP improves), write ``last.pth`` every ``checkpoint_interval`` epochs and
    at the end. Returns the updated ``(last_metrics, best_ap)``."""
    t = cfg.train
    if val_ds is not None and t.eval_interval > 0 and ((epoch + 1) % t.eval_interval == 0 or epoch + 1 == t.epochs):
        last_metrics, _, _ = evaluate(model, val_ds, device, cfg.eval.batch_size)
        ap = float(last_metrics["stats"]["AP"])
        log.record("val", iteration, {"epoch": epoch + 1, **last_metrics["stats"]})
        log.print(f"epoch {epoch + 1}: AP {ap:.4f} AP50 {last_metrics['stats']['AP50']:.4f}")
        if ap > best_ap:
            best_ap = ap
            state.save_best(out_dir / "best.pth", model, cfg, model_kwargs, class_info, epoch + 1, ap)
    if (epoch + 1) % t.checkpoint_interval == 0 or epoch + 1 == t.epochs:
        state.save_last(
            out_dir / "last.pth", model, optimizer, scaler, cfg, model_kwargs, class_info, epoch + 1, iteration, best_ap
        )
    return last_metrics, best_ap


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
) -> int:
    """One pass over ``loader`` (epoch ``epoch``, 0-based), starting at global ``iteration``.

    Per batch: the learning rate of the schedule (spec §6), forward under autocast when
    ``use_amp``, a non-finite check, backward, optional gradient clipping, optimizer step.
    The main process (``log.enabled``) logs every ``train.log_interval`` iterations and at
    the epoch's end. Stops early once ``max_iters`` iterations are done in total.

    Returns:
        the global iteration count after the epoch.

    Raises:
        TrainingError: a non-finite loss (the message names ``last_path`` when it exists).
    """
    t = cfg.train
    model.train()
    iters_per_epoch = len(loader)
    progress = _progress_bar(log.enabled, iters_per_epoch, f"epoch {epoch + 1}/{t.epochs}")
    epoch_start = time.time()
    skipped = 0
    for step, (images, targets, metas) in enumerate(loader):
        factor = lr_factor(iteration, epoch, t.warmup_iters, t.warmup_ratio, t.lr_steps, t.lr_gamma, t.warmup)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        skipped += sum(len(m.get("skipped_files", ())) for m in metas)

        losses, loss = _forward(model, loss_module, images, targets, metas, device, use_amp)
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
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(losses, total loss)`` of one batch (padded by ``model.preprocessor``)."""
    batch, metas = model.preprocessor.pad_batch([im.to(device) for im in images], metas)
    gt_bboxes = [tg["boxes"].to(device) for tg in targets]
    gt_labels = [tg["labels"].to(device) for tg in targets]
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
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
