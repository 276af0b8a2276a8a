"""VarifocalNet head: star-shaped deformable box representation, box refinement and the
IoU-aware classification score, with ATSS targets and the Varifocal / GIoU losses.

Everything here follows ``../shared/docs/vfnet_spec.md`` (cited as "spec §N"): layers §2.1,
forward §2.2, star offsets §2.3, initialisation §2.4, points §2.5, targets §3, losses §4,
post-processing §5. Attribute names reproduce MMDetection's so that official checkpoints load
verbatim (spec §8.2).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...assigners.atss import ATSSAssigner
from ...losses import FocalLoss, GIoULoss, VarifocalLoss
from ...structures.boxes import bbox2distance, bbox_overlaps, distance2bbox
from ...utils.dist import reduce_mean
from ..layers.conv_module import ConvModule, Scale
from ..layers.init import bias_init_with_prob
from ..layers.star_deform_conv import StarDeformConv2d
from ..postprocess import TestConfig, flatten_level, predict_single_image
from ..priors import grid_points, valid_flags

__all__ = ["VFNetHead", "VFNetOutputs", "VFNET_TEST_CFG"]

INF = 1e8

#: ``vfnet_r50_fpn_1x_coco`` test_cfg (spec §5): NMS 0.6, MMDetection 3.x procedure.
VFNET_TEST_CFG = TestConfig(score_thr=0.05, nms_pre=1000, nms_iou=0.6, max_per_img=100, min_bbox_size=0.0)


class VFNetOutputs(NamedTuple):
    """Raw VFNet head outputs, lists over levels: ``cls_scores [N, C, H, W]`` logits,
    ``bbox_preds`` and ``bbox_preds_refine [N, 4, H, W]`` initial and refined (l, t, r, b)
    distances in input-image pixels (float32)."""

    cls_scores: list[Tensor]
    bbox_preds: list[Tensor]
    bbox_preds_refine: list[Tensor]


class VFNetHead(nn.Module):
    """The VarifocalNet head (spec §2), shared across all FPN levels.

    Args:
        num_classes: number of foreground classes C (sigmoid outputs, no background channel).
        in_channels: channels of every FPN level (256 for the zoo models).
        feat_channels: channels inside the towers.
        stacked_convs: ConvModules per tower (3 for VFNet).
        strides: FPN strides, pixels.
        regress_ranges: per-level ranges; in ATSS mode only their upper bounds are used, as
            ``reg_denom`` (spec §2.2 item 3).
        num_groups: GroupNorm groups in the towers.
        dcn_on_last_conv: the last ConvModule of both towers becomes DCNv2 (spec §2.1, §8.3).
        gradient_mul: share of the gradient that flows from the star offsets into the initial
            box (spec §2.3).
        bbox_norm_type: ``'reg_denom'`` (distances = exp(·)·reg_denom) or ``'stride'``.
        use_vfl: Varifocal Loss on IoU targets (True) or focal loss on one-hot labels (spec §4.4).
        vfl_alpha, vfl_gamma, vfl_iou_weighted: Varifocal Loss parameters (spec §4.2).
        focal_alpha, focal_gamma: focal loss parameters when ``use_vfl=False``.
        loss_bbox_weight, loss_bbox_refine_weight: GIoU loss weights (1.5 and 2.0, spec §4.3).
        atss_topk: ATSS candidates per level (spec §3.2).
        anchor_scale: side of the virtual ATSS anchor in strides (8, spec §3.1).
        star_conv_impl: ``'auto'``, ``'fast'`` or ``'torchvision'`` (see ``StarDeformConv2d``).
        test_cfg: test settings (spec §5): a :class:`TestConfig`, or a mapping of fields that
            override :data:`VFNET_TEST_CFG` (``postprocess='mmdet2'`` gives spec §5.1).

    Raises:
        ValueError: on an unknown ``bbox_norm_type`` or test_cfg field, or mismatched
            ``strides``/``regress_ranges`` lengths.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 3,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        regress_ranges: Sequence[tuple[float, float]] = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF)),
        num_groups: int = 32,
        dcn_on_last_conv: bool = False,
        gradient_mul: float = 0.1,
        bbox_norm_type: str = "reg_denom",
        use_vfl: bool = True,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        vfl_iou_weighted: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_bbox_weight: float = 1.5,
        loss_bbox_refine_weight: float = 2.0,
        atss_topk: int = 9,
        anchor_scale: float = 8.0,
        star_conv_impl: str = "auto",
        test_cfg: TestConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(strides) != len(regress_ranges):
            raise ValueError(f"{len(strides)} strides but {len(regress_ranges)} regress_ranges")
        if bbox_norm_type not in ("reg_denom", "stride"):
            raise ValueError(f"bbox_norm_type must be 'reg_denom' or 'stride', got {bbox_norm_type!r}")
        self.num_classes = int(num_classes)
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.strides = tuple(int(s) for s in strides)
        self.regress_ranges = tuple(regress_ranges)
        denoms = [float(r[-1]) for r in regress_ranges]
        denoms[-1] = denoms[-2] * 2 if len(denoms) > 1 else denoms[-1]
        self.reg_denoms = tuple(denoms)  # [64, 128, 256, 512, 1024] for the defaults
        self.gradient_mul = float(gradient_mul)
        self.bbox_norm_type = bbox_norm_type
        self.use_vfl = bool(use_vfl)
        self.anchor_scale = float(anchor_scale)
        self.test_cfg = VFNET_TEST_CFG.replace(test_cfg)

        # --- layers (spec §2.1); names reproduce the official checkpoint keys ---
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            use_dcn = dcn_on_last_conv and i == stacked_convs - 1
            self.cls_convs.append(ConvModule(chn, feat_channels, num_groups, use_dcn=use_dcn))
            self.reg_convs.append(ConvModule(chn, feat_channels, num_groups, use_dcn=use_dcn))
        self.vfnet_reg_conv = ConvModule(feat_channels, feat_channels, num_groups)
        self.vfnet_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.vfnet_reg_refine_dconv = StarDeformConv2d(feat_channels, feat_channels, impl=star_conv_impl)
        self.vfnet_reg_refine = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.scales_refine = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.vfnet_cls_dconv = StarDeformConv2d(feat_channels, feat_channels, impl=star_conv_impl)
        self.vfnet_cls = nn.Conv2d(feat_channels, self.num_classes, 3, padding=1)

        self.assigner = ATSSAssigner(topk=atss_topk)
        self.loss_cls: nn.Module
        if self.use_vfl:
            self.loss_cls = VarifocalLoss(alpha=vfl_alpha, gamma=vfl_gamma, iou_weighted=vfl_iou_weighted)
        else:
            self.loss_cls = FocalLoss(alpha=focal_alpha, gamma=focal_gamma)
        self.loss_bbox = GIoULoss(loss_weight=loss_bbox_weight)
        self.loss_bbox_refine = GIoULoss(loss_weight=loss_bbox_refine_weight)
        self.init_weights()

    def init_weights(self) -> None:
        """Spec §2.4 (authors' behaviour): every conv and DCN weight ~ N(0, 0.01²), biases 0,
        the classifier bias −log(99) (prior 0.01), GroupNorm 1/0, scales 1. DCNv2 offset
        convs (``dcn_on_last_conv``) start at zero."""
        for name, module in self.named_modules():
            if name.endswith("conv_offset"):
                continue  # DCNv2 offsets start at 0, set by the layer itself
            weight = getattr(module, "weight", None)
            if isinstance(module, (nn.Conv2d, StarDeformConv2d)) or (
                weight is not None and weight.dim() == 4 and not isinstance(module, nn.GroupNorm)
            ):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.vfnet_cls.bias, bias_init_with_prob(0.01))

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> VFNetOutputs:
        """Run the head on every FPN level (spec §2.2).

        Args:
            feats: FPN levels ``[N, in_channels, H_l, W_l]``, finest first, one per stride.

        Returns:
            :class:`VFNetOutputs`: lists over levels of ``[N, num_classes, H_l, W_l]``
            logits, ``[N, 4, H_l, W_l]`` initial (l, t, r, b) distances and
            ``[N, 4, H_l, W_l]`` refined distances, in input-image pixels. Distances are
            float32 even under autocast.

        Raises:
            ValueError: if the number of levels differs from ``len(strides)``.
        """
        if len(feats) != len(self.strides):
            raise ValueError(f"VFNetHead expects {len(self.strides)} feature levels, got {len(feats)}")
        cls_scores, bbox_preds, bbox_preds_refine = [], [], []
        for lvl, x in enumerate(feats):
            cls_score, bbox_pred, bbox_pred_refine = self.forward_single(x, lvl)
            cls_scores.append(cls_score)
            bbox_preds.append(bbox_pred)
            bbox_preds_refine.append(bbox_pred_refine)
        return VFNetOutputs(cls_scores, bbox_preds, bbox_preds_refine)

    def forward_single(self, x: Tensor, lvl: int) -> tuple[Tensor, Tensor, Tensor]:
        """One level: ``x [N, C, H, W]`` → (logits ``[N, K, H, W]``, init and refined
        distances ``[N, 4, H, W]`` float32, pixels). Spec §2.2 steps 1-6."""
        stride = self.strides[lvl]
        denom = self.reg_denoms[lvl] if self.bbox_norm_type == "reg_denom" else float(stride)
        cls_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)  # [N, F, H, W]
        reg_feat = x
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)  # [N, F, H, W]

        # Initial box (l, t, r, b) in pixels, computed in float32 (exp has no clamp).
        reg_init = self.scales[lvl](self.vfnet_reg(self.vfnet_reg_conv(reg_feat)))
        bbox_pred = reg_init.float().exp() * denom  # [N, 4, H, W]

        # Star offsets: only gradient_mul of the gradient reaches the initial box (spec §2.3);
        # the star conv takes the distances in feature cells and stays in float32.
        g = self.gradient_mul
        distances = ((1.0 - g) * bbox_pred.detach() + g * bbox_pred) / stride  # [N, 4, H, W]

        rf_feat = F.relu(self.vfnet_reg_refine_dconv(reg_feat, distances))
        reg_refine = self.scales_refine[lvl](self.vfnet_reg_refine(rf_feat))
        bbox_pred_refine = reg_refine.float().exp() * bbox_pred.detach()  # [N, 4, H, W]

        cls_feat = F.relu(self.vfnet_cls_dconv(cls_feat, distances))
        cls_score = self.vfnet_cls(cls_feat)  # [N, K, H, W]
        return cls_score, bbox_pred, bbox_pred_refine

    # ------------------------------------------------------------------ targets
    def get_targets(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[dict[str, Any]],
        device: torch.device,
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """ATSS targets for a batch (spec §3.1-§3.3).

        Args:
            featmap_sizes: ``(H_l, W_l)`` per level of the batch feature maps.
            gt_bboxes: per image ``[K_i, 4]`` xyxy in resized-image pixels (crowd boxes
                already removed, spec §3.2 item 8).
            gt_labels: per image ``[K_i]`` labels in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape`` (h, w): the image's own padded size,
                which sets the valid points (spec §3.1).

        Returns:
            Per level, images concatenated (image 0's points, then image 1's, ...):
            ``labels [N·H_l·W_l]`` (background = num_classes), ``label_weights
            [N·H_l·W_l]`` (0 on points outside the image's pad_shape, else 1) and
            ``bbox_targets [N·H_l·W_l, 4]`` xyxy gt boxes of positive points (0 elsewhere).
        """
        num_levels = len(featmap_sizes)
        points = grid_points(featmap_sizes, self.strides, 0.0, device)
        half = [0.5 * self.anchor_scale * s for s in self.strides]
        anchors = [torch.cat((p - h, p + h), dim=1) for p, h in zip(points, half)]  # [HW, 4]
        flat_anchors = torch.cat(anchors)  # [A, 4]
        sizes = [a.shape[0] for a in anchors]

        per_img_labels, per_img_weights, per_img_targets = [], [], []
        for boxes, labels, meta in zip(gt_bboxes, gt_labels, img_metas):
            valid = valid_flags(featmap_sizes, self.strides, meta["pad_shape"][:2], device=device)
            num_valid = [int(v.sum()) for v in valid]
            valid_flat = torch.cat(valid)
            result = self.assigner.assign(
                flat_anchors[valid_flat], num_valid, boxes.to(device).float(), labels.to(device), self.num_classes
            )
            img_labels = torch.full((flat_anchors.shape[0],), self.num_classes, dtype=torch.long, device=device)
            img_labels[valid_flat] = result.labels
            img_weights = valid_flat.float()
            img_targets = flat_anchors.new_zeros(flat_anchors.shape)
            pos = result.gt_inds > 0
            valid_targets = img_targets.new_zeros((int(valid_flat.sum()), 4))
            if pos.any():
                valid_targets[pos] = boxes.to(device).float()[result.gt_inds[pos] - 1]
            img_targets[valid_flat] = valid_targets
            per_img_labels.append(img_labels.split(sizes))
            per_img_weights.append(img_weights.split(sizes))
            per_img_targets.append(img_targets.split(sizes))

        labels_lvl = [torch.cat([img[l] for img in per_img_labels]) for l in range(num_levels)]
        weights_lvl = [torch.cat([img[l] for img in per_img_weights]) for l in range(num_levels)]
        targets_lvl = [torch.cat([img[l] for img in per_img_targets]) for l in range(num_levels)]
        return labels_lvl, weights_lvl, targets_lvl

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        outs: VFNetOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[dict[str, Any]],
    ) -> dict[str, Tensor]:
        """VFNet losses (spec §4) for a batch.

        Args:
            outs: the outputs of :meth:`forward`.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (no crowd boxes).
            gt_labels: per image ``[K_i]`` long in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape``.

        Returns:
            ``{'loss_cls', 'loss_bbox', 'loss_bbox_rf'}``: float32 scalars. ``loss_cls`` is the
            Varifocal Loss (or focal loss) summed over all points and classes divided by the
            process-mean positive count (≥ 1); the GIoU losses are weighted by each box's own
            IoU and divided by the process-mean sum of those weights (≥ 1). With no positives
            the box losses are zeros that still backpropagate. Every all-reduce runs whether
            or not this process has positives (spec §10 item 10).
        """
        cls_scores, bbox_preds, bbox_preds_refine = outs
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        labels, label_weights, bbox_targets = self.get_targets(featmap_sizes, gt_bboxes, gt_labels, img_metas, device)
        num_imgs = cls_scores[0].shape[0]
        points = grid_points(featmap_sizes, self.strides, 0.0, device)

        # Flatten level-major, image-major within a level (spec §4).
        flat_cls = torch.cat(
            [flatten_level(c, self.num_classes).reshape(-1, self.num_classes) for c in cls_scores]
        ).float()
        flat_init = torch.cat([flatten_level(b, 4).reshape(-1, 4) for b in bbox_preds]).float()
        flat_refine = torch.cat([flatten_level(b, 4).reshape(-1, 4) for b in bbox_preds_refine]).float()
        flat_labels = torch.cat(labels)  # [M]
        flat_weights = torch.cat(label_weights)  # [M]
        flat_targets = torch.cat(bbox_targets)  # [M, 4]
        flat_points = torch.cat([p.repeat(num_imgs, 1) for p in points])  # [M, 2]

        pos_inds = torch.nonzero(flat_labels < self.num_classes, as_tuple=False).squeeze(1)
        num_pos = pos_inds.numel()
        num_pos_avg = max(reduce_mean(torch.tensor(float(num_pos), device=device)).item(), 1.0)

        pos_points = flat_points[pos_inds]
        pos_init = flat_init[pos_inds]
        pos_refine = flat_refine[pos_inds]
        pos_labels = flat_labels[pos_inds]
        # Targets travel as (l, t, r, b) and are decoded back, as in the reference.
        pos_gt = distance2bbox(pos_points, bbox2distance(pos_points, flat_targets[pos_inds]))
        pos_init_boxes = distance2bbox(pos_points, pos_init)
        pos_refine_boxes = distance2bbox(pos_points, pos_refine)

        iou_init = bbox_overlaps(pos_init_boxes, pos_gt, is_aligned=True).clamp(min=1e-6).detach()  # [P]
        iou_refine = bbox_overlaps(pos_refine_boxes, pos_gt, is_aligned=True).clamp(min=1e-6).detach()  # [P]
        avg_init = reduce_mean(iou_init.sum()).clamp(min=1.0).item()
        avg_refine = reduce_mean(iou_refine.sum()).clamp(min=1.0).item()

        if num_pos > 0:
            loss_bbox = self.loss_bbox(pos_init_boxes, pos_gt, weight=iou_init, avg_factor=avg_init)
            loss_bbox_rf = self.loss_bbox_refine(pos_refine_boxes, pos_gt, weight=iou_refine, avg_factor=avg_refine)
        else:
            loss_bbox = pos_init.sum() * 0.0
            loss_bbox_rf = pos_refine.sum() * 0.0

        if self.use_vfl:
            cls_iou_targets = torch.zeros_like(flat_cls)  # [M, K]
            cls_iou_targets[pos_inds, pos_labels] = iou_refine
            loss_cls = self.loss_cls(flat_cls, cls_iou_targets, avg_factor=num_pos_avg)
        else:
            loss_cls = self.loss_cls(flat_cls, flat_labels, weight=flat_weights, avg_factor=num_pos_avg)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_bbox_rf": loss_bbox_rf}

    # ------------------------------------------------------------------ inference
    def predict(
        self, outs: VFNetOutputs, img_metas: Sequence[dict[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections per image from the refined boxes (spec §5.2, or §5.1 with
        ``test_cfg.postprocess='mmdet2'``), see :func:`predict_single_image`.

        Args:
            outs: the outputs of :meth:`forward` (``bbox_preds`` is not used).
            img_metas: per image dicts with ``img_shape`` (h, w), resized and unpadded, and,
                when ``rescale``, ``scale_factor`` (w_scale, h_scale).
            rescale: map boxes back to original-image pixels.

        Returns:
            One dict per image: ``boxes [k, 4]`` xyxy float32 (original-image pixels when
            ``rescale``, else resized-image pixels), ``scores [k]`` (sigmoid of the IACS),
            ``labels [k]`` long, sorted by descending score, ``k ≤ test_cfg.max_per_img``.
        """
        featmap_sizes = [tuple(c.shape[-2:]) for c in outs.cls_scores]
        points = grid_points(featmap_sizes, self.strides, 0.0, outs.cls_scores[0].device)
        results = []
        for i, meta in enumerate(img_metas):
            scores = [flatten_level(c[i].detach().float(), self.num_classes).sigmoid() for c in outs.cls_scores]
            dists = [flatten_level(b[i].detach().float(), 4) for b in outs.bbox_preds_refine]
            results.append(
                predict_single_image(scores, dists, points, distance2bbox, meta, self.test_cfg, rescale=rescale)
            )
        return results
