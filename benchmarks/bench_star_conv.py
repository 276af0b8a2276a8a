"""Speed of the star-shaped deformable conv (spec §2.3) against a plain 3×3 conv of one shape.

All three variants run in ONE process, interleaved round by round, so that load from other
processes hits them alike:

* ``conv``: ``F.conv2d(x, weight, padding=1)``, the baseline;
* ``torchvision``: ``deform_conv2d`` with star offsets (``impl='torchvision'``);
* ``fast``: ``star_deform_conv2d(..., impl='fast')``.

Each is timed forward only (under no_grad) and forward+backward (gradients w.r.t. x, weight
and, for the deformable ones, distances). After ``--warmup`` untimed rounds, every variant is
timed ``--repeat`` times. The script prints the median (and min) of each, and the ratios of
the medians to the plain conv.

    python benchmarks/bench_star_conv.py --size 1 256 100 152 --repeat 7 --threads 2
    python benchmarks/bench_star_conv.py --threads 2 --dtype bfloat16 --skip-torchvision
    python benchmarks/bench_star_conv.py --threads 2 --skip-torchvision --no-backward --parts

``--parts`` (float32) also times, in the same rounds, the three steps of the fast forward:
``geometry`` (indices and bilinear weights of the 25 reads per location), ``tap GEMM`` (x against
the 9 taps' weights into the reused buffer) and ``gather`` (the weighted 25-read sums), so the
table shows where the forward's time goes relative to the plain conv.

The load average is printed too: on a CPU shared with other busy processes every number
moves, and the plain conv (one big oneDNN call) suffers less than ops made of many calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import varifocal.models.layers.star_deform_conv as sdc
from varifocal.models.layers.star_deform_conv import star_deform_conv2d


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size",
        type=int,
        nargs=4,
        default=[1, 256, 100, 152],
        metavar=("N", "C", "H", "W"),
        help="input shape (P3 of 800x1216 by default)",
    )
    p.add_argument("--out-channels", type=int, default=None, help="O (default: C)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per variant (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="bfloat16 runs all three under CPU autocast"
    )
    p.add_argument("--skip-torchvision", action="store_true", help="leave out the (slow) torchvision op")
    p.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    p.add_argument(
        "--parts", action="store_true", help="also time the fast forward's geometry, tap GEMM and gather (float32)"
    )
    return p.parse_args()


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    n, c, h, w = args.size
    o = args.out_channels or c
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w)
    weight = torch.randn(o, c, 3, 3) * 0.01
    # Boxes of ~1-12 cells per side, some reaching outside the map (like VFNet at init: ~8).
    dist = torch.rand(n, 4, h, w) * 11 + 1
    autocast = args.dtype == "bfloat16"

    def run(kind: str, backward: bool) -> None:
        xi = x.detach().requires_grad_(backward)
        wi = weight.detach().requires_grad_(backward)
        di = dist.detach().requires_grad_(backward)
        amp = torch.autocast("cpu", torch.bfloat16, enabled=autocast)
        with torch.set_grad_enabled(backward), amp:
            if kind == "conv":
                y = F.conv2d(xi, wi, padding=1)
            else:
                y = star_deform_conv2d(xi, di, wi, impl=kind)
        if backward:
            y.backward(torch.ones_like(y))

    parts = _fast_forward_parts(x, dist, weight) if args.parts and not autocast else {}

    def run_case(kind: str, backward: bool) -> None:
        if kind in parts:
            with torch.no_grad():
                parts[kind]()
        else:
            run(kind, backward)

    kinds = ["conv", "fast"] + ([] if args.skip_torchvision else ["torchvision"])
    modes = [False] + ([] if args.no_backward else [True])
    cases = [(k, b) for b in modes for k in kinds] + [(k, False) for k in parts]
    times: dict[tuple[str, bool], list[float]] = {case: [] for case in cases}
    load_before = os.getloadavg()
    for rnd in range(args.warmup + args.repeat):
        for case in cases:  # interleaved: every round times every case once
            t0 = time.perf_counter()
            run_case(*case)
            dt = time.perf_counter() - t0
            if rnd >= args.warmup:
                times[case].append(dt)

    print(
        f"star deformable conv benchmark: x [{n},{c},{h},{w}] -> {o} ch, 3x3, "
        f"dtype {args.dtype}, threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    print(
        f"load average (1 min) before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs (other processes make the numbers noisy)"
    )
    print(
        f"median and min of N={args.repeat} timed runs after {args.warmup} warm-up rounds; "
        "ratio = this impl / plain conv in the same mode (of the medians, of the mins)"
    )
    print(f"{'mode':<9}{'impl':<13}{'median ms':>10}{'min ms':>9}{'ratio med':>11}{'ratio min':>11}")
    for backward in modes:
        mode = "fwd+bwd" if backward else "fwd"
        base_med = statistics.median(times[("conv", backward)])
        base_min = min(times[("conv", backward)])
        for kind in kinds + ([] if backward else list(parts)):
            ts = times[(kind, backward)]
            med, low = statistics.median(ts), min(ts)
            print(
                f"{mode:<9}{kind:<13}{med * 1e3:>10.1f}{low * 1e3:>9.1f}{med / base_med:>11.2f}{low / base_min:>11.2f}"
            )


def _fast_forward_parts(x: torch.Tensor, dist: torch.Tensor, weight: torch.Tensor) -> dict:
    """Callables for the three steps of the fast float32 forward (no-grad path), on these inputs.

    They call the module's own steps (``_Geometry``, ``_tap_gemm``, ``_tap_gather``).
    """
    n, c, h, w = x.shape
    o = weight.shape[0]
    hw = h * w
    if n * hw * 9 * o > sdc._TAPS_ELEMS:
        raise SystemExit("--parts needs a batch whose tap products fit one buffer")
    threads = sdc._Threads(x.device)
    w9 = sdc._tap_weight(weight, 0, o)
    taps = sdc._workspace("taps", (n * hw, 9 * o), x.dtype, x.device)
    geo = sdc._Geometry(dist, h, w, torch.float32)  # fresh tensors: not overwritten by "geometry"
    index, vals = geo.tap_index.view(n * hw, 25), geo.vals.view(n * hw, 25)

    def geometry() -> None:
        with threads.serial():
            _ = sdc._Geometry(dist, h, w, torch.float32, scratch=True).tap_index

    def tap_gemm() -> None:
        for im in range(n):
            sdc._tap_gemm(x, im, w9, taps[im * hw : (im + 1) * hw], threads)

    def gather() -> None:
        sdc._tap_gather(index, vals, taps, o, threads)

    return {"geometry": geometry, "tap GEMM": tap_gemm, "gather": gather}


if __name__ == "__main__":
    main()
