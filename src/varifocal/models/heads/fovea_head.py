"""FoveaBox head: per-point classification and log-space (l, t, r, b) regression with the scale
range + "fovea" region targets, focal (γ 1.5, α 0.4) + SmoothL1 losses and the MMDetection 3.x
post-processing, plus the VarifocalNet authors' VFL variant.

Everything follows ``../shared/docs/zoo_spec.md`` (cited as "§N"): layers §5.1, forward §5.2,
targets §5.3, losses §5.4 (reduction §1.14), inference §5.5 (§1.15 FoveaBox row), points §1.6,
initialisation §1.16, the VFL variant §5.8 / §8, pitfalls §5.10. Attribute names reproduce
MMDetection's ``FoveaHead`` (registered reg branch first, as there) so that ``bbox_head.*``
checkpoint keys load verbatim (§5.7, Appendix A.4); the pre-2020 names ``fovea_cls`` /
``fovea_reg`` are renamed on load by :mod:`varifocal.checkpoint` (§1.18).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ...assigners.fovea_assigner import FoveaAssigner
from ...losses import FocalLoss, SmoothL1Loss, VarifocalLoss
from ...structures.boxes import bbox_overlaps
from ..layers.conv_module import ConvModule
from ..layers.init import init_dense_head
from ..postprocess import TestConfig, flatten_level, predict_single_image
from ..priors import grid_points

__all__ = ["FoveaHead", "FoveaOutputs", "FoveaTargets", "FOVEA_TEST_CFG"]

#: ``fovea_r50_fpn_4xb4-1x_coco`` test_cfg (§1.15 table): NMS 0.5, **no** size filter.
FOVEA_TEST_CFG = TestConfig(score_thr=0.05, nms_pre=1000, nms_iou=0.5, max_per_img=100, min_bbox_size=None)

#: Offset of the FoveaBox points in strides (§1.6): cell (y, x) sits at ((x + .5)s, (y + .5)s).
POINT_OFFSET = 0.5


class FoveaOutputs(NamedTuple):
    """Raw FoveaBox head outputs, lists over levels (finest first, §5.2): ``cls_scores
    [N, C, H, W]`` logits and ``bbox_preds [N, 4, H, W]`` log-space (l, t, r, b) distances in
    units of the level's base edge (``distance = base_edge · exp(pred)`` pixels)."""

    cls_scores: list[Tensor]
    bbox_preds: list[Tensor]


class FoveaTargets(NamedTuple):
    """Per-image targets over all points of the batch feature maps, levels concatenated P3 → P7,
    row-major within a level (§5.3; the golden's ``assign`` records). Lists over images:

    - ``labels [P]`` long: class of the gt painted last on the cell, ``num_classes`` elsewhere;
    - ``bbox_targets [P, 4]`` float32: ``log(clamp(d / base_edge, 1/16, 16))`` with d the
      (l, t, r, b) pixel distances of the point to that gt; 0 (= log 1) on background cells;
    - ``assigned_gt_inds [P]`` long: 0 background, k ≥ 1 = gt k − 1 (the raw box of the VFL target).
    """

    labels: list[Tensor]
    bbox_targets: list[Tensor]
    assigned_gt_inds: list[Tensor]


def _painted_boxes(gt_bboxes: Tensor, assigned_gt_inds: Tensor) -> Tensor:
    """``[P, 4]`` float32: the raw xyxy gt box painted on each cell (pixels), 0 on background
    cells (``assigned_gt_inds`` 0)."""
    out = gt_bboxes.new_zeros((assigned_gt_inds.shape[0], 4), dtype=torch.float32)
    pos = assigned_gt_inds > 0
    out[pos] = gt_bboxes[assigned_gt_inds[pos] - 1].float()
    return out


