"""Parity of an exported graph with the PyTorch model on real images (``varifocal export --check``).

Each image is resized by the model's preprocessor, normalised and padded (to the graph's static
``input_size``, or to the size divisor for a dynamic graph), and the same batch goes through

* PyTorch: ``bbox_head.predict`` on the eager head outputs, once with ``img_shape`` = the batch
  (no rescale: the graph's pixels, for the numeric comparison) and once with the image's own
  ``img_shape`` / ``scale_factor`` (original pixels, for the AP), and
* ONNX Runtime: :class:`~varifocal.export.OnnxDetector`, then, for the AP,
  :func:`~varifocal.export.graph.to_image_detections` (clip to ``img_shape``, rescale).

Numbers (:func:`match_detections`): the top-``top`` PyTorch detections are matched one-to-one to
ONNX detections of the same label at IoU ≥ ``match_iou`` (greedy, by descending PyTorch score);
``max_score_diff`` / ``max_box_diff`` are max |Δ| over matched pairs, ``matched`` the fraction of
``max(n_torch, n_onnx)`` detections matched. An unmatched detection is *excused* when its score
lies within ``score_tol`` of the lowest score of a list that is full (``max_per_img``): a near-tie
at the top-K cut can put it on either side (graph.py lists the differences). With annotations the
COCO AP of each and their difference are reported.

Default bounds (:class:`CheckBounds`, issue 14): |Δscore| ≤ 1e-4, |Δbox| ≤ 1e-2 px, every
non-excused detection matched, |ΔAP| ≤ 0.001.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..structures.boxes import bbox_overlaps
from .graph import to_image_detections
from .onnx_export import OnnxDetector

__all__ = ["CheckBounds", "match_detections", "check_parity", "format_check"]


@dataclass(frozen=True)
class CheckBounds:
    """Pass/fail bounds of the parity check (module docstring)."""

    max_score_diff: float = 1e-4
    max_box_diff: float = 1e-2
    min_matched: float = 1.0
    max_ap_diff: float = 1e-3
    match_iou: float = 0.99


def match_detections(
    ref: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    top: int = 100,
    match_iou: float = 0.99,
    score_tol: float = 1e-4,
    max_per_img: int | None = None,
) -> dict[str, Any]:
    """Match the top ``top`` detections of ``ref`` and ``other`` (same label, IoU ≥ ``match_iou``).

    Args:
        ref, other: ``boxes [k, 4]``, ``scores [k]``, ``labels [k]`` (numpy), by descending score.
        max_per_img: the post-processing's cap; a list this long is "full" (its cut can swap
            near-ties, module docstring).

    Returns:
        ``{"n_ref", "n_other", "matched" (count), "excused" (unmatched near the cut),
        "max_score_diff", "max_box_diff"}`` (diffs 0.0 when nothing matched).
    """
    rb, rs, rl = (np.asarray(ref[k])[:top] for k in ("boxes", "scores", "labels"))
    ob, os_, ol = (np.asarray(other[k])[:top] for k in ("boxes", "scores", "labels"))
    out = {
        "n_ref": len(rs),
        "n_other": len(os_),
        "matched": 0,
        "excused": 0,
        "max_score_diff": 0.0,
        "max_box_diff": 0.0,
    }
    if len(rs) and len(os_):
        iou = bbox_overlaps(torch.as_tensor(rb, dtype=torch.float64), torch.as_tensor(ob, dtype=torch.float64)).numpy()
        iou[rl[:, None] != ol[None, :]] = -1.0
    used_o = np.zeros(len(os_), dtype=bool)
    used_r = np.zeros(len(rs), dtype=bool)
    for i in range(len(rs)):
        if not len(os_):
            break
        cand = np.where(used_o, -1.0, iou[i])
        j = int(cand.argmax())
        if cand[j] >= match_iou:
            used_o[j] = used_r[i] = True
            out["matched"] += 1
            out["max_score_diff"] = max(out["max_score_diff"], float(abs(rs[i] - os_[j])))
            out["max_box_diff"] = max(out["max_box_diff"], float(np.abs(rb[i] - ob[j]).max()))

    def excused(scores: np.ndarray, used: np.ndarray, cut_list: np.ndarray) -> int:
        full = max_per_img is not None and len(cut_list) >= min(top, max_per_img)
        if not full:
            return 0
        cut = float(cut_list[-1])
        return int(np.sum(~used & (np.abs(scores - cut) <= score_tol)))

    out["excused"] = excused(rs, used_r, os_) + excused(os_, used_o, rs)
    return out


def _pad_to(batch: torch.Tensor, size: Sequence[int] | None, what: str) -> torch.Tensor:
    if size is None:
        return batch
    width, height = int(size[0]), int(size[1])
    h, w = batch.shape[2:]
    if h > height or w > width:
        raise ValueError(
            f"{what}: padded to {w}x{h}, larger than the static graph input {width}x{height}; "
            "export with --dynamic or a larger --input-size"
        )
    out = batch.new_zeros((batch.shape[0], 3, height, width))
    out[:, :, :h, :w] = batch
    return out


@torch.no_grad()
def check_parity(
    model: nn.Module,
    onnx_path: str,
    samples: Iterable[tuple[torch.Tensor, dict[str, Any]]],
    *,
    threads: int | None = 1,
    bounds: CheckBounds = CheckBounds(),
    dataset: Any = None,
    top: int = 100,
) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on ``samples`` (module docstring).

    Args:
        model: the exported model (eval mode, fp32, CPU).
        onnx_path: its ``.onnx`` file.
        samples: ``(image [3, h, w] 0-255 already resized by the preprocessor, meta)`` with
            ``img_shape``, ``scale_factor`` and, for the AP, ``image_id``.
        threads: ONNX Runtime intra-op threads.
        dataset: a varifocal dataset (ground truth) to compute the AP of both; ``None``: no AP.
        top: detections per image compared.

    Returns:
        ``{"num_images", "max_score_diff", "max_box_diff", "matched", "excused", "compared",
        "matched_fraction", "ap_torch", "ap_onnx", "ap_diff" (None without a dataset),
        "seconds_torch", "seconds_onnx", "failures": [one line per bound exceeded], "ok"}``.

    Raises:
        ValueError: an image that does not fit a static graph (see the message).
    """
    model.eval()
    det = OnnxDetector(onnx_path, threads=threads)
    static = None if det.metadata["dynamic"] else det.metadata["input_size"]
    head = model.bbox_head
    max_per_img = int(head.test_cfg.max_per_img)
    stats = {"num_images": 0, "max_score_diff": 0.0, "max_box_diff": 0.0, "matched": 0, "excused": 0, "compared": 0}
    torch_dets, onnx_dets, image_ids = [], [], []
    t_torch = t_onnx = 0.0
    for image, meta in samples:
        batch, metas = model.preprocessor.pad_batch([image], [meta])
        batch = _pad_to(batch, static, str(meta.get("file_name", "image")))
        t0 = time.perf_counter()
        outs = head(model.extract_feat(batch))
        raw_meta = {"img_shape": tuple(batch.shape[2:]), "scale_factor": (1.0, 1.0)}
        ref_raw = {k: v.numpy() for k, v in head.predict(outs, [raw_meta], rescale=False)[0].items()}
        ref_img = head.predict(outs, metas, rescale=True)[0]
        t1 = time.perf_counter()
        onnx_raw = det(batch.numpy())[0]
        t_onnx += time.perf_counter() - t1
        t_torch += t1 - t0
        m = match_detections(ref_raw, onnx_raw, top, bounds.match_iou, bounds.max_score_diff, max_per_img)
        stats["num_images"] += 1
        stats["matched"] += m["matched"]
        stats["excused"] += m["excused"]
        stats["compared"] += max(m["n_ref"], m["n_other"])
        stats["max_score_diff"] = max(stats["max_score_diff"], m["max_score_diff"])
        stats["max_box_diff"] = max(stats["max_box_diff"], m["max_box_diff"])
        torch_dets.append(ref_img)
        onnx_dets.append(to_image_detections(onnx_raw, metas[0]["img_shape"], metas[0]["scale_factor"]))
        image_ids.append(int(meta.get("image_id", len(image_ids))))
    stats["matched_fraction"] = stats["matched"] / stats["compared"] if stats["compared"] else 1.0
    stats["seconds_torch"], stats["seconds_onnx"] = round(t_torch, 2), round(t_onnx, 2)
    stats["ap_torch"] = stats["ap_onnx"] = stats["ap_diff"] = None
    if dataset is not None and image_ids:
        stats["ap_torch"] = _ap(dataset, torch_dets, image_ids)
        stats["ap_onnx"] = _ap(dataset, onnx_dets, image_ids)
        stats["ap_diff"] = stats["ap_onnx"] - stats["ap_torch"]
    failures = []
    if stats["max_score_diff"] > bounds.max_score_diff:
        failures.append(f"max |Δscore| {stats['max_score_diff']:.2e} > {bounds.max_score_diff:g}")
    if stats["max_box_diff"] > bounds.max_box_diff:
        failures.append(f"max |Δbox| {stats['max_box_diff']:.2e} px > {bounds.max_box_diff:g} px")
    covered = (stats["matched"] + stats["excused"]) / stats["compared"] if stats["compared"] else 1.0
    if covered < bounds.min_matched:
        failures.append(f"matched {covered:.4f} of the detections (near-ties excused) < {bounds.min_matched:g}")
    if stats["ap_diff"] is not None and abs(stats["ap_diff"]) > bounds.max_ap_diff:
        failures.append(f"|ΔAP| {abs(stats['ap_diff']):.4f} > {bounds.max_ap_diff:g}")
    stats["failures"] = failures
    stats["ok"] = not failures
    return stats


