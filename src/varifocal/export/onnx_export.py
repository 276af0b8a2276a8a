"""``export_onnx`` (a detector → an ONNX file with metadata) and ``OnnxDetector`` (ONNX Runtime).

Exporter: the legacy TorchScript exporter of ``torch.onnx.export(..., dynamo=False)``. It needs
only ``onnx`` (no ``onnxscript``), turns the two small ``autograd.Function`` s of this package into
single ONNX nodes (``NonMaxSuppression``, ``DeformConv``) through their ``symbolic`` methods, and
keeps the input height and width symbolic with ``dynamic_axes``. The graph is
:class:`~varifocal.export.graph.DetectionGraph` (inputs, outputs and the differences from the
eager post-processing are described there).

Metadata (ONNX ``metadata_props``, each value JSON): ``class_names``, ``mean`` / ``std`` (0-255
scale, RGB, the model's :class:`~varifocal.models.preprocess.Preprocessor`), ``test_scale``
``(long, short)``, ``size_divisor``, ``pad_value``, ``input_size`` ``(w, h)`` of the traced
input, ``dynamic``, ``deform``, ``opset``, ``precision``, ``head``, ``test_cfg`` and ``outputs``;
plus ``varifocal`` (all of it in one JSON object) and anything passed as ``extra_metadata``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..models.backbones.efficientnet_lite import _Conv2dSame
from ..models.layers.dcn import ModulatedDeformConv2d
from ..models.layers.deform_conv import DeformConv2d
from ..models.layers.star_deform_conv import StarDeformConv2d
from ..utils.io import atomic_write
from .deform_export import ExportDeformConv2d
from .graph import OUTPUT_NAMES, DetectionGraph
from .star_conv import DEFORM_MODES, ExportStarDeformConv2d

__all__ = ["PRECISIONS", "export_onnx", "read_metadata", "OnnxDetector"]

#: ``precision`` choices; only fp32 is written (fp16/bf16 raise a clear "not supported")
PRECISIONS = ("fp32", "fp16", "bf16")
#: lowest opset per ``deform`` mode (GridSample 16, DeformConv 19) and the default
MIN_OPSET = {"portable": 16, "deformconv": 19}
DEFAULT_OPSET = 19
MAX_OPSET = 20  # the newest opset of the legacy exporter


def _check_args(input_size: Sequence[int], deform: str, opset: int | None, precision: str) -> tuple[int, int, int]:
    if deform not in DEFORM_MODES:
        raise ValueError(f"deform must be one of {DEFORM_MODES}, got {deform!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "fp32":
        raise ValueError(
            f"precision {precision!r} is not supported: the exporter writes fp32 graphs only (ONNX Runtime's CPU "
            "provider lacks fp16/bf16 kernels for GridSample, DeformConv and NonMaxSuppression)"
        )
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET[deform] <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is out of range for deform={deform!r}: use {MIN_OPSET[deform]}..{MAX_OPSET}")
    if len(input_size) != 2 or min(int(v) for v in input_size) <= 0:
        raise ValueError(f"input_size must be (width, height) > 0, got {tuple(input_size)}")
    return int(input_size[0]), int(input_size[1]), opset


class _StaticSamePadConv(nn.Module):
    """An EfficientNet-Lite TF-"SAME" conv (``_Conv2dSame``) with its padding fixed for inputs whose
    size is a multiple of the stride: then ``p = (k − 1)·d + 1 − s`` whatever the size, (0, 1) for
    k = 3, s = 2 and (1, 2) for k = 5. The original computes ``p`` from the size in Python, which the
    tracer would freeze at the traced size; the batches of the graph are multiples of 32, so every
    stride-2 conv of the trunk sees an even size."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        pads = [max((k - 1) * d + 1 - s, 0) for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation)]
        self.pad = [pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        x = torch.nn.functional.pad(x, self.pad) if any(self.pad) else x
        return torch.nn.functional.conv2d(x, c.weight, c.bias, c.stride, 0, c.dilation, c.groups)


def _exportable_deform_conv(name: str, conv: DeformConv2d) -> None:
    """Refuse a free-offset ``DeformConv2d`` other than 3×3 / stride 1 / padding 1 / dilation 1, one
    group, no bias (the RepPoints layers are exactly that)."""
    layout = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, conv.bias is None)
    if layout != ((3, 3), (1, 1), (1, 1), (1, 1), 1, True):
        raise ValueError(
            f"cannot export the deformable conv {name}: only 3x3, stride 1, padding 1, dilation 1, one group, "
            "no bias is exportable"
        )


