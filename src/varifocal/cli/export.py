"""``varifocal export``: a checkpoint → ONNX, with an optional PyTorch/ONNX Runtime parity check (issue 14).

``varifocal export [CONFIG_OR_MODEL] --checkpoint model.pth --out model.onnx [--format onnx]
[--deform portable|deformconv] [--opset N] [--dynamic] [--precision fp32] [--input-size WxH]
[--check [--images FOLDER] [--max-images N] [--threads N]]``

CONFIG_OR_MODEL is a YAML config (its ``model.test_scale`` and ``eval`` settings override the
checkpoint's, as in ``varifocal val``; ``--check`` then uses its validation set and reports the AP),
a zoo model name (it must be the checkpoint's model), or nothing (the checkpoint alone).
``--check`` exits with status 1 when a bound of :class:`~varifocal.export.check.CheckBounds` is
exceeded.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..checkpoint import CheckpointError
from .common import UsageError, check_out_file, model_and_kwargs_from_checkpoint, unknown_model_hint

__all__ = ["add_export_parser", "cmd_export", "input_size_arg"]


def input_size_arg(text: str) -> tuple[int, int]:
    """``'640x480'`` → ``(640, 480)`` (width, height), for ``--input-size``."""
    parts = text.lower().split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 640x480), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return w, h


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command to ``sub`` (the parser of :mod:`.main`)."""
    from ..export.onnx_export import PRECISIONS
    from ..export.star_conv import DEFORM_MODES

    p = sub.add_parser("export", help="export a checkpoint to ONNX (boxes after NMS), optionally check its outputs")
    p.add_argument("config", nargs="?", help="YAML config or zoo model name (default: the checkpoint's model)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.test_scale=[320,240]")
    p.add_argument("--checkpoint", required=True, help="varifocal checkpoint (.pth)")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument(
        "--deform",
        choices=DEFORM_MODES,
        default="portable",
        help="star conv as GridSample + MatMul (portable, any runtime) or one ONNX DeformConv (opset >= 19)",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 19)")
    p.add_argument("--dynamic", action="store_true", help="symbolic batch size, height and width")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="only fp32 is supported")
    p.add_argument(
        "--input-size", type=input_size_arg, default=None, help="WxH of the graph input (default: the test scale)"
    )
    p.add_argument("--check", action="store_true", help="compare PyTorch and ONNX Runtime on real images")
    p.add_argument("--images", help="folder of images for --check (default: the config's validation set)")
    p.add_argument("--max-images", type=int, default=None, help="check at most this many images")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of --check")
    p.set_defaults(func=cmd_export)


def _model(args: argparse.Namespace):
    from ..config import load_config
    from ..engine.build import test_cfg_from_config
    from ..models.zoo import list_models

    cfg, name, overrides = None, None, {}
    target = args.config
    if target and (target.endswith((".yaml", ".yml")) or Path(target).is_file()):
        cfg = load_config(target, args.overrides)
        overrides = {"test_cfg": test_cfg_from_config(cfg), "scale": list(cfg.model.test_scale)}
    elif target:
        if target not in list_models():
            raise UsageError(f"{target!r} is neither a config file nor a model name ({unknown_model_hint(target)})")
        name = target
    if cfg is None and args.overrides:  # overrides alone, as in `varifocal val`: only those they set
        over = load_config(None, args.overrides)
        overrides = {"test_cfg": test_cfg_from_config(over)}
        if any(o.startswith("model.test_scale=") for o in args.overrides):
            overrides["scale"] = list(over.model.test_scale)
    model, stored = model_and_kwargs_from_checkpoint(args.checkpoint, overrides)
    stored_name = _checkpoint_model_name(args.checkpoint)
    wanted = name or (cfg.model.name if cfg is not None else None)
    if wanted and stored_name and wanted != stored_name:
        raise CheckpointError(f"{args.checkpoint}: holds a {stored_name} model, not {wanted}; pass the matching one")
    if cfg is not None and int(cfg.model.num_classes) != int(model.num_classes):
        raise CheckpointError(
            f"{args.checkpoint}: model has {model.num_classes} classes but {args.config} says {cfg.model.num_classes}"
        )
    return model.eval().float(), cfg, stored_name or wanted


def _checkpoint_model_name(path: str) -> str | None:
    from ..checkpoint import read_checkpoint

    return read_checkpoint(path)["model_name"]


def _samples(args: argparse.Namespace, model, cfg):
    """``(samples iterable, dataset or None)`` for ``--check``."""
    if args.images:
        from ..cli.predict import IMAGE_SUFFIXES
        from ..data.images import load_image

        folder = Path(args.images)
        if not folder.is_dir():
            raise UsageError(f"--images {folder}: not a folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UsageError(f"--images {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files = files[: args.max_images] if args.max_images else files

        def folder_samples():
            for i, f in enumerate(files):
                image, _, meta = model.preprocessor.resize(load_image(f).float())
                yield image, {**meta, "file_name": str(f), "image_id": i}

        return folder_samples(), None
    if cfg is None:
        raise UsageError("--check needs --images FOLDER or a config whose validation set it can use")
    from ..engine.build import build_datasets

    _, val_ds = build_datasets(cfg, train=False, val=True)
    n = len(val_ds) if not args.max_images else min(args.max_images, len(val_ds))

    def dataset_samples():
        for i in range(n):
            image, _, meta = val_ds[i]
            yield image.float(), meta

    return dataset_samples(), val_ds  # the AP is computed on the checked images only


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``export`` (module docstring); returns the exit status."""
    from ..export import export_onnx
    from ..export.check import check_parity, format_check

    out = check_out_file(args.out, "--out")
    if Path(args.checkpoint).resolve() == out.resolve():
        raise UsageError(f"--out {out}: is the checkpoint; pick another file")
    model, cfg, name = _model(args)
    size = args.input_size
    if size is None:
        div = int(model.preprocessor.size_divisor)
        scale = model.preprocessor.scale or (1333, 800)
        size = (int(math.ceil(max(scale) / div)) * div, int(math.ceil(min(scale) / div)) * div)
    try:
        meta = export_onnx(
            model,
            out,
            input_size=size,
            deform=args.deform,
            opset=args.opset,
            dynamic=args.dynamic,
            precision=args.precision,
            extra_metadata={"model": name, "checkpoint": Path(args.checkpoint).name},
        )
    except ValueError as exc:
        raise UsageError(f"export: {exc}") from None
    shape = "dynamic" if args.dynamic else f"{size[0]}x{size[1]}"
    print(f"wrote {out} ({name}, input {shape}, deform={args.deform}, opset {meta['opset']}, {meta['precision']})")
    if not args.check:
        return 0
    samples, dataset = _samples(args, model, cfg)
    try:
        stats = check_parity(model, str(out), samples, threads=args.threads, dataset=dataset)
    except ValueError as exc:
        raise UsageError(f"--check: {exc}") from None
    print(format_check(stats))
    return 0 if stats["ok"] else 1
