"""The ``varifocal`` command: ``train``, ``val``, ``predict``, ``convert``, ``info``.

Each takes an optional YAML config plus dotted overrides (``model.num_classes=3
train.epochs=24``); unknown keys fail with a suggestion. Errors on bad input are one line on
stderr and a non-zero exit status; nothing already written is touched.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from ..checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from ..config import ConfigError, load_config, save_config
from ..data import DataError, load_image
from ..models.zoo import build_model

__all__ = ["main"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_from_checkpoint(path: str, overrides: dict | None = None) -> torch.nn.Module:
    """Rebuild and load the model stored in a varifocal checkpoint (name + kwargs inside)."""
    ckpt = read_checkpoint(path)
    if ckpt["format"] != "varifocal" or not ckpt["model_name"]:
        raise CheckpointError(f"{path}: not a varifocal checkpoint with a model name; pass a config with model.name")
    kwargs = dict(ckpt["model_kwargs"])
    overrides = dict(overrides or {})
    test_cfg = {**dict(kwargs.get("test_cfg") or {}), **dict(overrides.pop("test_cfg", None) or {})}
    kwargs.update(overrides)
    if test_cfg:
        kwargs["test_cfg"] = test_cfg
    model = build_model(ckpt["model_name"], **kwargs)
    load_checkpoint(model, path)
    return model


def _cmd_train(args: argparse.Namespace) -> int:
    from ..engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    if args.skip_bad_images:
        cfg.data.skip_bad_images = True
    if int(os.environ.get("RANK", "0")) == 0:
        Path(cfg.train.out_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.train.out_dir) / "config.yaml")
    start = time.time()
    result = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done: {result['epoch']} epochs, {result['iteration']} iterations, best AP {result['best_ap']:.4f}, "
            f"{time.time() - start:.0f} s"
        )
    return 0


def _cmd_val(args: argparse.Namespace) -> int:
    from ..engine.build import test_cfg_from_config
    from ..engine.trainer import build_datasets, evaluate
    from ..evaluation import evaluate_file, format_summary, write_json_atomic

    out_dir = Path(args.out_dir)
    if args.predictions:  # evaluate a predictions file alone
        if not args.ann:
            raise ConfigError("--predictions needs --ann (the COCO ground-truth file)")
        metrics = evaluate_file(args.ann, args.predictions, out_dir)
        print(format_summary(metrics))
        return 0
    cfg = load_config(args.config, args.overrides)
    if not args.checkpoint:
        raise ConfigError("val needs --checkpoint (or --predictions with --ann)")
    overrides = {"scale": list(cfg.model.test_scale), "test_cfg": test_cfg_from_config(cfg)} if args.config else None
    model = model_from_checkpoint(args.checkpoint, overrides)
    device = _device(args.device)
    model.to(device)
    _, val_ds = build_datasets(cfg, train=False, val=True)
    if val_ds.num_classes != model.num_classes:
        raise CheckpointError(
            f"{args.checkpoint}: model has {model.num_classes} classes but {val_ds.source} has {val_ds.num_classes}"
        )
    start = time.time()
    metrics, results, detections = evaluate(model, val_ds, device, cfg.eval.batch_size, progress=True)
    metrics["seconds"] = round(time.time() - start, 2)
    metrics["checkpoint"] = str(args.checkpoint)
    write_json_atomic(out_dir / "predictions.json", results)
    write_json_atomic(out_dir / "metrics.json", metrics)
    print(format_summary(metrics))
    print(
        f"wrote {out_dir / 'metrics.json'} and {out_dir / 'predictions.json'} ({len(val_ds)} images, {metrics['seconds']} s)"
    )
    if args.draw:
        _draw_dataset(val_ds, detections, model.class_names, out_dir / "images", args.score_thr, args.draw)
    return 0


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in item for ch in "*?["):
            files += sorted(
                Path(p) for p in glob.glob(item, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{item}: no such image, folder or glob match")
    if not files:
        raise DataError(f"no images found in {' '.join(inputs)}")
    return files


def draw_detections(
    image: torch.Tensor, det: dict, class_names: Sequence[str] | None, score_thr: float
) -> torch.Tensor:
    """``uint8 [3, H, W]`` image with the detections above ``score_thr`` drawn (torchvision)."""
    from torchvision.utils import draw_bounding_boxes

    keep = det["scores"] > score_thr
    labels = [
        f"{class_names[int(l)] if class_names else int(l)} {float(s):.2f}"
        for l, s in zip(det["labels"][keep], det["scores"][keep])
    ]
    palette = ["red", "lime", "blue", "yellow", "cyan", "magenta", "orange", "white", "purple", "pink"]
    colors = [palette[int(l) % len(palette)] for l in det["labels"][keep]]
    width = max(1, round(max(image.shape[1:]) / 400))
    return draw_bounding_boxes(image, det["boxes"][keep], labels=labels, width=width, colors=colors)


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from ..utils.io import atomic_write

    array = image.permute(1, 2, 0).contiguous().numpy()
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _draw_dataset(dataset, detections, class_names, out_dir: Path, score_thr: float, limit: int) -> None:
    """Draw the already computed ``detections`` (dataset order) on the first ``limit`` images."""
    records = dataset.records[:limit]
    for rec, det in zip(records, detections):
        image = load_image(rec.file_name)
        _save_png(draw_detections(image, det, class_names, score_thr), out_dir / (Path(rec.file_name).stem + ".png"))
    print(f"drew {len(records)} images with detections above {score_thr} into {out_dir}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..evaluation import write_json_atomic

    files = _expand_inputs(args.inputs)
    model = model_from_checkpoint(args.checkpoint)
    device = _device(args.device)
    model.to(device).eval()
    out_dir = Path(args.out_dir)
    records = []
    for path in files:
        image = load_image(path)  # raises DataError naming the file
        with torch.no_grad():
            (det,) = model([image.to(device).float()])
        det = {k: v.cpu() for k, v in det.items()}
        keep = det["scores"] > args.score_thr
        records.append(
            {
                "file": str(path),
                "detections": [
                    {
                        "bbox_xyxy": [float(c) for c in box],
                        "score": float(score),
                        "label": int(label),
                        "class_name": model.class_names[int(label)] if model.class_names else None,
                    }
                    for box, score, label in zip(det["boxes"][keep], det["scores"][keep], det["labels"][keep])
                ],
            }
        )
        if not args.no_draw:
            _save_png(draw_detections(image, det, model.class_names, args.score_thr), out_dir / (path.stem + ".png"))
        print(f"{path}: {int(keep.sum())} detections above {args.score_thr}")
    write_json_atomic(out_dir / "predictions.json", {"class_names": model.class_names, "images": records})
    print(f"wrote {out_dir / 'predictions.json'}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torchvision

    from .. import __version__
    from ..models.layers.star_deform_conv import star_deform_conv2d

    print(f"varifocal {__version__}")
    print(f"python {platform.python_version()} ({platform.platform()})")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, threads {torch.get_num_threads()}")
    cuda = torch.cuda.is_available()
    print(f"cuda: {'yes, ' + torch.cuda.get_device_name(0) if cuda else 'no'}")
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


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoint import convert_checkpoint

    info = convert_checkpoint(args.src, args.dst, args.model, half=args.fp16)
    if info["kind"] == "slim":
        print(f"wrote {args.dst}: inference-only, {info['bytes'] / 2**20:.1f} MiB")
    else:
        print(f"wrote {args.dst}: {info['model_name']}, {info['num_classes']} classes")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varifocal", description="IoU-aware detection (VFNet, RetinaNet, FCOS, ATSS): train, evaluate, predict."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a detector from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (e.g. configs/vfnet_lite0_bccd.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=24")
    p.add_argument("--resume", action="store_true", help="continue from <train.out_dir>/last.pth")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images and count them")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("val", help="COCO evaluation of a checkpoint (or of a predictions file)")
    p.add_argument("config", nargs="?", help="YAML config naming the validation data")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--checkpoint", help="varifocal checkpoint")
    p.add_argument("--out-dir", default="outputs/val", help="where metrics.json and predictions.json go")
    p.add_argument("--predictions", help="evaluate this COCO results file instead of running a model")
    p.add_argument("--ann", help="COCO ground truth for --predictions")
    p.add_argument("--draw", type=int, default=0, metavar="N", help="also draw the first N images")
    p.add_argument("--score-thr", type=float, default=0.3, help="score threshold for drawn boxes")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_val)

    p = sub.add_parser("predict", help="detect objects in images, folders or globs")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out-dir", default="outputs/predict")
    p.add_argument("--score-thr", type=float, default=0.3)
    p.add_argument("--no-draw", action="store_true", help="write only predictions.json")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "convert",
        help="MMDetection checkpoint (VFNet, RetinaNet, FCOS, ATSS) → varifocal format, or a varifocal "
        "training checkpoint → inference-only weights",
    )
    p.add_argument("src", help="MMDetection or varifocal checkpoint (.pth)")
    p.add_argument("dst", help="output file")
    p.add_argument("--model", default=None, help="builder name (default: inferred from the keys)")
    p.add_argument("--fp16", action="store_true", help="store weights as float16 (varifocal source only)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("info", help="versions, device, and a check that the deformable conv runs")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``varifocal`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if getattr(args, "config", None) and "=" in args.config:  # only overrides were given
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"varifocal {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        from ..engine.trainer import TrainingError

        if isinstance(exc, TrainingError):
            print(f"varifocal {args.command}: error: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
