"""CPU inference speed of RefineDet320/512 (VGG-16) against our RetinaNet-R50 at the same input
size, in one process and one run (issue "RefineDet", acceptance 4).

The paper reports 40.3 FPS (320) and 24.1 FPS (512) on a Titan X (``refinedet_spec.md`` §10);
those cannot be reproduced on a CPU, so the table gives ratios against a baseline measured in
the same run: our ``retinanet_r50_fpn`` (MMDetection's RetinaNet, ResNet-50 FPN P3-P7, 9 anchors)
on the same square input.

Every model (random weights, ``num_classes=20`` as for VOC) is timed as
``model.predict(batch, metas)`` on batch 1: the normalised ``[1, 3, S, S]`` tensor in, detections
out (backbone, neck, head, post-processing with NMS). Every case runs once per round,
round-robin with a rotating start (``varifocal.utils.timing.run_rounds``), after ``--warmup``
untimed rounds; the table gives the median of ``--repeat`` rounds. Random weights give near-uniform
scores, so both detectors' post-processing keeps its maximum number of candidates (RefineDet: top
1000 per class before NMS; RetinaNet: 1000 per level): the timings include the worst case of it.

Usage::

    .venv/bin/python benchmarks/bench_refinedet.py --json benchmarks/results/refinedet_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import varifocal
from varifocal.utils.io import atomic_write_json
from varifocal.utils.timing import Case, cpu_model, matmul_case, model_flops, run_rounds


def _case(name: str, size: int) -> tuple[Case, float]:
    model = varifocal.build_model(name, num_classes=20, scale=(size, size)).eval()
    batch = torch.randn(1, 3, size, size)
    metas = [
        {
            "img_shape": (size, size),
            "ori_shape": (size, size),
            "scale_factor": (1.0, 1.0),
            "pad_shape": (size, size),
            "batch_input_shape": (size, size),
        }
    ]

    def run():
        with torch.no_grad():
            return model.predict(batch, metas)

    gflops = model_flops(model, run) / 1e9
    return Case(f"{name}@{size}", run), gflops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="320,512", help="square input sides, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", help="write the results here (atomically)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    cases, flops = [], {}
    for size in sizes:
        for name in (f"refinedet{size}_vgg16", "retinanet_r50_fpn"):
            case, gflops = _case(name, size)
            cases.append(case)
            flops[case.name] = gflops
    limit = matmul_case(2048)
    run_rounds([limit], 1, 3)
    limit_gflops = 2 * 2048**3 / limit.median / 1e9
    print(f"{cpu_model()}, {args.threads} threads, matmul limit {limit_gflops:.0f} GFLOP/s", file=sys.stderr)
    run_rounds(cases, args.warmup, args.repeat, log=lambda m: print(m, file=sys.stderr))
    rows = []
    print(f"| input | model | GFLOPs | ms (median of {args.repeat}) | FPS | FPS / RetinaNet's |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        base = next(c for c in cases if c.name == f"retinanet_r50_fpn@{size}")
        for case in cases:
            if not case.name.endswith(f"@{size}"):
                continue
            ms = case.median * 1e3
            row = {
                "input": f"{size}x{size}",
                "model": case.name.split("@")[0],
                "gflops": round(flops[case.name], 2),
                "ms": round(ms, 1),
                "fps": round(1e3 / ms, 2),
                "fps_ratio_vs_retinanet": round(base.median / case.median, 3),
                "times_s": [round(t, 4) for t in case.times],
            }
            rows.append(row)
            print(
                f"| {row['input']} | {row['model']} | {row['gflops']} | {row['ms']} | {row['fps']} | "
                f"{row['fps_ratio_vs_retinanet']:.2f}x |"
            )
    if args.json:
        result = {
            "cpu": cpu_model(),
            "threads": args.threads,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "matmul_limit_gflops": round(limit_gflops, 1),
            "load_avg": os.getloadavg()[0],
            "torch": torch.__version__,
            "rows": rows,
        }
        atomic_write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
