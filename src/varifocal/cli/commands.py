"""``varifocal train``, ``val``, ``convert`` and ``info``.

Each checks what a user can get wrong (output paths, model names, weight files, the resume
checkpoint) before any long work starts, and fails with one line naming it and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, read_checkpoint
from ..config import Config, ConfigError, load_config
from ..models.zoo import list_models
from .common import (
    UsageError,
    check_out_dir,
    check_out_file,
    model_and_kwargs_from_checkpoint,
    precision_for,
    resolve_device,
    unknown_model_hint,
)
from .outputs import draw_dataset
from .slicing import slice_settings_from_args
from .thresholds import resolve_score_thr

__all__ = ["cmd_train", "cmd_val", "cmd_convert", "cmd_info", "describe_test_settings"]


# ------------------------------------------------------------------------------ train
def _check_train_inputs(cfg: Config, resume: bool) -> None:
    """The checks of ``train`` that need no dataset: out dir, model name, backbone weights, resume file."""
    check_out_dir(cfg.train.out_dir, "train.out_dir")
    if cfg.model.name not in list_models():
        raise ConfigError(
            f"model.name={cfg.model.name!r} is not a varifocal model; {unknown_model_hint(cfg.model.name)}"
        )
    weights = cfg.model.pretrained_backbone
    if isinstance(weights, str) and not weights.startswith(("http://", "https://")) and not Path(weights).is_file():
        raise ConfigError(
            f"model.pretrained_backbone={weights}: no such file; give the path or URL of the ImageNet weights, "
            "true for the builder's default, or false for random initialisation"
        )
    if cfg.model.load_from and not Path(cfg.model.load_from).is_file():
        raise ConfigError(f"model.load_from={cfg.model.load_from}: no such checkpoint file")
    if resume or cfg.train.resume:
        auto = cfg.train.resume in (None, "", "auto")
        path = Path(cfg.train.out_dir) / "last.pth" if auto else Path(cfg.train.resume)
        if not path.is_file():
            raise UsageError(f"{path}: no checkpoint to resume from; drop --resume (and train.resume) to start anew")
        raw = read_checkpoint(path)["raw"]
        if not all(k in raw for k in ("optimizer", "epoch", "iteration", "rng")):
            raise CheckpointError(
                f"{path}: an inference-only checkpoint (no optimizer, epoch or RNG state) cannot be resumed; "
                f"start a new run from its weights with model.load_from={path} and no --resume"
            )


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``train``. ``config.yaml`` is written by :func:`~varifocal.engine.trainer.train`
    once its set-up has succeeded, and never over another run's config unless resuming it."""
    from ..engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    if args.skip_bad_images:
        cfg.data.skip_bad_images = True
    _check_train_inputs(cfg, args.resume)
    start = time.time()
    result = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        best = "AP" if cfg.eval.metric == "coco" else f"{cfg.eval.metric}_mAP"
        print(
            f"done: {result['epoch']} epochs, {result['iteration']} iterations, best {best} {result['best_ap']:.4f}, "
            f"{time.time() - start:.0f} s"
        )
    return 0


# ------------------------------------------------------------------------------ val
def describe_test_settings(model: torch.nn.Module, from_config: dict, from_checkpoint: dict, scale_source: str) -> str:
    """One line with the test settings in use and where each came from, e.g.
    ``test settings: score_thr 0.05 (checkpoint), nms_iou 0.5 (config), … scale 128x96 (config)``."""
    tc = model.bbox_head.test_cfg
    parts = []
    for field in dataclasses.fields(tc):
        source = "config" if field.name in from_config else "checkpoint" if field.name in from_checkpoint else "default"
        parts.append(f"{field.name} {getattr(tc, field.name)} ({source})")
    scale = getattr(getattr(model, "preprocessor", None), "scale", None)
    if scale is not None:
        parts.append(f"scale {'x'.join(str(int(s)) for s in scale)} ({scale_source})")
    return "test settings: " + ", ".join(parts)


def _voc_of_predictions_file(ann: str, predictions: str, metrics: dict, metric: str) -> None:
    """Add ``<metric>_mAP`` and ``<metric>`` to ``metrics``: the VOC metrics of a COCO results file
    against a COCO ground truth (``iscrowd=1`` boxes ignored as VOC difficult boxes)."""
    from ..evaluation import CocoEvaluator
    from ..evaluation.voc_eval import evaluate_voc, voc_inputs_from_coco

    evaluator = CocoEvaluator(ann)
    detections, ground_truths = voc_inputs_from_coco(
        evaluator.gt_dict, evaluator.load_predictions(predictions), metrics["cat_ids"]
    )
    result = evaluate_voc(detections, ground_truths, metrics["class_names"], use_07_metric=metric == "voc07")
    metrics[f"{metric}_mAP"] = result["mAP"]
    metrics[metric] = result


