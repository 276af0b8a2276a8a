"""Training, evaluation and checkpointing, written to be read top to bottom.

``train(cfg)`` runs in one process or under ``torchrun`` (DDP: gloo on CPU, nccl on CUDA).
Every epoch it writes ``last.pth`` atomically (model, optimizer, RNG states, epoch, iteration,
resolved config, class names) and, after evaluation, ``best.pth`` by COCO AP. ``resume=True``
restarts from ``last.pth`` at the start of the next epoch; since the data order and the
augmentation of every sample are functions of (seed, epoch, index), a resumed run ends with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ..config import Config, config_to_dict
from ..data import (
    AspectRatioGroupedBatchSampler,
    CocoDetection,
    VOCDetection,
    build_test_transforms,
    build_train_transforms,
    collate,
)
from ..evaluation import CocoEvaluator, detections_to_coco
from ..models.zoo import build_model
from ..utils import dist as dist_utils
from .optim import build_optimizer, lr_factor

__all__ = ["TrainingError", "train", "evaluate", "build_datasets", "model_from_config", "run_inference"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, class-count mismatch, missing resume file)."""


# ------------------------------------------------------------------------------ set-up
def _setup_distributed() -> tuple[int, int, torch.device]:
    """Initialise torch.distributed when launched by torchrun; returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    rank = dist_utils.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), py[-1] or None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_datasets(cfg: Config, train: bool = True, val: bool = True) -> tuple[Any, Any]:
    """The training and validation datasets of ``cfg.data`` (COCO JSON or VOC XML)."""
    d = cfg.data
    train_ds = val_ds = None
    train_tf = build_train_transforms(tuple(d.train_scale), d.multiscale_mode, d.train_scales or None, d.flip_prob)
    test_tf = build_test_transforms(tuple(cfg.model.test_scale))
    if d.format == "coco":
        if train:
            train_ds = CocoDetection(d.path(d.train_images), d.path(d.train_ann), train_tf, d.skip_bad_images,
                                     drop_empty=d.drop_empty, min_size=d.min_size, seed=cfg.train.seed)
        if val:
            val_ds = CocoDetection(d.path(d.val_images), d.path(d.val_ann), test_tf, d.skip_bad_images)
    else:
        if train:
            train_ds = VOCDetection(d.root, d.train_set, d.class_names, train_tf, d.skip_bad_images,
                                    drop_empty=d.drop_empty, min_size=d.min_size, seed=cfg.train.seed)
        if val:
            val_ds = VOCDetection(d.root, d.val_set, d.class_names, test_tf, d.skip_bad_images)
    return train_ds, val_ds


def model_kwargs_from_config(cfg: Config) -> dict[str, Any]:
    """Builder keyword arguments that rebuild the model of ``cfg`` (stored in checkpoints)."""
    e = cfg.eval
    return {
        "num_classes": cfg.model.num_classes,
        "scale": list(cfg.model.test_scale),
        "score_thr": e.score_thr,
        "nms_iou": e.nms_iou,
        "nms_pre": e.nms_pre,
        "max_per_img": e.max_per_img,
    }


def model_from_config(cfg: Config, pretrained: bool = True) -> nn.Module:
    """Build ``cfg.model.name`` (and load ``cfg.model.load_from`` if set)."""
    kwargs = model_kwargs_from_config(cfg)
    if pretrained and cfg.model.pretrained_backbone:
        kwargs["pretrained_backbone"] = cfg.model.pretrained_backbone
    model = build_model(cfg.model.name, **kwargs)
    if cfg.model.load_from:
        load_checkpoint(model, cfg.model.load_from)
    return model


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


# ------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def run_inference(model: nn.Module, dataset: Any, device: torch.device, batch_size: int = 1, num_workers: int = 0,
                  progress: bool = False) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
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


def evaluate(model: nn.Module, dataset: Any, device: torch.device, batch_size: int = 1, num_workers: int = 0,
             progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, torch.Tensor]]]:
    """COCO bbox metrics of ``model`` on ``dataset`` (spec §5.3).

    Returns:
        ``(metrics, COCO results list, detections)``; ``detections`` are those of
        :func:`run_inference`, one dict per image in dataset order.
    """
    detections, image_ids = run_inference(model, dataset, device, batch_size, num_workers, progress)
    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    evaluator = CocoEvaluator(dataset, dataset.class_names, dataset.cat_ids)
    return evaluator.evaluate(results, image_ids=image_ids), results, detections


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

    Raises:
        TrainingError: non-finite loss (the last good checkpoint stays), a class-count mismatch
            between model and data, or ``resume`` without a checkpoint.
    """
    rank, world, device = _setup_distributed()
    is_main = rank == 0
    out_dir = Path(cfg.train.out_dir)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    log = _Logger(out_dir, is_main)
    t = cfg.train

    # 1. data
    _seed_everything(t.seed)
    train_ds, val_ds = build_datasets(cfg, train=True, val=t.eval_interval > 0)
    if train_ds.num_classes != cfg.model.num_classes:
        raise TrainingError(
            f"model.num_classes={cfg.model.num_classes} but {train_ds.source} has {train_ds.num_classes} classes "
            f"({', '.join(train_ds.class_names[:5])}…); set model.num_classes={train_ds.num_classes}"
        )
    sampler = AspectRatioGroupedBatchSampler(train_ds, t.batch_size, shuffle=True, seed=t.seed, rank=rank, world_size=world)

    # 2. model and optimizer
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

    # 3. resume
    start_epoch, iteration, best_ap = 0, 0, -1.0
    last_path = out_dir / "last.pth"
    if resume or t.resume:
        resume_path = Path(t.resume) if t.resume else last_path
        if not resume_path.is_file():
            raise TrainingError(f"{resume_path}: no checkpoint to resume from")
        state = read_checkpoint(resume_path)["raw"]
        load_checkpoint(model, resume_path)
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and use_amp:
            scaler.load_state_dict(state["scaler"])
        start_epoch, iteration, best_ap = int(state["epoch"]), int(state["iteration"]), float(state["best_ap"])
        _set_rng_state(state["rng"])
        log.print(f"resumed from {resume_path}: epoch {start_epoch}, iteration {iteration}")

    # 4. epochs
    class_info = {"class_names": list(train_ds.class_names), "cat_ids": list(train_ds.cat_ids)}
    model_kwargs = model_kwargs_from_config(cfg)
    last_metrics: dict[str, Any] = {}
    iters_per_epoch = len(sampler)
    for epoch in range(start_epoch, t.epochs):
        train_ds.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate)
        model.train()
        progress = None
        if is_main and sys.stdout.isatty():
            try:
                from tqdm import tqdm

                progress = tqdm(total=iters_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}")
            except ImportError:
                progress = None
        epoch_start = time.time()
        skipped = 0
        for step, (images, targets, metas) in enumerate(loader):
            factor = lr_factor(iteration, epoch, t.warmup_iters, t.warmup_ratio, t.lr_steps, t.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            skipped += sum(len(m.get("skipped_files", ())) for m in metas)

            batch, metas = model.preprocessor.pad_batch([im.to(device) for im in images], metas)
            gt_bboxes = [tg["boxes"].to(device) for tg in targets]
            gt_labels = [tg["labels"].to(device) for tg in targets]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                losses = loss_module(batch, metas, gt_bboxes, gt_labels)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                values = {k: float(v.detach()) for k, v in losses.items()}
                raise TrainingError(
                    f"non-finite loss at epoch {epoch + 1}, iteration {iteration}: {values}; "
                    f"the last good checkpoint is {last_path if last_path.exists() else 'none yet'}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            iteration += 1

            if is_main and (iteration % t.log_interval == 0 or step == iters_per_epoch - 1):
                values = {k: round(float(v.detach()), 5) for k, v in losses.items()}
                values.update(loss=round(float(loss.detach()), 5), lr=optimizer.param_groups[0]["lr"], epoch=epoch + 1)
                log.record("train", iteration, values)
                if progress is None:
                    eta = (time.time() - epoch_start) / (step + 1) * (iters_per_epoch - step - 1)
                    terms = " ".join(f"{k} {v:.4f}" for k, v in values.items() if k.startswith("loss"))
                    log.print(f"epoch {epoch + 1}/{t.epochs} iter {step + 1}/{iters_per_epoch} {terms} "
                              f"lr {values['lr']:.5f} eta {eta:.0f}s")
            if progress is not None:
                progress.set_postfix({k: f"{float(v):.3f}" for k, v in losses.items()}, refresh=False)
                progress.update(1)
            if max_iters is not None and iteration >= max_iters:
                break
        if progress is not None:
            progress.close()
        if skipped and is_main:
            log.print(f"epoch {epoch + 1}: skipped {skipped} bad images")
        if max_iters is not None and iteration >= max_iters:
            break

        # 5. evaluate and checkpoint (main process writes; the others wait)
        if is_main:
            if val_ds is not None and t.eval_interval > 0 and ((epoch + 1) % t.eval_interval == 0 or epoch + 1 == t.epochs):
                last_metrics, _, _ = evaluate(model, val_ds, device, cfg.eval.batch_size)
                ap = float(last_metrics["stats"]["AP"])
                log.record("val", iteration, {"epoch": epoch + 1, **last_metrics["stats"]})
                log.print(f"epoch {epoch + 1}: AP {ap:.4f} AP50 {last_metrics['stats']['AP50']:.4f}")
                if ap > best_ap:
                    best_ap = ap
                    save_checkpoint(out_dir / "best.pth", model, model_name=cfg.model.name, model_kwargs=model_kwargs,
                                    meta={"epoch": epoch + 1, "AP": ap, **class_info, "config": config_to_dict(cfg)})
            if (epoch + 1) % t.checkpoint_interval == 0 or epoch + 1 == t.epochs:
                save_checkpoint(
                    last_path, model, model_name=cfg.model.name, model_kwargs=model_kwargs,
                    meta={"epoch": epoch + 1, **class_info, "config": config_to_dict(cfg)},
                    extra={"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                           "iteration": iteration, "best_ap": best_ap, "rng": _rng_state(),
                           "config": config_to_dict(cfg), **class_info},
                )
        if world > 1:
            torch.distributed.barrier()
    return {"epoch": epoch + 1 if t.epochs > start_epoch else start_epoch, "iteration": iteration,
            "best_ap": best_ap, "last_metrics": last_metrics, "model": model}
