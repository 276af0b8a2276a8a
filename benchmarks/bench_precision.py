"""float32 against bfloat16 on this CPU: the matmul limits, a P3-sized conv, and VFNet-R50 and
torchvision's FCOS-R50 inference under each precision, in one process (issue 12).

Every number is the median of ``--repeat`` timed rounds after one untimed round, with
``torch.set_num_threads(--threads)``. bf16 runs both models in channels-last under
``torch.autocast('cpu', dtype=torch.bfloat16)`` (what ``--precision bf16`` does: ours through
``varifocal.utils.precision``, torchvision's the way a PyTorch user would). Reported: ms, the
bf16/fp32 ratio of each, ours/torchvision's in each precision, whether the CPU has bf16 matrix
units (AMX) and so what ``--precision auto`` picks, and each model's fraction of the measured
matmul limit of its precision (FLOPs from ``torch.utils.flop_counter``).

    .venv/bin/python benchmarks/bench_precision.py [--size 1333x800] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_detectors import build_model, make_batch, make_step  # noqa: E402

from varifocal.utils.precision import autocast, cpu_has_bf16_matrix_units, default_precision  # noqa: E402


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one untimed call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_limit(dtype: torch.dtype, n: int, repeat: int) -> float:
    """FLOP/s of an n×n @ n×n matmul in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / timed(lambda: a @ b, repeat)


def flops_of(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1333x800", help="input WxH")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    out: dict[str, Any] = {
        "threads": args.threads,
        "size": [w, h],
        "repeat": args.repeat,
        "amx": cpu_has_bf16_matrix_units(),
        "auto_precision": default_precision("cpu"),
        "matmul_gflops": {
            "fp32": matmul_limit(torch.float32, args.matmul_size, args.repeat) / 1e9,
            "bf16": matmul_limit(torch.bfloat16, args.matmul_size, args.repeat) / 1e9,
        },
    }
    x = torch.randn(1, 256, 100, 152).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).to(memory_format=torch.channels_last)
    with torch.no_grad():
        out["p3_conv_ms"] = {"fp32": 1e3 * timed(lambda: conv(x), args.repeat)}
        with autocast("bf16", "cpu"):
            out["p3_conv_ms"]["bf16"] = 1e3 * timed(lambda: conv(x), args.repeat)

    batch = make_batch(1, (w, h))
    out["models"] = {}
    for name in ("vfnet_r50", "tv_fcos_r50"):
        model = build_model(name, star_impl="fast", tv_bn="frozen", dense_scores=False)
        step = make_step(name, model, "infer", (w, h), batch)
        row = {"gflops": flops_of(step) / 1e9, "fp32_ms": 1e3 * timed(step, args.repeat)}
        model.to(memory_format=torch.channels_last)
        cl_batch = batch.contiguous(memory_format=torch.channels_last)
        step = make_step(name, model, "infer", (w, h), cl_batch)
        with autocast("bf16", "cpu"):
            row["bf16_ms"] = 1e3 * timed(step, args.repeat)
        row["bf16_over_fp32"] = row["bf16_ms"] / row["fp32_ms"]
        for prec in ("fp32", "bf16"):
            achieved = row["gflops"] / (row[f"{prec}_ms"] / 1e3)
            row[f"{prec}_fraction_of_matmul_limit"] = achieved / out["matmul_gflops"][prec]
        out["models"][name] = row
    ours, tv = out["models"]["vfnet_r50"], out["models"]["tv_fcos_r50"]
    out["vfnet_over_tv_fcos"] = {p: ours[f"{p}_ms"] / tv[f"{p}_ms"] for p in ("fp32", "bf16")}

    print(f"threads {args.threads}, input {w}x{h}, median of {args.repeat}")
    print(f"bf16 matrix units (AMX): {'yes' if out['amx'] else 'no'} → --precision auto = {out['auto_precision']}")
    mm = out["matmul_gflops"]
    print(f"matmul {args.matmul_size}³: fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} GFLOP/s")
    pc = out["p3_conv_ms"]
    print(f"P3 conv [1,256,100,152] 3×3: fp32 {pc['fp32']:.1f} ms, bf16 {pc['bf16']:.1f} ms")
    for name, row in out["models"].items():
        print(
            f"{name:<12} {row['gflops']:.0f} GFLOPs  fp32 {row['fp32_ms']:.0f} ms  bf16 {row['bf16_ms']:.0f} ms  "
            f"bf16/fp32 {row['bf16_over_fp32']:.2f}x  of the limit: fp32 {row['fp32_fraction_of_matmul_limit']:.0%}, "
            f"bf16 {row['bf16_fraction_of_matmul_limit']:.0%}"
        )
    ratio = out["vfnet_over_tv_fcos"]
    print(f"VFNet-R50 / torchvision FCOS-R50: fp32 {ratio['fp32']:.2f}x, bf16 {ratio['bf16']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
