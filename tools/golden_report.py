"""Print how far our detectors are from the MMDetection golden outputs (numbers quoted in README).

Usage: .venv/bin/python tools/golden_report.py [--only vfnet|retinanet|fcos|atss|fovea|reppoints] [VFNET_GOLDEN_DIR]

Default: all six. VFNet is checked against ``../shared/golden/vfnet_r50_coco80`` (or the
positional directory); RetinaNet, FCOS, ATSS, FoveaBox and RepPoints against the zoo goldens
``retinanet_r50_coco80``, ``fcos_r50_caffe_coco80``, ``atss_r50_coco80``, ``fovea_r50_coco80`` and
``reppoints_moment_r50_coco80`` (format and tolerances: ``../shared/golden/README.md``). As in
``tests/golden``, ``$VARIFOCAL_SHARED`` moves ``../shared``,
``$VARIFOCAL_GOLDEN_{RETINANET,FCOS,ATSS,FOVEA,REPPOINTS}`` the zoo goldens and ``$VARIFOCAL_GOLDEN_TRUNK`` the
checkpoint whose ``backbone.*`` a trunk-less zoo checkpoint takes (the golden README's trunk rule).

Per zoo golden it prints: max |Δ| of the raw head outputs (RetinaNet: logit channels
``::cls_scores_channel_step``; FCOS distances as relative error), how many prior and assignment
record entries differ (RepPoints: both stages, and the refine proposals' max |Δ|), each loss
term's relative error, the worst relative L2 error over
``golden['grads']`` and relative norm error over ``golden['grad_norms']``, and the detections.
Exits with status 1 when a requested golden directory is absent or incomplete.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import varifocal
from varifocal.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VARIFOCAL_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "golden"
TRUNK_CKPT = Path(os.environ.get("VARIFOCAL_GOLDEN_TRUNK", GOLDEN / "vfnet_r50_coco80" / "checkpoint.pth"))
# --only name -> (environment variable, default directory under ../shared/golden)
ZOO = {
    "retinanet": ("VARIFOCAL_GOLDEN_RETINANET", "retinanet_r50_coco80"),
    "fcos": ("VARIFOCAL_GOLDEN_FCOS", "fcos_r50_caffe_coco80"),
    "atss": ("VARIFOCAL_GOLDEN_ATSS", "atss_r50_coco80"),
    "fovea": ("VARIFOCAL_GOLDEN_FOVEA", "fovea_r50_coco80"),
    "reppoints": ("VARIFOCAL_GOLDEN_REPPOINTS", "reppoints_moment_r50_coco80"),
}


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


# ---------------------------------------------------------------------------- zoo goldens
# The model set-up below is that of tests/golden/_zoo.py and the parity tests, which cannot be
# imported from here cleanly (pytest, its skips and the tests' conftest).
def build_zoo_model(name: str, golden: dict[str, Any], directory: Path) -> nn.Module:
    """The ``name`` detector with the golden's class count, neck/head width, test scale,
    test_cfg (and FCOS's preprocessor statistics), weights loaded by the trunk rule, in eval mode."""
    from varifocal.models.detectors.atss import atss
    from varifocal.models.detectors.fcos import fcos
    from varifocal.models.detectors.fovea import fovea
    from varifocal.models.detectors.reppoints import reppoints_moment
    from varifocal.models.detectors.retinanet import retinanet

    cfg = golden["test_cfg"]
    test_cfg = {
        "score_thr": float(cfg["score_thr"]),
        "nms_pre": int(cfg["nms_pre"]),
        "nms_iou": float(cfg["nms"]["iou_threshold"]),
        "max_per_img": int(cfg["max_per_img"]),
        "min_bbox_size": float(cfg["min_bbox_size"]) if "min_bbox_size" in cfg else None,
    }
    overrides = (golden.get("config") or {}).get("overrides") or {}
    kwargs: dict[str, Any] = {
        "num_classes": int(golden["num_classes"]),
        "neck_channels": int(overrides.get("model.neck.out_channels", 256)),
        "scale": tuple(int(v) for v in golden["config"]["test_scale"]),
        "test_cfg": test_cfg,
    }
    if name == "fcos":
        pre = golden["data_preprocessor"]
        kwargs.update(mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    builders = {"retinanet": retinanet, "fcos": fcos, "atss": atss, "fovea": fovea, "reppoints": reppoints_moment}
    model = builders[name](**kwargs)

    ckpt = directory / "checkpoint.pth"
    if not any(k.startswith("backbone.") for k in read_checkpoint(ckpt)["state_dict"]):
        if not TRUNK_CKPT.is_file():
            raise FileNotFoundError(f"{ckpt} has no backbone.* keys and the trunk checkpoint {TRUNK_CKPT} is absent")
        varifocal.load_checkpoint(model, TRUNK_CKPT, prefixes=("backbone.",))
        prefixes = tuple(sorted({k.split(".")[0] + "." for k in model.state_dict() if not k.startswith("backbone.")}))
        varifocal.load_checkpoint(model, ckpt, prefixes=prefixes)
    else:
        varifocal.load_checkpoint(model, ckpt)
    return model.eval()


def _max_abs(a: Tensor, b: Tensor) -> float:
    """max |a − b| (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max())


def _max_rel(a: Tensor, b: Tensor) -> float:
    """max |a − b| / max(|b|, 1e-6) (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    return float(((a.float() - b.float()).abs() / b.float().abs().clamp(min=1e-6)).max())


def _n_diff(a: Tensor, b: Tensor) -> int:
    """Entries where ``a`` and ``b`` differ (all of them when the shapes differ)."""
    return int((a.long() != b.long()).sum()) if a.shape == b.shape else max(a.numel(), b.numel())


def _per_image(per_level: list[Tensor], num_imgs: int, i: int) -> Tensor:
    """Image i's entries of image-major per-level targets, levels concatenated."""
    return torch.cat([t.reshape(num_imgs, -1)[i] for t in per_level])


def _raw_outputs(name: str, outs, golden: dict[str, Any]) -> list[str]:
    if name == "retinanet":
        step = int(golden.get("cls_scores_channel_step", 1))
        logit = max(_max_abs(c[:, ::step], r) for c, r in zip(outs.cls_scores, golden["cls_scores"], strict=True))
        delta = max(_max_abs(b, r) for b, r in zip(outs.bbox_preds, golden["bbox_preds"], strict=True))
        return [f"max |logit diff|       {logit:.1e} (channels ::{step})", f"max |delta diff|       {delta:.1e}"]
    logit = max(_max_abs(c, r) for c, r in zip(outs.cls_scores, golden["cls_scores"], strict=True))
    if name == "fovea":
        reg = max(_max_abs(b, r) for b, r in zip(outs.bbox_preds, golden["bbox_preds"], strict=True))
        return [f"max |logit diff|       {logit:.1e}", f"max |log-dist. diff|   {reg:.1e}"]
    if name == "reppoints":
        lines = [f"max |logit diff|       {logit:.1e}"]
        for field, label in (
            ("pts_init", "init points"),
            ("pts_refine", "refined pts"),
            ("bbox_preds_refine", "moment box"),
        ):
            err = max(_max_abs(b, r) for b, r in zip(getattr(outs, field), golden[field], strict=True))
            lines.append(f"max |{label} diff|".ljust(23) + f"{err:.1e} (strides)")
        return lines
    ctr = max(_max_abs(c, r) for c, r in zip(outs.centernesses, golden["centernesses"], strict=True))
    if name == "fcos":
        reg = max(_max_rel(b, r) for b, r in zip(outs.bbox_preds, golden["bbox_preds"], strict=True))
        reg_line = f"max rel distance       {reg:.1e}"
    else:
        reg = max(_max_abs(b, r) for b, r in zip(outs.bbox_preds, golden["bbox_preds"], strict=True))
        reg_line = f"max |delta diff|       {reg:.1e}"
    return [f"max |logit diff|       {logit:.1e}", reg_line, f"max |centerness diff|  {ctr:.1e}"]


def _priors(name: str, model: nn.Module, golden: dict[str, Any]) -> str:
    """Our anchors (FCOS, FoveaBox, RepPoints: points) for the golden feature-map sizes against `golden["priors"]`."""
    sizes = [tuple(int(v) for v in s) for s in golden["featmap_sizes"]]
    head = model.bbox_head
    if name in ("fcos", "fovea", "reppoints"):
        ours = head.points(sizes)
    else:
        ours = (head.prior_generator if name == "retinanet" else head.anchor_generator).grid_anchors(sizes)
    refs = golden["priors"]
    total = sum(r.numel() for r in refs)
    diff = sum(int((a != r.float()).sum()) if a.shape == r.shape else r.numel() for a, r in zip(ours, refs))
    worst = max(_max_abs(a, r) for a, r in zip(ours, refs))
    same = len(ours) == len(refs) and diff == 0
    return f"priors identical       {same} ({diff} of {total} entries differ, max |diff| {worst:.1e} px)"


def _reppoints_assignment(model: nn.Module, golden: dict[str, Any], outs) -> str:
    """Both RepPoints stages against ``assign_init`` / ``assign_refine``: differing entries per
    field, summed over the images; the refine proposals' and max overlaps' max |Δ|."""
    gt_labels = [lab.long() for lab in golden["gt_labels"]]
    t = model.bbox_head.get_targets(outs.pts_init, golden["gt_bboxes"], gt_labels, golden["metas"])
    counts: dict[str, int] = {}
    floats = {"refine_proposals": 0.0, "max_overlaps": 0.0}
    for stage in ("init", "refine"):
        ours_stage = getattr(t, stage)
        for i, ref in enumerate(golden[f"assign_{stage}"]):
            inds = ours_stage.assigned_gt_inds[i]
            ours = {
                "assigned_gt_inds": inds,
                "assigned_labels": torch.where(inds > 0, ours_stage.labels[i], -1),
                "valid_flags": t.valid_flags[i],
                "target_labels": ours_stage.labels[i],
                "target_label_weights": ours_stage.label_weights[i] > 0,
            }
            for key, value in ours.items():
                counts[f"{stage}.{key}"] = counts.get(f"{stage}.{key}", 0) + _n_diff(value, ref[key])
            if stage == "refine":
                for key, value in (
                    ("refine_proposals", t.refine_proposals[i]),
                    ("max_overlaps", ours_stage.max_overlaps[i]),
                ):
                    floats[key] = max(floats[key], _max_abs(value, ref[key].detach()))
    same = all(n == 0 for n in counts.values())
    parts = [f"{k} {n}" for k, n in counts.items()] + [f"{k} max |diff| {v:.1e}" for k, v in floats.items()]
    return f"assignment identical   {same} (differing entries: {', '.join(parts)})"


def _assignment(name: str, model: nn.Module, golden: dict[str, Any]) -> str:
    """Our assignment records against the golden's ``assign``: differing entries per field
    (float fields: max |Δ|), summed over the images."""
    sizes = [tuple(int(v) for v in s) for s in golden["featmap_sizes"]]
    gt_labels = [lab.long() for lab in golden["gt_labels"]]
    num_imgs = len(golden["metas"])
    head = model.bbox_head
    if name in ("fcos", "fovea"):
        t = head.get_targets(sizes, golden["gt_bboxes"], gt_labels)
    else:
        t = head.get_targets(sizes, golden["gt_bboxes"], gt_labels, golden["metas"])
    counts: dict[str, int] = {}
    floats: dict[str, float] = {}
    for i, ref in enumerate(golden["assign"]):
        ours: dict[str, Tensor] = {}
        if name in ("fcos", "fovea"):  # FoveaBox records hold no assigned_gt_inds (compared when present)
            ours = {"assigned_gt_inds": t.assigned_gt_inds[i], "target_labels": t.labels[i]}
            floats["bbox_targets"] = max(
                floats.get("bbox_targets", 0.0), _max_abs(t.bbox_targets[i], ref["bbox_targets"])
            )
        else:
            if name == "retinanet":
                inds, overlaps = t.assigned_gt_inds[i], t.max_overlaps[i]
                pos_only = torch.ones_like(inds, dtype=torch.bool)
            else:  # ATSS: mmdet keeps −INF (−1e8) for negatives where ours holds 0; positives compare
                inds, overlaps = t.assign_records[i]["assigned_gt_inds"], t.assign_records[i]["max_overlaps"]
                pos_only = ref["assigned_gt_inds"].long() > 0
            ours = {
                "assigned_gt_inds": inds,
                "assigned_labels": torch.where(inds > 0, gt_labels[i][(inds - 1).clamp(min=0)], -1)
                if gt_labels[i].numel()
                else torch.full_like(inds, -1),
                "valid_flags": inds != -2,
                "target_labels": _per_image(t.labels, num_imgs, i),
                "target_label_weights": _per_image(t.label_weights, num_imgs, i) > 0,
            }
            err = _max_abs(overlaps[pos_only], ref["max_overlaps"][pos_only]) if bool(pos_only.any()) else 0.0
            floats["max_overlaps"] = max(floats.get("max_overlaps", 0.0), err)
        for key, value in ours.items():
            if key in ref:
                counts[key] = counts.get(key, 0) + _n_diff(value, ref[key])
    same = all(n == 0 for n in counts.values())
    parts = [f"{k} {n}" for k, n in counts.items()]
    parts += [
        f"{k} max |diff| {v:.1e}" + (" (positives)" if name == "atss" and k == "max_overlaps" else "")
        for k, v in floats.items()
    ]
    return f"assignment identical   {same} (differing entries: {', '.join(parts)})"


def report_zoo(name: str, directory: Path) -> None:
    g = torch.load(directory / "golden.pt", map_location="cpu", weights_only=True)
    model = build_zoo_model(name, g, directory)
    x = g["inputs"].float()
    with torch.no_grad():
        outs = model.bbox_head(model.extract_feat(x))
    for line in _raw_outputs(name, outs, g):
        print(line)
    print(_priors(name, model, g))
    print(_reppoints_assignment(model, g, outs) if name == "reppoints" else _assignment(name, model, g))

    model.train()
    losses = model.loss(x, g["metas"], g["gt_bboxes"], [lab.long() for lab in g["gt_labels"]])
    for k, ref in g["losses"].items():
        ours, ref = float(losses[k].detach()), float(ref)
        print(f"{k:16s} {ours:.7f} vs {ref:.7f} (rel {abs(ours - ref) / max(abs(ref), 1e-12):.1e})")
    sum(v for k, v in losses.items() if "loss" in k).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    worst = max(float((grads[n] - r.float()).norm() / r.float().norm().clamp(min=1e-12)) for n, r in g["grads"].items())
    common = set(grads) & set(g["grad_norms"])
    norms = max(
        abs(float(grads[n].norm()) - float(g["grad_norms"][n])) / max(float(g["grad_norms"][n]), 1e-6) for n in common
    )
    same_set = set(grads) == set(g["grad_norms"])
    print(
        f"max rel L2 grad error  {worst:.1e} ({len(g['grads'])} head tensors); max rel grad-norm error {norms:.1e} "
        f"({len(g['grad_norms'])} params, same parameter set {same_set})"
    )

    with torch.no_grad():
        dets = model.bbox_head.predict(outs, g["metas"], rescale=True)
    for i, (d, r) in enumerate(zip(dets, g["detections"], strict=True)):
        n, m = d["boxes"].shape[0], r["bboxes"].shape[0]
        if n == m:
            labels = torch.equal(d["labels"], r["labels"].long())
            score = f"{_max_abs(d['scores'], r['scores']):.1e}" if n else "-"
            box = f"{_max_abs(d['boxes'], r['bboxes']):.1e}" if n else "-"
        else:
            labels, score, box = False, "-", "-"
        print(
            f"image {i}: {n} detections (golden {m}, counts equal {n == m}), labels identical {labels}, "
            f"max |score diff| {score}, max |box diff| {box} px"
        )


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["vfnet", *ZOO], help="report one golden (default: all six)")
    parser.add_argument("vfnet_dir", nargs="?", type=Path, default=GOLDEN / "vfnet_r50_coco80", help="VFNet golden")
    args = parser.parse_args(argv)
    names = [args.only] if args.only else ["vfnet", *ZOO]
    status = 0
    for name in names:
        directory = args.vfnet_dir if name == "vfnet" else Path(os.environ.get(ZOO[name][0], GOLDEN / ZOO[name][1]))
        print(f"== {name}: {directory.name} ==")
        missing = [f for f in ("golden.pt", "checkpoint.pth") if not (directory / f).is_file()]
        if missing:
            print(f"{directory}: missing {', '.join(missing)}; skipped", file=sys.stderr)
            status = 1
            continue
        if name == "vfnet":
            main(directory)
            continue
        try:
            report_zoo(name, directory)
        except FileNotFoundError as err:
            print(f"{name}: {err}; skipped", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(cli())
