"""The runtimes of ``varifocal benchmark`` (issue 14): how each one is set up and called, and the
child process that measures one setting's peak memory.

A *setting* is (runtime, precision, threads). Every runtime is timed on the same preprocessed input
(:func:`make_input`) from the batch tensor to the detections:

* ``eager``: ``model.predict(batch, metas)`` under ``torch.no_grad()``, NCHW (contiguous) layout.
* ``channels_last``: the same with the model and the batch in channels-last memory layout (what
  ``--precision bf16`` uses on the CPU, :mod:`varifocal.utils.precision`).
* ``compile``: ``torch.compile`` (inductor) of the backbone, the neck and the head network, each
  compiled in place (``nn.Module.compile``); post-processing stays eager. The first call (the
  compilation) is timed on its own (``first_call_s``); one compiled copy per (precision, threads).
* ``onnxruntime``: :class:`varifocal.export.OnnxDetector` on the ONNX file that
  :func:`varifocal.export.export_onnx` writes for the input size (``threads`` = its intra-op threads).
* ``openvino``: OpenVINO's CPU plugin on the same ONNX file (``openvino.Core().read_model``),
  ``INFERENCE_NUM_THREADS`` = threads, ``INFERENCE_PRECISION_HINT`` = f32 or bf16, latency hint.

Precisions: ``fp32``, and ``bf16`` (the torch runtimes under ``torch.autocast('cpu', bfloat16)``;
OpenVINO with its bf16 precision hint; onnxruntime's CPU provider has no bf16 kernels and is
reported as not supported).

Child process (peak memory): ``python -m varifocal.cli.bench_runtimes SPEC_JSON`` prints one JSON
line ``{"peak_mib": …, …}``; see :func:`memory_child`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

__all__ = [
    "RUNTIMES",
    "BENCH_PRECISIONS",
    "INSTALL_HINTS",
    "RuntimeUnavailable",
    "RuntimeUnsupported",
    "missing_runtime",
    "load_model",
    "make_input",
    "Prepared",
    "RuntimeSet",
    "memory_child",
    "run_memory_child",
]

#: Every runtime ``--runtimes`` accepts, in the order of the table.
RUNTIMES = ("eager", "channels_last", "compile", "onnxruntime", "openvino")
#: The precisions ``--precision`` accepts here (``auto`` resolves to one of them).
BENCH_PRECISIONS = ("fp32", "bf16")
#: What to ``pip install`` for each module an optional runtime needs (the extras of pyproject.toml:
#: ``export`` = onnx + onnxruntime; ``openvino`` = openvino alone, its runtime needs onnx for the export).
INSTALL_HINTS = {"onnx": "onnx", "onnxruntime": "'varifocal[export]'", "openvino": "'varifocal[openvino]'"}
#: The Python modules each optional runtime needs.
_NEEDS = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


class RuntimeUnavailable(RuntimeError):
    """A runtime whose package is not installed (the message says which and how to install it)."""


class RuntimeUnsupported(RuntimeError):
    """A runtime that cannot run the asked precision (e.g. onnxruntime's CPU provider and bf16)."""


def missing_runtime(runtime: str) -> str | None:
    """``None`` if ``runtime`` can run here, else one line naming what is missing and the install
    command (``'not available: …'``)."""
    missing = [m for m in _NEEDS.get(runtime, ()) if importlib.util.find_spec(m) is None]
    if runtime in _NEEDS:  # both run the file that varifocal.export writes
        export = importlib.import_module("varifocal.export") if importlib.util.find_spec("varifocal.export") else None
        if not hasattr(export, "export_onnx") or not hasattr(export, "OnnxDetector"):
            return "not available: varifocal.export missing (export_onnx / OnnxDetector)"
    if missing:
        fix = ["'varifocal[export]'"] if runtime == "onnxruntime" else [INSTALL_HINTS[m] for m in missing]
        return f"not available: needs {' and '.join(missing)}; pip install {' '.join(fix)}"
    return None


# ------------------------------------------------------------------------------ models and input
def load_model(source: str, num_classes: int = 80) -> tuple[nn.Module, str]:
    """The model that ``CONFIG_OR_MODEL`` names, in eval mode, and how it was made.

    Args:
        source: a YAML config (``model.name``, ``model.load_from`` if set; no backbone weights are
            downloaded), a varifocal checkpoint (``.pth``/``.pt``), or a zoo name (random weights,
            ``torch.manual_seed(0)``, ``num_classes`` classes).

    Returns:
        ``(model, kind)`` with kind ``'config'``, ``'checkpoint'`` or ``'zoo (random weights)'``.

    Raises:
        UsageError: a name that is neither a file nor a zoo model (with "did you mean").
        ConfigError / CheckpointError: a bad config or checkpoint (one line naming the file).
    """
    from ..models.zoo import build_model, list_models
    from .common import UsageError, model_from_checkpoint, unknown_model_hint

    path = Path(source)
    if source.endswith((".yaml", ".yml")):
        from ..config import load_config
        from ..engine.build import model_from_config

        model, kind = model_from_config(load_config(path), pretrained=False), "config"
    elif source.endswith((".pth", ".pt")) or path.is_file():
        if not path.is_file():
            raise UsageError(f"{source}: no such checkpoint file; check the path")
        model, kind = model_from_checkpoint(path), "checkpoint"
    elif source in list_models():
        torch.manual_seed(0)
        model, kind = build_model(source, num_classes=num_classes), "zoo (random weights)"
    else:
        raise UsageError(
            f"{source}: not a config (.yaml), a checkpoint (.pth) or a zoo model name; {unknown_model_hint(source)}"
        )
    return model.eval(), kind


def make_input(
    input_shape: tuple[int, int, int, int], img_shape: tuple[int, int], seed: int = 0
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The benchmark input: a preprocessed batch and its metas.

    Args:
        input_shape: ``(N, 3, H_pad, W_pad)`` of the padded batch.
        img_shape: ``(h, w)`` of the image inside it (top-left; the rest is zero padding).

    Returns:
        ``batch [N, 3, H_pad, W_pad]`` float32 (N(0, 1) noise, an already normalised image, zero
        padding: what the Preprocessor pads with), and N metas (``img_shape``, ``scale_factor``
        (1, 1), ``pad_shape``, ``batch_input_shape``, ``ori_shape``).
    """
    n, c, hp, wp = input_shape
    h, w = img_shape
    g = torch.Generator().manual_seed(seed)
    batch = torch.zeros(n, c, hp, wp)
    batch[:, :, :h, :w] = torch.randn(n, c, h, w, generator=g)
    meta = {
        "ori_shape": (h, w),
        "img_shape": (h, w),
        "scale_factor": (1.0, 1.0),
        "pad_shape": (hp, wp),
        "batch_input_shape": (hp, wp),
    }
    return batch, [dict(meta) for _ in range(n)]


# ------------------------------------------------------------------------------ runtimes
@dataclass
class Prepared:
    """A set-up setting: ``step()`` runs one inference of the batch (→ per-image detections).

    ``setup_s``: seconds to make it (model copy, session, OpenVINO compilation); ``first_call_s``:
    the first call, untimed otherwise (for ``compile``: the compilation); ``detections``: boxes of
    image 0 in that first call; ``note``: what the setting runs.
    """

    step: Callable[[], Any]
    setup_s: float
    first_call_s: float
    detections: int | None
    note: str


def _count(dets: Any) -> int | None:
    try:
        return int(len(dets[0]["boxes"]))
    except (TypeError, KeyError, IndexError):
        return None


class RuntimeSet:
    """Makes the :class:`Prepared` step of every setting of one model on one input.

    Args:
        model: the eval-mode detector (its fp32 NCHW copy is the ``eager`` one); ``None`` is enough
            for ``onnxruntime`` and ``openvino``.
        batch, metas: from :func:`make_input`.
        onnx_path: a function returning the ONNX file of ``model`` at this input (exported on the
            first call), used by ``onnxruntime`` and ``openvino``.
    """

    def __init__(
        self,
        model: nn.Module | None,
        batch: torch.Tensor,
        metas: list[dict],
        onnx_path: Callable[[], str] | None = None,
    ) -> None:
        self.model, self.batch, self.metas = model, batch, metas
        self.onnx_path = onnx_path
        self._cl: tuple[nn.Module, torch.Tensor] | None = None

    def prepare(self, runtime: str, precision: str, threads: int) -> Prepared:
        """Set up (runtime, precision, threads) and call it once.

        Raises:
            RuntimeUnavailable: the runtime's package is missing. RuntimeUnsupported: the runtime
            has no such precision. ValueError: an unknown runtime or precision. Whatever the
            runtime raises while setting up or on its first call (e.g. a compile error).
        """
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        if precision not in BENCH_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(BENCH_PRECISIONS)}")
        missing = missing_runtime(runtime)
        if missing:
            raise RuntimeUnavailable(missing)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        step, note = getattr(self, f"_{runtime}")(precision, threads)
        setup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dets = step()
        return Prepared(step, setup_s, time.perf_counter() - t0, _count(dets), note)

    def _torch_step(self, model: nn.Module, batch: torch.Tensor, precision: str) -> Callable[[], Any]:
        from ..utils.precision import autocast

        metas = self.metas

        def step() -> Any:
            with torch.no_grad(), autocast(precision, "cpu"):
                return model.predict(batch, metas)

        return step

    def _eager(self, precision: str, threads: int) -> tuple[Callable[[], Any], str]:
        return self._torch_step(self.model, self.batch, precision), "model.predict, NCHW" + _amp(precision)

    def _channels_last(self, precision: str, threads: int) -> tuple[Callable[[], Any], str]:
        if self._cl is None:
            model = copy.deepcopy(self.model).to(memory_format=torch.channels_last)
            self._cl = (model, self.batch.contiguous(memory_format=torch.channels_last))
        model, batch = self._cl
        return self._torch_step(model, batch, precision), "model.predict, channels-last" + _amp(precision)

    def _compile(self, precision: str, threads: int) -> tuple[Callable[[], Any], str]:
        model = copy.deepcopy(self.model)
        for part in (model.backbone, model.neck, model.bbox_head):
            part.compile()  # in place: the module keeps its names, __call__ runs the compiled forward
        return self._torch_step(model, self.batch, precision), "torch.compile (inductor), NCHW" + _amp(precision)

    def _onnxruntime(self, precision: str, threads: int) -> tuple[Callable[[], Any], str]:
        if precision != "fp32":
            raise RuntimeUnsupported("not supported: onnxruntime's CPU provider has no bf16 kernels")
        from ..export import OnnxDetector

        detector = OnnxDetector(self._onnx(), threads=threads)
        batch, metas = self.batch.numpy(), self.metas
        return (lambda: _per_image(detector(batch), metas)), "varifocal.export.OnnxDetector (CPUExecutionProvider)"

    def _openvino(self, precision: str, threads: int) -> tuple[Callable[[], Any], str]:
        import openvino as ov

        from ..export.graph import OUTPUT_NAMES

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": int(threads),
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = core.compile_model(core.read_model(self._onnx()), "CPU", config)
        request = compiled.create_infer_request()
        outputs = [compiled.output(name) for name in OUTPUT_NAMES]
        batch, metas = self.batch.numpy(), self.metas

        def step() -> list[dict[str, Any]]:
            result = request.infer({0: batch})
            boxes, scores, labels, counts = (result[o] for o in outputs)
            dets = [
                {"boxes": boxes[i, :k], "scores": scores[i, :k], "labels": labels[i, :k]}
                for i, k in enumerate(int(v) for v in counts)
            ]
            return _per_image(dets, metas)

        return step, f"OpenVINO {ov.__version__} CPU, latency hint, precision hint {config['INFERENCE_PRECISION_HINT']}"

    def _onnx(self) -> str:
        if self.onnx_path is None:
            raise RuntimeUnavailable("not available: no ONNX file for this model")
        return self.onnx_path()


def _per_image(dets: list[dict[str, Any]], metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ONNX graph's detections (batch pixels) → each image's (clipped, rescaled), as eager gives."""
    from ..export.graph import to_image_detections

    return [to_image_detections(d, m["img_shape"], m["scale_factor"]) for d, m in zip(dets, metas)]


def _amp(precision: str) -> str:
    return ", autocast bf16" if precision == "bf16" else ""


# ------------------------------------------------------------------------------ memory child
def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one setting, run in a fresh process (``python -m varifocal.cli.bench_runtimes``).

    ``spec``: ``model`` (CONFIG_OR_MODEL), ``num_classes``, ``input_shape``, ``img_shape``,
    ``runtime``, ``precision``, ``threads``, ``onnx`` (path, for onnxruntime / openvino).

    The baseline is read after torch and varifocal are imported and the input is made; then the
    model is loaded (the torch runtimes build or read it; onnxruntime and openvino only load the
    ONNX file, which holds the post-processing too), the setting is prepared and called twice. Returns ``peak_mib`` = peak RSS growth in MiB
    (``VmHWM``, or ``ru_maxrss`` without /proc: ``source``), ``baseline_mib`` and ``peak_rss_mib``.
    """
    from ..utils.timing import peak_rss_mib

    torch.set_num_threads(int(spec["threads"]))
    batch, metas = make_input(tuple(spec["input_shape"]), tuple(spec["img_shape"]))
    hwm0, ru0 = peak_rss_mib()
    model = None if spec["runtime"] in _NEEDS else load_model(spec["model"], int(spec["num_classes"]))[0]
    runtimes = RuntimeSet(model, batch, metas, onnx_path=(lambda: spec["onnx"]) if spec.get("onnx") else None)
    prepared = runtimes.prepare(spec["runtime"], spec["precision"], int(spec["threads"]))
    prepared.step()
    hwm1, ru1 = peak_rss_mib()
    if hwm0 is None or hwm1 is None:
        return {"peak_mib": ru1 - ru0, "source": "ru_maxrss", "baseline_mib": ru0, "peak_rss_mib": ru1}
    return {"peak_mib": hwm1 - hwm0, "source": "VmHWM", "baseline_mib": hwm0, "peak_rss_mib": hwm1}


def run_memory_child(spec: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    """:func:`memory_child` in a fresh process (``python -m varifocal.cli.bench_runtimes SPEC``, with
    ``OMP_NUM_THREADS`` = the setting's threads): its result, or ``{"error": one line}`` if it failed
    or ran past ``timeout`` seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    cmd = [sys.executable, "-m", "varifocal.cli.bench_runtimes", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"memory child timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = " ".join(out.stderr.strip().splitlines()[-1:]) or f"exit status {out.returncode}"
        return {"error": f"memory child: {tail}"[:400]}
    return json.loads(lines[-1])


def _child_main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m varifocal.cli.bench_runtimes SPEC_JSON", file=sys.stderr)
        return 2
    os.environ.setdefault("VARIFOCAL_BENCH_CHILD", "1")
    try:
        result = memory_child(json.loads(argv[0]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        result = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
