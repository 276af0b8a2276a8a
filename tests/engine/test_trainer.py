"""Training loop: parameter groups, schedule, crash safety, resume, DDP equivalence (issue 3).

A tiny VFNet-Lite0 (random init) on 6 bundled BCCD images at 128×96 keeps each run to seconds.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import varifocal
from varifocal.checkpoint import read_checkpoint
from varifocal.engine.optim import build_param_groups, lr_factor

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"


def tiny_dataset(tmp_path: Path, n: int = 6) -> Path:
    data = json.loads((BCCD / "annotations" / "instances_train.json").read_text())
    images = data["images"][:n]
    ids = {im["id"] for im in images}
    data["images"] = images
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data))
    return path


def tiny_config(tmp_path: Path, out: str, **train) -> Path:
    ann = tiny_dataset(tmp_path)
    cfg = {
        "model": {"name": "vfnet_lite0_fpn", "num_classes": 3, "pretrained_backbone": False, "test_scale": [128, 96]},
        "data": {
            "root": "",
            "train_ann": str(ann),
            "train_images": str(BCCD / "JPEGImages"),
            "val_ann": str(ann),
            "val_images": str(BCCD / "JPEGImages"),
            "train_scale": [128, 96],
            "min_size": 0,
            "num_workers": 0,
        },
        "train": {
            "epochs": 3,
            "batch_size": 2,
            "lr": 0.01,
            "warmup_iters": 2,
            "lr_steps": [2],
            "eval_interval": 0,
            "log_interval": 1,
            "seed": 3,
            "out_dir": str(tmp_path / out),
            **train,
        },
    }
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "varifocal.cli.main", *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


# ------------------------------------------------------------------------------ optimiser
def test_param_groups_follow_spec():
    with torch.device("meta"):
        model = varifocal.build_model("vfnet_r50_fpn_dcn", num_classes=3)
    groups = {g["name"]: g for g in build_param_groups(model, lr=0.01, weight_decay=1e-4)}
    assert (
        groups["neck.fpn_convs.0.conv.bias"]["lr"] == 0.02 and groups["neck.fpn_convs.0.conv.bias"]["weight_decay"] == 0
    )
    assert groups["bbox_head.vfnet_cls.bias"]["lr"] == 0.02
    assert (
        groups["bbox_head.cls_convs.0.gn.bias"]["lr"] == 0.01
        and groups["bbox_head.cls_convs.0.gn.bias"]["weight_decay"] == 1e-4
    )
    assert groups["backbone.layer2.0.bn1.bias"]["lr"] == 0.01  # BN affine of stage 2 trains, 1× lr
    off = groups["backbone.layer2.0.conv2.conv_offset.bias"]
    assert off["lr"] == 0.01 and off["weight_decay"] == 1e-4  # DCN offsets: no bias rule
    assert (
        groups["bbox_head.scales.0.scale"]["lr"] == 0.01 and groups["bbox_head.scales.0.scale"]["weight_decay"] == 1e-4
    )
    assert "backbone.layer1.0.conv1.weight" not in groups and "backbone.conv1.weight" not in groups  # frozen


def test_lr_schedule_warmup_and_steps():
    # spec §6.2: lr_i = lr·(1 − (1 − i/500)·0.9); ×0.1 from epoch 8 and again from 11 (0-based).
    assert lr_factor(0, 0, 500, 0.1, [8, 11], 0.1) == pytest.approx(0.1)
    assert lr_factor(250, 0, 500, 0.1, [8, 11], 0.1) == pytest.approx(0.55)
    assert lr_factor(500, 0, 500, 0.1, [8, 11], 0.1) == 1.0
    assert lr_factor(10_000, 8, 500, 0.1, [8, 11], 0.1) == pytest.approx(0.1)
    assert lr_factor(10_000, 11, 500, 0.1, [8, 11], 0.1) == pytest.approx(0.01)
    # ConstantLR(1/3) of FCOS: a flat third during warm-up, then the full lr
    assert lr_factor(0, 0, 500, 1 / 3, [8, 11], 0.1, "constant") == pytest.approx(1 / 3)
    assert lr_factor(499, 0, 500, 1 / 3, [8, 11], 0.1, "constant") == pytest.approx(1 / 3)
    assert lr_factor(500, 0, 500, 1 / 3, [8, 11], 0.1, "constant") == 1.0


# ------------------------------------------------------------------------------ crash safety
@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    ref_cfg = tiny_config(tmp_path, "ref")
    run_cli("train", str(ref_cfg))
    reference = weights(tmp_path / "ref" / "last.pth")

    cfg = tiny_config(tmp_path, "crash")
    log = tmp_path / "crash" / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "varifocal.cli.main", "train", str(cfg)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    killed_in_epoch = None
    while time.time() < deadline and proc.poll() is None:
        if log.exists():
            lines = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
            epochs = [l["epoch"] for l in lines if l["kind"] == "train"]
            if epochs and epochs[-1] == 2 and sum(e == 2 for e in epochs) >= 1:
                proc.send_signal(signal.SIGKILL)
                killed_in_epoch = 2
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_in_epoch == 2, f"the run ended before it could be killed: {proc.stderr.read()[-500:]}"
    assert read_checkpoint(tmp_path / "crash" / "last.pth")["raw"]["epoch"] == 1  # epoch 1 survived

    run_cli("train", str(cfg), "--resume")
    assert read_checkpoint(tmp_path / "crash" / "last.pth")["raw"]["epoch"] == 3
    assert max_diff(weights(tmp_path / "crash" / "last.pth"), reference) == 0.0


def test_interrupted_checkpoint_write_keeps_previous_file(tmp_path, monkeypatch):
    from varifocal.utils import io as io_mod

    model = varifocal.build_model("vfnet_r18_fpn", num_classes=2)
    path = tmp_path / "last.pth"
    varifocal.save_checkpoint(path, model, model_name="vfnet_r18_fpn", model_kwargs={"num_classes": 2})
    before = path.read_bytes()

    def half_write(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        varifocal.save_checkpoint(path, model, model_name="vfnet_r18_fpn", model_kwargs={"num_classes": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left
    fresh = varifocal.build_model("vfnet_r18_fpn", num_classes=2)
    varifocal.load_checkpoint(fresh, path)


def test_non_finite_loss_stops_with_clear_error(tmp_path, monkeypatch):
    from varifocal.config import load_config
    from varifocal.engine import trainer
    from varifocal.models.heads.vfnet_head import VFNetHead

    cfg = load_config(str(tiny_config(tmp_path, "nan", epochs=2)), [])
    real_loss = VFNetHead.loss
    calls = {"n": 0}

    def loss(self, *args, **kw):
        out = real_loss(self, *args, **kw)
        calls["n"] += 1
        if calls["n"] > 3:  # epoch 1 has 3 iterations; the first of epoch 2 explodes
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out

    monkeypatch.setattr(VFNetHead, "loss", loss)
    with pytest.raises(trainer.TrainingError, match=r"non-finite loss at epoch 2.*last good checkpoint is .*last.pth"):
        trainer.train(cfg)
    assert read_checkpoint(tmp_path / "nan" / "last.pth")["raw"]["epoch"] == 1


# ------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_same_global_batch(tmp_path):
    single = tiny_config(tmp_path, "single", epochs=1, batch_size=2)
    run_cli("train", str(single))
    double = tiny_config(tmp_path, "ddp", epochs=1, batch_size=1)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(29500 + os.getpid() % 1000),
            "-m",
            "varifocal.cli.main",
            "train",
            str(double),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = weights(tmp_path / "single" / "last.pth"), weights(tmp_path / "ddp" / "last.pth")
    assert read_checkpoint(tmp_path / "ddp" / "last.pth")["raw"]["iteration"] == 3
    assert max_diff(a, b) <= 1e-5
    # And training did move the weights (the comparison is not vacuous).
    init = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96])
    assert not math.isclose(
        float((a["bbox_head.vfnet_cls.bias"] - init.state_dict()["bbox_head.vfnet_cls.bias"]).abs().max()), 0.0
    )


def test_resume_auto_continues_from_last_pth(tmp_path):
    """``train.resume=auto`` means ``<out_dir>/last.pth`` (config docstring), not a file named auto."""
    cfg = tiny_config(tmp_path, "auto", epochs=1)
    run_cli("train", str(cfg))
    proc = run_cli("train", str(cfg), "train.epochs=2", "train.resume=auto")
    assert f"resumed from {tmp_path / 'auto' / 'last.pth'}: epoch 1" in proc.stdout
    assert read_checkpoint(tmp_path / "auto" / "last.pth")["raw"]["epoch"] == 2