class FoveaHead(nn.Module):
    """The FoveaBox head (§5), shared across all FPN levels; no norm, no ``Scale``.

    Args:
        num_classes: foreground classes C (sigmoid outputs, no background channel).
        in_channels: channels of every FPN level (256 in the zoo).
        feat_channels: channels inside the two towers (256).
        stacked_convs: ConvModules (3×3 conv with bias → ReLU) per tower (4).
        strides: FPN strides s_l, pixels (8…128).
        base_edge_list: per level base length B_l, pixels, dividing the distances (16…256).
        scale_ranges: per level ``(lo, hi)``: a gt is a candidate of the level when
            ``lo ≤ √(w·h) ≤ hi`` (both inclusive, overlapping; pixels of the resized image).
        sigma: fovea shrink factor σ ∈ (0, 1]: positives are the cells whose centre lies in the
            box shrunk to σ of its half-size around its centre (0.4).
        target_clamp: ``(min, max)`` applied to ``d / B_l`` before the log (1/16, 16).
        focal_alpha, focal_gamma: focal loss α and γ (0.4, 1.5 — not RetinaNet's .25 / 2).
        loss_cls_weight: weight of the classification loss (1).
        smooth_l1_beta: SmoothL1 β on the log-space values (0.11).
        loss_bbox_weight: weight of the box loss (1).
        use_vfl: the authors' Varifocal Loss on IoU targets instead of the focal loss (§5.8).
        vfl_alpha, vfl_gamma, vfl_iou_weighted: Varifocal Loss parameters (0.75, 2, True).
        vfl_clip: how the VFL target decodes clip the predicted boxes: ``'first_image'`` (the
            authors' 2.10 code: image 0's ``img_shape`` for the whole batch, §5.8) or
            ``'per_image'`` (each image's own ``img_shape``); both clip to ``[0, W − 1]`` /
            ``[0, H − 1]``.
        prior_prob: initial foreground probability of the ``conv_cls`` bias (0.01, §1.16).
        test_cfg: a :class:`TestConfig`, or a mapping of fields overriding :data:`FOVEA_TEST_CFG`.

    Attributes:
        assigner: the :class:`~varifocal.assigners.FoveaAssigner` built from ``strides``,
            ``base_edge_list``, ``scale_ranges``, ``sigma`` and ``target_clamp``.

    Raises:
        ValueError: from :class:`~varifocal.assigners.FoveaAssigner` (lists of different
            lengths, a range with ``lo > hi``, ``sigma`` outside (0, 1], a bad
            ``target_clamp``); an unknown ``vfl_clip``; ``prior_prob`` outside (0, 1); an
            unknown test_cfg field.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        base_edge_list: Sequence[int] = (16, 32, 64, 128, 256),
        scale_ranges: Sequence[tuple[float, float]] = ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)),
        sigma: float = 0.4,
        target_clamp: tuple[float, float] = (1.0 / 16, 16.0),
        focal_alpha: float = 0.4,
        focal_gamma: float = 1.5,
        loss_cls_weight: float = 1.0,
        smooth_l1_beta: float = 0.11,
        loss_bbox_weight: float = 1.0,
        use_vfl: bool = False,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        vfl_iou_weighted: bool = True,
        vfl_clip: Literal["first_image", "per_image"] = "first_image",
        prior_prob: float = 0.01,
        test_cfg: TestConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if vfl_clip not in ("first_image", "per_image"):
            raise ValueError(f"fovea_head.py: vfl_clip must be 'first_image' or 'per_image', got {vfl_clip!r}")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.feat_channels = int(feat_channels)
        self.assigner = FoveaAssigner(strides, base_edge_list, scale_ranges, sigma, target_clamp)
        self.strides = self.assigner.strides
        self.base_edge_list = self.assigner.base_edge_list
        self.use_vfl = bool(use_vfl)
        self.vfl_clip = vfl_clip
        self.prior_prob = float(prior_prob)
        self.test_cfg = FOVEA_TEST_CFG.replace(test_cfg)

        # --- layers (§5.1): reg branch registered first, as in MMDetection (Appendix A.4) ---
        def tower() -> nn.ModuleList:  # 3×3 conv with bias → ReLU, no norm
            chans = [in_channels] + [feat_channels] * stacked_convs
            return nn.ModuleList(ConvModule(chans[i], feat_channels, num_groups=None) for i in range(stacked_convs))

        self.reg_convs = tower()
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.cls_convs = tower()
        self.conv_cls = nn.Conv2d(feat_channels, self.num_classes, 3, padding=1)

        self.loss_cls: nn.Module
        if self.use_vfl:
            self.loss_cls = VarifocalLoss(
                alpha=vfl_alpha, gamma=vfl_gamma, iou_weighted=vfl_iou_weighted, loss_weight=loss_cls_weight
            )
        else:
            self.loss_cls = FocalLoss(alpha=focal_alpha, gamma=focal_gamma, loss_weight=loss_cls_weight)
        self.loss_bbox = SmoothL1Loss(beta=smooth_l1_beta, loss_weight=loss_bbox_weight)
        self.init_weights()

    def init_weights(self) -> None:
        """§1.16: every ``nn.Conv2d`` weight ~ N(0, 0.01²), bias 0; ``conv_cls`` bias
        −log((1 − π)/π) (−4.59512 for π = 0.01)."""
        init_dense_head(self, self.conv_cls, self.prior_prob)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> FoveaOutputs:
        """Run the head on every FPN level (§5.2).

        Args:
            feats: FPN levels ``[N, in_channels, H_l, W_l]``, finest first, one per stride.

        Returns:
            :class:`FoveaOutputs`: per level ``[N, C, H_l, W_l]`` logits and ``[N, 4, H_l, W_l]``
            log-space distances.

        Raises:
            ValueError: the number of levels differs from ``len(strides)``.
        """
        if len(feats) != len(self.strides):
            raise ValueError(f"fovea_head.py: FoveaHead expects {len(self.strides)} feature levels, got {len(feats)}")
        cls_scores, bbox_preds = [], []
        for x in feats:
            reg_feat = x
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)  # [N, F, H, W]
            cls_feat = x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)  # [N, F, H, W]
            bbox_preds.append(self.conv_reg(reg_feat))
            cls_scores.append(self.conv_cls(cls_feat))
        return FoveaOutputs(cls_scores, bbox_preds)

    # ------------------------------------------------------------------ targets
    def points(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Per level ``[H_l·W_l, 2]`` (x, y) points at ``((j + 0.5)·s, (i + 0.5)·s)``, pixels (§1.6)."""
        return grid_points(featmap_sizes, self.strides, POINT_OFFSET, device)

    def get_targets(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        device: torch.device | str = "cpu",
    ) -> FoveaTargets:
        """FoveaBox targets of a batch (§5.3), one :attr:`assigner` run per image
        (:class:`~varifocal.assigners.FoveaAssigner`: inclusive overlapping √area ranges, fovea
        regions painted from the largest gt to the smallest, ratios ÷ B_l clamped then logged).

        Args:
            featmap_sizes: ``(H_l, W_l)`` per level of the batch feature maps.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (crowd boxes removed).
            gt_labels: per image ``[K_i]`` integer labels in ``[0, num_classes)``.
            device: device of the returned tensors.

        Returns:
            :class:`FoveaTargets` over all ``P = Σ_l H_l·W_l`` points of each image.

        Raises:
            ValueError: ``gt_bboxes`` and ``gt_labels`` differ in length, a box tensor is not
                ``[K, 4]``, or an image's labels are not ``[K]``.
        """
        if len(gt_bboxes) != len(gt_labels):
            raise ValueError(f"fovea_head.py: {len(gt_bboxes)} gt_bboxes entries but {len(gt_labels)} gt_labels")
        points = self.points(featmap_sizes, device)
        results = [
            self.assigner.assign(points, featmap_sizes, boxes.to(device), cls.to(device), self.num_classes)
            for boxes, cls in zip(gt_bboxes, gt_labels)
        ]
        return FoveaTargets(
            [r.labels for r in results], [r.bbox_targets for r in results], [r.gt_inds for r in results]
        )

    # ------------------------------------------------------------------ boxes
    @staticmethod
    def decode_boxes(
        points: Tensor, bbox_pred: Tensor, base_edge: float | Tensor, max_shape: tuple[int, int] | None = None
    ) -> Tensor:
        """Log-space distances → xyxy boxes (§5.5): ``x1 = px − B·e^{t0}``, ``y1 = py − B·e^{t1}``,
        ``x2 = px + B·e^{t2}``, ``y2 = py + B·e^{t3}``; with ``max_shape = (H, W)`` x is clamped
        to ``[0, W − 1]`` and y to ``[0, H − 1]`` (note the −1, §5.10 item 6).

        Args:
            points: ``[K, 2]`` (x, y), pixels.
            bbox_pred: ``[K, 4]`` log-space (l, t, r, b).
            base_edge: B in pixels, one number or ``[K]`` (one per point).
            max_shape: optional ``(H, W)`` of the resized, un-padded image.

        Returns:
            ``[K, 4]`` xyxy, pixels.
        """
        base = base_edge.reshape(-1, 1) if isinstance(base_edge, Tensor) else base_edge
        dist = base * bbox_pred.exp()  # [K, 4] pixels
        x1, y1 = points[:, 0] - dist[:, 0], points[:, 1] - dist[:, 1]
        x2, y2 = points[:, 0] + dist[:, 2], points[:, 1] + dist[:, 3]
        if max_shape is not None:
            h, w = int(max_shape[0]), int(max_shape[1])
            x1, x2 = x1.clamp(min=0, max=w - 1), x2.clamp(min=0, max=w - 1)
            y1, y2 = y1.clamp(min=0, max=h - 1), y2.clamp(min=0, max=h - 1)
        return torch.stack([x1, y1, x2, y2], dim=-1)

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        outs: FoveaOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> dict[str, Tensor]:
        """FoveaBox losses of a batch (§5.4; with ``use_vfl`` §5.8), everything flattened
        level-major, then image, then (y, x) (§1.1, point heads).

        With num_pos the positives of the whole batch (no all-reduce, no max(·, 1)):

        - ``loss_cls``: focal loss (α, γ) over all points × C classes, no label weights,
          ``/ (num_pos + num_imgs)``. With ``use_vfl``: VFL whose target at [positive, gt class]
          is ``clamp(IoU(pred box, raw gt box), min=1e-6)``, 0 elsewhere, same normaliser; the
          predicted boxes are :meth:`decode_boxes` of the detached outputs, clipped per
          ``vfl_clip``; the gt box is the one painted on the cell, not a decode of the clamped
          targets.
        - ``loss_bbox``: SmoothL1(β) of the 4 log-space values of the positives ``/ num_pos``;
          without positives the (zero) sum of the empty selection, still connected to the graph.

        Args:
            outs: the outputs of :meth:`forward`.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (no crowd boxes).
            gt_labels: per image ``[K_i]`` labels in ``[0, num_classes)``.
            img_metas: per image dicts; ``img_shape`` (h, w) is read with ``use_vfl``.

        Returns:
            ``{'loss_cls', 'loss_bbox'}``: 0-dim float32 tensors.

        Raises:
            ValueError: from :meth:`get_targets`; ``img_metas`` not one per image with ``use_vfl``.
        """
        cls_scores, bbox_preds = outs
        featmap_sizes = [tuple(int(v) for v in c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        num_imgs = cls_scores[0].shape[0]
        targets = self.get_targets(featmap_sizes, gt_bboxes, gt_labels, device)
        points = self.points(featmap_sizes, device)
        sizes = [p.shape[0] for p in points]
        levels = range(len(sizes))

        def level_major(per_img: list[Tensor]) -> Tensor:
            split = [t.split(sizes) for t in per_img]
            return torch.cat([img[l] for l in levels for img in split])

        flat_cls = torch.cat([flatten_level(c, self.num_classes).reshape(-1, self.num_classes) for c in cls_scores])
        flat_reg = torch.cat([flatten_level(b, 4).reshape(-1, 4) for b in bbox_preds]).float()  # [M, 4]
        flat_labels = level_major(targets.labels)  # [M]
        pos = torch.nonzero(flat_labels < self.num_classes, as_tuple=False).squeeze(1)
        num_pos = int(pos.numel())
        cls_norm = float(num_pos + num_imgs)

        if num_pos > 0:
            loss_bbox = self.loss_bbox(flat_reg[pos], level_major(targets.bbox_targets)[pos], avg_factor=float(num_pos))
        else:
            loss_bbox = flat_reg[pos].sum()
        if not self.use_vfl:
            return {"loss_cls": self.loss_cls(flat_cls, flat_labels, avg_factor=cls_norm), "loss_bbox": loss_bbox}

        if len(img_metas) != num_imgs:
            raise ValueError(f"fovea_head.py: {len(img_metas)} img_metas for {num_imgs} images")
        iou_targets = torch.zeros(flat_cls.shape, dtype=torch.float32, device=device)  # [M, C]
        if num_pos > 0:
            with torch.no_grad():
                gt_boxes = level_major(
                    [_painted_boxes(b.to(device=device), i) for b, i in zip(gt_bboxes, targets.assigned_gt_inds)]
                )  # [M, 4]
                pred_boxes = torch.cat(
                    [self._decode_level(bbox_preds[l], points[l], l, img_metas) for l in levels]
                )  # [M, 4]
                iou = bbox_overlaps(pred_boxes[pos], gt_boxes[pos], is_aligned=True).clamp(min=1e-6)
            iou_targets[pos, flat_labels[pos]] = iou
        return {"loss_cls": self.loss_cls(flat_cls, iou_targets, avg_factor=cls_norm), "loss_bbox": loss_bbox}

    def _decode_level(
        self, bbox_pred: Tensor, points: Tensor, lvl: int, img_metas: Sequence[Mapping[str, Any]]
    ) -> Tensor:
        """Detached decoded boxes ``[N·H·W, 4]`` (image-major) of one level for the VFL targets."""
        preds = flatten_level(bbox_pred.detach().float(), 4)  # [N, HW, 4]
        boxes = []
        for i in range(preds.shape[0]):
            meta = img_metas[0] if self.vfl_clip == "first_image" else img_metas[i]
            shape = tuple(int(v) for v in meta["img_shape"][:2])
            boxes.append(self.decode_boxes(points, preds[i], self.base_edge_list[lvl], shape))
        return torch.cat(boxes)

    # ------------------------------------------------------------------ inference
    def predict(
        self, outs: FoveaOutputs, img_metas: Sequence[Mapping[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections per image (§5.5, §1.15 FoveaBox row): per level the (point, class) pairs
        with sigmoid score > ``score_thr``, top ``nms_pre``; :meth:`decode_boxes` with the
        level's base edge, clipped to ``[0, W − 1] × [0, H − 1]`` of ``img_shape``; rescale; no
        size filter (``min_bbox_size`` None); class-aware NMS (0.5); top ``max_per_img``. All
        batch positions are used, padding included.

        Args:
            outs: the outputs of :meth:`forward`.
            img_metas: per image dicts with ``img_shape`` (h, w) and, when ``rescale``,
                ``scale_factor`` (w_scale, h_scale).
            rescale: map boxes back to original-image pixels.

        Returns:
            One dict per image: ``boxes [k, 4]`` xyxy float32, ``scores [k]``, ``labels [k]``
            long, by descending score, ``k ≤ test_cfg.max_per_img``.
        """
        featmap_sizes = [tuple(int(v) for v in c.shape[-2:]) for c in outs.cls_scores]
        points = self.points(featmap_sizes, outs.cls_scores[0].device)
        # Each prior carries its level's base edge: (x, y, B_l).
        priors = [torch.cat([p, p.new_full((p.shape[0], 1), float(b))], 1) for p, b in zip(points, self.base_edge_list)]

        def decode(prior: Tensor, pred: Tensor, max_shape: tuple[int, int]) -> Tensor:
            return self.decode_boxes(prior[:, :2], pred, prior[:, 2], max_shape)

        results = []
        for i, meta in enumerate(img_metas):
            scores = [flatten_level(c[i].detach().float(), self.num_classes).sigmoid() for c in outs.cls_scores]
            preds = [flatten_level(b[i].detach().float(), 4) for b in outs.bbox_preds]
            results.append(predict_single_image(scores, preds, priors, decode, meta, self.test_cfg, rescale=rescale))
        return results
