"""The FL-vs-VFL comparison on BCCD (issue 9, item 3): run the pairs, then print the table.

Every detector trains with its own BCCD recipe (``configs/<family>_lite0_bccd.yaml``) twice,
identical but for ``model.use_vfl`` (false: Focal Loss, true: Varifocal Loss); VFNet also with
a second seed, so that the table shows the seed-to-seed spread beside the FL/VFL difference.
Each run's ``metrics.jsonl`` is copied to ``models/fl_vfl/<run>.train_log.jsonl`` (small; no
weights), and the table reads the last ``val`` record of each (the official test split, the
final epoch's weights: nothing is selected on the test split).

    .venv/bin/python tools/fl_vfl_bccd.py run                 # every missing run, one at a time
    .venv/bin/python tools/fl_vfl_bccd.py run retinanet_fl    # just these
    .venv/bin/python tools/fl_vfl_bccd.py table               # the README table (markdown)

A run whose log is in ``models/fl_vfl`` is not run again. Exit status 1 on a failed run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "models" / "fl_vfl"

# run name -> (config, use_vfl, seed)
RUNS: dict[str, tuple[str, bool, int]] = {}
for _family, _seeds in (
    ("retinanet", (0,)),
    ("atss", (0,)),
    ("fovea", (0,)),
    ("reppoints_moment", (0,)),
    ("vfnet", (0, 1)),
):
    for _seed in _seeds:
        for _vfl in (False, True):
            _name = f"{_family}_{'vfl' if _vfl else 'fl'}" + (f"_seed{_seed}" if len(_seeds) > 1 else "")
            RUNS[_name] = (f"configs/{_family}_lite0_bccd.yaml", _vfl, _seed)


# Overrides that both runs of a pair get. RetinaNet-Lite0 and FoveaBox-Lite0 with VFL diverged in
# their configs' recipes (NaN at epochs 3 and 4, lr 0.005; models/fl_vfl/*_diverged.train_log.jsonl),
# so those pairs clip gradients at 35 (MMDetection's grad_clip of VFNet), FL and VFL alike.
PAIR_OVERRIDES = {"retinanet": ["train.grad_clip=35"], "fovea": ["train.grad_clip=35"]}


def command(name: str) -> list[str]:
    """The ``varifocal train`` command line of run ``name``."""
    config, vfl, seed = RUNS[name]
    return [
        "varifocal",
        "train",
        config,
        f"model.use_vfl={'true' if vfl else 'false'}",
        f"train.seed={seed}",
        f"train.out_dir=work_dirs/fl_vfl/{name}",
        *PAIR_OVERRIDES.get(name.split("_")[0], []),
    ]


# Runs made earlier with these recipes, kept where they are: the ATSS pair of issue 15's
# calibration study and the bundled VFNet-Lite0 (VFL, seed 0). Same configs, earlier code revisions (git log of each file).
EARLIER = {
    "atss_fl": ROOT / "models" / "atss_fl_lite0_bccd.train_log.jsonl",
    "atss_vfl": ROOT / "models" / "atss_vfl_lite0_bccd.train_log.jsonl",
    "vfnet_vfl_seed0": ROOT / "models" / "vfnet_lite0_bccd.train_log.jsonl",
}


def log_path(name: str) -> Path:
    """Where run ``name``'s training log lives."""
    return EARLIER.get(name, LOGS / f"{name}.train_log.jsonl")


def run(names: list[str]) -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    venv_bin = ROOT / ".venv" / "bin"
    for name in names or list(RUNS):
        log = log_path(name)
        if log.exists():
            continue
        cmd = command(name)
        cmd[0] = str(venv_bin / "varifocal") if (venv_bin / "varifocal").exists() else cmd[0]
        print("+", " ".join(command(name)), flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            print(f"fl_vfl_bccd: run {name} failed", file=sys.stderr)
            return 1
        tmp = log.with_suffix(".tmp")
        shutil.copyfile(ROOT / "work_dirs" / "fl_vfl" / name / "metrics.jsonl", tmp)
        tmp.replace(log)
    return 0


def final_val(name: str) -> dict | None:
    log = log_path(name)
    if not log.exists():
        return None
    vals = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("kind") == "val"]
    return vals[-1] if vals else None


def table() -> str:
    lines = [
        "| detector | seed | FL AP / AP50 / AP75 | VFL AP / AP50 / AP75 | VFL − FL (AP / AP50 / AP75) |",
        "|---|---|---|---|---|",
    ]
    for base in dict.fromkeys(n.replace("_vfl", "#").replace("_fl", "#") for n in RUNS):
        fl, vfl = final_val(base.replace("#", "_fl")), final_val(base.replace("#", "_vfl"))
        family, _, seed = base.partition("#")
        seed = seed.removeprefix("_seed") or "0"

        def cell(r):
            return "not run" if r is None else f"{r['AP']:.3f} / {r['AP50']:.3f} / {r['AP75']:.3f}"

        diff = (
            "—" if fl is None or vfl is None else " / ".join(f"{vfl[k] - fl[k]:+.3f}" for k in ("AP", "AP50", "AP75"))
        )
        lines.append(f"| {family} | {seed} | {cell(fl)} | {cell(vfl)} | {diff} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "table"):
        print(__doc__)
        return 2
    if argv[0] == "run":
        unknown = [n for n in argv[1:] if n not in RUNS]
        if unknown:
            print(f"fl_vfl_bccd: unknown runs {unknown}; known: {list(RUNS)}", file=sys.stderr)
            return 2
        return run(argv[1:])
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
