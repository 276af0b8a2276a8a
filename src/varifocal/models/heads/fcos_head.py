"""FCOS head: per-point classification, (l, t, r, b) distance regression and centerness, with
the inside-box / regress-range / minimum-area targets, focal + IoU + centerness losses and the
MMDetection 3.x post-processing.

Everything here follows ``../shared/docs/zoo_spec.md`` (cited as "zoo §N"): layers §3.1, forward
§3.2, targets §3.3, losses §3.4, inference §3.5 (with §1.15), the "tricks" options §3.6,
initialisation §1.16 and the project's VFL proposal §3.8. Attribute names reproduce
MMDetection's ``FCOSHead`` so that checkpoint keys load verbatim (zoo §3.7, Appendix A.2).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ...assigners.fcos_assigner import FCOSAssigner
from ...losses import CrossEntropyLoss, FocalLoss, GIoULoss, IoULoss, VarifocalLoss
from ...structures.boxes import bbox2distance, bbox_overlaps, centerness_target, distance2bbox
from ...utils.dist import reduce_mean
from ..layers.conv_module import ConvModule, Scale
from ..layers.init import init_dense_head
from ..postprocess import TestConfig, flatten_level, predict_single_image
from ..priors import grid_points

__all__ = ["FCOSHead", "FCOSOutputs", "FCOSTargets", "FCOS_TEST_CFG"]

INF = 1e8

#: ``fcos_r50-caffe_fpn_gn-head_1x_coco`` test_cfg (zoo §1.15 table): NMS 0.5, min size 0.
FCOS_TEST_CFG = TestConfig(score_thr=0.05, nms_pre=1000, nms_iou=0.5, max_per_img=100, min_bbox_size=0.0)

#: Offset of the FCOS points in strides (zoo §1.6): cell (y, x) sits at ((x + .5)s, (y + .5)s).
POINT_OFFSET = 0.5


class FCOSOutputs(NamedTuple):
    """Raw FCOS head outputs, lists over levels (zoo §3.2).

    - ``cls_scores [N, C, H, W]``: classification logits.
    - ``bbox_preds [N, 4, H, W]``: (l, t, r, b) distances, float32. Pixels with
      ``norm_on_bbox=False``; with ``norm_on_bbox=True`` stride units in train mode and pixels in
      eval mode.
    - ``centernesses [N, 1, H, W]``: centerness logits.
    """

    cls_scores: list[Tensor]
    bbox_preds: list[Tensor]
    centernesses: list[Tensor]


class FCOSTargets(NamedTuple):
    """Per-image training targets over all points of the batch feature maps, levels concatenated
    P3 → P7, row-major within a level (zoo §3.3). Lists over images:

    - ``labels [P]`` long: the winning gt's class, ``num_classes`` for background.
    - ``bbox_targets [P, 4]`` float32: (l, t, r, b) of the winning gt (pixels, or stride units
      with ``norm_on_bbox``). Background points hold the distances to the gt MMDetection's
      ``min`` falls back to (gt 0), as in the reference; they never enter a loss.
    - ``assigned_gt_inds [P]`` long: 0 = negative, k ≥ 1 = gt k − 1.
    """

    labels: list[Tensor]
    bbox_targets: list[Tensor]
    assigned_gt_inds: list[Tensor]


class FCOSHead(nn.Module):
    """The FCOS head (zoo §3), shared across all FPN levels.

    Args:
        num_classes: foreground classes C (sigmoid outputs, no background channel).
        in_channels: channels of every FPN level (256 for the zoo models).
        feat_channels: channels inside the two towers.
        stacked_convs: ConvModules (3×3 conv → GN → ReLU) per tower (4).
        strides: FPN strides, pixels.
        regress_ranges: per level ``(lo, hi)`` of the largest target distance, pixels, both
            bounds inclusive (zoo §3.3 item 2).
        num_groups: GroupNorm groups in the towers (32).
        center_sampling: positives only inside the gt's centre box of half-side
            ``center_sample_radius · stride`` (clipped to the gt), instead of the whole gt.
        center_sample_radius: see ``center_sampling`` (1.5).
        norm_on_bbox: distances = relu(Scale·conv) in stride units (×stride at eval) and targets
            divided by the stride, instead of exp(Scale·conv) in pixels (zoo §3.2 item 5).
        centerness_on_reg: the centerness conv reads the reg tower instead of the cls tower.
        conv_bias: tower convs have a bias even though a GN follows (``conv_bias=True`` of the
            tricks config, zoo §3.1). ``False`` is MMDetection's ``'auto'`` with a norm.
        loss_bbox: ``'iou'`` (−log IoU, base) or ``'giou'`` (1 − GIoU, tricks).
        focal_alpha, focal_gamma: focal loss parameters (0.25, 2).
        use_vfl: **project proposal, not an MMDetection config** (zoo §3.8): the focal loss is
            replaced by the Varifocal Loss whose target at [positive, gt class] is
            ``clamp(IoU(decode(p, pred).detach(), gt), min=1e-6)`` (0 elsewhere), without label
            weights, normalised by num_pos; the centerness branch is kept and still multiplies
            the scores at test.
        vfl_alpha, vfl_gamma, vfl_iou_weighted: Varifocal Loss parameters (0.75, 2, True).
        test_cfg: a :class:`TestConfig`, or a mapping of fields overriding
            :data:`FCOS_TEST_CFG` (tricks: ``{'nms_iou': 0.6}``).

    Attributes:
        assigner: the :class:`~varifocal.assigners.FCOSAssigner` built from ``regress_ranges``,
            ``center_sampling`` and ``center_sample_radius`` (used by :meth:`get_targets`).

    Raises:
        ValueError: mismatched ``strides``/``regress_ranges`` lengths, an unknown ``loss_bbox``
            or test_cfg field, or a non-positive ``center_sample_radius``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        regress_ranges: Sequence[tuple[float, float]] = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF)),
        num_groups: int = 32,
        center_sampling: bool = False,
        center_sample_radius: float = 1.5,
        norm_on_bbox: bool = False,
        centerness_on_reg: bool = False,
        conv_bias: bool = False,
        loss_bbox: str = "iou",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        use_vfl: bool = False,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        vfl_iou_weighted: bool = True,
        test_cfg: TestConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(strides) != len(regress_ranges):
            raise ValueError(f"fcos_head.py: {len(strides)} strides but {len(regress_ranges)} regress_ranges")
        if loss_bbox not in ("iou", "giou"):
            raise ValueError(f"fcos_head.py: loss_bbox must be 'iou' or 'giou', got {loss_bbox!r}")
        if center_sample_radius <= 0:
            raise ValueError(f"fcos_head.py: center_sample_radius must be > 0, got {center_sample_radius}")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.feat_channels = int(feat_channels)
        self.strides = tuple(int(s) for s in strides)
        self.regress_ranges = tuple((float(lo), float(hi)) for lo, hi in regress_ranges)
        self.center_sampling = bool(center_sampling)
        self.center_sample_radius = float(center_sample_radius)
        self.norm_on_bbox = bool(norm_on_bbox)
        self.centerness_on_reg = bool(centerness_on_reg)
        self.use_vfl = bool(use_vfl)
        self.test_cfg = FCOS_TEST_CFG.replace(test_cfg)
        self.assigner = FCOSAssigner(self.regress_ranges, self.center_sampling, self.center_sample_radius)

        # --- layers (zoo §3.1); names reproduce the checkpoint keys of Appendix A.2 ---
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(ConvModule(chn, feat_channels, num_groups, bias=bool(conv_bias)))
            self.reg_convs.append(ConvModule(chn, feat_channels, num_groups, bias=bool(conv_bias)))
        self.conv_cls = nn.Conv2d(feat_channels, self.num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)

        self.loss_cls: nn.Module
        if self.use_vfl:
            self.loss_cls = VarifocalLoss(alpha=vfl_alpha, gamma=vfl_gamma, iou_weighted=vfl_iou_weighted)
        else:
            self.loss_cls = FocalLoss(alpha=focal_alpha, gamma=focal_gamma)
        self.loss_bbox: nn.Module = IoULoss(mode="log") if loss_bbox == "iou" else GIoULoss()
        self.loss_centerness = CrossEntropyLoss(use_sigmoid=True)
        self.init_weights()

    def init_weights(self) -> None:
        """zoo §1.16: every ``nn.Conv2d`` weight ~ N(0, 0.01²) with bias 0, the classifier
        bias −log((1 − 0.01)/0.01) = −4.59512, GroupNorm weight 1 / bias 0, scales 1."""
        init_dense_head(self, self.conv_cls, 0.01)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> FCOSOutputs:
        """Run the head on every FPN level (zoo §3.2).

        Args:
            feats: FPN levels ``[N, in_channels, H_l, W_l]``, finest first, one per stride.

        Returns:
            :class:`FCOSOutputs` (lists over levels).

        Raises:
            ValueError: if the number of levels differs from ``len(strides)``.
        """
        if len(feats) != len(self.strides):
            raise ValueError(f"fcos_head.py: FCOSHead expects {len(self.strides)} feature levels, got {len(feats)}")
        cls_scores, bbox_preds, centernesses = [], [], []
        for lvl, x in enumerate(feats):
            cls_score, bbox_pred, centerness = self.forward_single(x, lvl)
            cls_scores.append(cls_score)
            bbox_preds.append(bbox_pred)
            centernesses.append(centerness)
        return FCOSOutputs(cls_scores, bbox_preds, centernesses)

    def forward_single(self, x: Tensor, lvl: int) -> tuple[Tensor, Tensor, Tensor]:
        """One level: ``x [N, C_in, H, W]`` → (logits ``[N, C, H, W]``, distances
        ``[N, 4, H, W]`` float32, centerness logits ``[N, 1, H, W]``); zoo §3.2 steps 1-5."""
        cls_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)  # [N, F, H, W]
        reg_feat = x
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)  # [N, F, H, W]
        cls_score = self.conv_cls(cls_feat)
        centerness = self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)
        reg = self.scales[lvl](self.conv_reg(reg_feat)).float()
        if self.norm_on_bbox:
            bbox_pred = reg.clamp(min=0)  # stride units
            if not self.training:
                bbox_pred = bbox_pred * self.strides[lvl]  # pixels
        else:
            bbox_pred = reg.exp()  # pixels
        return cls_score, bbox_pred, centerness

    # ------------------------------------------------------------------ targets
    def points(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Per level ``[H_l·W_l, 2]`` (x, y) points at ``((j + 0.5)·s, (i + 0.5)·s)``, pixels
        (zoo §1.6)."""
        return grid_points(featmap_sizes, self.strides, POINT_OFFSET, device)

    def get_targets(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        device: torch.device | str = "cpu",
    ) -> FCOSTargets:
        """FCOS targets for a batch (zoo §3.3).

        The assignment is :attr:`assigner`'s (:class:`~varifocal.assigners.FCOSAssigner`): per
        image and (point p, gt g) with (l, t, r, b) = (px − x1, py − y1, x2 − px, y2 − py), g is
        a candidate of p when p is strictly inside g (min(l, t, r, b) > 0; with
        ``center_sampling``, strictly inside g's centre box ``c ± radius·s`` clipped to g) and
        ``lo ≤ max(l, t, r, b) ≤ hi`` for the range of p's level; the candidate of minimum area
        (x2 − x1)(y2 − y1) wins, ties going to the lowest gt index. Points are not masked by
        valid flags (batch-padding points simply never fall inside a gt). The regression targets
        are the (l, t, r, b) of the assigned gt (gt 0 for negatives), ÷ stride with
        ``norm_on_bbox``.

        Args:
            featmap_sizes: ``(H_l, W_l)`` per level of the batch feature maps.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (crowd boxes removed).
            gt_labels: per image ``[K_i]`` integer labels in ``[0, num_classes)``.
            device: device of the returned tensors.

        Returns:
            :class:`FCOSTargets` over all ``P = Σ_l H_l·W_l`` points of each image.

        Raises:
            ValueError: if ``gt_bboxes`` and ``gt_labels`` differ in length, a box tensor is
                not ``[K, 4]``, or an image's labels do not have one entry per box.
        """
        if len(gt_bboxes) != len(gt_labels):
            raise ValueError(f"fcos_head.py: {len(gt_bboxes)} gt_bboxes entries but {len(gt_labels)} gt_labels")
        points = self.points(featmap_sizes, device)
        flat_points = torch.cat(points)  # [P, 2]
        sizes = [p.shape[0] for p in points]
        strides = torch.cat([flat_points.new_full((n,), float(s)) for n, s in zip(sizes, self.strides)])  # [P]
        labels, targets, inds = [], [], []
        for boxes, cls in zip(gt_bboxes, gt_labels):
            boxes = boxes.to(device=device, dtype=torch.float32)
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"fcos_head.py: gt boxes must be [K, 4], got {tuple(boxes.shape)}")
            result = self.assigner.assign(
                flat_points, sizes, self.strides, boxes, cls.to(device).long(), self.num_classes
            )
            if boxes.shape[0] == 0:
                bbox_targets = flat_points.new_zeros((flat_points.shape[0], 4))
            else:
                # (l, t, r, b) to the assigned gt; negatives get gt 0's, as in the reference.
                bbox_targets = bbox2distance(flat_points, boxes[result.target_gt_inds])  # [P, 4]
                if self.norm_on_bbox:
                    bbox_targets = bbox_targets / strides[:, None]
            labels.append(result.labels)
            targets.append(bbox_targets)
            inds.append(result.gt_inds)
        return FCOSTargets(labels, targets, inds)

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        outs: FCOSOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, Tensor]:
        """FCOS losses (zoo §3.4) for a batch of train-mode outputs.

        With pos = points labelled < C and ``num_pos = max(reduce_mean(#pos), 1)``:

        - ``loss_cls``: focal loss (α, γ) over all points × C classes, no label weights,
          ``/ num_pos`` (VFL with ``use_vfl``, see the class docstring).
        - ``loss_bbox``: ``Σ_pos ct·L(decode(p, pred), decode(p, target)) /
          max(reduce_mean(Σ ct), 1e-6)``, ct the centerness targets, L = −log IoU or 1 − GIoU,
          no clipping.
        - ``loss_centerness``: ``Σ_pos BCE(centerness logit, ct) / num_pos``.

        Both all-reduces run whether or not this process has positives. With no positives the
        bbox and centerness losses are the (zero) sums of the empty predictions, still connected
        to the graph.

        Args:
            outs: the outputs of :meth:`forward` in train mode.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (no crowd boxes).
            gt_labels: per image ``[K_i]`` integer labels in ``[0, num_classes)``.
            img_metas: unused (FCOS ignores valid flags, zoo §3.3 item 5); accepted for the
                :class:`DenseHead` contract.

        Returns:
            ``{'loss_cls', 'loss_bbox', 'loss_centerness'}``: 0-dim float32 tensors.
        """
        cls_scores, bbox_preds, centernesses = outs
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        num_imgs = cls_scores[0].shape[0]
        targets = self.get_targets(featmap_sizes, gt_bboxes, gt_labels, device)
        points = self.points(featmap_sizes, device)
        sizes = [p.shape[0] for p in points]

        # Flatten level-major, then image, then (y, x) (zoo §1.1, point heads).
        flat_cls = torch.cat(
            [flatten_level(c, self.num_classes).reshape(-1, self.num_classes) for c in cls_scores]
        ).float()
        flat_bbox = torch.cat([flatten_level(b, 4).reshape(-1, 4) for b in bbox_preds]).float()
        flat_ctr = torch.cat([flatten_level(c, 1).reshape(-1) for c in centernesses]).float()
        per_img_labels = [t.split(sizes) for t in targets.labels]
        per_img_boxes = [t.split(sizes) for t in targets.bbox_targets]
        flat_labels = torch.cat([img[l] for l in range(len(sizes)) for img in per_img_labels])  # [M]
        flat_targets = torch.cat([img[l] for l in range(len(sizes)) for img in per_img_boxes])  # [M, 4]
        flat_points = torch.cat([p.repeat(num_imgs, 1) for p in points])  # [M, 2]

        pos_inds = torch.nonzero(flat_labels < self.num_classes, as_tuple=False).squeeze(1)
        num_pos = max(float(reduce_mean(torch.tensor(float(pos_inds.numel()), device=device))), 1.0)

        pos_bbox = flat_bbox[pos_inds]
        pos_ctr = flat_ctr[pos_inds]
        pos_targets = flat_targets[pos_inds]
        pos_points = flat_points[pos_inds]
        ct = centerness_target(pos_targets)  # [P]
        ctr_denorm = max(float(reduce_mean(ct.sum().detach())), 1e-6)

        pos_pred_boxes = distance2bbox(pos_points, pos_bbox)
        pos_gt_boxes = distance2bbox(pos_points, pos_targets)
        if pos_inds.numel() > 0:
            loss_bbox = self.loss_bbox(pos_pred_boxes, pos_gt_boxes, weight=ct, avg_factor=ctr_denorm)
            loss_centerness = self.loss_centerness(pos_ctr, ct, avg_factor=num_pos)
        else:
            loss_bbox = pos_bbox.sum()
            loss_centerness = pos_ctr.sum()

        if self.use_vfl:
            iou = bbox_overlaps(pos_pred_boxes.detach(), pos_gt_boxes, is_aligned=True).clamp(min=1e-6)
            cls_targets = torch.zeros_like(flat_cls)  # [M, C]
            cls_targets[pos_inds, flat_labels[pos_inds]] = iou
            loss_cls = self.loss_cls(flat_cls, cls_targets, avg_factor=num_pos)
        else:
            loss_cls = self.loss_cls(flat_cls, flat_labels, avg_factor=num_pos)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_centerness}

    # ------------------------------------------------------------------ inference
    def predict(
        self, outs: FCOSOutputs, img_metas: Sequence[dict[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections per image (zoo §3.5, §1.15) from eval-mode outputs (distances in pixels).

        Per level, (location, class) pairs with σ(cls) > ``score_thr`` are kept and the top
        ``nms_pre`` by σ(cls) selected; the boxes are decoded at the offset-0.5 points and
        clipped to ``img_shape``; the final score is σ(cls)·σ(centerness); then the size filter,
        class-aware NMS and ``max_per_img`` (see :func:`predict_single_image`). All batch
        positions are used, padding included.

        Args:
            outs: the outputs of :meth:`forward` in eval mode.
            img_metas: per image dicts with ``img_shape`` (h, w) and, when ``rescale``,
                ``scale_factor`` (w_scale, h_scale).
            rescale: map boxes back to original-image pixels.

        Returns:
            One dict per image: ``boxes [k, 4]`` xyxy float32, ``scores [k]``, ``labels [k]``
            long, by descending score, ``k ≤ test_cfg.max_per_img``.
        """
        featmap_sizes = [tuple(c.shape[-2:]) for c in outs.cls_scores]
        points = self.points(featmap_sizes, outs.cls_scores[0].device)
        results = []
        for i, meta in enumerate(img_metas):
            scores = [flatten_level(c[i].detach().float(), self.num_classes).sigmoid() for c in outs.cls_scores]
            dists = [flatten_level(b[i].detach().float(), 4) for b in outs.bbox_preds]
            factors = [flatten_level(c[i].detach().float(), 1).reshape(-1).sigmoid() for c in outs.centernesses]
            results.append(
                predict_single_image(
                    scores, dists, points, distance2bbox, meta, self.test_cfg, score_factors=factors, rescale=rescale
                )
            )
        return results
