"""Parity with the reference MMDetection VFNet (../shared/golden, see its README).

The golden directory comes from ``VARIFOCAL_GOLDEN`` (default: the R-50 COCO-80 golden). Any
directory of the same format must pass: another ``num_classes``, other image sizes, or
``use_vfl`` false. A ``checkpoint.pth`` holding only ``bbox_head.*`` keys takes its backbone and
neck from ``VARIFOCAL_GOLDEN_TRUNK`` (default: the R-50 golden checkpoint).
Tolerances are those of the golden README.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import varifocal
from varifocal.checkpoint import read_checkpoint

from ..conftest import SHARED

pytestmark = pytest.mark.golden

DEFAULT_GOLDEN = SHARED / "golden" / "vfnet_r50_coco80"
GOLDEN_DIR = Path(os.environ.get("VARIFOCAL_GOLDEN", DEFAULT_GOLDEN))
TRUNK_CKPT = Path(os.environ.get("VARIFOCAL_GOLDEN_TRUNK", DEFAULT_GOLDEN / "checkpoint.pth"))


@pytest.fixture(scope="module")
def golden():
    path = GOLDEN_DIR / "golden.pt"
    if not path.is_file() or not (GOLDEN_DIR / "checkpoint.pth").is_file():
        pytest.skip(f"golden directory {GOLDEN_DIR} is absent or incomplete (needs golden.pt and checkpoint.pth)")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(golden):
    cfg = golden["test_cfg"]
    model = varifocal.build_model(
        "vfnet_r50_fpn",
        num_classes=int(golden["num_classes"]),
        use_vfl=bool(golden["use_vfl"]),
        test_cfg={k: cfg[k] for k in ("score_thr", "nms_pre", "nms_iou", "max_per_img")},
    )
    ckpt = GOLDEN_DIR / "checkpoint.pth"
    keys = read_checkpoint(ckpt)["state_dict"].keys()
    if all(k.startswith("bbox_head.") for k in keys):
        if not TRUNK_CKPT.is_file():
            pytest.skip(f"head-only golden checkpoint needs a trunk checkpoint; {TRUNK_CKPT} is absent")
        varifocal.load_checkpoint(model, TRUNK_CKPT, prefixes=("backbone.", "neck."))
        varifocal.load_checkpoint(model, ckpt, prefixes=("bbox_head.",))
    else:
        varifocal.load_checkpoint(model, ckpt)
    return model


@pytest.fixture(scope="module")
def inputs(golden):
    return golden["inputs"].float()


@pytest.fixture(scope="module")
def eval_outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model.bbox_head(model.extract_feat(inputs))


@pytest.fixture(scope="module")
def train_run(model, inputs, golden):
    """One training forward/backward on the golden batch: losses and gradients."""
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model.loss(inputs, golden["metas"], golden["gt_bboxes"], [l.long() for l in golden["gt_labels"]])
    sum(losses.values()).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.eval()
    return {k: v.detach() for k, v in losses.items()}, grads


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp(min=1e-6)).max())


def test_class_names_come_from_checkpoint_meta(model):
    meta = read_checkpoint(GOLDEN_DIR / "checkpoint.pth")["class_names"]
    if meta is None:
        pytest.skip("this golden checkpoint has no meta.CLASSES")
    assert model.class_names == list(meta)


def test_raw_head_outputs(eval_outputs, golden):
    cls_scores, bbox_preds, bbox_preds_refine = eval_outputs
    for lvl in range(len(golden["cls_scores"])):
        ref_cls = golden["cls_scores"][lvl].float()
        assert cls_scores[lvl].shape == ref_cls.shape
        assert float((cls_scores[lvl] - ref_cls).abs().max()) <= 1e-3, f"logits, level {lvl}"
        # Distances: relative error ≤ 1e-3.
        assert _max_rel(bbox_preds[lvl], golden["bbox_preds"][lvl].float()) <= 1e-3, f"init, level {lvl}"
        assert _max_rel(bbox_preds_refine[lvl], golden["bbox_preds_refine"][lvl].float()) <= 1e-3, (
            f"refine, level {lvl}"
        )


def test_atss_labels(model, eval_outputs, golden):
    cls_scores = eval_outputs[0]
    sizes = [tuple(c.shape[-2:]) for c in cls_scores]
    labels, _, _ = model.bbox_head.get_targets(
        sizes, golden["gt_bboxes"], [l.long() for l in golden["gt_labels"]], golden["metas"], torch.device("cpu")
    )
    num_classes = int(golden["num_classes"])
    for lvl, (ours, ref) in enumerate(zip(labels, golden["atss_labels"])):
        assert torch.equal(ours, ref.long()), f"level {lvl}: {int((ours != ref.long()).sum())} labels differ"
    # The scene has positives, so this comparison is not vacuous.
    assert sum(int((l < num_classes).sum()) for l in labels) > 0


def test_losses(train_run, golden):
    losses, _ = train_run
    for name, ref in golden["losses"].items():
        ref = float(ref)
        assert abs(float(losses[name]) - ref) <= 1e-4 * abs(ref), f"{name}: {float(losses[name])} vs {ref}"


def test_gradients(train_run, golden):
    _, grads = train_run
    for name, ref in golden["grads"].items():
        ref = ref.float()
        ours = grads[name]
        rel = float((ours - ref).norm() / ref.norm().clamp(min=1e-12))
        assert rel <= 1e-3, f"{name}: relative L2 error {rel:.2e}"
    # Every parameter that has a gradient in the reference has one here, and no other.
    assert set(grads) == set(golden["grad_norms"])
    for name, ref_norm in golden["grad_norms"].items():
        ours = float(grads[name].norm())
        assert abs(ours - float(ref_norm)) <= 1e-3 * max(float(ref_norm), 1e-6), f"{name}: |g| {ours} vs {ref_norm}"


def test_detections(model, eval_outputs, golden):
    results = model.bbox_head.predict(eval_outputs, golden["metas"], rescale=True)
    for i, (ours, ref) in enumerate(zip(results, golden["detections"])):
        assert ours["boxes"].shape[0] == ref["bboxes"].shape[0], f"image {i}: detection count"
        assert torch.equal(ours["labels"], ref["labels"].long()), f"image {i}: labels"
        assert float((ours["scores"] - ref["scores"].float()).abs().max()) <= 1e-4, f"image {i}: scores"
        assert float((ours["boxes"] - ref["bboxes"].float()).abs().max()) <= 1e-2, f"image {i}: boxes"


def test_preprocessor_reproduces_the_reference_input_and_forward_returns_original_pixels(model, golden):
    """model.preprocessor turns the original photo into the reference network input (sizes
    exact; pixels within JPEG-decoder/resize rounding), and model(images) reports boxes in
    that photo's pixels."""
    import numpy as np
    from PIL import Image

    for i, meta in enumerate(golden["metas"]):
        image_path = SHARED / "data" / "coco_subset" / meta["img_path"]
        if not image_path.is_file():
            pytest.skip(f"{image_path} is absent")
        image = torch.from_numpy(np.asarray(Image.open(image_path).convert("RGB")).copy()).permute(2, 0, 1).float()
        batch, metas, _ = model.preprocessor([image])
        assert tuple(metas[0]["ori_shape"]) == tuple(meta["ori_shape"])
        assert tuple(metas[0]["img_shape"]) == tuple(meta["img_shape"])
        assert tuple(metas[0]["pad_shape"]) == tuple(meta["pad_shape"])
        assert metas[0]["scale_factor"] == pytest.approx(tuple(meta["scale_factor"]), abs=1e-12)
        h, w = meta["img_shape"]
        diff = (batch[0, :, :h, :w] - golden["inputs"][i, :, :h, :w].float()).abs()
        assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.05  # < 3 grey levels / 58
        if i == 1:
            model.eval()
            with torch.no_grad():
                (det,) = model([image])
                (ref,) = model.predict(batch, metas)
            assert torch.equal(det["boxes"], ref["boxes"]) and det["boxes"].shape[0] > 0
            assert float(det["boxes"][:, 2].max()) <= meta["ori_shape"][1] + 1e-3
            assert float(det["boxes"][:, 3].max()) <= meta["ori_shape"][0] + 1e-3