def _export_copy(model: nn.Module, deform: str) -> nn.Module:
    """An eval-mode deep copy of ``model`` with every star conv, free-offset deformable conv
    (RepPoints) and TF-"SAME" conv replaced for export.

    Raises:
        ValueError: the model has DCNv2 layers (``*_dcn`` backbones, ``dcn_on_last_conv``) or a
            deformable conv of another layout than RepPoints' 3×3.
    """
    dcn = [name for name, m in model.named_modules() if isinstance(m, ModulatedDeformConv2d)]
    if dcn:
        raise ValueError(
            f"cannot export DCNv2 layers ({dcn[0]}, {len(dcn)} in all): only the VFNet star conv is exportable; "
            "use a model without a *_dcn backbone or dcn_on_last_conv"
        )
    for name, m in model.named_modules():
        if isinstance(m, DeformConv2d):
            _exportable_deform_conv(name, m)
    clone = copy.deepcopy(model).eval().float()
    for module in list(clone.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, StarDeformConv2d):
                setattr(module, child_name, ExportStarDeformConv2d(child.weight, deform))
            elif isinstance(child, DeformConv2d):
                setattr(module, child_name, ExportDeformConv2d(child.weight, deform))
            elif isinstance(child, _Conv2dSame):
                setattr(module, child_name, _StaticSamePadConv(child))
    return clone