def cmd_val(args: argparse.Namespace) -> int:
    """Run ``val``: COCO metrics of a checkpoint on ``data.val_*`` (or of a predictions file);
    with ``--metric voc07|voc12`` (default: ``eval.metric``) the PASCAL VOC metrics as well: a
    per-class table printed after the COCO summary, ``<metric>_mAP`` and ``<metric>`` (per class)
    in ``metrics.json``."""
    from ..engine.build import test_cfg_from_config
    from ..engine.report import report_for_coco, report_for_dataset
    from ..engine.trainer import build_datasets, evaluate
    from ..evaluation import CocoEvaluator, evaluate_file, format_summary, write_json_atomic
    from ..evaluation.voc_eval import format_voc_table

    out_dir = check_out_dir(args.out_dir, "--out-dir")
    metric = getattr(args, "metric", None)
    if args.predictions:  # evaluate a predictions file alone
        if not args.ann:
            raise UsageError("--predictions needs --ann (the COCO ground-truth file)")
        if metric is None:
            metric = load_config(args.config, args.overrides).eval.metric if (args.config or args.overrides) else "coco"
        metrics = evaluate_file(args.ann, args.predictions, out_dir)
        print(format_summary(metrics))
        if metric != "coco":
            _voc_of_predictions_file(args.ann, args.predictions, metrics, metric)
            print(format_voc_table(metrics[metric]))
        if args.report:
            evaluator = CocoEvaluator(args.ann)
            results = evaluator.load_predictions(args.predictions)
            report_for_coco(evaluator.gt_dict, results, metrics["class_names"], metrics["cat_ids"], metrics, out_dir)
        if args.report or metric != "coco":
            write_json_atomic(out_dir / "metrics.json", metrics)
        if args.report:
            _print_report(metrics, out_dir)
        return 0
    cfg = load_config(args.config, args.overrides)
    if metric is None:
        metric = cfg.eval.metric
    if not args.checkpoint:
        raise UsageError("val needs --checkpoint (or --predictions with --ann)")
    slicing = slice_settings_from_args(args, cfg.eval.batch_size)
    from_config = test_cfg_from_config(cfg) if (args.config or args.overrides) else {}
    overrides: dict = {"test_cfg": from_config}
    scale_set = bool(args.config) or any(o.startswith("model.test_scale=") for o in args.overrides)
    if scale_set:
        overrides["scale"] = list(cfg.model.test_scale)
    meta: dict = {}
    model, stored = model_and_kwargs_from_checkpoint(args.checkpoint, overrides, meta)
    if args.draw and not isinstance(args.score_thr, float):  # 'best' or a metrics file: check it before the run
        resolve_score_thr(args.score_thr, model.class_names or [], meta, args.checkpoint)
    scale_source = "config" if scale_set else "checkpoint" if "scale" in stored else "default"
    print(describe_test_settings(model, from_config, dict(stored.get("test_cfg") or {}), scale_source))
    device = resolve_device(args.device)
    model.to(device)
    precision = precision_for(args, model, device)
    print(f"precision: {precision}")
    _, val_ds = build_datasets(cfg, train=False, val=True)
    if slicing is not None:  # slices of the original images, resized by the model's preprocessor
        val_ds.transforms = None
        print(slicing.describe())
    if val_ds.num_classes != model.num_classes:
        raise CheckpointError(
            f"{args.checkpoint}: model has {model.num_classes} classes but {val_ds.source} has {val_ds.num_classes}"
        )
    start = time.time()
    metrics, results, detections = evaluate(
        model,
        val_ds,
        device,
        cfg.eval.batch_size,
        progress=True,
        slicing=slicing,
        backend=cfg.eval.backend,
        max_dets=cfg.eval.max_dets,
        precision=precision,
        metric=metric,
    )
    metrics["precision"] = precision
    if slicing is not None:
        metrics["slicing"] = {**slicing.kwargs(), "tile_size": list(slicing.tile_size)}
    metrics["seconds"] = round(time.time() - start, 2)
    metrics["checkpoint"] = str(args.checkpoint)
    if args.report:
        report_for_dataset(val_ds, results, metrics, out_dir)
    write_json_atomic(out_dir / "predictions.json", results)
    write_json_atomic(out_dir / "metrics.json", metrics)
    print(format_summary(metrics))
    if metric != "coco":
        print(format_voc_table(metrics[metric]))
    if args.report:
        _print_report(metrics, out_dir)
    skipped = f", {metrics['num_skipped_images']} unreadable left out" if metrics.get("num_skipped_images") else ""
    print(
        f"wrote {out_dir / 'metrics.json'} and {out_dir / 'predictions.json'} "
        f"({metrics['num_images']} images{skipped}, {metrics['seconds']} s)"
    )
    if args.draw:
        evaluated = [rec for rec in val_ds.records if rec.file_name not in set(metrics.get("skipped_images", ()))]
        score_thr = resolve_score_thr(args.score_thr, model.class_names or [], meta, args.checkpoint)
        draw_dataset(evaluated, detections, model.class_names, out_dir / "images", score_thr, args.draw)
    return 0