def _ap(dataset: Any, detections: list[dict[str, Any]], image_ids: list[int]) -> float:
    from ..evaluation import CocoEvaluator, detections_to_coco

    results = detections_to_coco(detections, image_ids, dataset.cat_ids)
    evaluator = CocoEvaluator(dataset, dataset.class_names, dataset.cat_ids)
    return float(evaluator.evaluate(results, image_ids=image_ids)["stats"]["AP"])


def format_check(stats: dict[str, Any], top: int = 100) -> str:
    """The check's report, a few lines (what ``varifocal export --check`` prints)."""
    lines = [
        f"check on {stats['num_images']} images (PyTorch {stats['seconds_torch']} s, ONNX Runtime "
        f"{stats['seconds_onnx']} s):",
        f"  max |Δscore| {stats['max_score_diff']:.3e}, max |Δbox| {stats['max_box_diff']:.3e} px (matched pairs)",
        f"  top-{top} matched at IoU >= 0.99: {stats['matched']}/{stats['compared']} "
        f"({stats['matched_fraction']:.4f}; {stats['excused']} unmatched near-ties at the cut)",
    ]
    if stats["ap_diff"] is not None:
        lines.append(
            f"  AP PyTorch {stats['ap_torch']:.4f}, ONNX {stats['ap_onnx']:.4f}, difference {stats['ap_diff']:+.4f}"
        )
    lines.append("  PASS" if stats["ok"] else "  FAIL: " + "; ".join(stats["failures"]))
    return "\n".join(lines)
