"""RetinaNet head: two conv towers, 9 anchors per location, sigmoid focal loss (or the VFL
variant of the VarifocalNet authors), L1 on DeltaXYWH deltas.

Everything here follows ``../shared/docs/zoo_spec.md`` (cited as "§N"): layers §2.1, forward
§2.2, targets and losses §2.3, inference §2.4 and §1.15, initialisation §1.16, the VFL variant
§2.7 and §8. Anchors are §1.5, the coder §1.7, the assigner §1.10 and the PseudoSampler
avg_factor §1.13. Attribute names reproduce MMDetection's (``cls_convs``, ``reg_convs``,
``retina_cls``, ``retina_reg``) so that official checkpoints load verbatim (§2.6).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ...assigners.max_iou import MaxIoUAssigner
from ...losses import FocalLoss, L1Loss, VarifocalLoss
from ...structures.boxes import bbox_overlaps
from ..box_coders import DeltaXYWHBBoxCoder
from ..layers.conv_module import ConvModule
from ..layers.init import init_dense_head
from ..postprocess import TestConfig, flatten_level, predict_single_image
from ..priors import AnchorGenerator

__all__ = ["RetinaHead", "RetinaOutputs", "RetinaTargets", "RETINA_TEST_CFG"]

#: ``retinanet_r50_fpn_1x_coco`` test_cfg (§1.15 table): NMS 0.5, MMDetection 3.x procedure.
RETINA_TEST_CFG = TestConfig(score_thr=0.05, nms_pre=1000, nms_iou=0.5, max_per_img=100, min_bbox_size=0.0)


class RetinaOutputs(NamedTuple):
    """Raw RetinaNet head outputs, lists over levels (finest first): ``cls_scores
    [N, A·C, H, W]`` logits (channel ``a·C + c``) and ``bbox_preds [N, A·4, H, W]``
    normalised DeltaXYWH deltas (channel ``a·4 + k``, k = dx, dy, dw, dh), §2.2."""

    cls_scores: list[Tensor]
    bbox_preds: list[Tensor]


class RetinaTargets(NamedTuple):
    """Training targets of a batch (§2.3), as :meth:`RetinaHead.get_targets` returns them.

    Per level (lists over levels, each image-major: image 0's ``H·W·A`` anchors, then image 1's):

    - ``labels [N·H·W·A]`` long: the gt class of positives, ``num_classes`` elsewhere;
    - ``label_weights [N·H·W·A]`` float: 1 for positives and negatives, 0 for ignored anchors
      and anchors outside the image's ``pad_shape``;
    - ``bbox_targets [N·H·W·A, 4]`` float: encoded deltas (std 1) of positives, 0 elsewhere;
    - ``bbox_weights [N·H·W·A]`` float: 1 on positives, else 0.

    Shared by the images: ``anchors``, per level ``[H·W·A, 4]`` xyxy pixels.

    Per image, over all anchors of the batch feature maps (levels concatenated, §1.1 order):

    - ``assigned_gt_inds [M]`` long: −2 anchor not valid for this image, −1 ignored,
      0 negative, k ≥ 1 assigned to gt k−1 (the golden README's assignment record);
    - ``max_overlaps [M]`` float: the highest IoU over the gts (0 without gts), −1 where invalid;
    - ``num_pos``: number of positives of each image (ints).

    ``avg_factor``: Σ_img max(#pos_img, 1) (PseudoSampler, §1.13), a float.
    """

    labels: list[Tensor]
    label_weights: list[Tensor]
    bbox_targets: list[Tensor]
    bbox_weights: list[Tensor]
    anchors: list[Tensor]
    assigned_gt_inds: list[Tensor]
    max_overlaps: list[Tensor]
    num_pos: list[int]
    avg_factor: float


class RetinaHead(nn.Module):
    """The RetinaNet head (§2), shared across all FPN levels.

    Args:
        num_classes: foreground classes C (sigmoid outputs, no background channel).
        in_channels: channels of every FPN level (256 in the zoo).
        feat_channels: channels inside the towers (256 in the zoo).
        stacked_convs: ConvModules (3×3 conv with bias → ReLU, no norm) per tower (4).
        strides: FPN strides, pixels (8…128).
        octave_base_scale, scales_per_octave: anchor scales
            ``octave_base_scale · 2^(i/scales_per_octave)`` in strides (4 and 3, §1.5).
        ratios: anchor aspect ratios h/w (0.5, 1, 2).
        center_offset: anchor centre offset in strides (0: centres at ``(x·s, y·s)``).
        pos_iou_thr, neg_iou_thr, min_pos_iou: MaxIoUAssigner thresholds (0.5, 0.4, 0; §1.10).
        match_low_quality: the assigner's low-quality matching (True).
        target_stds: DeltaXYWH stds (all 1 for RetinaNet, §1.7).
        use_vfl: replace the focal loss by the authors' Varifocal Loss on IoU targets (§2.7).
        focal_alpha, focal_gamma, loss_cls_weight: focal loss α, γ and weight (.25, 2, 1).
        vfl_alpha, vfl_gamma, vfl_iou_weighted: Varifocal Loss parameters (.75, 2, True).
        loss_bbox_weight: weight of the L1 loss on the deltas (1).
        test_cfg: a :class:`TestConfig`, or a mapping of fields overriding
            :data:`RETINA_TEST_CFG`.

    Raises:
        ValueError: on an unknown test_cfg field or invalid anchor/coder settings (raised by
            :class:`TestConfig`, :class:`AnchorGenerator`, :class:`DeltaXYWHBBoxCoder`).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        feat_channels: int = 256,
        stacked_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        octave_base_scale: float = 4.0,
        scales_per_octave: int = 3,
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        center_offset: float = 0.0,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        match_low_quality: bool = True,
        target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        use_vfl: bool = False,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        loss_cls_weight: float = 1.0,
        vfl_alpha: float = 0.75,
        vfl_gamma: float = 2.0,
        vfl_iou_weighted: bool = True,
        loss_bbox_weight: float = 1.0,
        test_cfg: TestConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.feat_channels = int(feat_channels)
        self.strides = tuple(int(s) for s in strides)
        self.use_vfl = bool(use_vfl)
        self.test_cfg = RETINA_TEST_CFG.replace(test_cfg)

        self.prior_generator = AnchorGenerator(
            strides=self.strides,
            ratios=ratios,
            octave_base_scale=octave_base_scale,
            scales_per_octave=scales_per_octave,
            center_offset=center_offset,
        )
        self.num_base_priors = self.prior_generator.num_base_anchors  # A = 9
        self.bbox_coder = DeltaXYWHBBoxCoder(stds=target_stds)
        self.assigner = MaxIoUAssigner(
            pos_iou_thr, neg_iou_thr, min_pos_iou=min_pos_iou, match_low_quality=match_low_quality
        )

        # --- layers (§2.1); names reproduce the official checkpoint keys ---
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        for i in range(stacked_convs):
            chn = self.in_channels if i == 0 else self.feat_channels
            self.cls_convs.append(ConvModule(chn, self.feat_channels, num_groups=None))
            self.reg_convs.append(ConvModule(chn, self.feat_channels, num_groups=None))
        a = self.num_base_priors
        self.retina_cls = nn.Conv2d(self.feat_channels, a * self.num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(self.feat_channels, a * 4, 3, padding=1)

        self.loss_cls: nn.Module
        if self.use_vfl:
            self.loss_cls = VarifocalLoss(
                alpha=vfl_alpha, gamma=vfl_gamma, iou_weighted=vfl_iou_weighted, loss_weight=loss_cls_weight
            )
        else:
            self.loss_cls = FocalLoss(alpha=focal_alpha, gamma=focal_gamma, loss_weight=loss_cls_weight)
        self.loss_bbox = L1Loss(loss_weight=loss_bbox_weight)
        self.init_weights()

    def init_weights(self) -> None:
        """§1.16: every ``nn.Conv2d`` weight ~ N(0, 0.01²), bias 0; ``retina_cls`` bias
        −log((1 − 0.01)/0.01) = −4.59512 (prior probability 0.01)."""
        init_dense_head(self, self.retina_cls, 0.01)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Sequence[Tensor]) -> RetinaOutputs:
        """Run the head on every FPN level (§2.2).

        Args:
            feats: FPN levels ``[N, in_channels, H_l, W_l]``, finest first, one per stride.

        Returns:
            :class:`RetinaOutputs`: per level ``[N, A·C, H_l, W_l]`` logits and
            ``[N, A·4, H_l, W_l]`` deltas.

        Raises:
            ValueError: if the number of levels differs from ``len(strides)``.
        """
        if len(feats) != len(self.strides):
            raise ValueError(f"RetinaHead expects {len(self.strides)} feature levels, got {len(feats)}")
        cls_scores, bbox_preds = [], []
        for x in feats:
            cls_feat = x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            reg_feat = x
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.retina_cls(cls_feat))
            bbox_preds.append(self.retina_reg(reg_feat))
        return RetinaOutputs(cls_scores, bbox_preds)

    # ------------------------------------------------------------------ targets
    def get_targets(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
        device: torch.device | str = "cpu",
    ) -> RetinaTargets:
        """Anchor targets of a batch (§2.3, §1.5 item 4, §1.10, §1.13).

        Per image: the anchors valid for its ``pad_shape`` are assigned by MaxIoU; positives
        get their gt's class, label weight 1 and the encoded deltas (std 1) of their gt;
        negatives label ``num_classes`` and weight 1; ignored and invalid anchors label
        ``num_classes`` and weight 0 (PseudoSampler).

        Args:
            featmap_sizes: ``(H_l, W_l)`` per level of the batch feature maps.
            gt_bboxes: per image ``[K_i, 4]`` xyxy in resized-image pixels (K_i may be 0).
            gt_labels: per image ``[K_i]`` integer labels in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape`` (h, w), the image's own padded size.
            device: device of the returned tensors.

        Returns:
            :class:`RetinaTargets`.

        Raises:
            ValueError: from the anchor generator (wrong number of levels) or the assigner
                (malformed boxes/labels).
        """
        anchors = self.prior_generator.grid_anchors(featmap_sizes, device=device)  # per level [HWA, 4]
        flat_anchors = torch.cat(anchors)  # [M, 4]
        sizes = [a.shape[0] for a in anchors]
        num_anchors = flat_anchors.shape[0]

        per_img: list[tuple[Tensor, ...]] = []
        gt_inds_all, max_ov_all, num_pos_all = [], [], []
        for boxes, labels, meta in zip(gt_bboxes, gt_labels, img_metas, strict=True):
            boxes = boxes.to(device=device, dtype=torch.float32)
            labels = labels.to(device=device, dtype=torch.long)
            valid = torch.cat(self.prior_generator.valid_flags(featmap_sizes, meta["pad_shape"][:2], device=device))
            result = self.assigner.assign(flat_anchors[valid], boxes, labels, self.num_classes)

            gt_inds = torch.full((num_anchors,), -2, dtype=torch.long, device=device)
            gt_inds[valid] = result.gt_inds
            max_ov = flat_anchors.new_full((num_anchors,), -1.0)
            max_ov[valid] = result.max_overlaps.to(max_ov.dtype)
            img_labels = torch.full((num_anchors,), self.num_classes, dtype=torch.long, device=device)
            img_labels[valid] = result.labels
            img_weights = (gt_inds >= 0).float()  # positives and negatives only
            pos = gt_inds > 0
            img_targets = flat_anchors.new_zeros((num_anchors, 4))
            if bool(pos.any()):
                img_targets[pos] = self.bbox_coder.encode(flat_anchors[pos], boxes[gt_inds[pos] - 1])
            per_img.append((img_labels, img_weights, img_targets, pos.float()))
            gt_inds_all.append(gt_inds)
            max_ov_all.append(max_ov)
            num_pos_all.append(int(pos.sum()))

        def to_levels(field: int) -> list[Tensor]:
            split = [img[field].split(sizes) for img in per_img]
            return [torch.cat([img[lvl] for img in split]) for lvl in range(len(sizes))]

        return RetinaTargets(
            labels=to_levels(0),
            label_weights=to_levels(1),
            bbox_targets=to_levels(2),
            bbox_weights=to_levels(3),
            anchors=anchors,
            assigned_gt_inds=gt_inds_all,
            max_overlaps=max_ov_all,
            num_pos=num_pos_all,
            avg_factor=float(sum(max(n, 1) for n in num_pos_all)),
        )

    def vfl_targets(
        self, cls_score: Tensor, bbox_pred: Tensor, anchors: Tensor, labels: Tensor, bbox_targets: Tensor
    ) -> Tensor:
        """IoU-aware classification targets of one level (§2.7, §8 RetinaNet row).

        ``T[i, c] = IoU(decode(anchor_i, δ̂_i detached), decode(anchor_i, δ*_i))`` at
        positives i with gt class c (not clamped, so a positive with IoU 0 gets 0), 0 elsewhere.
        Decoding uses no ``max_shape`` (no clip); ``wh_ratio_clip`` applies.

        Args:
            cls_score: ``[P, C]`` logits (only the shape, dtype and device are used).
            bbox_pred: ``[P, 4]`` predicted deltas.
            anchors: ``[P, 4]`` xyxy anchors, pixels, one per row.
            labels: ``[P]`` long, ``num_classes`` = background.
            bbox_targets: ``[P, 4]`` target deltas (meaningful at positives).

        Returns:
            ``[P, C]`` float32 targets in [0, 1], no gradient.
        """
        targets = torch.zeros(cls_score.shape, dtype=torch.float32, device=cls_score.device)
        pos = torch.nonzero((labels >= 0) & (labels < self.num_classes), as_tuple=False).squeeze(1)
        if pos.numel() == 0:
            return targets
        with torch.no_grad():
            pred_boxes = self.bbox_coder.decode(anchors[pos], bbox_pred[pos].detach().float())
            gt_boxes = self.bbox_coder.decode(anchors[pos], bbox_targets[pos].float())
            iou = bbox_overlaps(pred_boxes, gt_boxes, is_aligned=True)  # [P_pos]
        targets[pos, labels[pos]] = iou
        return targets

    # ------------------------------------------------------------------ loss
    def loss_by_level(
        self,
        outs: RetinaOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> dict[str, list[Tensor]]:
        """The per-level loss terms that :meth:`loss` sums (§2.3; MMDetection's
        ``losses_per_level``).

        Returns:
            ``{'loss_cls': [L], 'loss_bbox': [L]}``: float32 scalars, each normalised by the
            batch's ``avg_factor`` = Σ_img max(#pos_img, 1).
        """
        cls_scores, bbox_preds = outs.cls_scores, outs.bbox_preds
        featmap_sizes = [tuple(int(v) for v in c.shape[-2:]) for c in cls_scores]
        device = cls_scores[0].device
        num_imgs = cls_scores[0].shape[0]
        t = self.get_targets(featmap_sizes, gt_bboxes, gt_labels, img_metas, device)
        avg_factor = t.avg_factor
        loss_cls, loss_bbox = [], []
        for lvl in range(len(cls_scores)):
            cls = flatten_level(cls_scores[lvl], self.num_classes).reshape(-1, self.num_classes)  # [N·HWA, C]
            reg = flatten_level(bbox_preds[lvl], 4).reshape(-1, 4)  # [N·HWA, 4]
            labels, weights = t.labels[lvl], t.label_weights[lvl]
            if self.use_vfl:
                anchors = t.anchors[lvl].repeat(num_imgs, 1)  # image-major, as the targets
                targets = self.vfl_targets(cls, reg, anchors, labels, t.bbox_targets[lvl])
                loss_cls.append(self.loss_cls(cls, targets, avg_factor=avg_factor, weight=weights))
            else:
                loss_cls.append(self.loss_cls(cls, labels, weight=weights, avg_factor=avg_factor))
            loss_bbox.append(
                self.loss_bbox(reg, t.bbox_targets[lvl], weight=t.bbox_weights[lvl], avg_factor=avg_factor)
            )
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    def loss(
        self,
        outs: RetinaOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[Mapping[str, Any]],
    ) -> dict[str, Tensor]:
        """RetinaNet losses of a batch (§2.3; with ``use_vfl`` §2.7).

        ``loss_cls`` = Σ_level Σ w·FL(α, γ) / avg_factor (or VFL on the IoU targets of
        :meth:`vfl_targets`, weighted by the same label weights); ``loss_bbox`` = Σ_level
        Σ_pos |δ̂ − δ*| / avg_factor with avg_factor = Σ_img max(#pos_img, 1); no cross-GPU
        reduction.

        Args:
            outs: the outputs of :meth:`forward`.
            gt_bboxes: per image ``[K_i, 4]`` xyxy, resized-image pixels (no crowd boxes).
            gt_labels: per image ``[K_i]`` labels in ``[0, num_classes)``.
            img_metas: per image dicts with ``pad_shape``.

        Returns:
            ``{'loss_cls', 'loss_bbox'}``: float32 scalars.
        """
        per_level = self.loss_by_level(outs, gt_bboxes, gt_labels, img_metas)
        return {name: torch.stack(terms).sum() for name, terms in per_level.items()}

    # ------------------------------------------------------------------ inference
    def _decode(self, priors: Tensor, deltas: Tensor, max_shape: tuple[int, int]) -> Tensor:
        return self.bbox_coder.decode(priors, deltas, max_shape=max_shape)

    def predict(
        self, outs: RetinaOutputs, img_metas: Sequence[Mapping[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections per image (§2.4, §1.15 MMDetection 3.x procedure, see
        :func:`predict_single_image`): per level the (anchor, class) pairs with sigmoid score
        > ``score_thr``, top ``nms_pre``; decode (clip to ``img_shape``); rescale; drop boxes
        not larger than ``min_bbox_size``; class-aware NMS; top ``max_per_img``.

        Args:
            outs: the outputs of :meth:`forward`.
            img_metas: per image dicts with ``img_shape`` (h, w), resized and unpadded, and,
                when ``rescale``, ``scale_factor`` (w_scale, h_scale).
            rescale: map boxes back to original-image pixels.

        Returns:
            One dict per image: ``boxes [k, 4]`` xyxy float32, ``scores [k]``, ``labels [k]``
            long, by descending score, ``k ≤ test_cfg.max_per_img``.
        """
        featmap_sizes = [tuple(int(v) for v in c.shape[-2:]) for c in outs.cls_scores]
        anchors = self.prior_generator.grid_anchors(featmap_sizes, device=outs.cls_scores[0].device)
        results = []
        for i, meta in enumerate(img_metas):
            scores = [flatten_level(c[i].detach().float(), self.num_classes).sigmoid() for c in outs.cls_scores]
            deltas = [flatten_level(b[i].detach().float(), 4) for b in outs.bbox_preds]
            results.append(
                predict_single_image(scores, deltas, anchors, self._decode, meta, self.test_cfg, rescale=rescale)
            )
        return results