def _print_report(metrics: dict, out_dir: Path) -> None:
    """Where the report went and its headline numbers (best-F1 thresholds, calibration)."""
    thresholds = ", ".join(
        f"{name} {'-' if thr is None else f'{thr:.3f}'}" for name, thr in metrics["best_score_thr"].items()
    )
    cal = metrics["report"]["calibration"]
    pearson = "-" if cal.get("pearson") is None else f"{cal['pearson']:.3f}"
    ece = "-" if cal.get("ece") is None else f"{cal['ece']:.3f}"
    print(f"best-F1 score thresholds (IoU 0.5): {thresholds}")
    print(f"score vs IoU of the matched detections: Pearson {pearson}, ECE {ece} ({cal.get('count', 0)} detections)")
    print(f"wrote the report: {out_dir / 'report' / 'report.html'}")


# ------------------------------------------------------------------------------ info, convert
def cmd_info(args: argparse.Namespace) -> int:
    """Versions, the device, and a check that both deformable-conv implementations are right."""
    import platform

    import torchvision

    from .. import __version__
    from ..models.layers.star_deform_conv import star_deform_conv2d

    print(f"varifocal {__version__}")
    print(f"python {platform.python_version()} ({platform.platform()})")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    print(f"cuda: {'yes, ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
    from ..utils.precision import cpu_has_bf16_matrix_units, default_precision

    amx = cpu_has_bf16_matrix_units()
    print(
        f"cpu bfloat16 matrix units (AMX): {'yes' if amx else 'no'}; --precision auto = {default_precision('cpu')} "
        f"on the cpu{', ' + default_precision('cuda') + ' on cuda' if cuda else ''}"
    )
    ok = True
    for dev in ["cpu"] + (["cuda"] if cuda else []):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 5, 6, generator=g).to(dev)
        w = torch.randn(3, 4, 3, 3, generator=g).to(dev)
        d = torch.ones(1, 4, 5, 6).to(dev)  # l = t = r = b = 1 cell: the star conv is a plain 3×3 conv
        ref = torch.nn.functional.conv2d(x, w, padding=1)
        for impl in ("fast", "torchvision"):
            err = float((star_deform_conv2d(x, d, w, impl=impl) - ref).abs().max())
            good = err < 1e-4
            ok &= good
            print(f"deformable conv ({impl}, {dev}): {'ok' if good else 'WRONG'} (max |err| {err:.1e})")
    return 0 if ok else 1


def cmd_convert(args: argparse.Namespace) -> int:
    """MMDetection → varifocal checkpoint, or a training checkpoint → inference-only weights."""
    from ..checkpoint import convert_checkpoint

    if not Path(args.src).is_file():
        raise UsageError(
            f"{args.src}: no such checkpoint file" + (" (it is a folder)" if Path(args.src).is_dir() else "")
        )
    check_out_file(args.dst, "dst")
    if Path(args.dst).exists() and Path(args.dst).resolve() == Path(args.src).resolve():
        raise UsageError(f"dst {args.dst}: is the source file; give another output file")
    info = convert_checkpoint(args.src, args.dst, args.model, half=args.fp16)
    if info["kind"] == "slim":
        print(f"wrote {args.dst}: inference-only, {info['bytes'] / 2**20:.1f} MiB")
    else:
        print(f"wrote {args.dst}: {info['model_name']}, {info['num_classes']} classes")
    return 0