def _metadata(model: nn.Module, width: int, height: int, deform: str, opset: int, dynamic: bool) -> dict[str, Any]:
    pre = model.preprocessor
    head = model.bbox_head
    names = list(model.class_names) if model.class_names else [str(i) for i in range(head.num_classes)]
    return {
        "format": "varifocal-onnx-1",
        "varifocal_version": __version__,
        "class_names": names,
        "mean": [float(v) for v in pre.mean.flatten()],
        "std": [float(v) for v in pre.std.flatten()],
        "test_scale": list(pre.scale) if pre.scale is not None else None,
        "size_divisor": int(pre.size_divisor),
        "pad_value": float(pre.pad_value),
        "input_size": [width, height],
        "dynamic": bool(dynamic),
        "deform": deform,
        "opset": opset,
        "precision": "fp32",
        "head": type(head).__name__,
        "test_cfg": dataclasses.asdict(head.test_cfg),
        "outputs": "boxes [N,K,4] xyxy batch pixels, scores [N,K], labels [N,K] int64 (-1 pad), num_detections [N]",
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: Sequence[int] = (640, 480),
    deform: str = "portable",
    opset: int | None = None,
    dynamic: bool = False,
    precision: str = "fp32",
    extra_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model`` (a zoo single-stage detector) as an ONNX detection graph (issue 14).

    Args:
        model: VFNet, RetinaNet, FCOS, ATSS, FoveaBox or RepPoints (``SingleStageDetector``); not modified
            (a copy is exported). Its ``bbox_head.test_cfg`` sets the post-processing.
        path: output ``.onnx`` file, written atomically.
        input_size: ``(width, height)`` of the traced batch, pixels; both multiples of the
            preprocessor's ``size_divisor``. Without ``dynamic`` the graph accepts only this size.
        deform: star conv (and RepPoints' deformable convs) as ``'portable'`` (GridSample + conv, any
            runtime) or ``'deformconv'`` (ONNX DeformConv, opset ≥ 19).
        opset: ONNX opset (default 19; portable ≥ 16, deformconv ≥ 19, ≤ 20).
        dynamic: symbolic batch size, height and width.
        precision: ``'fp32'`` (fp16/bf16 raise ValueError "not supported").
        extra_metadata: more JSON-able metadata entries (e.g. the checkpoint's model name).

    Returns:
        The metadata written (module docstring).

    Raises:
        ValueError: a bad argument, an unsupported head / test config / DCNv2 layer, or an input
            size that is not a multiple of ``size_divisor``.
        ImportError: ``onnx`` is not installed (``pip install 'varifocal[export]'``).
    """
    import onnx

    width, height, opset = _check_args(input_size, deform, opset, precision)
    div = int(model.preprocessor.size_divisor)
    if width % div or height % div:
        raise ValueError(f"input_size {width}x{height} must be a multiple of the size divisor {div}")
    graph = DetectionGraph(_export_copy(model, deform), model.bbox_head.test_cfg).eval()
    meta = _metadata(model, width, height, deform, opset, dynamic)
    meta.update(dict(extra_metadata or {}))
    dummy = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    axes = None
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{k: {0: "batch"} for k in OUTPUT_NAMES}}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shapes; the graph keeps them symbolic
            torch.onnx.export(
                graph,
                (dummy,),
                tmp,
                dynamo=False,
                input_names=["images"],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        del proto.metadata_props[:]
        entries = {**{k: json.dumps(v) for k, v in meta.items()}, "varifocal": json.dumps(meta)}
        onnx.helper.set_model_props(proto, entries)
        onnx.save(proto, tmp)

    atomic_write(path, write)
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The varifocal metadata of an exported file (the dict :func:`export_onnx` returned).

    Raises:
        ValueError: ``path`` is not an ONNX file written by :func:`export_onnx`.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise ValueError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "varifocal" not in props:
        raise ValueError(f"{path}: no varifocal metadata; export it with 'varifocal export'")
    return json.loads(props["varifocal"])


class OnnxDetector:
    """An exported detector run by ONNX Runtime (CPU).

    Args:
        path: ``.onnx`` file from :func:`export_onnx`.
        threads: intra-op threads (``None``: ONNX Runtime's default).

    ``__call__(batch [N, 3, H, W] float32)`` (normalised and padded as the metadata says) →
    one ``{'boxes' [k, 4] float32 xyxy batch pixels, 'scores' [k] float32, 'labels' [k] int64}``
    per image, by descending score. ``.metadata``: the dict of :func:`read_metadata`.

    Raises:
        ValueError: an unreadable / foreign file, or (on call) a batch of the wrong shape.
        ImportError: ``onnxruntime`` is not installed.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = str(path)
        self.metadata = read_metadata(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def _check(self, batch: np.ndarray) -> None:
        meta = self.metadata
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{self.path}: the batch must be [N, 3, H, W], got {tuple(batch.shape)}")
        h, w = batch.shape[2:]
        if not meta["dynamic"] and [w, h] != list(meta["input_size"]):
            width, height = meta["input_size"]
            raise ValueError(f"{self.path}: static graph of input {width}x{height}, got {w}x{h}; pad to it")
        div = int(meta["size_divisor"])
        if h % div or w % div:
            raise ValueError(f"{self.path}: batch {w}x{h} must be padded to multiples of {div}")

    def run_raw(self, batch: np.ndarray) -> list[np.ndarray]:
        """The graph's padded outputs ``[boxes, scores, labels, num_detections]`` (see graph.py)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self._check(batch)
        return self.session.run(list(OUTPUT_NAMES), {"images": batch})

    def __call__(self, batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        boxes, scores, labels, counts = self.run_raw(batch)
        return [
            {"boxes": boxes[i, :k], "scores": scores[i, :k], "labels": labels[i, :k]}
            for i, k in enumerate(int(v) for v in counts)
        ]
