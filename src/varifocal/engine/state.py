"""Training state: process set-up, seeding, RNG snapshots, resume and the checkpoints of an epoch.

``last.pth`` (written by :func:`save_last`) holds the model, the optimizer and AMP-scaler
states, the RNG states of Python, numpy and torch (CPU and CUDA), the epoch, the iteration,
the best AP so far, the resolved config and the class names; :func:`restore` puts all of it
back, so that a resumed run continues bit-exactly where the checkpoint was written.
``best.pth`` (written by :func:`save_best`) holds the model of the best COCO AP.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointError, load_state_into, read_checkpoint, save_checkpoint
from ..config import Config, config_to_dict
from ..utils import dist as dist_utils

__all__ = ["restore", "save_best", "save_last"]


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


# ------------------------------------------------------------------------------ resume
def restore(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, use_amp: bool
) -> tuple[int, int, float]:
    """Load a ``last.pth`` of :func:`save_last` into ``model``, ``optimizer``, ``scaler`` (when
    ``use_amp``) and the global RNGs. The file is read once; nothing is changed when it lacks the
    training state.

    Returns:
        ``(epoch, iteration, best_ap)``: completed epochs, iterations done, best AP so far.

    Raises:
        CheckpointError: one line naming the file: unreadable, no training state (an
            inference-only checkpoint such as ``best.pth``, a slimmed or converted file, or an
            MMDetection one), or a model or optimizer that does not match. (``CheckpointError``
            and not the trainer's ``TrainingError``: this module is imported by the trainer and
            does not import it back; the CLI reports both in one line.)
    """
    ckpt = read_checkpoint(path, check_model_kwargs=False)
    state = ckpt["raw"]
    missing = [k for k in _TRAINING_KEYS if k not in state]
    if missing:
        what = "an inference-only" if "optimizer" in missing else "an incomplete"
        raise CheckpointError(
            f"{path}: {what} {ckpt['format']} checkpoint with no training state to resume from "
            f"(missing {', '.join(missing)}); resume from a last.pth written by training, or start a new run "
            "with model.load_from to initialise the weights from it"
        )
    load_state_into(model, ckpt, path)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: its optimizer state does not fit this run's optimizer ({' '.join(str(exc).split())})"
        ) from None
    if "scaler" in state and use_amp:
        scaler.load_state_dict(state["scaler"])
    start_epoch, iteration, best_ap = int(state["epoch"]), int(state["iteration"]), float(state["best_ap"])
    _set_rng_state(state["rng"])
    return start_epoch, iteration, best_ap


#: Entries of a ``last.pth`` that :func:`restore` needs besides the weights.
_TRAINING_KEYS = ("optimizer", "epoch", "iteration", "best_ap", "rng")


# ------------------------------------------------------------------------------ checkpoints
def save_best(
    path: Path,
    model: nn.Module,
    cfg: Config,
    model_kwargs: dict[str, Any],
    class_info: dict[str, Any],
    epoch: int,
    ap: float,
) -> None:
    """Write ``best.pth`` atomically: the model after ``epoch`` completed epochs, with its AP."""
    save_checkpoint(
        path,
        model,
        model_name=cfg.model.name,
        model_kwargs=model_kwargs,
        meta={"epoch": epoch, "AP": ap, **class_info, "config": config_to_dict(cfg)},
    )


def save_last(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: Config,
    model_kwargs: dict[str, Any],
    class_info: dict[str, Any],
    epoch: int,
    iteration: int,
    best_ap: float,
) -> None:
    """Write ``last.pth`` atomically: everything :func:`restore` needs to continue after
    ``epoch`` completed epochs and ``iteration`` iterations (the RNG states are taken now)."""
    save_checkpoint(
        path,
        model,
        model_name=cfg.model.name,
        model_kwargs=model_kwargs,
        meta={"epoch": epoch, **class_info, "config": config_to_dict(cfg)},
        extra={
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "best_ap": best_ap,
            "rng": _rng_state(),
            "config": config_to_dict(cfg),
            **class_info,
        },
    )
