"""SGD parameter groups and the learning-rate schedule of spec §6.2."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from ..models.layers.dcn import ModulatedDeformConv2d

__all__ = ["build_param_groups", "build_optimizer", "lr_factor"]

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
    if warmup not in ("linear", "constant"):
        raise ValueError(f"warmup must be 'linear' or 'constant', got {warmup!r}")
    _check("gamma", gamma, lambda v: v > 0, "> 0")
    _check("warmup_ratio", warmup_ratio, lambda v: 0 < v <= 1, "in (0, 1]")
    factor = gamma ** sum(1 for s in steps if epoch >= s)
    if iteration < warmup_iters:
        factor *= (
            warmup_ratio if warmup == "constant" else 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)
        )
    return factor
