"""Sliced inference: detect small objects in large images slice by slice (issue 16; the method of
SAHI, Akyon et al., "Slicing Aided Hyper Inference and Fine-tuning for Small Object
Detection", ICIP 2022).

The image is cut into overlapping slices by the tile grid of :mod:`varifocal.data.tiles` (the
one tiled training uses); each slice goes through the model's own preprocessor at the model's
test scale (a 640×480 slice at test scale 640×480 stays at native resolution), in batches of
``batch_size`` slices; optionally the whole image, downscaled to the test scale, is one more
pass. Each pass's boxes are shifted by its slice's corner into original-image pixels, then
merged across passes:

* ``'nms'``: class-aware NMS (``torchvision.ops.batched_nms``, a box is suppressed by a
  higher-scoring one of its class with IoU ``> merge_thr``);
* ``'nmm'``: SAHI's greedy non-maximum *merging* (``GreedyNMMPostprocess``): boxes in
  descending score order; the best remaining box takes every remaining box of its class whose
  match (IoU, or IoS = intersection over the smaller area) with it is ``> merge_thr``; those
  are removed, and each is merged, in descending score order, into the growing box (union box,
  the kept score, which is the maximum) when it still matches the merged box; a removed box
  that no longer matches is dropped. A box cut by a slice border and the whole box from the
  neighbouring slice so become one whole box.

Finally the ``max_per_img`` best are kept (default: the head's ``test_cfg.max_per_img``). An
image that fits in one slice, without ``full_image``, gets exactly the model's own detections.

Why not the ``sahi`` package: its slicing and merging utilities pull OpenCV, shapely and more,
and work on its own prediction objects; what is needed here (a grid, a batched forward and two
merge rules on tensors) is short on torch/torchvision ops and tested in
``tests/engine/test_sliced.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_area

from ..data.tiles import tile_grid

__all__ = ["SliceSettings", "sliced_predict", "greedy_nmm", "pairwise_match"]


@dataclass(frozen=True)
class SliceSettings:
    """How :func:`sliced_predict` slices and merges (the ``--tiles`` options of ``predict``/``val``).

    Attributes:
        tile_size: ``(width, height)`` of a slice, pixels.
        overlap: fraction of a slice shared by neighbours, ``[0, 1)``.
        full_image: also predict on the whole image at the model's test scale.
        merge: ``'nms'`` or ``'nmm'`` (module docstring).
        merge_thr: match threshold in ``(0, 1]``; ``None``: the head's ``test_cfg.nms_iou`` for
            ``'nms'``, 0.5 for ``'nmm'`` (SAHI's default).
        merge_metric: ``'ios'`` (SAHI's default) or ``'iou'``; used by ``'nmm'``.
        batch_size: slices per forward pass.

    Raises:
        ValueError: a value out of range.
    """

    tile_size: tuple[int, int]
    overlap: float = 0.2
    full_image: bool = False
    merge: Literal["nms", "nmm"] = "nms"
    merge_thr: float | None = None
    merge_metric: Literal["iou", "ios"] = "ios"
    batch_size: int = 4

    def __post_init__(self) -> None:
        if len(self.tile_size) != 2 or min(int(v) for v in self.tile_size) <= 0:
            raise ValueError(f"tile size must be two positive integers (width, height), got {self.tile_size}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"slice overlap must be in [0, 1), got {self.overlap}")
        if self.merge not in ("nms", "nmm"):
            raise ValueError(f"merge must be 'nms' or 'nmm', got {self.merge!r}")
        if self.merge_metric not in ("iou", "ios"):
            raise ValueError(f"merge_metric must be 'iou' or 'ios', got {self.merge_metric!r}")
        if self.merge_thr is not None and not 0.0 < self.merge_thr <= 1.0:
            raise ValueError(f"merge threshold must be in (0, 1], got {self.merge_thr}")
        if self.batch_size < 1:
            raise ValueError(f"slice batch size must be >= 1, got {self.batch_size}")

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`sliced_predict`."""
        return {
            "tile_size": tuple(self.tile_size),
            "overlap": self.overlap,
            "full_image": self.full_image,
            "merge": self.merge,
            "merge_thr": self.merge_thr,
            "merge_metric": self.merge_metric,
            "batch_size": self.batch_size,
        }

    def describe(self) -> str:
        """One line, e.g. ``sliced inference: 640x640 slices, overlap 0.2, merge nms, no full image``."""
        thr = "" if self.merge_thr is None else f" {self.merge_thr}"
        metric = f" ({self.merge_metric})" if self.merge == "nmm" else ""
        return (
            f"sliced inference: {self.tile_size[0]}x{self.tile_size[1]} slices, overlap {self.overlap}, "
            f"merge {self.merge}{thr}{metric}, {'with' if self.full_image else 'no'} full image"
        )


def pairwise_match(a: Tensor, b: Tensor, metric: str = "iou") -> Tensor:
    """``[N, M]`` IoU or IoS (intersection over the smaller area) of xyxy boxes ``a [N, 4]``,
    ``b [M, 4]``; 0 where the denominator is 0.

    Raises:
        ValueError: an unknown metric.
    """
    if metric not in ("iou", "ios"):
        raise ValueError(f"match metric must be 'iou' or 'ios', got {metric!r}")
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a, area_b = box_area(a)[:, None], box_area(b)[None, :]
    denom = area_a + area_b - inter if metric == "iou" else torch.min(area_a, area_b)
    return torch.where(denom > 0, inter / denom.clamp(min=1e-12), torch.zeros_like(inter))


def greedy_nmm(
    boxes: Tensor, scores: Tensor, labels: Tensor, thr: float = 0.5, metric: str = "ios"
) -> tuple[Tensor, Tensor, Tensor]:
    """SAHI's class-aware greedy non-maximum merging (module docstring).

    Args:
        boxes: ``[N, 4]`` xyxy; scores: ``[N]``; labels: ``[N]``.
        thr: boxes match when the metric is ``> thr``.
        metric: ``'ios'`` or ``'iou'``.

    Returns:
        ``(boxes [K, 4], scores [K], labels [K])`` in descending score order (ties: input order).
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    b, s, lab = boxes[order].float(), scores[order], labels[order]
    alive = torch.ones(len(b), dtype=torch.bool)
    kept_boxes, kept = [], []
    for i in range(len(b)):
        if not alive[i]:
            continue
        alive[i] = False
        candidates = torch.nonzero(alive & (lab == lab[i])).flatten()
        members = candidates[pairwise_match(b[i : i + 1], b[candidates], metric)[0] > thr]
        alive[members] = False
        merged = b[i].clone()
        for j in members.tolist():
            if float(pairwise_match(merged[None], b[j][None], metric)[0, 0]) > thr:
                merged = torch.cat([torch.min(merged[:2], b[j, :2]), torch.max(merged[2:], b[j, 2:])])
        kept_boxes.append(merged)
        kept.append(i)
    if not kept:
        return boxes.new_zeros((0, 4)), scores.new_zeros((0,)), labels.new_zeros((0,))
    index = torch.tensor(kept, dtype=torch.long)
    return torch.stack(kept_boxes).to(boxes.dtype), s[index], lab[index]


def _passes(width: int, height: int, tile_size: Sequence[int], overlap: float, full_image: bool) -> list:
    windows = tile_grid(width, height, tile_size, overlap)
    whole = (0, 0, width, height)
    if full_image and whole not in windows:
        windows.append(whole)
    return windows


@torch.no_grad()
def sliced_predict(
    model: nn.Module,
    image: Tensor,
    tile_size: Sequence[int],
    overlap: float = 0.2,
    full_image: bool = False,
    merge: str = "nms",
    merge_thr: float | None = None,
    merge_metric: str = "ios",
    batch_size: int = 4,
    max_per_img: int | None = None,
) -> dict[str, Tensor]:
    """Detections of ``model`` (in eval mode) on one large image, slice by slice (module docstring).

    Args:
        model: a detector with ``preprocessor`` (:class:`~varifocal.models.preprocess.Preprocessor`)
            and ``predict(batch, metas)`` (:class:`~varifocal.models.detectors.single_stage.Detector`).
        image: ``[3, H, W]`` RGB 0-255 at original size, on the model's device.
        tile_size: ``(width, height)`` of a slice, pixels; overlap: ``[0, 1)``.
        full_image: add a pass over the whole image at the test scale.
        merge, merge_thr, merge_metric, batch_size: see :class:`SliceSettings`.
        max_per_img: detections kept after merging (default: ``model.bbox_head.test_cfg.max_per_img``,
            else all).

    Returns:
        ``{"boxes": [K, 4] xyxy in original-image pixels, "scores": [K], "labels": [K]}``, in
        descending score order, on the image's device.

    Raises:
        ValueError: bad settings (see :class:`SliceSettings`) or an image that is not ``[3, H, W]``.
    """
    size = (int(tile_size[0]), int(tile_size[1]))
    SliceSettings(size, overlap, full_image, merge, merge_thr, merge_metric, batch_size)  # type: ignore[arg-type]
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image tensor of shape [3, H, W], got {tuple(image.shape)}")
    height, width = int(image.shape[1]), int(image.shape[2])
    windows = _passes(width, height, size, overlap, full_image)
    pre = model.preprocessor
    boxes, scores, labels = [], [], []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        resized, metas = [], []
        for x0, y0, x1, y1 in chunk:
            im, _, meta = pre.resize(image[:, y0:y1, x0:x1])
            resized.append(im)
            metas.append(meta)
        batch, metas = pre.pad_batch(resized, metas)
        for (x0, y0, _, _), det in zip(chunk, model.predict(batch, metas)):
            boxes.append(det["boxes"] + det["boxes"].new_tensor([x0, y0, x0, y0]))
            scores.append(det["scores"])
            labels.append(det["labels"])
    out_boxes, out_scores, out_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    if len(windows) == 1:  # one pass: the model's own detections
        return {"boxes": out_boxes, "scores": out_scores, "labels": out_labels}
    test_cfg = getattr(getattr(model, "bbox_head", None), "test_cfg", None)
    if merge == "nms":
        thr = merge_thr if merge_thr is not None else float(getattr(test_cfg, "nms_iou", 0.5))
        keep = batched_nms(out_boxes.float(), out_scores.float(), out_labels, thr)
        out_boxes, out_scores, out_labels = out_boxes[keep], out_scores[keep], out_labels[keep]
    else:
        thr = merge_thr if merge_thr is not None else 0.5
        device = out_boxes.device
        merged = greedy_nmm(out_boxes.cpu(), out_scores.cpu(), out_labels.cpu(), thr, merge_metric)
        out_boxes, out_scores, out_labels = (t.to(device) for t in merged)
    if max_per_img is None:
        max_per_img = getattr(test_cfg, "max_per_img", None)
    if max_per_img is not None:
        order = torch.sort(out_scores, descending=True, stable=True).indices[: int(max_per_img)]
        out_boxes, out_scores, out_labels = out_boxes[order], out_scores[order], out_labels[order]
    return {"boxes": out_boxes, "scores": out_scores, "labels": out_labels}
