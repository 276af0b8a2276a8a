"""Print how far our VFNet-R50 is from the MMDetection golden outputs (numbers quoted in README).

Usage: .venv/bin/python tools/golden_report.py [GOLDEN_DIR]   (default ../shared/golden/vfnet_r50_coco80)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import varifocal


def main(golden_dir: Path) -> None:
    g = torch.load(golden_dir / "golden.pt", weights_only=True)
    model = varifocal.build_model("vfnet_r50_fpn", num_classes=int(g["num_classes"]), use_vfl=bool(g["use_vfl"]))
    varifocal.load_checkpoint(model, golden_dir / "checkpoint.pth")
    x = g["inputs"].float()
    model.eval()
    with torch.no_grad():
        outs = model.bbox_head(model.extract_feat(x))
    cls, init, refine = outs

    def rel(a, b):
        return float(((a - b.float()).abs() / b.float().abs().clamp(min=1e-6)).max())

    print("max |logit diff|      ", max(float((c - r.float()).abs().max()) for c, r in zip(cls, g["cls_scores"])))
    print("max rel init distance ", max(rel(a, b) for a, b in zip(init, g["bbox_preds"])))
    print("max rel refined dist. ", max(rel(a, b) for a, b in zip(refine, g["bbox_preds_refine"])))
    dets = model.bbox_head.predict(outs, g["metas"])
    for i, (d, r) in enumerate(zip(dets, g["detections"])):
        same = d["boxes"].shape == r["bboxes"].shape and torch.equal(d["labels"], r["labels"].long())
        print(
            f"image {i}: {d['boxes'].shape[0]} detections, labels identical {same}, "
            f"max |score diff| {float((d['scores'] - r['scores'].float()).abs().max()):.1e}, "
            f"max |box diff| {float((d['boxes'] - r['bboxes'].float()).abs().max()):.1e} px"
        )
    sizes = [tuple(c.shape[-2:]) for c in cls]
    labels, _, _ = model.bbox_head.get_targets(
        sizes, g["gt_bboxes"], [l.long() for l in g["gt_labels"]], g["metas"], x.device
    )
    print("ATSS labels identical ", all(torch.equal(a, b.long()) for a, b in zip(labels, g["atss_labels"])))
    model.train()
    losses = model.loss(x, g["metas"], g["gt_bboxes"], [l.long() for l in g["gt_labels"]])
    for k, v in losses.items():
        print(
            f"{k:13s} {float(v.detach()):.7f} vs {g['losses'][k]:.7f} (rel {abs(float(v.detach()) - g['losses'][k]) / g['losses'][k]:.1e})"
        )
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    worst = max(float((grads[n] - r.float()).norm() / r.float().norm()) for n, r in g["grads"].items())
    norms = max(abs(float(grads[n].norm()) - v) / max(v, 1e-6) for n, v in g["grad_norms"].items())
    print(
        f"max rel L2 grad error  {worst:.1e} (head tensors); max rel grad-norm error {norms:.1e} ({len(grads)} params)"
    )


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[2] / "shared" / "golden" / "vfnet_r50_coco80"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
