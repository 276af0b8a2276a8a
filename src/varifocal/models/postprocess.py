"""Dense-head post-processing shared by every single-stage head: per-level score threshold and
top-k, decode, rescale, score factor, size filter, class-aware NMS, top-k per image.

Two procedures (``../shared/docs/zoo_spec.md`` §1.15, ``vfnet_spec.md`` §5):

- ``'mmdet3'`` (default, MMDetection 3.x ``filter_scores_and_topk`` + ``_bbox_post_process``):
  per level keep every (location, class) pair whose *raw* class score is ``> score_thr``, sort,
  keep the first ``nms_pre``; decode those locations (clipped to ``img_shape``); rescale to the
  original image; multiply the score factor (centerness) in; drop boxes not wider and taller
  than ``min_bbox_size``; batched NMS; keep ``max_per_img``.
- ``'mmdet2'`` (MMDetection ≤ 2.x, the VarifocalNet authors' code): per level keep the
  ``nms_pre`` locations with the highest ``max_c score·factor``; decode, rescale; then every
  (box, class) pair whose raw score is ``> score_thr``, times the factor, into batched NMS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["TestConfig", "flatten_level", "rescale_boxes", "predict_single_image", "empty_detections"]


@dataclass(frozen=True)
class TestConfig:
    """Test-time settings of a dense head (MMDetection's ``test_cfg``, zoo_spec §1.15 table).

    Attributes:
        score_thr: keep (location, class) pairs whose class probability is strictly above this.
        nms_pre: candidates kept per FPN level before NMS (``'mmdet3'``: pairs, ``'mmdet2'``:
            locations); ``<= 0`` keeps all.
        nms_iou: IoU threshold of the class-aware NMS (suppress when IoU > thr).
        max_per_img: detections kept per image after NMS.
        min_bbox_size: keep boxes with width and height ``> min_bbox_size`` (pixels of the
            original image when rescaling); ``None`` disables the filter (FoveaBox). With 0
            (the default) ``'mmdet3'`` drops empty boxes; ``'mmdet2'`` applies the filter only
            when it is > 0, as the 2.x heads did.
        postprocess: ``'mmdet3'`` or ``'mmdet2'`` (module docstring).

    Raises:
        ValueError: on values out of range or an unknown ``postprocess``.
    """

    __test__ = False  # not a pytest test class

    score_thr: float = 0.05
    nms_pre: int = 1000
    nms_iou: float = 0.5
    max_per_img: int = 100
    min_bbox_size: float | None = 0.0
    postprocess: Literal["mmdet3", "mmdet2"] = "mmdet3"

    def __post_init__(self) -> None:
        if self.postprocess not in ("mmdet3", "mmdet2"):
            raise ValueError(f"postprocess must be 'mmdet3' or 'mmdet2', got {self.postprocess!r}")
        if not 0.0 <= float(self.score_thr) < 1.0:
            raise ValueError(f"score_thr must be in [0, 1), got {self.score_thr}")
        if not 0.0 < float(self.nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if int(self.max_per_img) < 1:
            raise ValueError(f"max_per_img must be >= 1, got {self.max_per_img}")

    def replace(self, overrides: TestConfig | Mapping[str, Any] | None) -> TestConfig:
        """This config with the fields of ``overrides`` (a mapping or a whole config) applied.

        Raises:
            ValueError: an unknown field name (the message lists the known ones).
        """
        if overrides is None:
            return self
        if isinstance(overrides, TestConfig):
            return overrides
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown test_cfg field(s) {unknown}; known: {sorted(fields)}")
        return dataclasses.replace(self, **dict(overrides))


def flatten_level(x: Tensor, channels: int) -> Tensor:
    """A head output of one level in prior order (zoo_spec §1.1).

    ``[N, A·channels, H, W] → [N, H·W·A, channels]`` or, for one image,
    ``[A·channels, H, W] → [H·W·A, channels]``: row ``(y·W + x)·A + a``, channel ``a·channels + c``.
    """
    if x.dim() == 4:
        n = x.shape[0]
        return x.permute(0, 2, 3, 1).reshape(n, -1, channels)
    return x.permute(1, 2, 0).reshape(-1, channels)


def rescale_boxes(boxes: Tensor, scale_factor: Sequence[float]) -> Tensor:
    """``[K, 4]`` xyxy in resized pixels → original pixels: x ÷ w_scale, y ÷ h_scale."""
    w_scale, h_scale = float(scale_factor[0]), float(scale_factor[1])
    return boxes / boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])


def empty_detections(device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """No detections: ``boxes [0, 4]``, ``scores [0]``, ``labels [0]`` long."""
    return {
        "boxes": torch.zeros((0, 4), device=device),
        "scores": torch.zeros((0,), device=device),
        "labels": torch.zeros((0,), dtype=torch.long, device=device),
    }


def _nms(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: TestConfig) -> dict[str, Tensor]:
    if boxes.numel() == 0:
        return empty_detections(boxes.device)
    keep = batched_nms(boxes, scores, labels, float(cfg.nms_iou))[: int(cfg.max_per_img)]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def predict_single_image(
    scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    priors: Sequence[Tensor],
    decode: Callable[[Tensor, Tensor, tuple[int, int]], Tensor],
    img_meta: Mapping[str, Any],
    cfg: TestConfig,
    score_factors: Sequence[Tensor] | None = None,
    rescale: bool = True,
) -> dict[str, Tensor]:
    """Detections of one image from per-level, prior-ordered head outputs (module docstring).

    Args:
        scores: per level ``[P_l, C]`` class probabilities (sigmoid already applied).
        bbox_preds: per level ``[P_l, D]`` box predictions of each prior (deltas, distances).
        priors: per level ``[P_l, 2]`` points or ``[P_l, 4]`` anchors, resized-image pixels.
        decode: ``decode(priors [K, ·], bbox_preds [K, D], max_shape (h, w)) → [K, 4]`` xyxy
            boxes clipped to ``max_shape`` (the un-padded resized image).
        img_meta: ``img_shape`` (h, w) and, when ``rescale``, ``scale_factor`` (w_s, h_s).
        cfg: the head's test settings.
        score_factors: optional per level ``[P_l]`` probabilities multiplied into the scores
            (FCOS/ATSS centerness); never used for the threshold in ``'mmdet3'``.
        rescale: return boxes in original-image pixels.

    Returns:
        ``{'boxes' [k, 4] xyxy float32, 'scores' [k], 'labels' [k] long}`` sorted by
        descending score, ``k ≤ cfg.max_per_img``.
    """
    max_shape = tuple(int(v) for v in img_meta["img_shape"][:2])
    nms_pre = int(cfg.nms_pre)
    if cfg.postprocess == "mmdet3":
        all_boxes, all_scores, all_labels, all_factors = [], [], [], []
        for lvl, (score, pred, prior) in enumerate(zip(scores, bbox_preds, priors)):
            valid = score > cfg.score_thr
            cand_scores = score[valid]
            cand_idx = torch.nonzero(valid, as_tuple=False)  # [Q, 2] (location, class)
            cand_scores, order = cand_scores.sort(descending=True)
            num_topk = cand_idx.shape[0] if nms_pre <= 0 else min(nms_pre, cand_idx.shape[0])
            keep_idx = cand_idx[order[:num_topk]]
            loc = keep_idx[:, 0]
            all_boxes.append(decode(prior[loc], pred[loc], max_shape))
            all_scores.append(cand_scores[:num_topk])
            all_labels.append(keep_idx[:, 1])
            if score_factors is not None:
                all_factors.append(score_factors[lvl][loc])
        boxes, det_scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        if rescale:
            boxes = rescale_boxes(boxes, img_meta["scale_factor"])
        if score_factors is not None:
            det_scores = det_scores * torch.cat(all_factors)
        if cfg.min_bbox_size is not None:
            size = float(cfg.min_bbox_size)
            keep = ((boxes[:, 2] - boxes[:, 0]) > size) & ((boxes[:, 3] - boxes[:, 1]) > size)
            if not bool(keep.all()):
                boxes, det_scores, labels = boxes[keep], det_scores[keep], labels[keep]
        return _nms(boxes, det_scores, labels, cfg)

    # 'mmdet2': top locations per level, then threshold every (box, class) pair.
    all_boxes, all_scores, all_factors = [], [], []
    for lvl, (score, pred, prior) in enumerate(zip(scores, bbox_preds, priors)):
        factor = score_factors[lvl] if score_factors is not None else None
        if 0 < nms_pre < score.shape[0]:
            ranking = score if factor is None else score * factor[:, None]
            _, top = ranking.max(dim=1).values.topk(nms_pre)
            score, pred, prior = score[top], pred[top], prior[top]
            factor = factor[top] if factor is not None else None
        all_boxes.append(decode(prior, pred, max_shape))
        all_scores.append(score)
        if factor is not None:
            all_factors.append(factor)
    boxes, score = torch.cat(all_boxes), torch.cat(all_scores)
    if rescale:
        boxes = rescale_boxes(boxes, img_meta["scale_factor"])
    loc, labels = torch.nonzero(score > cfg.score_thr, as_tuple=True)
    det_scores = score[loc, labels]
    if score_factors is not None:
        det_scores = det_scores * torch.cat(all_factors)[loc]
    boxes = boxes[loc]
    if cfg.min_bbox_size is not None and cfg.min_bbox_size > 0:
        size = float(cfg.min_bbox_size)
        keep = ((boxes[:, 2] - boxes[:, 0]) > size) & ((boxes[:, 3] - boxes[:, 1]) > size)
        boxes, det_scores, labels = boxes[keep], det_scores[keep], labels[keep]
    return _nms(boxes, det_scores, labels, cfg)
