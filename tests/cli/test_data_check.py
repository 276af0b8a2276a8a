"""``varifocal data check`` (issue 16): the real BCCD counts, the warnings of a tiny aerial set, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from varifocal.cli.main import main

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "vfnet_lite0_bccd.yaml"


def test_bccd_counts_sizes_and_no_warning(monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the recipe's data.root is relative
    ann = json.loads((REPO / "data" / "bccd" / "annotations" / "instances_train.json").read_text())
    per_class = Counter(a["category_id"] for a in ann["annotations"])
    assert main(["data", "check", str(RECIPE)]) == 0
    out = capsys.readouterr().out
    assert f"{len(ann['images'])} images (0 dropped" in out and f"{len(ann['annotations'])} boxes" in out
    assert (len(ann["images"]), len(ann["annotations"])) == (292, 3941)
    lines = out.splitlines()
    for cid, name in ((1, "RBC"), (2, "WBC"), (3, "Platelets")):
        assert any(line.split() == [name, str(per_class[cid])] for line in lines), name  # 3348, 301, 292
    # 292 images in one aspect group, 4 per batch: 73 iterations; steps after epochs 8 and 11
    assert "schedule: 73 iterations per epoch" in out and "lr steps at iterations 584, 803" in out
    test_row = next(line.split() for line in lines if line.strip().startswith("test 640×480"))
    smallest = min((a["bbox"][2] * a["bbox"][3]) ** 0.5 for a in ann["annotations"])  # 640×480 images: factor 1
    assert test_row[2] == f"{smallest:.1f}" == "20.9" and test_row[-2:] == ["0.0%", "0.0%"]
    assert out.rstrip().endswith("no warnings: the recipe fits the data")


def test_large_images_and_few_of_them_print_every_fix(tmp_path, capsys):
    images = [{"id": i, "file_name": f"o{i}.tif", "width": 8000, "height": 6000} for i in range(1, 7)]
    anns = [
        {"id": k, "image_id": 1 + k % 6, "category_id": 1, "bbox": [50.0 * k, 40.0, 30.0, 30.0], "area": 900.0}
        for k in range(1, 61)
    ]
    path = tmp_path / "aerial.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "car"}]}))
    args = [f"data.{k}={v}" for k, v in (("root", tmp_path), ("train_ann", path), ("val_ann", path))]
    assert main(["data", "check", str(RECIPE), *args, "model.num_classes=1"]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3
    assert "the warm-up (200 iterations) is longer than the whole run (24 iterations" in warnings[0]
    assert "inside the warm-up" in warnings[1]
    assert "median box side 2.1 px" in warnings[2] and "data.tiles.size=390" in warnings[2]


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"varifocal data: error: {tmp_path / 'missing.yaml'}: config file not found"]
    assert main(["data", "check", str(RECIPE), f"data.train_ann={tmp_path / 'none.json'}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("varifocal data: error: ") and "none.json" in line
