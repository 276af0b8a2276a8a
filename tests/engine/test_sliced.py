"""Sliced inference (issue 16): slices through the model's preprocessor, boxes mapped back to the
image, merged by NMS or SAHI's greedy NMM (hand-computed with a stub detector whose output per
slice is fixed), and evaluation of sliced predictions on whole images."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from varifocal.data import CocoDetection, build_test_transforms
from varifocal.data.tiles import tile_grid
from varifocal.engine.evaluate import evaluate
from varifocal.engine.sliced import SliceSettings, greedy_nmm, pairwise_match, sliced_predict
from varifocal.models.preprocess import Preprocessor


class StubDetector(nn.Module):
    """Returns ``outputs[k]`` (boxes in that pass's own pixels) for the k-th pass it sees and
    records the batches' sizes and image shapes."""

    def __init__(self, outputs, scale=(500, 300), nms_iou=0.5, max_per_img=100):
        super().__init__()
        self.preprocessor = Preprocessor(scale=scale)
        self.bbox_head = SimpleNamespace(test_cfg=SimpleNamespace(nms_iou=nms_iou, max_per_img=max_per_img))
        self.outputs = list(outputs)
        self.calls, self.shapes, self.seen = [], [], 0

    def predict(self, batch, metas, rescale=True):
        self.calls.append(int(batch.shape[0]))
        out = []
        for meta in metas:
            self.shapes.append(tuple(meta["img_shape"]))
            dets = self.outputs[self.seen] if self.seen < len(self.outputs) else []
            self.seen += 1
            out.append(
                {
                    "boxes": torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor([d[1] for d in dets], dtype=torch.float32),
                    "labels": torch.tensor([d[2] for d in dets], dtype=torch.long),
                }
            )
        return out


# Slices of a 1000x600 image, 400x400, overlap 0.2: (0,0) (320,0) (600,0) (0,200) (320,200) (600,200).
SLICE_OUTPUTS = [
    [([330, 100, 390, 160], 0.9, 0), ([330, 100, 390, 160], 0.5, 1)],  # A0 (class 0) and A1 (class 1)
    [([10, 100, 70, 160], 0.7, 0), ([260, 50, 380, 110], 0.6, 0)],  # B = A0 again; C = [580, 50, 700, 110]
    [([0, 50, 100, 110], 0.8, 0)],  # D = [600, 50, 700, 110]: C cut by the slice border
    [],
    [([100, 100, 150, 150], 0.4, 0)],  # E = [420, 300, 470, 350]
    [],
]


def _as_list(det):
    return [
        (b, round(s, 6), lab)
        for b, s, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())
    ]


def test_slices_go_through_the_preprocessor_in_batches():
    model = StubDetector(SLICE_OUTPUTS)
    image = torch.zeros(3, 600, 1000)
    sliced_predict(model, image, (400, 400), 0.2, full_image=True, batch_size=4, merge_thr=0.5)
    assert model.calls == [4, 3]  # 6 slices + the whole image, 4 per forward
    # keep-ratio resize to (500, 300): a 400x400 slice becomes 300x300, the image 500x300
    assert model.shapes == [(300, 300)] * 6 + [(300, 500)]


def test_nms_merge_maps_boxes_back_hand_computed():
    det = sliced_predict(StubDetector(SLICE_OUTPUTS), torch.zeros(3, 600, 1000), (400, 400), 0.2, merge_thr=0.5)
    # A0 suppresses B (IoU 1); D (0.8) suppresses C (IoU 6000/7200 = 0.83): NMS keeps the cut box.
    assert _as_list(det) == [
        ([330, 100, 390, 160], 0.9, 0),
        ([600, 50, 700, 110], 0.8, 0),
        ([330, 100, 390, 160], 0.5, 1),  # other class: untouched
        ([420, 300, 470, 350], 0.4, 0),
    ]


def test_nmm_merge_unions_a_cut_box_with_the_whole_one():
    det = sliced_predict(
        StubDetector(SLICE_OUTPUTS), torch.zeros(3, 600, 1000), (400, 400), 0.2, merge="nmm", merge_metric="ios"
    )
    # D takes C (IoS = 6000 / min(6000, 7200) = 1 > 0.5): the union is the whole object, score 0.8.
    assert _as_list(det) == [
        ([330, 100, 390, 160], 0.9, 0),
        ([580, 50, 700, 110], 0.8, 0),
        ([330, 100, 390, 160], 0.5, 1),
        ([420, 300, 470, 350], 0.4, 0),
    ]


