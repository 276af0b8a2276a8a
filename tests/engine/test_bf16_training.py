"""``train.precision: bf16``: the losses of a batch under bf16 autocast are float32 and close to
the float32 ones, gradients are finite, and a short CPU run trains (issue 12)."""

from __future__ import annotations

import json

import pytest
import torch

import varifocal
from varifocal.cli.main import main
from varifocal.config import ConfigError, load_config
from varifocal.engine.trainer import train_precision
from varifocal.utils.precision import autocast, prepare_model


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g) * 255 for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 80.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


def test_bf16_losses_are_float32_and_close():
    torch.manual_seed(0)
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96]).train()
    images, targets = _batch()
    ref = model(images, targets)
    prepare_model(model, "bf16", "cpu")
    with autocast("bf16", "cpu"):
        losses = model(images, targets)
    for name, value in losses.items():
        assert value.dtype == torch.float32, name
        assert float(value.detach()) == pytest.approx(float(ref[name].detach()), rel=0.05, abs=0.02), name
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def test_train_precision_resolution(tmp_path):
    cfg = load_config(None, ["train.precision=bf16"])
    assert train_precision(cfg, torch.device("cpu")) == "bf16"
    cfg = load_config(None, ["train.amp=true"])  # the old switch: fp16 on CUDA only
    assert train_precision(cfg, torch.device("cpu")) == "fp32"
    assert train_precision(cfg, torch.device("cuda")) == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        train_precision(load_config(None, ["train.precision=fp16"]), torch.device("cpu"))


def test_a_bf16_run_trains(tmp_path):
    from .test_trainer import tiny_config

    cfg = tiny_config(tmp_path, "run", epochs=1, precision="bf16")
    assert main(["train", str(cfg), "data.min_iters_per_epoch=4"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) >= 4 and all(0 < v < 100 for v in losses)
