"""CPU speed of the generic fast deformable conv and of the detectors that use it, in one run
(issue 9, acceptance 3): ratios against baselines measured in the same process.

Op section, at ``--size`` (P3 of an 800×1216 input, ``[1, 256, 100, 152]``, by default):

* ``conv3x3``: ``F.conv2d(x, weight, padding=1)``, the baseline;
* ``dcn fast``: ``deform_conv2d(x, offset, weight, padding=1)`` (DCNv1, as RepPoints uses it),
  the fast CPU kernel; ``dcnv2 fast``: the same with a mask (DCNv2, the ``*_dcn`` backbones);
* ``dcnv2 torchvision``: ``torchvision.ops.deform_conv2d`` with the mask, for reference
  (``--skip-torchvision`` leaves it out).

Each is timed forward only (no_grad) and forward+backward (gradients of x, weight, offset and
mask). Offsets are N(0, ``--offset-std``²) input pixels (default 3: points spread over a few
cells, many samples off the grid, some outside the map), masks U(0, 1).

Model section (``--models``; skipped with ``--no-models``), inference at ``--model-size``
(1333×800, batch ``[1, 3, 800, 1344]``), random weights, 80 classes, classifier biases zeroed
so that every detector's post-processing keeps its maximum number of candidates:

* ``reppoints_moment_r50_fpn_gn`` vs ``retinanet_r50_fpn`` (acceptance: ≤ 1.2×);
* ``vfnet_r50_fpn_dcn`` vs ``vfnet_r50_fpn`` (acceptance: ≤ 1.15×).

Every case runs once per round, round-robin with a rotating start
(``varifocal.utils.timing.run_rounds``), after ``--warmup`` untimed rounds; medians of
``--repeat`` rounds.

Usage::

    .venv/bin/python benchmarks/bench_deform_conv.py --json benchmarks/results/deform_conv_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import varifocal
from varifocal.models.layers.deform_conv import deform_conv2d
from varifocal.utils.io import atomic_write_json
from varifocal.utils.timing import Case, cpu_model, matmul_case, run_rounds

# (model, baseline, the acceptance bound on model / baseline)
MODEL_PAIRS = [
    ("reppoints_moment_r50_fpn_gn", "retinanet_r50_fpn", 1.2),
    ("vfnet_r50_fpn_dcn", "vfnet_r50_fpn", 1.15),
]
# The classifier's last layer per family: its bias is zeroed (dense scores, the worst case of NMS).
CLS_OUT = ("retina_cls", "reppoints_cls_out", "vfnet_cls")


def _op_cases(size: list[int], offset_std: float, skip_torchvision: bool) -> list[Case]:
    n, c, h, w = size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(c, c, 3, 3, generator=g) * 0.02
    offset = torch.randn(n, 18, h, w, generator=g) * offset_std
    mask = torch.rand(n, 9, h, w, generator=g)

    def make(kind: str, backward: bool) -> Callable[[], Any]:
        def run() -> None:
            xi = x.detach().requires_grad_(backward)
            wi = weight.detach().requires_grad_(backward)
            oi = offset.detach().requires_grad_(backward)
            mi = mask.detach().requires_grad_(backward)
            with torch.set_grad_enabled(backward):
                if kind == "conv3x3":
                    y = F.conv2d(xi, wi, padding=1)
                elif kind == "dcn fast":
                    y = deform_conv2d(xi, oi, wi, padding=1, impl="fast")
                elif kind == "dcnv2 fast":
                    y = deform_conv2d(xi, oi, wi, padding=1, mask=mi, impl="fast")
                else:
                    y = deform_conv2d(xi, oi, wi, padding=1, mask=mi, impl="torchvision")
            if backward:
                y.backward(torch.ones_like(y))

        return run

    kinds = ["conv3x3", "dcn fast", "dcnv2 fast"] + ([] if skip_torchvision else ["dcnv2 torchvision"])
    return [Case(f"{k} {'fwd+bwd' if b else 'fwd'}", make(k, b)) for b in (False, True) for k in kinds]


def _model_case(name: str, size: tuple[int, int]) -> Case:
    model = varifocal.build_model(name, num_classes=80).eval()
    for mod_name, mod in model.named_modules():
        if mod_name.split(".")[-1] in CLS_OUT and isinstance(mod, nn.Conv2d) and mod.bias is not None:
            nn.init.zeros_(mod.bias)
    w, h = size
    pad = (-(-h // 32) * 32, -(-w // 32) * 32)
    batch = torch.zeros(1, 3, *pad)
    batch[:, :, :h, :w] = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    metas = [{"img_shape": (h, w), "scale_factor": (1.0, 1.0), "pad_shape": pad, "batch_input_shape": pad}]

    def run():
        with torch.no_grad():
            return model.predict(batch, metas)

    return Case(name, run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, nargs=4, default=[1, 256, 100, 152], metavar=("N", "C", "H", "W"))
    p.add_argument("--offset-std", type=float, default=3.0, help="offset std in input pixels")
    p.add_argument("--skip-torchvision", action="store_true")
    p.add_argument("--no-models", action="store_true", help="time the op only")
    p.add_argument("--model-size", type=int, nargs=2, default=[1333, 800], metavar=("W", "H"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--model-repeat", type=int, default=5)
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    limit = matmul_case(2048)
    run_rounds([limit], 1, 3)
    limit_gflops = 2 * 2048**3 / limit.median / 1e9
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    log(f"{cpu_model()}, {args.threads} threads, matmul limit {limit_gflops:.0f} GFLOP/s")
    load_before = os.getloadavg()[0]

    ops = _op_cases(args.size, args.offset_std, args.skip_torchvision)
    run_rounds(ops, args.warmup, args.repeat, log=log)
    n, c, h, w = args.size
    dense_gflop = 2 * c * c * 9 * h * w * n / 1e9
    print(
        f"== deformable conv vs conv3x3 at {args.size} (offsets N(0, {args.offset_std}^2) px), median of {args.repeat}"
    )
    print("| op | mode | ms | ratio to conv3x3 | % of matmul limit |")
    print("|---|---|---|---|---|")
    op_rows = []
    for case in ops:
        kind, mode = case.name.rsplit(" ", 1)
        base = next(o for o in ops if o.name == f"conv3x3 {mode}")
        flop = dense_gflop * (3 if mode == "fwd+bwd" else 1)
        row = {
            "op": kind,
            "mode": mode,
            "ms": round(case.median * 1e3, 1),
            "ratio_vs_conv3x3": round(case.median / base.median, 3),
            "pct_limit": round(100 * flop / case.median / limit_gflops, 1),
            "times_s": [round(t, 4) for t in case.times],
        }
        op_rows.append(row)
        print(f"| {kind} | {mode} | {row['ms']} | {row['ratio_vs_conv3x3']:.2f} | {row['pct_limit']} |")

    model_rows = []
    if not args.no_models:
        size = tuple(args.model_size)
        known = set(varifocal.list_models())
        pairs = [pair for pair in MODEL_PAIRS if pair[0] in known and pair[1] in known]
        for pair in MODEL_PAIRS:
            if pair not in pairs:
                log(f"skipping {pair[0]} vs {pair[1]}: not in this build's zoo")
        names = [m for pair in pairs for m in pair[:2]]
        models = [_model_case(nm, size) for nm in names]
        run_rounds(models, args.warmup, args.model_repeat, log=log)
        print(f"== inference at {size[0]}x{size[1]}, median of {args.model_repeat}")
        print("| model | ms | baseline | baseline ms | ratio | bound |")
        print("|---|---|---|---|---|---|")
        for model, base, bound in pairs:
            mc = next(c for c in models if c.name == model)
            bc = next(c for c in models if c.name == base)
            row = {
                "model": model,
                "ms": round(mc.median * 1e3, 1),
                "baseline": base,
                "baseline_ms": round(bc.median * 1e3, 1),
                "ratio": round(mc.median / bc.median, 3),
                "bound": bound,
                "times_s": [round(t, 4) for t in mc.times],
                "baseline_times_s": [round(t, 4) for t in bc.times],
            }
            model_rows.append(row)
            print(f"| {model} | {row['ms']} | {base} | {row['baseline_ms']} | {row['ratio']:.2f} | <= {bound} |")
    if args.json:
        result = {
            "cpu": cpu_model(),
            "threads": args.threads,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "model_repeat": args.model_repeat,
            "matmul_limit_gflops": round(limit_gflops, 1),
            "load_avg_before_after": [load_before, os.getloadavg()[0]],
            "torch": torch.__version__,
            "size": args.size,
            "offset_std": args.offset_std,
            "ops": op_rows,
            "models": model_rows,
        }
        atomic_write_json(args.json, result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
