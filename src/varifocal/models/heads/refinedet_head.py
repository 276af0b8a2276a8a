"""RefineDet head: the anchor refinement module (ARM), the transfer connection blocks (TCB) and
the object detection module (ODM), with negative anchor filtering, two-step box decoding and
SSD matching / hard negative mining / softmax-CE + smooth-L1 losses.

Everything follows ``../shared/docs/refinedet_spec.md`` (cited as "§N"): conventions §1, anchors
§3, coding §4, TCB §5, heads and refined anchors §6, matching §7, filtering and mining §8, losses
§9, inference §10. Where the paper and the authors' Caffe code differ, this follows the code
(§19): inference keeps the top 1000 per class before NMS and 500 per image after it.

Decisions of this implementation (say so when comparing):

- Coordinates are pixels of the network input instead of Caffe's [0, 1] normalised boxes; IoU
  and the §4 offsets are invariant to per-axis scaling, so targets and matches are the same.
- Loss normalisers are the positive counts of the whole batch on this process (§13.4: Caffe
  divides per GPU of 8 images; the spec accepts either).
- Final boxes are clipped to ``[0, W] × [0, H]`` of the original image (this project's no-"+1"
  convention) instead of Caffe's ``[0, W−1] × [0, H−1]``.
- Ground-truth boxes flagged difficult/crowd are left out of training by the datasets; Caffe
  trains on VOC's difficult boxes (§7). BCCD has none.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from ...assigners.ssd_matcher import SSDMatcher
from ...samplers.hard_negative import hard_negative_mining
from ..box_coders import SSDBoxCoder
from ..layers.init import caffe_xavier_
from ..layers.refinedet_blocks import ProjectionBottleneck
from ..postprocess import TestConfig, empty_detections, flatten_level, rescale_boxes
from ..priors import ssd_anchors

__all__ = ["RefineDetHead", "RefineDetOutputs", "REFINEDET_TEST_CFG"]

#: §10 with the released scripts' constants: score > 0.01, top 1000 per class (``nms_pre``),
#: NMS 0.45 per class, keep 500 per image. The paper's 400/200 is
#: ``{'nms_pre': 400, 'max_per_img': 200}``.
REFINEDET_TEST_CFG = TestConfig(score_thr=0.01, nms_pre=1000, nms_iou=0.45, max_per_img=500, min_bbox_size=None)


class RefineDetOutputs(NamedTuple):
    """Raw outputs, lists over the four levels (stride 8 first), NCHW, channel ``a·k + c`` for
    anchor ``a`` of a cell (§1): ``arm_cls_scores [N, A·2, H, W]`` (index 1 = object),
    ``arm_bbox_preds [N, A·4, H, W]`` (t_x, t_y, t_w, t_h from the tiled anchors),
    ``odm_cls_scores [N, A·(C+1), H, W]`` (index 0 = background) and
    ``odm_bbox_preds [N, A·4, H, W]`` (offsets from the refined anchors)."""

    arm_cls_scores: list[Tensor]
    arm_bbox_preds: list[Tensor]
    odm_cls_scores: list[Tensor]
    odm_bbox_preds: list[Tensor]


def _conv(in_ch: int, out_ch: int, norm: bool, relu: bool) -> list[nn.Module]:
    """3×3 conv (bias, or no bias + BN for the ResNet variant) and an optional ReLU (§5, §2.4)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return layers