def test_full_image_pass_and_max_per_img():
    outputs = SLICE_OUTPUTS + [[([331, 101, 391, 161], 0.95, 0)]]  # the whole image, in image pixels
    det = sliced_predict(
        StubDetector(outputs), torch.zeros(3, 600, 1000), (400, 400), 0.2, True, merge_thr=0.5, max_per_img=2
    )
    # IoU([331,101,391,161], A0) = 59² / (2·60² − 59²) = 0.936: the full-image box wins; top 2 kept
    assert _as_list(det) == [([331, 101, 391, 161], 0.95, 0), ([600, 50, 700, 110], 0.8, 0)]


def test_an_image_within_one_slice_gets_the_models_own_detections():
    own = [([0, 0, 10, 10], 0.9, 0), ([0, 0, 10, 9], 0.8, 0)]  # overlapping: no merge is applied
    model = StubDetector([own], scale=(640, 480))
    det = sliced_predict(model, torch.zeros(3, 200, 300), (640, 640), 0.2, merge="nmm")
    assert _as_list(det) == [([0, 0, 10, 10], 0.9, 0), ([0, 0, 10, 9], 0.8, 0)]
    assert model.shapes == [(427, 640)]  # the image itself at the test scale (x 2.133)


def test_greedy_nmm_follows_sahi_rechecking_the_growing_box():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 14], [0, 0, 14, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 0])
    # IoU(a, b) = IoU(a, c) = 100/140 = 0.71 > 0.6: both match a. b merges ([0,0,10,14]); then
    # IoU([0,0,10,14], c) = 100/180 = 0.56 <= 0.6: c is dropped (it was matched, SAHI's rule).
    out = greedy_nmm(boxes, scores, labels, 0.6, "iou")
    assert out[0].tolist() == [[0, 0, 10, 14], [50, 50, 60, 60]] and out[1].tolist() == pytest.approx([0.9, 0.6])
    assert torch.allclose(pairwise_match(boxes[:1], boxes[1:3], "ios"), torch.tensor([[1.0, 1.0]]))


def test_slice_settings_validate():
    with pytest.raises(ValueError, match="overlap"):
        SliceSettings((640, 640), overlap=1.0)
    with pytest.raises(ValueError, match="merge"):
        SliceSettings((640, 640), merge="wbf")
    assert SliceSettings((640, 480), merge="nmm").describe().startswith("sliced inference: 640x480 slices")


# ------------------------------------------------------------------------------ evaluation
class OracleDetector(StubDetector):
    """Knows the ground truth: in each slice, every box whose centre lies in it, shifted into the
    slice's pixels (not clipped), score 0.9. After NMS the predictions are the ground truth."""

    def __init__(self, boxes, labels, windows):
        outputs = []
        for x0, y0, x1, y1 in windows:
            dets = []
            for (bx0, by0, bx1, by1), lab in zip(boxes, labels):
                cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
                if x0 <= cx < x1 and y0 <= cy < y1:
                    dets.append(([bx0 - x0, by0 - y0, bx1 - x0, by1 - y0], 0.9, lab))
            outputs.append(dets)
        super().__init__(outputs, scale=(640, 480), nms_iou=0.5, max_per_img=300)


def test_evaluate_scores_sliced_predictions_on_the_whole_image(tmp_path):
    from ..tools.test_make_mosaics import bccd_subset, make_mosaics

    ann, images = bccd_subset(tmp_path, 4)
    make_mosaics(ann, images, tmp_path / "mosaic", grid=(2, 2), seed=0)
    mosaic_ann = tmp_path / "mosaic" / "annotations" / "instances_sub.json"
    ds = CocoDetection(tmp_path / "mosaic" / "JPEGImages", mosaic_ann)  # no transforms: original size
    (rec,) = ds.records
    windows = tile_grid(rec.width, rec.height, (640, 480), 0.2)
    model = OracleDetector(rec.boxes.tolist(), rec.labels.tolist(), windows)
    slicing = SliceSettings((640, 480), 0.2, merge_thr=0.99, batch_size=3)  # only exact duplicates merge
    metrics, results, detections = evaluate(model, ds, torch.device("cpu"), slicing=slicing)
    assert model.shapes == [(480, 640)] * len(windows)  # 640x480 slices stay at native size
    assert len(detections[0]["boxes"]) == len(rec.boxes) == len(json.loads(mosaic_ann.read_text())["annotations"])
    assert metrics["stats"]["AP"] == pytest.approx(1.0) and metrics["stats"]["AP50"] == pytest.approx(1.0)
    ds.transforms = build_test_transforms((320, 240))
    with pytest.raises(ValueError, match="original size"):
        evaluate(OracleDetector([], [], windows), ds, torch.device("cpu"), slicing=slicing)
