"""The Markdown table of ``varifocal benchmark`` (issue 14): one row per setting, then the fastest
setting of each model and the matmul limits."""

from __future__ import annotations

from typing import Any

__all__ = ["format_table"]


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    """The Markdown table of a :func:`run_benchmark` result, one row per setting, then the fastest."""
    n = result["settings"]["repeat"]
    lines = [
        f"| model | input | runtime | precision | threads | ms/image (median of {n}) | GFLOP/s | "
        "of matmul limit | peak MiB | first call s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in result["models"]:
        w, h = m["image_size"]
        for r in m["results"]:
            if r["status"] != "ok":
                lines.append(
                    f"| {m['model']} | {w}x{h} | {r['runtime']} | {r['precision']} | {r['threads'] or '-'} | "
                    f"{r['status']}: {r['message'].removeprefix(r['status'] + ': ')} | | | | |"
                )
                continue
            frac = r["fraction_of_matmul_limit"]
            lines.append(
                f"| {m['model']} | {w}x{h} | {r['runtime']} | {r['precision']} | {r['threads']} | "
                f"{r['ms_per_image']:.1f} | {r['gflop_s']:.1f} | {_f(None if frac is None else 100 * frac, '.0f')} % | "
                f"{_f(r['peak_mib'], '.0f')} | {r['first_call_s']:.2f} |"
            )
    lines.append("")
    for m in result["models"]:
        best = m["fastest"]
        lines.append(
            f"fastest for {m['model']} ({m['gflops']:.1f} GFLOPs per batch of {m['input_shape'][0]}): "
            + (
                "none ran"
                if best is None
                else f"{best['runtime']} {best['precision']} {best['threads']} "
                f"thread(s), {best['ms_per_image']:.1f} ms/image"
            )
        )
    mm = ", ".join(f"{r['precision']} {r['threads']}t {r['gflop_s']:.0f}" for r in result["matmul_limit"])
    lines.append(f"matmul limit ({result['matmul_limit'][0]['n']}³ torch.mm, GFLOP/s): {mm}; CPU {result['cpu_model']}")
    return "\n".join(lines)
