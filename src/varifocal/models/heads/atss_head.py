"""ATSS head (``atss_r50_fpn_1x_coco``) and its Varifocal-Loss variant (``ATSSVGFLHead``).

Follows ``../shared/docs/zoo_spec.md`` (cited as "zoo §N"): layers §4.1, forward §4.2, targets
§4.3 (anchors §1.5, assigner §1.11 / ``vfnet_spec.md`` §3.2), losses §4.4 (normalisers §1.13,
§1.14), inference §4.5 (§1.15), initialisation §1.16, the VFL variant §4.8 / §8. Attribute names
reproduce MMDetection's so that ``bbox_head.*`` checkpoint keys load verbatim (§4.7, App. A.3).

Decisions where the spec leaves a choice (reported, [project]):

- ``use_vfl=True`` keeps the MMDetection 3.x test procedure (threshold and top-k on the raw class
  score, centerness multiplied afterwards, zoo §1.15). The authors' 2.10 code ranked locations
  by ``max(score × centerness)`` first (zoo §4.8); set ``test_cfg={'postprocess': 'mmdet2'}``
  for that.
- ``use_vfl=True`` regresses towards the gt box itself (``reg_decoded_bbox``), the value the
  2.10 code gets by encoding and decoding the delta target (zoo §4.8, "same values as 3.x").
  Its box-loss normaliser follows the 2.10 rule of zoo §4.8 (B = Σ ct, replaced by 1 only when
  it is < 1e-12); the focal-loss head uses the 3.3 rule (B = max(Σ ct, 1)).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ...assigners.atss import ATSSAssigner
from ...losses import CrossEntropyLoss, FocalLoss, GIoULoss, VarifocalLoss
from ...structures.boxes import bbox2distance, bbox_overlaps, centerness_target
from ...utils.dist import reduce_mean
from ..box_coders import DeltaXYWHBBoxCoder
from ..layers.conv_module import ConvModule, Scale
from ..layers.init import init_dense_head
from ..postprocess import TestConfig, flatten_level, predict_single_image
from ..priors import AnchorGenerator

__all__ = ["ATSSHead", "ATSSOutputs", "ATSSTargets", "ATSS_TEST_CFG", "anchor_centerness_target"]

#: ``atss_r50_fpn_1x_coco`` test_cfg (zoo §1.15 table, §4.5): NMS 0.6, MMDetection 3.x procedure.
ATSS_TEST_CFG = TestConfig(score_thr=0.05, nms_pre=1000, nms_iou=0.6, max_per_img=100, min_bbox_size=0.0)

#: Box-loss normaliser floor of the authors' 2.10 code (zoo §4.8).
_EPS_2X = 1e-12


class ATSSOutputs(NamedTuple):
    """Raw ATSS head outputs, lists over levels (zoo §4.2): ``cls_scores [N, C, H, W]`` logits,
    ``bbox_preds [N, 4, H, W]`` normalised (dx, dy, dw, dh) deltas after the level's ``Scale``
    (float32; decoded with stds (0.1, 0.1, 0.2, 0.2)), ``centernesses [N, 1, H, W]`` logits."""

    cls_scores: list[Tensor]
    bbox_preds: list[Tensor]
    centernesses: list[Tensor]


class ATSSTargets(NamedTuple):
    """Training targets of a batch (zoo §4.3).

    Attributes:
        anchors: per level ``[H_l·W_l, 4]`` xyxy anchors of the batch feature maps, pixels.
        labels: per level ``[N·H_l·W_l]`` long, image-major (image 0's anchors first);
            background = num_classes.
        label_weights: per level ``[N·H_l·W_l]`` float, 1 on the image's valid anchors, 0 outside.
        bbox_targets: per level ``[N·H_l·W_l, 4]`` xyxy gt box of each positive (0 elsewhere).
        assign_records: per image, over all priors of the batch (levels concatenated):
            ``assigned_gt_inds [M]`` long (−2 = not valid for this image, 0 negative, k ≥ 1 =
            gt k−1), ``max_overlaps [M]`` (IoU with the assigned gt; 0 for negatives, −1 where
            invalid), ``valid_flags [M]`` bool.
        num_pos: per image, the number of positives.
    """

    anchors: list[Tensor]
    labels: list[Tensor]
    label_weights: list[Tensor]
    bbox_targets: list[Tensor]
    assign_records: list[dict[str, Tensor]]
    num_pos: list[int]


def anchor_centerness_target(anchors: Tensor, gt_bboxes: Tensor) -> Tensor:
    """Centerness of each anchor centre w.r.t. its gt box (zoo §4.4), validated.

    With ``(l, t, r, b)`` the distances of the anchor centre to the gt sides
    (:func:`~varifocal.structures.boxes.bbox2distance`), ``ct = √(min(l, r)/max(l, r) ·
    min(t, b)/max(t, b))`` (the shared :func:`~varifocal.structures.boxes.centerness_target`).

    Args:
        anchors: ``[P, 4]`` xyxy anchors (only their centres matter), pixels.
        gt_bboxes: ``[P, 4]`` xyxy gt boxes, one per anchor, pixels.

    Returns:
        ``[P]`` float in ``[0, 1]`` (1 at the box centre).

    Raises:
        ValueError: shapes differ or are not ``[P, 4]``; a centre lies outside its box, or on
            two opposite sides of a zero-size box (NaN); ATSS positives are inside by > 0.01 px.
    """
    if anchors.dim() != 2 or anchors.size(-1) != 4 or anchors.shape != gt_bboxes.shape:
        raise ValueError(
            f"atss_head.py: anchors {tuple(anchors.shape)} and gt_bboxes {tuple(gt_bboxes.shape)} must be [P, 4]"
        )
    centres = torch.stack(((anchors[:, 0] + anchors[:, 2]) * 0.5, (anchors[:, 1] + anchors[:, 3]) * 0.5), dim=1)
    distances = bbox2distance(centres, gt_bboxes)  # [P, 4] (l, t, r, b)
    ct = centerness_target(distances)
    # sqrt(ratio) is NaN exactly where the ratio is NaN (0/0) or negative (a negative distance).
    if bool(torch.isnan(ct).any()) or bool((distances.min(dim=1).values < 0).any()):
        raise ValueError("atss_head.py: centerness target of an anchor centre outside its gt box")
    return ct


class ATSSHead(nn.Module):
    """The ATSS head (zoo §4), shared across FPN levels; one anchor (side 8·s) per location.

    Args:
        num_classes: foreground classes C (sigmoid outputs, no background channel).
        in_channels: channels of every FPN level (256 in the zoo).
        feat_channels: channels inside the towers.
        stacked_convs: ConvModules (3×3, no bias, GroupNorm, ReLU) per tower (4).
        strides: FPN strides, pixels.
        num_groups: GroupNorm groups in the towers (32).
        octave_base_scale: anchor side in strides (8, zoo §1.5; one scale, ratio 1).
        atss_topk: ATSS candidates per level and gt (9, zoo §1.11).
        bbox_stds: DeltaXYWH target stds (0.1, 0.1, 0.2, 0.2, zoo §1.7).
        focal_alpha, focal_gamma: sigmoid focal loss (0.25, 2) when ``use_vfl`` is False.
        loss_cls_weight: weight of the classification loss (1).
        loss_bbox_weight: weight of the centerness-weighted GIoU loss (2, zoo §4.4).
        loss_centerness_weight: weight of the centerness BCE (1).
        use_vfl: Varifocal Loss on IoU targets instead of the focal loss (zoo §4.8).
        vfl_alpha, vfl_gamma, vfl_iou_weighted: Varifocal Loss parameters (0.75, 2, True).
        prior_prob: initial foreground probability of the classifier bias (0.01, zoo §1.16).
        test_cfg: a :class:`TestConfig`, or a mapping of fields overriding :data:`ATSS_TEST_CFG`.

    Raises:
        ValueError: on an unknown test_cfg field, ``feat_channels`` not divisible by
            ``num_groups``, or ``prior_prob`` outside (0, 1).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        num_groups: int = 32,
        octave_base_scale: float = 8.0,
        atss_topk: int = 9,
        bbox_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_bbox_weight: float = 2.0,
        loss_centerness_weight: float = 1.0,
        use_vfl: bool = False,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        vfl_iou_weighted: bool = True,
        prior_prob: float = 0.01,
        test_cfg: TestConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"atss_head.py: prior_prob must be in (0, 1), got {prior_prob}")
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.feat_channels = int(feat_channels)
        self.strides = tuple(int(s) for s in strides)
        self.use_vfl = bool(use_vfl)
        self.prior_prob = float(prior_prob)
        self.test_cfg = ATSS_TEST_CFG.replace(test_cfg)

        # --- layers (zoo §4.1); names reproduce the checkpoint keys (§4.7) ---
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = in_channels if i == 0 else feat_channels
            self.cls_convs.append(ConvModule(chn, feat_channels, num_groups))
            self.reg_convs.append(ConvModule(chn, feat_channels, num_groups))
        self.atss_cls = nn.Conv2d(feat_channels, self.num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)

        self.anchor_generator = AnchorGenerator(
            self.strides, ratios=(1.0,), octave_base_scale=octave_base_scale, scales_per_octave=1
        )
        self.bbox_coder = DeltaXYWHBBoxCoder(stds=bbox_stds)
        self.assigner = ATSSAssigner(topk=atss_topk)
        self.loss_cls: nn.Module
        if self.use_vfl:
            self.loss_cls = VarifocalLoss(
                alpha=vfl_alpha, gamma=vfl_gamma, iou_weighted=vfl_iou_weighted, loss_weight=loss_cls_weight
            )
        else:
            self.loss_cls = FocalLoss(alpha=focal_alpha, gamma=focal_gamma, loss_weight=loss_cls_weight)
        self.loss_bbox = GIoULoss(loss_weight=loss_bbox_weight)
        self.loss_centerness = CrossEntropyLoss(use_sigmoid=True, loss_weight=loss_centerness_weight)
        self.init_weights()

    def init_weights(self) -> None:
        """Zoo §1.16: every ``nn.Conv2d`` weight ~ N(0, 0.01²), bias 0; ``atss_cls`` bias
        −log((1 − π)/π) (−4.59512 for π = 0.01); GroupNorm weight 1, bias 0; scales 1."""
        init_dense_head(self, self.atss_cls, self.prior_prob)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> ATSSOutputs:
        """Run the head on every FPN level (zoo §4.2).

        Args:
            feats: FPN levels ``[N, in_channels, H_l, W_l]``, finest first, one per stride.

        Returns:
            :class:`ATSSOutputs` (logits ``[N, C, H_l, W_l]``, float32 deltas
            ``[N, 4, H_l, W_l]``, centerness logits ``[N, 1, H_l, W_l]``).

        Raises:
            ValueError: the number of levels differs from ``len(strides)``.
        """
        if len(feats) != len(self.strides):
            raise ValueError(f"ATSSHead expects {len(self.strides)} feature levels, got {len(feats)}")
        cls_scores, bbox_preds, centernesses = [], [], []
        for lvl, x in enumerate(feats):
            cls_feat = x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)  # [N, F, H, W]
            reg_feat = x
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)  # [N, F, H, W]
            cls_scores.append(self.atss_cls(cls_feat))
            bbox_preds.append(self.scales[lvl](self.atss_reg(reg_feat)).float())
            centernesses.append(self.atss_centerness(reg_feat))  # from the reg tower (§4.10 item 3)
        return ATSSOutputs(cls_scores, bbox_preds, centernesses)

    # ------------------------------------------------------------------ targets
    def get_targets(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
        device: torch.device | str = "cpu",
    ) -> ATSSTargets:
        """ATSS targets of a batch (zoo §4.3).

        Each image's anchors are valid where its own ``pad_shape`` reaches (zoo §1.5 item 4);
        ATSS (top-k per level, mean + unbiased std, centre inside by > 0.01 px) runs on the valid
        anchors only; positives regress to their gt box (``reg_decoded_bbox=True``).

        Args:
            featmap_sizes: ``(H_l, W_l)`` per level of the batch feature maps.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (crowd boxes removed).
            gt_labels: per image ``[K_i]`` integer labels in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape`` (h, w).
            device: device of the returned tensors.

        Returns:
            :class:`ATSSTargets`.

        Raises:
            ValueError: the per-image lists differ in length, or a level count is wrong.
        """
        if not (len(gt_bboxes) == len(gt_labels) == len(img_metas)):
            raise ValueError(
                f"atss_head.py: {len(gt_bboxes)} gt_bboxes, {len(gt_labels)} gt_labels and {len(img_metas)} img_metas"
            )
        anchors = self.anchor_generator.grid_anchors(featmap_sizes, device=device)  # per level [HW, 4]
        flat_anchors = torch.cat(anchors)  # [M, 4]
        sizes = [a.shape[0] for a in anchors]
        num_priors = flat_anchors.shape[0]

        per_img: list[tuple[Tensor, Tensor, Tensor]] = []
        records: list[dict[str, Tensor]] = []
        num_pos: list[int] = []
        for boxes, labels, meta in zip(gt_bboxes, gt_labels, img_metas):
            boxes = boxes.to(device).float()
            valid = torch.cat(self.anchor_generator.valid_flags(featmap_sizes, tuple(meta["pad_shape"][:2]), device))
            num_level_valid = [int(v.sum()) for v in valid.split(sizes)]
            result = self.assigner.assign(
                flat_anchors[valid], num_level_valid, boxes, labels.to(device).long(), self.num_classes
            )
            img_labels = torch.full((num_priors,), self.num_classes, dtype=torch.long, device=device)
            img_labels[valid] = result.labels
            img_targets = flat_anchors.new_zeros((num_priors, 4))
            pos = result.gt_inds > 0
            valid_targets = flat_anchors.new_zeros((int(valid.sum()), 4))
            if bool(pos.any()):
                valid_targets[pos] = boxes[result.gt_inds[pos] - 1]
            img_targets[valid] = valid_targets
            gt_inds = torch.full((num_priors,), -2, dtype=torch.long, device=device)
            gt_inds[valid] = result.gt_inds
            overlaps = flat_anchors.new_full((num_priors,), -1.0)
            overlaps[valid] = result.max_overlaps.to(overlaps.dtype)
            records.append({"assigned_gt_inds": gt_inds, "max_overlaps": overlaps, "valid_flags": valid})
            num_pos.append(int(pos.sum()))
            per_img.append((img_labels.split(sizes), valid.float().split(sizes), img_targets.split(sizes)))

        levels = range(len(sizes))
        labels_lvl = [torch.cat([img[0][l] for img in per_img]) for l in levels]
        weights_lvl = [torch.cat([img[1][l] for img in per_img]) for l in levels]
        targets_lvl = [torch.cat([img[2][l] for img in per_img]) for l in levels]
        return ATSSTargets(anchors, labels_lvl, weights_lvl, targets_lvl, records, num_pos)

    # ------------------------------------------------------------------ loss
    def loss_by_level(
        self,
        outs: ATSSOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> dict[str, list[Tensor]]:
        """Per-level ATSS losses (zoo §4.4; VFL variant §4.8).

        With A = GPU-mean(Σ_img max(#pos_img, 1)) (VFL: max(that, 1)), per level l:
        ``loss_cls_l`` = focal(label weights) / A (VFL: VFL on IoU targets over all anchors, no
        label weights, / A); ``loss_bbox_l`` = 2 · Σ_pos ct·(1 − GIoU(decode(anchor, δ), gt)) / B
        with B = max(GPU-mean(Σ_levels Σ_pos ct), 1) (VFL: B, or 1 if B < 1e-12);
        ``loss_centerness_l`` = Σ_pos BCE(logit, ct) / A. A level without positives gives box
        and centerness losses of 0 that stay connected to the graph. The all-reduces run on
        every call (also with no positives).

        Args:
            outs: the outputs of :meth:`forward`.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (no crowd boxes).
            gt_labels: per image ``[K_i]`` integer labels in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape``.

        Returns:
            ``{'loss_cls', 'loss_bbox', 'loss_centerness'}``, each a list over levels of float32
            scalars.
        """
        cls_scores, bbox_preds, centernesses = outs
        featmap_sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        num_imgs = cls_scores[0].shape[0]
        targets = self.get_targets(featmap_sizes, gt_bboxes, gt_labels, img_metas, device)

        local_avg = float(sum(max(n, 1) for n in targets.num_pos))
        avg_factor = reduce_mean(torch.tensor(local_avg, dtype=torch.float32, device=device)).item()
        if self.use_vfl:
            avg_factor = max(avg_factor, 1.0)

        losses_cls, losses_bbox, losses_ctr, ct_sums = [], [], [], []
        for lvl in range(len(featmap_sizes)):
            cls = flatten_level(cls_scores[lvl], self.num_classes).reshape(-1, self.num_classes).float()  # [N·HW, C]
            deltas = flatten_level(bbox_preds[lvl], 4).reshape(-1, 4).float()  # [N·HW, 4]
            ctr = flatten_level(centernesses[lvl], 1).reshape(-1).float()  # [N·HW]
            anchors = targets.anchors[lvl].repeat(num_imgs, 1)  # image-major, like the targets
            labels = targets.labels[lvl]
            bbox_targets = targets.bbox_targets[lvl]
            pos = torch.nonzero((labels >= 0) & (labels < self.num_classes), as_tuple=False).squeeze(1)

            if pos.numel() > 0:
                pos_anchors, pos_targets = anchors[pos], bbox_targets[pos]
                ct = anchor_centerness_target(pos_anchors, pos_targets)  # [P]
                decoded = self.bbox_coder.decode(pos_anchors, deltas[pos])  # [P, 4], no clip
                loss_bbox = self.loss_bbox(decoded, pos_targets, weight=ct, avg_factor=1.0)
                loss_ctr = self.loss_centerness(ctr[pos], ct, avg_factor=avg_factor)
                ct_sums.append(ct.sum())
            else:
                decoded = deltas.new_zeros((0, 4))
                loss_bbox = deltas.sum() * 0.0
                loss_ctr = ctr.sum() * 0.0
                ct_sums.append(deltas.new_zeros(()))

            if self.use_vfl:
                iou_targets = torch.zeros_like(cls)  # [N·HW, C]
                if pos.numel() > 0:
                    q = bbox_overlaps(decoded.detach(), pos_targets, is_aligned=True).clamp(min=1e-6)
                    iou_targets[pos, labels[pos]] = q
                loss_cls = self.loss_cls(cls, iou_targets, avg_factor=avg_factor)
            else:
                loss_cls = self.loss_cls(cls, labels, weight=targets.label_weights[lvl], avg_factor=avg_factor)
            losses_cls.append(loss_cls)
            losses_bbox.append(loss_bbox)
            losses_ctr.append(loss_ctr)

        bbox_norm = reduce_mean(torch.stack(ct_sums).sum().detach())
        if self.use_vfl:
            norm = float(bbox_norm)
            norm = 1.0 if norm < _EPS_2X else norm
        else:
            norm = float(bbox_norm.clamp(min=1.0))
        losses_bbox = [l / norm for l in losses_bbox]
        return {"loss_cls": losses_cls, "loss_bbox": losses_bbox, "loss_centerness": losses_ctr}

    def loss(
        self,
        outs: ATSSOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> dict[str, Tensor]:
        """ATSS losses of a batch: :meth:`loss_by_level` summed over the levels.

        Returns:
            ``{'loss_cls', 'loss_bbox', 'loss_centerness'}``: float32 scalars.
        """
        per_level = self.loss_by_level(outs, gt_bboxes, gt_labels, img_metas)
        return {name: torch.stack(values).sum() for name, values in per_level.items()}

    # ------------------------------------------------------------------ inference
    def predict(
        self, outs: ATSSOutputs, img_metas: Sequence[Mapping[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections per image (zoo §4.5, §1.15): threshold and top-k on sigmoid(cls) alone,
        decode (stds 0.1/0.2, clipped to ``img_shape``), rescale, multiply sigmoid(centerness),
        drop boxes not larger than ``min_bbox_size``, class-aware NMS (0.6), top ``max_per_img``.

        Args:
            outs: the outputs of :meth:`forward`.
            img_metas: per image dicts with ``img_shape`` (h, w) and, when ``rescale``,
                ``scale_factor`` (w_scale, h_scale).
            rescale: map boxes back to original-image pixels.

        Returns:
            One dict per image: ``boxes [k, 4]`` xyxy float32, ``scores [k]`` (sigmoid(cls) ·
            sigmoid(centerness)), ``labels [k]`` long, by descending score,
            ``k ≤ test_cfg.max_per_img``.
        """
        featmap_sizes = [tuple(c.shape[-2:]) for c in outs.cls_scores]
        anchors = self.anchor_generator.grid_anchors(featmap_sizes, device=outs.cls_scores[0].device)
        results = []
        for i, meta in enumerate(img_metas):
            scores = [flatten_level(c[i].detach().float(), self.num_classes).sigmoid() for c in outs.cls_scores]
            deltas = [flatten_level(b[i].detach().float(), 4) for b in outs.bbox_preds]
            factors = [flatten_level(c[i].detach().float(), 1).reshape(-1).sigmoid() for c in outs.centernesses]
            results.append(
                predict_single_image(
                    scores,
                    deltas,
                    anchors,
                    self.bbox_coder.decode,
                    meta,
                    self.test_cfg,
                    score_factors=factors,
                    rescale=rescale,
                )
            )
        return results
