"""Shared pieces of the parity tests against the zoo goldens of ``../shared/golden`` (its README,
"Golden outputs of six more MMDetection 3.3.0 detectors").

Every setting that a golden fixes (class count, neck/head width, test scale, test_cfg) is read
from the golden itself, so a test passes for any golden of the same format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import varifocal
from varifocal.checkpoint import read_checkpoint

from ..conftest import SHARED

TRUNK_CKPT = Path(os.environ.get("VARIFOCAL_GOLDEN_TRUNK", SHARED / "golden" / "vfnet_r50_coco80" / "checkpoint.pth"))


def golden_dir(name: str, default: str) -> Path:
    """``$VARIFOCAL_GOLDEN_<NAME>`` or ``../shared/golden/<default>``."""
    return Path(os.environ.get(f"VARIFOCAL_GOLDEN_{name}", SHARED / "golden" / default))


def load_golden(directory: Path) -> dict[str, Any]:
    """``golden.pt`` of ``directory``, or skip when the directory is absent or incomplete."""
    if not (directory / "golden.pt").is_file() or not (directory / "checkpoint.pth").is_file():
        pytest.skip(f"golden directory {directory} is absent or incomplete (needs golden.pt and checkpoint.pth)")
    return torch.load(directory / "golden.pt", map_location="cpu", weights_only=True)


def width(golden: dict[str, Any]) -> int:
    """Neck and head channels of the golden (64 in the shipped ones, 256 at full width)."""
    overrides = (golden.get("config") or {}).get("overrides") or {}
    return int(overrides.get("model.neck.out_channels", 256))


def golden_test_cfg(golden: dict[str, Any]) -> dict[str, Any]:
    """The golden's mmdet ``test_cfg`` as :class:`varifocal.models.postprocess.TestConfig` fields."""
    cfg = golden["test_cfg"]
    out = {
        "score_thr": float(cfg["score_thr"]),
        "nms_pre": int(cfg["nms_pre"]),
        "nms_iou": float(cfg["nms"]["iou_threshold"]),
        "max_per_img": int(cfg["max_per_img"]),
    }
    out["min_bbox_size"] = float(cfg["min_bbox_size"]) if "min_bbox_size" in cfg else None
    return out


def golden_scale(golden: dict[str, Any]) -> tuple[int, int]:
    return tuple(int(v) for v in golden["config"]["test_scale"])


def load_weights(model: nn.Module, directory: Path) -> None:
    """The trunk rule: ``backbone.*`` from the VFNet golden checkpoint unless the golden's own
    checkpoint holds it, then every other key from the golden checkpoint (strict)."""
    ckpt = directory / "checkpoint.pth"
    keys = read_checkpoint(ckpt)["state_dict"].keys()
    if not any(k.startswith("backbone.") for k in keys):
        if not TRUNK_CKPT.is_file():
            pytest.skip(f"a trunk-less golden checkpoint needs {TRUNK_CKPT}, which is absent")
        varifocal.load_checkpoint(model, TRUNK_CKPT, prefixes=("backbone.",))
        prefixes = tuple(sorted({k.split(".")[0] + "." for k in model.state_dict() if not k.startswith("backbone.")}))
        varifocal.load_checkpoint(model, ckpt, prefixes=prefixes)
    else:
        varifocal.load_checkpoint(model, ckpt)


def featmap_sizes(golden: dict) -> list[tuple[int, int]]:
    """The golden's ``(H_l, W_l)`` per level, as ints."""
    return [tuple(int(v) for v in size) for size in golden["featmap_sizes"]]


def head_outputs(model: nn.Module, golden: dict) -> Any:
    """The raw head outputs of the golden's float inputs, without autograd."""
    with torch.no_grad():
        return model.bbox_head(model.extract_feat(golden["inputs"].float()))


def train_step(model: nn.Module, golden: dict[str, Any], loss_fn: Callable[..., dict] | None = None):
    """Losses and gradients of one training forward/backward on the golden batch."""
    model.train()
    model.zero_grad(set_to_none=True)
    inputs = golden["inputs"].float()
    labels = [lab.long() for lab in golden["gt_labels"]]
    losses = (loss_fn or model.loss)(inputs, golden["metas"], golden["gt_bboxes"], labels)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.eval()
    return {k: v.detach() for k, v in losses.items()}, grads


def assert_losses(losses: dict[str, torch.Tensor], golden: dict[str, Any], rel: float = 1e-4) -> None:
    assert set(golden["losses"]) <= set(losses), f"missing loss terms {set(golden['losses']) - set(losses)}"
    for name, ref in golden["losses"].items():
        ref = float(ref)
        ours = float(losses[name])
        assert abs(ours - ref) <= rel * max(abs(ref), 1e-12), f"{name}: {ours} vs {ref}"


def assert_grads(grads: dict[str, torch.Tensor], golden: dict[str, Any], rel: float = 1e-3) -> None:
    for name, ref in golden["grads"].items():
        ref = ref.float()
        err = float((grads[name] - ref).norm() / ref.norm().clamp(min=1e-12))
        assert err <= rel, f"{name}: relative L2 error {err:.2e}"
    assert set(grads) == set(golden["grad_norms"]), (
        f"parameters with a gradient differ: only ours {sorted(set(grads) - set(golden['grad_norms']))[:5]}, "
        f"only mmdet {sorted(set(golden['grad_norms']) - set(grads))[:5]}"
    )
    for name, ref_norm in golden["grad_norms"].items():
        ours = float(grads[name].norm())
        assert abs(ours - float(ref_norm)) <= rel * max(float(ref_norm), 1e-6), f"{name}: |g| {ours} vs {ref_norm}"


def assert_detections(results: list[dict[str, torch.Tensor]], golden: dict[str, Any]) -> None:
    for i, (ours, ref) in enumerate(zip(results, golden["detections"], strict=True)):
        assert ours["boxes"].shape[0] == ref["bboxes"].shape[0], f"image {i}: detection count"
        assert ours["boxes"].shape[0] > 0, f"image {i}: the golden has no detections (vacuous)"
        assert torch.equal(ours["labels"], ref["labels"].long()), f"image {i}: labels"
        assert float((ours["scores"] - ref["scores"].float()).abs().max()) <= 1e-4, f"image {i}: scores"
        assert float((ours["boxes"] - ref["bboxes"].float()).abs().max()) <= 1e-2, f"image {i}: boxes"


def assert_state_dict_keys(model: nn.Module, directory: Path) -> None:
    """Our neck + head keys are exactly the golden checkpoint's (names, shapes), backbone
    keys exactly the trunk's."""
    ckpt = read_checkpoint(directory / "checkpoint.pth")["state_dict"]
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt.items()}
    if not any(k.startswith("backbone.") for k in theirs) and TRUNK_CKPT.is_file():
        trunk = read_checkpoint(TRUNK_CKPT)["state_dict"]
        theirs.update({k: tuple(v.shape) for k, v in trunk.items() if k.startswith("backbone.")})
    assert sorted(own) == sorted(theirs), (
        f"only ours: {sorted(set(own) - set(theirs))[:6]}; only mmdet: {sorted(set(theirs) - set(own))[:6]}"
    )
    bad = [k for k in own if own[k] != theirs[k]]
    assert not bad, f"shapes differ: {[(k, own[k], theirs[k]) for k in bad[:5]]}"
