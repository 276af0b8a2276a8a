"""SGD parameter groups and the learning-rate schedule of spec §6.2, with warm-up and steps
given in iterations or (fractional) epochs (:func:`resolve_schedule`, issue 16)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..models.layers.dcn import ModulatedDeformConv2d

__all__ = ["build_param_groups", "build_optimizer", "lr_factor", "LrSchedule", "resolve_schedule"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _check(name: str, value: float, ok: Callable[[float], bool], rule: str) -> None:
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be finite and {rule}, got {value}")


def build_param_groups(
    model: nn.Module, lr: float, weight_decay: float, bias_lr_mult: float = 2.0, bias_decay_mult: float = 0.0
) -> list[dict]:
    """One group per trainable parameter with MMCV 1.x ``paramwise_cfg`` semantics (spec §6.2):

    - BatchNorm/GroupNorm weight and bias: ``lr``, ``weight_decay``;
    - any other parameter named ``bias`` (conv biases): ``lr·bias_lr_mult``,
      ``weight_decay·bias_decay_mult``;
    - DCNv2 ``conv_offset`` weight and bias: ``lr``, ``weight_decay``;
    - everything else (conv and DCN weights, Scale scalars): ``lr``, ``weight_decay``.

    Frozen parameters (``requires_grad=False``) are left out. Each group also stores its own
    ``initial_lr`` for :func:`lr_factor` scheduling.
    """
    groups: list[dict] = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        in_dcn_offset = mod_name.endswith("conv_offset") and isinstance(
            model.get_submodule(mod_name.rsplit(".", 1)[0]) if "." in mod_name else model, ModulatedDeformConv2d
        )
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            group_lr, group_wd = lr, weight_decay
            if isinstance(module, _NORMS) or in_dcn_offset:
                pass
            elif name == "bias":
                group_lr, group_wd = lr * bias_lr_mult, weight_decay * bias_decay_mult
            groups.append(
                {
                    "params": [param],
                    "lr": group_lr,
                    "initial_lr": group_lr,
                    "weight_decay": group_wd,
                    "name": f"{mod_name}.{name}" if mod_name else name,
                }
            )
    return groups


def build_optimizer(
    model: nn.Module,
    lr: float,
    momentum: float,
    weight_decay: float,
    bias_lr_mult: float = 2.0,
    bias_decay_mult: float = 0.0,
) -> torch.optim.SGD:
    """SGD (no Nesterov) over :func:`build_param_groups`.

    Raises:
        ValueError: ``lr`` not finite and > 0, ``momentum`` outside [0, 1), or a
            ``weight_decay``/multiplier that is negative or not finite (the config is checked
            first, :func:`varifocal.config.validate_config`; this guards direct calls).
    """
    _check("lr", lr, lambda v: v > 0, "> 0")
    _check("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
    for name, value in (
        ("weight_decay", weight_decay),
        ("bias_lr_mult", bias_lr_mult),
        ("bias_decay_mult", bias_decay_mult),
    ):
        _check(name, value, lambda v: v >= 0, ">= 0")
    groups = build_param_groups(model, lr, weight_decay, bias_lr_mult, bias_decay_mult)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def lr_factor(
    iteration: int,
    epoch: int,
    warmup_iters: int,
    warmup_ratio: float,
    steps: Sequence[int],
    gamma: float,
    warmup: str = "linear",
) -> float:
    """Multiplier of every group's base lr at a global ``iteration`` (0-based) in ``epoch``
    (0-based): step decay ``gamma^#{s in steps : epoch ≥ s}`` times, during the first
    ``warmup_iters`` iterations, the warm-up factor: ``'linear'`` (mmengine ``LinearLR``)
    ``1 − (1 − iteration/warmup_iters)·(1 − warmup_ratio)`` (vfnet_spec §6.2: lr_i =
    lr·(1 − (1 − i/500)·0.9)), or ``'constant'`` (``ConstantLR``, FCOS, zoo_spec §1.17)
    ``warmup_ratio`` flat.

    Raises:
        ValueError: an unknown ``warmup``, ``gamma`` not finite and > 0, or ``warmup_ratio``
            outside (0, 1] (a negative factor would train with a negative learning rate).
    """
    return _factor(iteration, sum(1 for s in steps if epoch >= s), warmup_iters, warmup_ratio, gamma, warmup)


def _factor(
    iteration: int, num_steps: int, warmup_iters: float, warmup_ratio: float, gamma: float, warmup: str
) -> float:
    """``gamma^num_steps`` times the warm-up factor of :func:`lr_factor` at ``iteration``."""
    if warmup not in ("linear", "constant"):
        raise ValueError(f"warmup must be 'linear' or 'constant', got {warmup!r}")
    _check("gamma", gamma, lambda v: v > 0, "> 0")
    _check("warmup_ratio", warmup_ratio, lambda v: 0 < v <= 1, "in (0, 1]")
    factor = gamma**num_steps
    if iteration < warmup_iters:
        factor *= (
            warmup_ratio if warmup == "constant" else 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)
        )
    return factor


def _iters(epochs: float, iters_per_epoch: int) -> float:
    """``epochs x iters_per_epoch`` rounded to 1e-9, so that e.g. ``0.7 x 10`` is 7, not 7.000000000000001."""
    return round(float(epochs) * iters_per_epoch, 9)


@dataclass(frozen=True)
class LrSchedule:
    """The lr schedule of one run with every length resolved against its iterations per epoch.

    Attributes:
        iters_per_epoch: iterations (batches per process) of one epoch.
        warmup_iters: warm-up length in iterations; fractional when it came from
            ``warmup_epochs`` (the warm-up covers the iterations ``i < warmup_iters``).
        warmup_ratio, warmup: as in :func:`lr_factor`.
        step_epochs: steps given in (possibly fractional) epochs, or ``None``.
        step_iters: steps given in global iterations, or ``None`` (exactly one of the two is set).
        gamma: multiplier per step.
    """

    iters_per_epoch: int
    warmup_iters: float
    warmup_ratio: float
    warmup: str
    step_epochs: tuple[float, ...] | None
    step_iters: tuple[int, ...] | None
    gamma: float

    @property
    def step_boundaries(self) -> list[float]:
        """The steps in global iterations (an epoch step ``s`` is ``s x iters_per_epoch``)."""
        if self.step_iters is not None:
            return [float(s) for s in self.step_iters]
        return [_iters(s, self.iters_per_epoch) for s in self.step_epochs or ()]

    def factor(self, iteration: int, epoch: int, step: int) -> float:
        """Multiplier of every group's base lr at global ``iteration`` (0-based), which is
        batch ``step`` (0-based) of ``epoch`` (0-based).

        An epoch step ``s`` counts from the first batch with ``epoch·ipe + step >= s·ipe``
        (``ipe`` = :attr:`iters_per_epoch`): for an integer ``s`` from the start of epoch
        ``s``, exactly as :func:`lr_factor`; an iteration step ``s`` from ``iteration >= s``.
        The warm-up is :func:`lr_factor`'s over the global iteration.
        """
        if self.step_iters is not None:
            num_steps = sum(1 for s in self.step_iters if iteration >= s)
        else:
            position = epoch * self.iters_per_epoch + step
            num_steps = sum(1 for s in self.step_epochs or () if position >= _iters(s, self.iters_per_epoch))
        return _factor(iteration, num_steps, self.warmup_iters, self.warmup_ratio, self.gamma, self.warmup)


def resolve_schedule(train_cfg: Any, iters_per_epoch: int) -> LrSchedule:
    """The :class:`LrSchedule` of a ``TrainConfig`` for epochs of ``iters_per_epoch`` iterations.

    ``warmup_epochs`` (when not ``None``) replaces ``warmup_iters``: ``warmup_epochs x
    iters_per_epoch`` iterations, not rounded (0.5 epoch of 3 iterations: the iterations
    0 and 1 warm up, with factors computed over 1.5). ``lr_step_iters`` (when not ``None``)
    replaces the epoch steps ``lr_steps`` (issue 16).

    Raises:
        ValueError: ``iters_per_epoch < 1``.
    """
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    t = train_cfg
    warmup_epochs = getattr(t, "warmup_epochs", None)
    # warmup_iters stays the config's int when given in iterations (bit-exact with lr_factor)
    warmup_iters = t.warmup_iters if warmup_epochs is None else _iters(warmup_epochs, iters_per_epoch)
    step_iters = getattr(t, "lr_step_iters", None)
    return LrSchedule(
        iters_per_epoch=int(iters_per_epoch),
        warmup_iters=warmup_iters,
        warmup_ratio=t.warmup_ratio,
        warmup=t.warmup,
        step_epochs=None if step_iters is not None else tuple(t.lr_steps),
        step_iters=None if step_iters is None else tuple(int(s) for s in step_iters),
        gamma=t.lr_gamma,
    )
