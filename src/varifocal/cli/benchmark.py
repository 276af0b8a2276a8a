"""``varifocal benchmark``: inference speed of one or more models across runtimes on this machine (issue 14).

    varifocal benchmark vfnet_r50_fpn models/vfnet_lite0_bccd.pth \\
        --runtimes eager,channels_last,onnxruntime,openvino --precision fp32,bf16 --threads 1,2 --json bench.json

Each CONFIG_OR_MODEL (a YAML config, a varifocal checkpoint or a zoo name with random weights, which
is fine for timing) gets one input: a batch of ``--batch`` images of ``--size`` WxH (default: the
model's test scale, long edge as the width, e.g. 1333x800), N(0, 1) noise zero-padded to the
preprocessor's size divisor, exactly what ``model.predict`` takes (:func:`.bench_runtimes.make_input`).
Every setting (runtime × precision × threads, :mod:`.bench_runtimes`) is timed from that batch to the
detections (backbone, neck, head, post-processing with NMS), in one process, round-robin (each round
runs every setting once, the first one rotating), ``--warmup`` untimed rounds then ``--repeat``
timed ones; the table shows the median of the N timed runs and N.

Reported per setting: ms/image (median / batch), FLOP/s (FLOPs of the model on this input, counted
once with ``torch.utils.flop_counter``, deformable convs as their dense equivalent,
:func:`varifocal.utils.timing.model_flops`, divided by the median), the fraction of the measured
matmul limit (an ``--matmul-size``³ ``torch.mm`` in the same precision and thread count, timed in
rounds of its own), the peak memory (one fresh child process per setting:
``python -m varifocal.cli.bench_runtimes``, peak RSS growth from loading the model to after two
calls; ``--skip-memory`` skips it), set-up and first-call seconds (``compile``: the compilation),
and the fastest setting per model. A runtime that is not installed, a precision it has not, or a
setting that fails (e.g. ``torch.compile``) is one line of the table, not an error.

JSON (``--json``): ``varifocal``, ``torch``, ``python``, ``cpu_model``, ``logical_cpus``, ``amx``,
``date``, ``load_avg_before``/``after``, ``settings`` (the options), ``matmul_limit`` (list of
``precision``, ``threads``, ``n``, ``median_ms``, ``gflop_s``) and ``models``: per model ``model``
(as given), ``kind``, ``input_shape`` [N, 3, H, W], ``image_size`` [w, h], ``gflops`` (per batch),
``onnx_export_s``, ``fastest`` (``runtime``, ``precision``, ``threads``, ``ms_per_image``) and
``results``: per setting ``runtime``, ``precision``, ``threads``, ``status`` (``ok``, ``failed``,
``not available``, ``not supported``), ``message``, ``note``, ``median_ms``, ``ms_per_image``, ``n``,
``times_ms``, ``gflop_s``, ``fraction_of_matmul_limit``, ``peak_mib``, ``memory``, ``setup_s``,
``first_call_s``, ``detections`` (boxes of image 0 in the first call).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..utils.timing import Case, cpu_model, matmul_case, model_flops, run_rounds
from .bench_report import format_table
from .bench_runtimes import (
    BENCH_PRECISIONS,
    RUNTIMES,
    RuntimeSet,
    RuntimeUnavailable,
    RuntimeUnsupported,
    load_model,
    make_input,
    missing_runtime,
    run_memory_child,
)
from .common import UsageError, check_out_file, non_negative_int

__all__ = ["add_benchmark_arguments", "cmd_benchmark", "run_benchmark"]

DEFAULT_RUNTIMES = "eager,channels_last,onnxruntime,openvino"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------ arguments
def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def runtimes_arg(text: str) -> list[str]:
    """argparse type: comma-separated runtimes out of :data:`RUNTIMES` (order kept, no duplicates)."""
    names = _csv(text)
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown runtime {', '.join(map(repr, unknown)) or '(empty list)'}; choose from {','.join(RUNTIMES)}"
        )
    return list(dict.fromkeys(names))


def threads_arg(text: str) -> list[int]:
    """argparse type: comma-separated positive thread counts, e.g. ``1,2``."""
    try:
        values = [int(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be whole numbers >= 1, got {text!r}")
    return list(dict.fromkeys(values))


def precisions_arg(text: str) -> list[str]:
    """argparse type: comma-separated precisions, ``fp32``, ``bf16`` or ``auto`` (what ``auto`` means
    on this CPU, :func:`varifocal.utils.precision.default_precision`)."""
    from ..utils.precision import default_precision

    names = _csv(text)
    unknown = [n for n in names if n not in (*BENCH_PRECISIONS, "auto")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown precision {', '.join(map(repr, unknown)) or '(empty list)'}; choose from fp32,bf16,auto "
            "(fp16 needs CUDA; this benchmark runs on the CPU)"
        )
    try:
        resolved = [default_precision("cpu") if n == "auto" else n for n in names]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return list(dict.fromkeys(resolved))


def size_arg(text: str) -> tuple[int, int]:
    """argparse type: ``WxH`` (e.g. ``1333x800``) → ``(w, h)`` in pixels."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WxH like 1333x800, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``varifocal benchmark`` (see the module docstring)."""
    p.add_argument("models", nargs="+", metavar="CONFIG_OR_MODEL", help="YAML config, checkpoint or zoo model name")
    p.add_argument(
        "--runtimes",
        type=runtimes_arg,
        default=runtimes_arg(DEFAULT_RUNTIMES),
        help=f"comma-separated, of {','.join(RUNTIMES)} (default {DEFAULT_RUNTIMES}; compile takes minutes on a CPU)",
    )
    p.add_argument("--precision", type=precisions_arg, default=["fp32"], help="fp32, bf16 or auto, comma-separated")
    p.add_argument("--threads", type=threads_arg, default=None, help="thread counts, e.g. 1,2 (default: torch's)")
    p.add_argument("--size", type=size_arg, default=None, help="input WxH (default: each model's test scale)")
    p.add_argument("--batch", type=positive_int, default=1, help="images per call (default 1)")
    p.add_argument("--repeat", type=positive_int, default=5, help="timed rounds: the median of N (default 5)")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--num-classes", type=positive_int, default=80, help="classes of a zoo model (default 80)")
    p.add_argument("--matmul-size", type=positive_int, default=2048, help="n of the n×n matmul limit (default 2048)")
    p.add_argument("--skip-memory", action="store_true", help="no peak-memory child processes")
    p.add_argument("--onnx-dir", default=None, help="keep the exported ONNX files here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.set_defaults(func=cmd_benchmark)


# ------------------------------------------------------------------------------ the run
def _input_of(model: torch.nn.Module, size: tuple[int, int] | None, batch: int, source: str) -> tuple[tuple, tuple]:
    """``(input_shape [N, 3, H_pad, W_pad], img_shape (h, w))`` of ``model`` at ``size`` or its scale."""
    pre = getattr(model, "preprocessor", None)
    if size is None:
        scale = getattr(pre, "scale", None)
        if not scale:
            raise UsageError(f"{source}: the model has no test scale; pass --size WxH")
        size = (max(scale), min(scale))
    div = int(getattr(pre, "size_divisor", 32) or 1)
    w, h = size
    return (batch, 3, -(-h // div) * div, -(-w // div) * div), (h, w)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:400]


def run_benchmark(args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Everything ``varifocal benchmark`` measures, as the JSON dict of the module docstring.
    torch's thread count is the caller's again afterwards (the runs set their own).

    Raises:
        UsageError / ConfigError / CheckpointError: a bad CONFIG_OR_MODEL or size (one line).
    """
    caller_threads = torch.get_num_threads()
    try:
        return _run_benchmark(args, log)
    finally:
        torch.set_num_threads(caller_threads)


def _run_benchmark(args: argparse.Namespace, log) -> dict[str, Any]:
    """:func:`run_benchmark` without the restoring of the thread count."""
    threads = args.threads or [torch.get_num_threads()]
    precisions, runtimes = args.precision, args.runtimes
    load_before = os.getloadavg()
    log(
        f"varifocal benchmark: torch {torch.__version__}, CPU {cpu_model()} ({os.cpu_count()} logical), "
        f"threads {','.join(map(str, threads))}, load {load_before[0]:.2f}"
    )
    loaded = []
    for source in args.models:  # every model is checked before any timing
        model, kind = load_model(source, args.num_classes)
        loaded.append((source, model, kind, *_input_of(model, args.size, args.batch, source)))

    # ---- the matmul limit per (precision, threads) -------------------------------------------------
    mm = {(p, t): matmul_case(args.matmul_size, _DTYPES[p]) for p in precisions for t in threads}
    cases = list(mm.values())
    for (_, t), case in mm.items():
        case.before = lambda t=t: torch.set_num_threads(t)
    run_rounds(cases, max(args.warmup, 1), args.repeat)
    flop_rate = {key: 2 * args.matmul_size**3 / case.median for key, case in mm.items()}
    matmul_rows = [
        {
            "precision": p,
            "threads": t,
            "n": args.matmul_size,
            "median_ms": 1e3 * c.median,
            "gflop_s": flop_rate[p, t] / 1e9,
        }
        for (p, t), c in mm.items()
    ]
    log(
        "matmul limit: "
        + ", ".join(f"{r['precision']} {r['threads']}t {r['gflop_s']:.0f} GFLOP/s" for r in matmul_rows)
    )

    onnx_tmp = None if args.onnx_dir else tempfile.TemporaryDirectory(prefix="varifocal-bench-")
    onnx_dir = Path(args.onnx_dir or onnx_tmp.name)
    models_out = []
    try:
        for index, (source, model, kind, input_shape, img_shape) in enumerate(loaded):
            models_out.append(
                _bench_model(
                    args, index, source, model, kind, input_shape, img_shape, threads, onnx_dir, flop_rate, log
                )
            )
    finally:
        if onnx_tmp is not None:
            onnx_tmp.cleanup()
    from .. import __version__
    from ..utils.precision import cpu_has_bf16_matrix_units

    return {
        "varifocal": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "amx": cpu_has_bf16_matrix_units(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_before": list(load_before),
        "load_avg_after": list(os.getloadavg()),
        "settings": {
            "runtimes": runtimes,
            "precisions": precisions,
            "threads": threads,
            "size": list(args.size) if args.size else None,
            "batch": args.batch,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "matmul_size": args.matmul_size,
            "skip_memory": args.skip_memory,
            "num_classes": args.num_classes,
        },
        "matmul_limit": matmul_rows,
        "models": models_out,
    }


def _bench_model(args, index, source, model, kind, input_shape, img_shape, threads, onnx_dir, flop_rate, log):
    """Set up, time and measure every setting of one model (a ``models`` entry of the JSON)."""
    batch, metas = make_input(input_shape, img_shape)
    flops = model_flops(model, lambda: _predict(model, batch, metas))
    info: dict[str, Any] = {
        "model": source,
        "kind": kind,
        "input_shape": list(input_shape),
        "image_size": [img_shape[1], img_shape[0]],
        "gflops": flops / 1e9,
        "onnx_export_s": None,
    }
    onnx_file = onnx_dir / f"{index}_{Path(source).stem}_{input_shape[3]}x{input_shape[2]}.onnx"

    export_error: list[str] = []

    def onnx_path() -> str:  # exported once, by the first runtime that needs it; a failure is kept
        if export_error:
            raise RuntimeError(export_error[0])
        if not onnx_file.is_file():
            from ..export import export_onnx

            onnx_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                with _quiet():  # the exporter prints the whole TorchScript graph when it fails
                    export_onnx(model, str(onnx_file), input_size=(input_shape[3], input_shape[2]))
            except Exception as exc:  # noqa: BLE001 - every ONNX runtime's row says it
                export_error.append(f"ONNX export failed: {_one_line(exc)}")
                raise RuntimeError(export_error[0]) from None
            info["onnx_export_s"] = time.perf_counter() - t0
            log(f"  exported {onnx_file.name} in {info['onnx_export_s']:.1f} s")
        return str(onnx_file)

    log(f"{source} ({kind}): input {list(input_shape)}, {flops / 1e9:.2f} GFLOPs; setting up")
    rs = RuntimeSet(model, batch, metas, onnx_path=onnx_path)
    if any(r in ("onnxruntime", "openvino") and not missing_runtime(r) for r in args.runtimes):
        with contextlib.suppress(RuntimeError):  # a failure is kept and is the message of their rows
            onnx_path()  # first, so that no setting's setup_s holds the export
    results, cases = [], []
    for runtime in args.runtimes:
        missing = missing_runtime(runtime)
        if missing:  # one row for the runtime
            results.append(_row(runtime, "/".join(args.precision), None, "not available", missing))
            continue
        for precision, t in itertools.product(args.precision, threads):
            try:
                prep = rs.prepare(runtime, precision, t)
            except RuntimeUnsupported as exc:
                if not any((r["runtime"], r["precision"]) == (runtime, precision) for r in results):
                    results.append(_row(runtime, precision, None, "not supported", str(exc)))
                continue
            except RuntimeUnavailable as exc:
                results.append(_row(runtime, precision, t, "not available", str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - a runtime that fails is one row of the table
                text = str(exc) if str(exc).startswith("ONNX export failed") else _one_line(exc)
                results.append(_row(runtime, precision, t, "failed", text))
                continue
            row = _row(runtime, precision, t, "ok", "")
            row.update(note=prep.note, setup_s=prep.setup_s, first_call_s=prep.first_call_s, detections=prep.detections)
            results.append(row)
            cases.append(Case(f"{runtime} {precision} {t}", prep.step, before=lambda t=t: torch.set_num_threads(t)))
    ok = [r for r in results if r["status"] == "ok"]
    log(f"timing {len(cases)} settings: {args.warmup} warm-up + {args.repeat} timed rounds")
    run_rounds(cases, args.warmup, args.repeat, log=log)
    for row, case in zip(ok, cases):
        median = case.median
        rate = flops / median
        row.update(
            median_ms=1e3 * median,
            ms_per_image=1e3 * median / args.batch,
            n=len(case.times),
            times_ms=[1e3 * t for t in case.times],
            gflop_s=rate / 1e9,
            fraction_of_matmul_limit=rate / flop_rate[row["precision"], row["threads"]],
        )
    if not args.skip_memory:
        for row in ok:
            spec = {
                "model": source,
                "num_classes": args.num_classes,
                "input_shape": list(input_shape),
                "img_shape": list(img_shape),
                "runtime": row["runtime"],
                "precision": row["precision"],
                "threads": row["threads"],
                "onnx": str(onnx_file) if onnx_file.is_file() else None,
            }
            mem = run_memory_child(spec)
            row["memory"], row["peak_mib"] = mem, mem.get("peak_mib")
            log(
                f"  memory {row['runtime']} {row['precision']} {row['threads']}t: "
                + (f"{mem['peak_mib']:.0f} MiB" if "peak_mib" in mem else mem.get("error", "?"))
            )
    best = min(ok, key=lambda r: r["ms_per_image"], default=None)
    info["fastest"] = (
        None if best is None else {k: best[k] for k in ("runtime", "precision", "threads", "ms_per_image")}
    )
    info["results"] = results
    return info


@contextlib.contextmanager
def _quiet():
    """Send this process's stdout and stderr (file descriptors 1 and 2) to nowhere for a while."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _predict(model, batch, metas):
    with torch.no_grad():
        return model.predict(batch, metas)


def _row(runtime: str, precision: str, threads: int | None, status: str, message: str) -> dict[str, Any]:
    keys = ("note", "median_ms", "ms_per_image", "n", "times_ms", "gflop_s", "fraction_of_matmul_limit")
    row = {"runtime": runtime, "precision": precision, "threads": threads, "status": status, "message": message}
    row.update(dict.fromkeys(keys))
    row.update(peak_mib=None, memory=None, setup_s=None, first_call_s=None, detections=None)
    return row


def cmd_benchmark(args: argparse.Namespace) -> int:
    """Run ``varifocal benchmark``: print the table (and write ``--json``); returns 0."""
    if args.json:
        check_out_file(args.json, "--json")
        if any(Path(args.json).resolve() == Path(m).resolve() for m in args.models):
            raise UsageError(f"--json {args.json}: is one of the inputs; pick another file")
    result = run_benchmark(args, log=lambda s: print(s, flush=True))
    print()
    print(format_table(result))
    if args.json:
        from ..utils.io import atomic_write_json

        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
