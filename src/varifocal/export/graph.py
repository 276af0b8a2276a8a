"""The exported detection graph: backbone → neck → head → traceable post-processing (issue 14).

:class:`DetectionGraph` takes the normalised, padded batch ``[N, 3, H, W]`` and returns fixed-size,
padded detections in that batch's pixels (no rescale to the original image):

* ``boxes [N, K, 4]`` xyxy float32, clipped to ``[0, W] × [0, H]`` of the batch (FoveaBox:
  ``[0, W − 1] × [0, H − 1]``, as its eager decode, zoo_spec §5.5),
* ``scores [N, K]`` float32, by descending score,
* ``labels [N, K]`` int64 (``-1`` in the padding),
* ``num_detections [N]`` int64: rows ``0 … num_detections − 1`` are detections, the rest zeros,

with ``K = test_cfg.max_per_img``. The post-processing is the MMDetection 3.x procedure of
:func:`varifocal.models.postprocess.predict_single_image` written with fixed-size tensors:

1. per level, the top ``nms_pre`` (location, class) pairs by class probability (the scores are
   padded with ``nms_pre`` entries of −1, so ``k`` is a constant also for a dynamic input size);
   a pair is a candidate when its probability is ``> score_thr`` (eager: threshold, then top-k);
2. decode with the head's own box coder / ``distance2bbox`` at in-graph priors (FoveaBox: the
   distances ``B_l · exp(t)`` of its log-space outputs; RepPoints: the moment box ``(x1, y1, x2,
   y2)·s`` of the refined points as the distances ``(−x1·s, −y1·s, x2·s, y2·s)`` at points of
   offset 0, zoo_spec §6.5), clip;
3. score = probability × score factor (FCOS/ATSS centerness); size filter on w, h;
4. class-aware NMS with ONNX ``NonMaxSuppression`` (per class, IoU > ``nms_iou`` suppresses, at
   most ``max_per_img`` kept per class), then the top ``max_per_img`` over all classes.

Differences from the eager post-processing (the parity check's bounds cover them):

* boxes are clipped to the padded batch, not to each image's un-padded ``img_shape`` (the graph
  does not know it), and are not rescaled; :func:`to_image_detections` clips and rescales after
  NMS, so a box that reaches into the padding can suppress or survive differently;
* ``min_bbox_size`` is applied in batch pixels (eager: original-image pixels; the default 0, i.e.
  "drop empty boxes", is the same in both);
* a candidate whose final score is exactly 0 (a centerness that underflows) is dropped;
* equal scores (ties) may be ordered differently, at the ``nms_pre`` cut, in NMS and in the top-K;
* ``postprocess='mmdet2'`` test configs are not supported (refused by ``export_onnx``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import nms

from ..models.heads.atss_head import ATSSHead
from ..models.heads.fcos_head import FCOSHead
from ..models.heads.fovea_head import FoveaHead
from ..models.heads.reppoints_head import RepPointsHead
from ..models.heads.retina_head import RetinaHead
from ..models.heads.vfnet_head import VFNetHead
from ..models.postprocess import TestConfig
from ..structures.boxes import distance2bbox

__all__ = ["SUPPORTED_HEADS", "DetectionGraph", "MultiClassNMS", "to_image_detections"]

#: heads the graph supports (all six dense detectors of the zoo)
SUPPORTED_HEADS = (VFNetHead, RetinaHead, FCOSHead, ATSSHead, FoveaHead, RepPointsHead)

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")


class MultiClassNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset 11+), with the same result in PyTorch (torchvision ``nms``).

    ``apply(boxes [N, M, 4] xyxy, scores [N, C, M], max_per_class: int, iou_thr: float,
    score_thr: float) → selected [S, 3]`` int64 rows ``(image, class, box)``, per image and class
    by descending score; a box enters class c only if ``scores[n, c, m] > score_thr``; at most
    ``max_per_class`` kept per (image, class); IoU ``> iou_thr`` suppresses.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_thr: float, score_thr: float) -> Tensor:  # noqa: D102
        rows = []
        for n in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                cand = torch.nonzero(scores[n, c] > score_thr).flatten()
                keep = cand[nms(boxes[n, cand], scores[n, c, cand], iou_thr)][:max_per_class]
                rows.append(torch.stack([torch.full_like(keep, n), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows) if rows else torch.zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thr, score_thr):  # noqa: D102
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
        )


def _grid(feat: Tensor, stride: int, offset: float) -> tuple[Tensor, Tensor]:
    """``(x [H·W], y [H·W])`` of the cells of ``feat`` at ``((j + offset)·s, (i + offset)·s)``."""
    ys = (torch.arange(feat.shape[-2], dtype=torch.float32, device=feat.device) + offset) * stride
    xs = (torch.arange(feat.shape[-1], dtype=torch.float32, device=feat.device) + offset) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xx.reshape(-1), yy.reshape(-1)


class DetectionGraph(nn.Module):
    """``batch [N, 3, H, W] → (boxes, scores, labels, num_detections)`` (module docstring).

    Args:
        detector: a :class:`~varifocal.models.detectors.single_stage.SingleStageDetector` with a
            VFNet, RetinaNet, FCOS, ATSS, FoveaBox or RepPoints head, in eval mode (its star convs and
            deformable convs already replaced for export, see :mod:`.star_conv`, :mod:`.deform_export`).
        cfg: the head's test settings (``'mmdet3'`` procedure).

    Raises:
        ValueError: an unsupported head or ``cfg.postprocess == 'mmdet2'``.
    """

    def __init__(self, detector: nn.Module, cfg: TestConfig) -> None:
        super().__init__()
        head = detector.bbox_head
        if not isinstance(head, SUPPORTED_HEADS):
            raise ValueError(
                f"cannot export a {type(head).__name__}; supported: VFNet, RetinaNet, FCOS, ATSS, FoveaBox, RepPoints "
                "heads"
            )
        if cfg.postprocess != "mmdet3":
            raise ValueError("only test_cfg.postprocess='mmdet3' can be exported (the 'mmdet2' order is not written)")
        self.detector = detector
        self.cfg = cfg
        self.num_classes = int(head.num_classes)

    # -------------------------------------------------------------- per-level head outputs
    def _levels(self, outs: Any) -> list[tuple[Tensor, Tensor, Tensor | None, Tensor]]:
        """Per level ``(probabilities [N, P, C], box preds [N, P, 4], factors [N, P] | None,
        priors [P, 2 | 4])`` in prior order (row ``(y·W + x)·A + a``)."""
        head = self.detector.bbox_head
        c = self.num_classes

        def flat(x: Tensor, ch: int) -> Tensor:
            return x.float().permute(0, 2, 3, 1).reshape(x.shape[0], -1, ch)

        levels = []
        if isinstance(head, (VFNetHead, FCOSHead, FoveaHead, RepPointsHead)):
            preds = outs.bbox_preds_refine if isinstance(head, (VFNetHead, RepPointsHead)) else outs.bbox_preds
            offset = 0.0 if isinstance(head, (VFNetHead, RepPointsHead)) else 0.5
            for lvl, cls in enumerate(outs.cls_scores):
                xs, ys = _grid(cls, head.strides[lvl], offset)
                factor = None
                if isinstance(head, FCOSHead):
                    factor = flat(outs.centernesses[lvl], 1).squeeze(-1).sigmoid()
                dist = flat(preds[lvl], 4)
                if isinstance(head, FoveaHead):  # log-space → pixels, as FoveaHead.decode_boxes
                    dist = head.base_edge_list[lvl] * dist.exp()
                elif isinstance(head, RepPointsHead):  # moment box in strides → (l, t, r, b) pixels
                    box = dist * head.strides[lvl]
                    dist = torch.cat([-box[..., :2], box[..., 2:]], dim=-1)
                levels.append((flat(cls, c).sigmoid(), dist, factor, torch.stack([xs, ys], -1)))
            return levels
        generator = head.prior_generator if isinstance(head, RetinaHead) else head.anchor_generator
        for lvl, cls in enumerate(outs.cls_scores):
            xs, ys = _grid(cls, generator.strides[lvl], 0.0)
            shifts = torch.stack([xs, ys, xs, ys], -1)  # [H·W, 4]
            base = generator.base_anchors[lvl].to(cls.device)  # [A, 4]
            anchors = (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)
            factor = flat(outs.centernesses[lvl], 1).squeeze(-1).sigmoid() if isinstance(head, ATSSHead) else None
            levels.append((flat(cls, c).sigmoid(), flat(outs.bbox_preds[lvl], 4), factor, anchors))
        return levels

    def _decode(self, priors: Tensor, preds: Tensor) -> Tensor:
        head = self.detector.bbox_head
        if isinstance(head, (VFNetHead, FCOSHead, FoveaHead, RepPointsHead)):
            return distance2bbox(priors, preds)
        return head.bbox_coder.decode(priors, preds)

    # -------------------------------------------------------------- forward
    def forward(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        cfg, c = self.cfg, self.num_classes
        outs = self.detector.bbox_head(self.detector.extract_feat(batch))
        n = batch.shape[0]
        shape = torch._shape_as_tensor(batch).to(torch.float32)
        bound = torch.stack([shape[3], shape[2], shape[3], shape[2]])  # (W, H, W, H)
        if isinstance(self.detector.bbox_head, FoveaHead):
            bound = bound - 1.0  # FoveaBox clips to W − 1, H − 1 (zoo_spec §5.5)
        all_boxes, all_scores, all_labels = [], [], []
        for probs, preds, factor, priors in self._levels(outs):
            flat = probs.reshape(n, -1)  # [N, P·C], pair p·C + c
            k = int(cfg.nms_pre) if cfg.nms_pre > 0 else None
            if k is not None:  # pad so that top-k needs no min(k, P·C)
                flat = torch.cat([flat, flat.new_full((n, k), -1.0)], dim=1)
                preds = torch.cat([preds, preds.new_zeros((n, k, preds.shape[2]))], dim=1)
                priors = torch.cat([priors, priors.new_zeros((k, priors.shape[1]))], dim=0)
                if factor is not None:
                    factor = torch.cat([factor, factor.new_ones((n, k))], dim=1)
                top, idx = flat.topk(k, dim=1)  # [N, k]
            else:
                top, idx = flat, torch.arange(flat.shape[1], device=flat.device).unsqueeze(0).expand(n, -1)
            loc, label = idx // c, idx % c
            pred = preds.gather(1, loc.unsqueeze(-1).expand(-1, -1, preds.shape[2]))
            boxes = self._decode(priors[loc.reshape(-1)], pred.reshape(-1, pred.shape[2])).reshape(n, -1, 4)
            boxes = torch.minimum(torch.maximum(boxes, torch.zeros_like(bound)), bound)
            valid = top > float(cfg.score_thr)
            score = top if factor is None else top * factor.gather(1, loc)
            if cfg.min_bbox_size is not None:
                size = float(cfg.min_bbox_size)
                valid = valid & ((boxes[..., 2] - boxes[..., 0]) > size) & ((boxes[..., 3] - boxes[..., 1]) > size)
            all_boxes.append(boxes)
            all_scores.append(torch.where(valid, score, torch.full_like(score, -1.0)))
            all_labels.append(label)
        k_out = int(cfg.max_per_img)
        # max_per_img dummies make the candidate count >= K for the final top-K.
        all_boxes.append(batch.new_zeros((n, k_out, 4)))
        all_scores.append(batch.new_full((n, k_out), -1.0))
        all_labels.append(torch.zeros((n, k_out), dtype=torch.long, device=batch.device))
        boxes, scores, labels = torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_labels, 1)
        m = scores.shape[1]
        classes = torch.arange(c, device=batch.device).view(1, c, 1)
        per_class = torch.where(
            labels.unsqueeze(1) == classes, scores.unsqueeze(1), torch.full_like(scores, -1.0)[:, None]
        )
        selected = MultiClassNMS.apply(boxes, per_class, k_out, float(cfg.nms_iou), 0.0)  # [S, 3]
        flat_idx = selected[:, 0] * m + selected[:, 2]
        kept = torch.full_like(scores, -1.0).reshape(-1).scatter(0, flat_idx, scores.reshape(-1)[flat_idx])
        top, idx = kept.reshape(n, m).topk(k_out, dim=1)  # [N, K]
        ok = top > -0.5
        out_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)) * ok.unsqueeze(-1).to(boxes.dtype)
        out_scores = torch.where(ok, top, torch.zeros_like(top))
        out_labels = torch.where(ok, labels.gather(1, idx), torch.full_like(idx, -1))
        return out_boxes, out_scores, out_labels, ok.sum(1)


def to_image_detections(
    det: Mapping[str, np.ndarray], img_shape: tuple[int, int], scale_factor: tuple[float, float] = (1.0, 1.0)
) -> dict[str, np.ndarray]:
    """Detections of one batch image → its original image: clip to the un-padded ``img_shape``
    ``(h, w)`` (resized pixels), divide by ``scale_factor`` ``(w_scale, h_scale)``, and drop boxes
    that became empty (what the eager post-processing does before NMS; here after it).

    Args:
        det: ``boxes [k, 4]``, ``scores [k]``, ``labels [k]`` as :class:`~varifocal.export.OnnxDetector` gives.

    Returns:
        The same keys, boxes in original-image pixels.
    """
    h, w = float(img_shape[0]), float(img_shape[1])
    boxes = np.asarray(det["boxes"], dtype=np.float32).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, h)
    boxes /= np.array([scale_factor[0], scale_factor[1]] * 2, dtype=np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes": boxes[keep], "scores": np.asarray(det["scores"])[keep], "labels": np.asarray(det["labels"])[keep]}