class RefineDetHead(nn.Module):
    """ARM heads on the four source maps, TCBs, and ODM heads on the TCB outputs (§5, §6).

    Modules (``state_dict`` names): ``arm_loc.{l}`` / ``arm_conf.{l}`` (3×3 convs → A·4 / A·2),
    ``tcb_lateral.{l}`` (conv-ReLU-conv: TL_1, TL_2), ``tcb_deconv.{l}`` for l < 3
    (ConvTranspose 2×2/2 of P_{l+1}), ``tcb_out.{l}`` (conv-ReLU after ``ReLU(TL_2 + up)``),
    ``odm_loc.{l}`` / ``odm_conf.{l}`` (→ A·4 / A·(C+1)); with ``inter_block``,
    ``arm_inter.{l}`` / ``odm_inter.{l}`` (the ResNet scripts' 1024-channel bottlenecks, §2.4).

    Args:
        num_classes: foreground classes C (the ODM predicts C + 1 with background 0).
        in_channels: channels of the four source maps.
        strides: of the four levels, pixels (8, 16, 32, 64).
        anchor_scale: anchor size = ``anchor_scale · stride`` (4: 32…256 px, §3).
        ratios: aspect ratios of a cell's anchors, in order (1, 2, 1/2).
        tcb_channels: TCB width (256).
        norm: ``None`` (VGG / Lite0: convs with bias) or ``'BN'`` (ResNet: conv → BN, deconv
            without bias → BN, N(0, 0.01²) init).
        inter_block: put a projection bottleneck (→ 1024) before every prediction conv (ResNet).
        objectness_thr: θ of negative anchor filtering (§8): anchors with ARM object
            probability below it are not ODM negatives in training and get zero class scores at
            test time; 0 disables the filter (the "no filtering" ablation, §14.2).
        use_refined_anchors: ``False`` matches and decodes the ODM on the tiled anchors (the
            "no cascaded regression" ablation, §14.2).
        pos_iou_thr, neg_pos_ratio, variances: matching (§7), mining (§8) and coding (§4).
        test_cfg: :class:`TestConfig` or a mapping of overrides of :data:`REFINEDET_TEST_CFG`;
            ``nms_pre`` is the per-class top-k before NMS.

    Raises:
        ValueError: not four levels, or bad settings.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        strides: Sequence[int] = (8, 16, 32, 64),
        anchor_scale: float = 4.0,
        ratios: Sequence[float] = (1.0, 2.0, 0.5),
        tcb_channels: int = 256,
        norm: str | None = None,
        inter_block: bool = False,
        objectness_thr: float = 0.01,
        use_refined_anchors: bool = True,
        pos_iou_thr: float = 0.5,
        neg_pos_ratio: float = 3.0,
        variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
        test_cfg: TestConfig | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4 or len(strides) != 4:
            raise ValueError(f"refinedet_head.py: needs four levels, got in_channels {in_channels}, strides {strides}")
        if norm not in (None, "BN"):
            raise ValueError(f"refinedet_head.py: norm must be None or 'BN', got {norm!r}")
        if not 0.0 <= objectness_thr < 1.0:
            raise ValueError(f"refinedet_head.py: objectness_thr must be in [0, 1), got {objectness_thr}")
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        self.anchor_sizes = tuple(float(anchor_scale) * s for s in self.strides)
        self.ratios = tuple(float(r) for r in ratios)
        self.num_anchors = len(self.ratios)
        self.objectness_thr = float(objectness_thr)
        self.use_refined_anchors = bool(use_refined_anchors)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.matcher = SSDMatcher(pos_iou_thr)
        self.coder = SSDBoxCoder(variances)
        self.test_cfg = REFINEDET_TEST_CFG.replace(test_cfg)

        bn = norm == "BN"
        a, t = self.num_anchors, int(tcb_channels)
        self.tcb_lateral = nn.ModuleList(
            [nn.Sequential(*_conv(int(c), t, bn, True), *_conv(t, t, bn, False)) for c in in_channels]
        )
        self.tcb_deconv = nn.ModuleList()
        for _ in range(3):
            layers: list[nn.Module] = [nn.ConvTranspose2d(t, t, 2, stride=2, bias=not bn)]
            if bn:
                layers.append(nn.BatchNorm2d(t))
            self.tcb_deconv.append(nn.Sequential(*layers))
        self.tcb_out = nn.ModuleList([nn.Sequential(*_conv(t, t, bn, True)) for _ in range(4)])
        arm_ch, odm_ch = [int(c) for c in in_channels], [t] * 4
        if inter_block:
            self.arm_inter = nn.ModuleList([ProjectionBottleneck(c, 256, 1024) for c in arm_ch])
            self.odm_inter = nn.ModuleList([ProjectionBottleneck(c, 256, 1024) for c in odm_ch])
            arm_ch, odm_ch = [1024] * 4, [1024] * 4
        else:
            self.arm_inter = self.odm_inter = None
        self.arm_loc = nn.ModuleList([nn.Conv2d(c, a * 4, 3, padding=1) for c in arm_ch])
        self.arm_conf = nn.ModuleList([nn.Conv2d(c, a * 2, 3, padding=1) for c in arm_ch])
        self.odm_loc = nn.ModuleList([nn.Conv2d(c, a * 4, 3, padding=1) for c in odm_ch])
        self.odm_conf = nn.ModuleList([nn.Conv2d(c, a * (self.num_classes + 1), 3, padding=1) for c in odm_ch])
        self._init_weights(bn)

    def _init_weights(self, bn: bool) -> None:
        """§12: Caffe xavier for the prediction convs (and the TCB without BN); N(0, 0.01²)
        for the BN TCB convs and deconvs (ResNet); BN γ = 1, β = 0."""
        for m in (self.arm_loc, self.arm_conf, self.odm_loc, self.odm_conf):
            caffe_xavier_(m)
        for m in (self.tcb_lateral, self.tcb_deconv, self.tcb_out):
            if not bn:
                caffe_xavier_(m)
                continue
            for layer in m.modules():
                if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.normal_(layer.weight, 0.0, 0.01)
                elif isinstance(layer, nn.BatchNorm2d):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------------------- forward
    def forward(self, feats: Sequence[Tensor]) -> RefineDetOutputs:
        """Four source maps ``[N, C_l, H_l, W_l]`` (strides 8…64) → :class:`RefineDetOutputs`.

        Raises:
            ValueError: a TCB's upsampled map does not match its lateral's size (inputs must be
                multiples of 64 so that every level is exactly 2× the next).
        """
        if len(feats) != 4:
            raise ValueError(f"refinedet_head.py: expected 4 source maps, got {len(feats)}")
        arm_in = list(feats) if self.arm_inter is None else [m(x) for m, x in zip(self.arm_inter, feats)]
        arm_cls = [conv(x) for conv, x in zip(self.arm_conf, arm_in)]
        arm_reg = [conv(x) for conv, x in zip(self.arm_loc, arm_in)]
        tcb: list[Tensor] = [feats[0]] * 4
        for level in (3, 2, 1, 0):
            lateral = self.tcb_lateral[level](feats[level])
            if level < 3:
                up = self.tcb_deconv[level](tcb[level + 1])
                if up.shape[-2:] != lateral.shape[-2:]:
                    raise ValueError(
                        f"refinedet_head.py: TCB level {level}: the upsampled map is {tuple(up.shape[-2:])} but the "
                        f"lateral is {tuple(lateral.shape[-2:])}; RefineDet needs input sizes that are multiples of 64"
                    )
                lateral = lateral + up
            tcb[level] = self.tcb_out[level](F.relu(lateral))
        odm_in = tcb if self.odm_inter is None else [m(x) for m, x in zip(self.odm_inter, tcb)]
        odm_cls = [conv(x) for conv, x in zip(self.odm_conf, odm_in)]
        odm_reg = [conv(x) for conv, x in zip(self.odm_loc, odm_in)]
        return RefineDetOutputs(arm_cls, arm_reg, odm_cls, odm_reg)

    # ------------------------------------------------------------------------------ shared
    def anchors(self, outs: RefineDetOutputs) -> Tensor:
        """``[M, 4]`` xyxy tiled anchors (pixels of the batch input) of these outputs (§3)."""
        sizes = [tuple(x.shape[-2:]) for x in outs.arm_cls_scores]
        ref = outs.arm_cls_scores[0]
        return ssd_anchors(sizes, self.strides, self.anchor_sizes, self.ratios, device=ref.device)

    def flat_outputs(self, outs: RefineDetOutputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The outputs flattened in anchor order (§1): ``arm_cls [N, M, 2]``, ``arm_reg
        [N, M, 4]``, ``odm_cls [N, M, C+1]``, ``odm_reg [N, M, 4]``."""
        c = self.num_classes + 1
        cat = torch.cat
        return (
            cat([flatten_level(x, 2) for x in outs.arm_cls_scores], 1),
            cat([flatten_level(x, 4) for x in outs.arm_bbox_preds], 1),
            cat([flatten_level(x, c) for x in outs.odm_cls_scores], 1),
            cat([flatten_level(x, 4) for x in outs.odm_bbox_preds], 1),
        )

    def refined_anchors(self, anchors: Tensor, arm_reg: Tensor) -> Tensor:
        """``[N, M, 4]`` refined anchors = decode(anchor, arm offsets), detached (§6.3), or the
        tiled anchors when ``use_refined_anchors`` is off."""
        if not self.use_refined_anchors:
            return anchors.expand(arm_reg.shape[0], -1, -1)
        return self.coder.decode(anchors, arm_reg.detach())

    # -------------------------------------------------------------------------------- loss
    def loss(
        self,
        outs: RefineDetOutputs,
        gt_bboxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor],
        img_metas: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, Tensor]:
        """ARM and ODM losses of a batch (§7–§9).

        Args:
            outs: :meth:`forward`'s outputs.
            gt_bboxes: per image ``[K_i, 4]`` xyxy in batch-input pixels.
            gt_labels: per image ``[K_i]`` long in ``[0, num_classes)``.
            img_metas: unused (RefineDet's anchors are not masked by the padding).

        Returns:
            ``loss_arm_cls``, ``loss_arm_bbox`` (sums over the ARM's positives and mined
            negatives / positives, divided by the ARM's positive count, at least 1) and
            ``loss_odm_cls``, ``loss_odm_bbox`` (the same with the ODM's own count).
        """
        arm_cls, arm_reg, odm_cls, odm_reg = self.flat_outputs(outs)
        anchors = self.anchors(outs)
        refined = self.refined_anchors(anchors, arm_reg)  # [N, M, 4], constants for the ODM
        arm_pos, arm_targets, odm_labels, odm_targets = self.get_targets(anchors, refined, gt_bboxes, gt_labels)
        odm_pos = odm_labels > 0
        with torch.no_grad():
            obj_prob = arm_cls.detach().softmax(-1)[..., 1]  # [N, M]
            arm_neg = hard_negative_mining(
                -F.log_softmax(arm_cls.detach(), -1)[..., 0], arm_pos, ~arm_pos, self.neg_pos_ratio
            )
            eligible = ~odm_pos & (obj_prob >= self.objectness_thr)
            odm_neg = hard_negative_mining(
                -F.log_softmax(odm_cls.detach(), -1)[..., 0], odm_pos, eligible, self.neg_pos_ratio
            )
        arm_norm = arm_pos.sum().clamp(min=1).float()
        odm_norm = odm_pos.sum().clamp(min=1).float()
        arm_keep = arm_pos | arm_neg
        odm_keep = odm_pos | odm_neg
        return {
            "loss_arm_cls": F.cross_entropy(arm_cls[arm_keep], arm_pos[arm_keep].long(), reduction="sum") / arm_norm,
            "loss_arm_bbox": F.smooth_l1_loss(arm_reg[arm_pos], arm_targets[arm_pos], reduction="sum", beta=1.0)
            / arm_norm,
            "loss_odm_cls": F.cross_entropy(odm_cls[odm_keep], odm_labels[odm_keep], reduction="sum") / odm_norm,
            "loss_odm_bbox": F.smooth_l1_loss(odm_reg[odm_pos], odm_targets[odm_pos], reduction="sum", beta=1.0)
            / odm_norm,
        }

    @torch.no_grad()
    def get_targets(
        self, anchors: Tensor, refined: Tensor, gt_bboxes: Sequence[Tensor], gt_labels: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Matching and regression targets of both modules (§7).

        Args:
            anchors: ``[M, 4]`` tiled anchors; refined: ``[N, M, 4]`` refined anchors.
            gt_bboxes, gt_labels: per image ``[K_i, 4]`` / ``[K_i]``.

        Returns:
            ``arm_pos [N, M]`` bool, ``arm_targets [N, M, 4]`` (offsets from the anchors, 0 off
            the positives), ``odm_labels [N, M]`` long (gt class + 1, 0 = background) and
            ``odm_targets [N, M, 4]`` (offsets from the refined anchors).
        """
        n, m = refined.shape[0], anchors.shape[0]
        arm_pos = torch.zeros((n, m), dtype=torch.bool, device=anchors.device)
        odm_labels = torch.zeros((n, m), dtype=torch.long, device=anchors.device)
        arm_targets = anchors.new_zeros((n, m, 4))
        odm_targets = anchors.new_zeros((n, m, 4))
        for i, (boxes, labels) in enumerate(zip(gt_bboxes, gt_labels)):
            boxes = boxes.to(anchors)
            arm = self.matcher.assign(anchors, boxes, torch.zeros_like(labels), 1)
            pos = arm.gt_inds > 0
            arm_pos[i] = pos
            arm_targets[i, pos] = self.coder.encode(anchors[pos], boxes[arm.gt_inds[pos] - 1])
            odm = self.matcher.assign(refined[i], boxes, labels, self.num_classes)
            pos = odm.gt_inds > 0
            odm_labels[i, pos] = odm.labels[pos] + 1
            odm_targets[i, pos] = self.coder.encode(refined[i][pos], boxes[odm.gt_inds[pos] - 1])
        return arm_pos, arm_targets, odm_labels, odm_targets

    # ----------------------------------------------------------------------------- predict
    @torch.no_grad()
    def predict(
        self, outs: RefineDetOutputs, img_metas: Sequence[dict[str, Any]], rescale: bool = True
    ) -> list[dict[str, Tensor]]:
        """Detections per image (§10): filtered ODM scores, boxes decoded twice, per class
        ``score > score_thr`` → top ``nms_pre`` → NMS (suppress IoU > ``nms_iou``), then the
        ``max_per_img`` best over all classes.

        Returns:
            One dict per image: ``boxes [k, 4]`` xyxy (original-image pixels, clipped to it,
            when ``rescale``; else batch-input pixels), ``scores [k]``, ``labels [k]`` long in
            ``[0, num_classes)``, sorted by descending score.
        """
        arm_cls, arm_reg, odm_cls, odm_reg = self.flat_outputs(outs)
        anchors = self.anchors(outs)
        boxes = self.coder.decode(self.refined_anchors(anchors, arm_reg), odm_reg)  # [N, M, 4]
        scores = odm_cls.softmax(-1)[..., 1:]  # [N, M, C]
        if self.objectness_thr > 0:
            filtered = arm_cls.softmax(-1)[..., 1] < self.objectness_thr
            scores = scores.masked_fill(filtered[..., None], 0.0)
        results = []
        for i, meta in enumerate(img_metas):
            det = self._postprocess(boxes[i], scores[i])
            if rescale and det["boxes"].numel():
                b = rescale_boxes(det["boxes"], meta.get("scale_factor", (1.0, 1.0)))
                h, w = meta.get("ori_shape", meta.get("img_shape"))
                b[:, 0::2] = b[:, 0::2].clamp(0, float(w))
                b[:, 1::2] = b[:, 1::2].clamp(0, float(h))
                det["boxes"] = b
            results.append(det)
        return results

    def _postprocess(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """``boxes [M, 4]``, ``scores [M, C]`` of one image → its detections (§10 steps 5-6)."""
        cfg = self.test_cfg
        anchor_idx, labels = torch.nonzero(scores > float(cfg.score_thr), as_tuple=True)
        if anchor_idx.numel() == 0:
            return empty_detections(boxes.device)
        values = scores[anchor_idx, labels]
        if int(cfg.nms_pre) > 0:
            # Rank within each class: sort by score, then stably by class.
            order = torch.argsort(values, descending=True, stable=True)
            order = order[torch.argsort(labels[order], stable=True)]
            sorted_labels = labels[order]
            first = torch.searchsorted(sorted_labels, sorted_labels, right=False)
            rank = torch.arange(order.numel(), device=order.device) - first
            keep = order[rank < int(cfg.nms_pre)]
            anchor_idx, labels, values = anchor_idx[keep], labels[keep], values[keep]
        kept_boxes = boxes[anchor_idx]
        keep = batched_nms(kept_boxes, values, labels, float(cfg.nms_iou))[: int(cfg.max_per_img)]
        return {"boxes": kept_boxes[keep], "scores": values[keep], "labels": labels[keep]}
