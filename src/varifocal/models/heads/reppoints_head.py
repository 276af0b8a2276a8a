"""RepPoints head (moment transform, ``reppoints-moment_r50_fpn-gn_head-gn_1x_coco``): 9-point
sets refined in two stages through deformable convs sampling at the predicted points, the
PointAssigner init targets and MaxIoU refine targets, focal + SmoothL1 losses on moment
pseudo-boxes, the MMDetection 3.x post-processing, and the VarifocalNet authors' VFL variant.

Everything follows ``../shared/docs/zoo_spec.md`` (cited as "§N"): layers §6.1, forward §6.2,
targets §6.3 (points §1.6, assigners §1.10 and §1.12, PseudoSampler §1.13), losses §6.4
(reduction §1.14), inference §6.5 (§1.15 RepPoints row), initialisation §1.16, the VFL variant
§6.8 / §8, pitfalls §6.10. The point-set geometry is :mod:`.reppoints_points`, the target
records and VFL targets :mod:`.reppoints_targets`. Attribute names
reproduce MMDetection's ``RepPointsHead`` so that ``bbox_head.*`` checkpoint keys load verbatim
(§6.7, Appendix A.5).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ...assigners.max_iou import MaxIoUAssigner
from ...assigners.point_assigner import PointAssigner
from ...losses import FocalLoss, SmoothL1Loss, VarifocalLoss
from ..layers.conv_module import ConvModule
from ..layers.deform_conv import DeformConv2d
from ..layers.init import init_dense_head
from ..postprocess import TestConfig, flatten_level, predict_single_image
from ..priors import grid_points, valid_flags
from .reppoints_points import dcn_base_offset, decode_boxes, moment_boxes, offsets_to_points
from .reppoints_targets import RepPointsTargets, StageTargets, stage_targets, vfl_iou_targets

__all__ = ["RepPointsHead", "RepPointsOutputs", "RepPointsTargets", "StageTargets", "REPPOINTS_TEST_CFG"]

#: ``reppoints-moment_r50_fpn-gn_head-gn_1x_coco`` test_cfg (§1.15 table): NMS 0.5, min size 0.
REPPOINTS_TEST_CFG = TestConfig(score_thr=0.05, nms_pre=1000, nms_iou=0.5, max_per_img=100, min_bbox_size=0.0)

#: Offset of the RepPoints cell points in strides (§1.6): cell (y, x) sits at (x·s, y·s).
POINT_OFFSET = 0.0


class RepPointsOutputs(NamedTuple):
    """Raw RepPoints head outputs, lists over levels (finest first, §6.2):

    - ``cls_scores [N, C, H, W]`` logits;
    - ``pts_init [N, 2K, H, W]`` initial points, (dy, dx) pairs in strides relative to the
      cell's point (offset 0);
    - ``pts_refine [N, 2K, H, W]`` refined points, same layout (``init.detach()`` included);
    - ``bbox_preds_refine [N, 4, H, W]`` moment boxes of ``pts_refine`` in strides, relative
      to the cell's point (MMDetection's eval-mode output).
    """

    cls_scores: list[Tensor]
    pts_init: list[Tensor]
    pts_refine: list[Tensor]
    bbox_preds_refine: list[Tensor]


class RepPointsHead(nn.Module):
    """The RepPoints head (§6), shared across all FPN levels.

    Args:
        num_classes: foreground classes C (sigmoid outputs).
        in_channels: channels of every FPN level (256 in the zoo).
        feat_channels: channels of the two towers (256).
        point_feat_channels: channels of the DCN and init convs (256).
        stacked_convs: ConvModules (3×3 conv → GN → ReLU) per tower (3).
        norm_groups: GroupNorm groups of the towers (32); ``None``: conv with bias, no norm.
        num_points: points per set K, an odd square (9 = a 3×3 DCN).
        gradient_mul: share of the gradient that flows from the DCN offsets into the init
            points (0.1).
        strides: FPN strides s_l, pixels (8…128).
        point_base_scale: the PointAssigner's base scale and the loss normaliser
            ``point_base_scale·s`` (4).
        moment_mul: share of the gradient that reaches ``moment_transfer`` (0.01).
        pos_num: PointAssigner positives per gt (1).
        pos_iou_thr, neg_iou_thr, min_pos_iou: refine MaxIoUAssigner (0.5, 0.4, 0; low-quality
            matching on).
        focal_alpha, focal_gamma, loss_cls_weight: focal loss (0.25, 2, 1).
        smooth_l1_beta: SmoothL1 β on the pseudo-boxes ÷ ``point_base_scale·s`` (0.11).
        loss_pts_init_weight, loss_pts_refine_weight: the two point-loss weights (0.5, 1.0).
        use_vfl: the authors' Varifocal Loss on IoU targets instead of the focal loss (§6.8).
        vfl_alpha, vfl_gamma, vfl_iou_weighted: Varifocal Loss parameters (0.75, 2, True).
        prior_prob: initial foreground probability of the ``reppoints_cls_out`` bias (0.01).
        test_cfg: a :class:`TestConfig`, or a mapping of fields overriding
            :data:`REPPOINTS_TEST_CFG`.

    Attributes:
        moment_transfer: ``[2]`` parameter, log-scale of the moment box (width, height), init 0.
        dcn_base_offset: ``[1, 2K, 1, 1]`` float64, the regular DCN grid (not registered: no
            checkpoint key, §6.1).
        init_assigner, refine_assigner: :class:`PointAssigner` and :class:`MaxIoUAssigner`.

    Raises:
        ValueError: ``num_points`` is not an odd square ≥ 9 (9, 25, …); ``feat_channels`` not
            divisible by ``norm_groups``; ``prior_prob`` outside (0, 1); an unknown test_cfg
            field.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        point_feat_channels: int = 256,
        stacked_convs: int = 3,
        norm_groups: int | None = 32,
        num_points: int = 9,
        gradient_mul: float = 0.1,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        point_base_scale: int = 4,
        moment_mul: float = 0.01,
        pos_num: int = 1,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_cls_weight: float = 1.0,
        smooth_l1_beta: float = 0.11,
        loss_pts_init_weight: float = 0.5,
        loss_pts_refine_weight: float = 1.0,
        use_vfl: bool = False,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        vfl_iou_weighted: bool = True,
        prior_prob: float = 0.01,
        test_cfg: TestConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kernel = math.isqrt(int(num_points))
        if kernel * kernel != int(num_points) or kernel % 2 == 0 or kernel < 3:
            raise ValueError(f"reppoints_head.py: num_points must be an odd square >= 9, got {num_points}")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.feat_channels = int(feat_channels)
        self.point_feat_channels = int(point_feat_channels)
        self.num_points = int(num_points)
        self.gradient_mul = float(gradient_mul)
        self.strides = tuple(int(s) for s in strides)
        self.point_base_scale = int(point_base_scale)
        self.moment_mul = float(moment_mul)
        self.use_vfl = bool(use_vfl)
        self.prior_prob = float(prior_prob)
        self.test_cfg = REPPOINTS_TEST_CFG.replace(test_cfg)
        self.dcn_base_offset = dcn_base_offset(kernel)
        self.init_assigner = PointAssigner(scale=self.point_base_scale, pos_num=pos_num)
        self.refine_assigner = MaxIoUAssigner(pos_iou_thr, neg_iou_thr, min_pos_iou=min_pos_iou, match_low_quality=True)

        # --- layers (§6.1); names reproduce the official checkpoint keys (Appendix A.5) ---
        self.moment_transfer = nn.Parameter(torch.zeros(2))
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = self.in_channels if i == 0 else self.feat_channels
            self.cls_convs.append(ConvModule(chn, self.feat_channels, num_groups=norm_groups))
            self.reg_convs.append(ConvModule(chn, self.feat_channels, num_groups=norm_groups))
        pts_out = 2 * self.num_points
        pad = (kernel - 1) // 2
        self.reppoints_cls_conv = DeformConv2d(
            self.feat_channels, self.point_feat_channels, kernel, padding=pad, bias=False
        )
        self.reppoints_cls_out = nn.Conv2d(self.point_feat_channels, self.num_classes, 1)
        self.reppoints_pts_init_conv = nn.Conv2d(self.feat_channels, self.point_feat_channels, 3, padding=1)
        self.reppoints_pts_init_out = nn.Conv2d(self.point_feat_channels, pts_out, 1)
        self.reppoints_pts_refine_conv = DeformConv2d(
            self.feat_channels, self.point_feat_channels, kernel, padding=pad, bias=False
        )
        self.reppoints_pts_refine_out = nn.Conv2d(self.point_feat_channels, pts_out, 1)
        self.relu = nn.ReLU()  # not in place: a DCN output may be a view of a custom autograd Function

        self.loss_cls: nn.Module
        if self.use_vfl:
            self.loss_cls = VarifocalLoss(
                alpha=vfl_alpha, gamma=vfl_gamma, iou_weighted=vfl_iou_weighted, loss_weight=loss_cls_weight
            )
        else:
            self.loss_cls = FocalLoss(alpha=focal_alpha, gamma=focal_gamma, loss_weight=loss_cls_weight)
        self.loss_pts_init = SmoothL1Loss(beta=smooth_l1_beta, loss_weight=loss_pts_init_weight)
        self.loss_pts_refine = SmoothL1Loss(beta=smooth_l1_beta, loss_weight=loss_pts_refine_weight)
        self.init_weights()

    def init_weights(self) -> None:
        """§1.16: every ``nn.Conv2d`` weight ~ N(0, 0.01²), bias 0; ``reppoints_cls_out`` bias
        −log((1 − π)/π) (−4.59512 for π = 0.01); GN 1 / 0; the two ``DeformConv2d`` keep their
        default init (MMDetection 3.x does not touch them); ``moment_transfer`` 0."""
        init_dense_head(self, self.reppoints_cls_out, self.prior_prob)
        nn.init.zeros_(self.moment_transfer)

    # ------------------------------------------------------------------ forward
    def points_to_boxes(self, pts: Tensor, y_first: bool = True) -> Tensor:
        """:func:`~.reppoints_points.moment_boxes` with this head's ``moment_transfer`` and
        ``moment_mul``: ``[B, 2K, *S] → [B, 4, *S]`` in the unit of ``pts``."""
        return moment_boxes(pts, self.moment_transfer, self.moment_mul, y_first=y_first)

    def forward(self, feats: Sequence[Tensor]) -> RepPointsOutputs:
        """Run the head on every FPN level (§6.2).

        Per level: ``init = init_out(ReLU(init_conv(reg tower(x))))``; the DCN offsets are
        ``(1 − g)·init.detach() + g·init − dcn_base_offset`` (g = ``gradient_mul``: the same
        value, g of the gradient), so both DCNs sample at the predicted points;
        ``cls = cls_out(ReLU(cls_conv(cls tower(x), offsets)))``; ``refine =
        refine_out(ReLU(refine_conv(reg tower(x), offsets))) + init.detach()``.

        Args:
            feats: FPN levels ``[N, in_channels, H_l, W_l]``, finest first, one per stride.

        Returns:
            :class:`RepPointsOutputs` (the same in train and eval mode).

        Raises:
            ValueError: the number of levels differs from ``len(strides)``.
        """
        if len(feats) != len(self.strides):
            raise ValueError(f"reppoints_head.py: RepPointsHead expects {len(self.strides)} levels, got {len(feats)}")
        cls_scores, pts_inits, pts_refines, boxes = [], [], [], []
        for x in feats:
            cls_feat = x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)  # [N, F, H, W]
            pts_feat = x
            for conv in self.reg_convs:
                pts_feat = conv(pts_feat)
            pts_init = self.reppoints_pts_init_out(self.relu(self.reppoints_pts_init_conv(pts_feat)))  # [N, 2K, H, W]
            scaled = (1 - self.gradient_mul) * pts_init.detach() + self.gradient_mul * pts_init
            offset = scaled - self.dcn_base_offset.to(scaled)
            cls = self.reppoints_cls_out(self.relu(self.reppoints_cls_conv(cls_feat, offset)))
            refine = self.reppoints_pts_refine_out(self.relu(self.reppoints_pts_refine_conv(pts_feat, offset)))
            refine = refine + pts_init.detach()
            cls_scores.append(cls)
            pts_inits.append(pts_init)
            pts_refines.append(refine)
            boxes.append(self.points_to_boxes(refine))
        return RepPointsOutputs(cls_scores, pts_inits, pts_refines, boxes)

    # ------------------------------------------------------------------ targets
    def points(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Per level ``[H_l·W_l, 2]`` (x, y) points at ``(j·s, i·s)``, pixels (offset 0, §1.6)."""
        return grid_points(featmap_sizes, self.strides, POINT_OFFSET, device)

    @torch.no_grad()
    def refine_proposals(self, pts_init: Sequence[Tensor], points: Sequence[Tensor]) -> list[Tensor]:
        """The refine stage's candidates (§6.3 item 4): per image ``[M, 4]`` xyxy pixels, the
        moment boxes of the *detached* init points, ``point + s·box(init)``, levels concatenated.

        Args:
            pts_init: per level ``[N, 2K, H_l, W_l]`` init points (strides, (dy, dx)).
            points: per level ``[H_l·W_l, 2]`` cell points, pixels.
        """
        per_level = []
        for pts, pt, s in zip(pts_init, points, self.strides):
            box = self.points_to_boxes(pts.detach().float()) * s  # [N, 4, H, W] pixels
            per_level.append(torch.cat([pt, pt], dim=1)[None] + flatten_level(box, 4))  # [N, HW, 4]
        return list(torch.cat(per_level, dim=1).unbind(0))

    def get_targets(
        self,
        pts_init: Sequence[Tensor],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> RepPointsTargets:
        """Both stages' targets of a batch (§6.3), PseudoSampler semantics (§1.13).

        Per image, on the points valid for its ``pad_shape`` only: the init stage runs the
        :class:`PointAssigner` on the cell points (with their strides); the refine stage runs
        the :class:`MaxIoUAssigner` (0.5 / 0.4, min_pos 0, low-quality) on
        :meth:`refine_proposals`. Labels and label weights of the loss come from the refine
        stage.

        Args:
            pts_init: per level ``[N, 2K, H_l, W_l]`` init points (only their values are used).
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (crowd boxes removed).
            gt_labels: per image ``[K_i]`` integer labels in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape`` (h, w), the image's own padded size.

        Returns:
            :class:`RepPointsTargets` over all ``M = Σ_l H_l·W_l`` points of each image.

        Raises:
            ValueError: ``gt_bboxes``, ``gt_labels`` and ``img_metas`` differ in length, or an
                assigner refuses malformed boxes / labels.
        """
        if not len(gt_bboxes) == len(gt_labels) == len(img_metas):
            raise ValueError(
                f"reppoints_head.py: {len(gt_bboxes)} gt_bboxes, {len(gt_labels)} gt_labels and "
                f"{len(img_metas)} img_metas entries must be as many"
            )
        featmap_sizes = [tuple(int(v) for v in p.shape[-2:]) for p in pts_init]
        device = pts_init[0].device
        points = self.points(featmap_sizes, device)
        flat = torch.cat(
            [torch.cat([p, p.new_full((p.shape[0], 1), float(s))], dim=1) for p, s in zip(points, self.strides)]
        )  # [M, 3] (x, y, s)
        proposals = self.refine_proposals(pts_init, points)
        init, refine, flags = [], [], []
        for i, (boxes, labels, meta) in enumerate(zip(gt_bboxes, gt_labels, img_metas)):
            boxes = boxes.to(device=device, dtype=torch.float32)
            labels = labels.to(device=device, dtype=torch.long)
            valid = torch.cat(valid_flags(featmap_sizes, self.strides, meta["pad_shape"][:2], device=device))
            init.append((valid, self.init_assigner.assign(flat[valid], boxes, labels, self.num_classes)))
            refine.append((valid, self.refine_assigner.assign(proposals[i][valid], boxes, labels, self.num_classes)))
            flags.append(valid)
        m = flat.shape[0]
        return RepPointsTargets(
            stage_targets(init, gt_bboxes, m, self.num_classes),
            stage_targets(refine, gt_bboxes, m, self.num_classes),
            proposals,
            flags,
        )

    # ------------------------------------------------------------------ loss
    def loss_by_level(
        self,
        outs: RepPointsOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> dict[str, list[Tensor]]:
        """The per-level loss terms that :meth:`loss` sums (§6.4; MMDetection's
        ``losses_per_level``), everything image-major within a level (§1.1, anchor heads).

        Per level l (stride s, normaliser n = ``point_base_scale``·s):

        - ``loss_cls``: focal loss on the refine labels, weighted by the refine label weights,
          ``/ avg_ref``. With ``use_vfl``: VFL whose target at [positive, gt class] is the
          aligned IoU of the refined points' pseudo-box (pixels, detached) with the refine
          stage's gt box, **not clamped** (a positive with IoU 0 becomes a VFL negative), 0
          elsewhere; same weights and normaliser (§6.8).
        - ``loss_pts_init``: 0.5 · SmoothL1(β)(box(init points) / n, gt / n) on the init
          positives ``/ avg_init``.
        - ``loss_pts_refine``: 1.0 · SmoothL1(β)(box(refined points) / n, gt / n) on the refine
          positives ``/ avg_ref``.

        The boxes are the moment pseudo-boxes of the predicted points in pixels. A level
        without positives contributes a graph-connected 0 to the point losses.

        Returns:
            ``{'loss_cls': [L], 'loss_pts_init': [L], 'loss_pts_refine': [L]}`` float32 scalars.
        """
        t = self.get_targets(outs.pts_init, gt_bboxes, gt_labels, img_metas)
        featmap_sizes = [tuple(int(v) for v in c.shape[-2:]) for c in outs.cls_scores]
        points = self.points(featmap_sizes, outs.cls_scores[0].device)
        sizes = [p.shape[0] for p in points]

        def level(per_img: list[Tensor], lvl: int) -> Tensor:
            start = sum(sizes[:lvl])
            return torch.cat([v[start : start + sizes[lvl]] for v in per_img])  # image-major

        losses: dict[str, list[Tensor]] = {"loss_cls": [], "loss_pts_init": [], "loss_pts_refine": []}
        for lvl, s in enumerate(self.strides):
            cls = flatten_level(outs.cls_scores[lvl].float(), self.num_classes).reshape(-1, self.num_classes)
            pts_init = offsets_to_points(outs.pts_init[lvl].float(), points[lvl], s).reshape(-1, 2 * self.num_points)
            pts_ref = offsets_to_points(outs.pts_refine[lvl].float(), points[lvl], s).reshape(-1, 2 * self.num_points)
            box_init = self.points_to_boxes(pts_init, y_first=False)  # [N·HW, 4] pixels
            box_ref = self.points_to_boxes(pts_ref, y_first=False)
            labels, weights = level(t.refine.labels, lvl), level(t.refine.label_weights, lvl)
            gt_init, gt_ref = level(t.init.bbox_gt, lvl), level(t.refine.bbox_gt, lvl)
            norm = self.point_base_scale * s
            losses["loss_pts_init"].append(
                self.loss_pts_init(
                    box_init / norm,
                    gt_init / norm,
                    weight=level(t.init.bbox_weights, lvl),
                    avg_factor=t.init.avg_factor,
                )
            )
            losses["loss_pts_refine"].append(
                self.loss_pts_refine(
                    box_ref / norm,
                    gt_ref / norm,
                    weight=level(t.refine.bbox_weights, lvl),
                    avg_factor=t.refine.avg_factor,
                )
            )
            if self.use_vfl:
                targets = vfl_iou_targets(cls, box_ref, gt_ref, labels, self.num_classes)
                losses["loss_cls"].append(self.loss_cls(cls, targets, avg_factor=t.refine.avg_factor, weight=weights))
            else:
                losses["loss_cls"].append(self.loss_cls(cls, labels, weight=weights, avg_factor=t.refine.avg_factor))
        return losses

    def loss(
        self,
        outs: RepPointsOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> dict[str, Tensor]:
        """RepPoints losses of a batch: :meth:`loss_by_level` summed over the levels (§6.4;
        with ``use_vfl`` §6.8). No cross-GPU reduction.

        Args:
            outs: the outputs of :meth:`forward`.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (no crowd boxes).
            gt_labels: per image ``[K_i]`` labels in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape``.

        Returns:
            ``{'loss_cls', 'loss_pts_init', 'loss_pts_refine'}``: 0-dim float32 tensors.

        Raises:
            ValueError: from :meth:`get_targets`.
        """
        per_level = self.loss_by_level(outs, gt_bboxes, gt_labels, img_metas)
        return {name: torch.stack(terms).sum() for name, terms in per_level.items()}

    # ------------------------------------------------------------------ inference
    def predict(
        self, outs: RepPointsOutputs, img_metas: Sequence[Mapping[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections per image (§6.5, §1.15 RepPoints row): per level the (point, class) pairs
        with sigmoid score > ``score_thr``, top ``nms_pre``; :func:`~.reppoints_points.decode_boxes`
        of ``bbox_preds_refine`` (``box·s + point``, clamped to ``[0, W] × [0, H]`` of
        ``img_shape``); rescale; drop empty boxes (``min_bbox_size`` 0); class-aware NMS (0.5);
        top ``max_per_img``. All batch positions are used, padding included.

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
        # Each prior carries its level's stride: (x, y, s).
        priors = [torch.cat([p, p.new_full((p.shape[0], 1), float(s))], 1) for p, s in zip(points, self.strides)]

        def decode(prior: Tensor, pred: Tensor, max_shape: tuple[int, int]) -> Tensor:
            return decode_boxes(prior[:, :2], pred, prior[:, 2], max_shape)

        results = []
        for i, meta in enumerate(img_metas):
            scores = [flatten_level(c[i].detach().float(), self.num_classes).sigmoid() for c in outs.cls_scores]
            preds = [flatten_level(b[i].detach().float(), 4) for b in outs.bbox_preds_refine]
            results.append(predict_single_image(scores, preds, priors, decode, meta, self.test_cfg, rescale=rescale))
        return results
