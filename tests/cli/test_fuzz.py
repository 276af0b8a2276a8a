"""Fuzz-style sweep of the CLI (issue 13, acceptance 2): generated bad images, annotation files,
configs, checkpoints and arguments. For every case: no traceback, a failure is one line on
stderr with exit 1 or 2, and nothing outside the case's own out dir changes (the sentinel
inputs keep their bytes, no file appears elsewhere)."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch

import varifocal
from varifocal.cli.main import main

REPO = Path(__file__).resolve().parents[2]
JPG = REPO / "data" / "bccd" / "JPEGImages" / "BloodImage_00000.jpg"
SEED = 20261202
#: Cases whose input is valid for that command: scoring a predictions file needs no image files.
VALID = {"val-predictions-missing_file.json"}


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (folders as '<dir>')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class _Unsafe:
    """An arbitrary class: a checkpoint holding it needs full unpickling, which is refused."""


def _bad_images(d: Path, rng: random.Random) -> list[Path]:
    jpeg = JPG.read_bytes()
    files = {
        "empty.jpg": b"",
        "noise.jpg": bytes(rng.getrandbits(8) for _ in range(2048)),
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "text.png": b"this is not a png\n",
        "header_only.jpg": jpeg[:200],
        "zeros.bmp": bytes(512),
    }
    paths = []
    for name, data in files.items():
        (d / name).write_bytes(data)
        paths.append(d / name)
    (d / "folder.jpg").mkdir()
    paths.append(d / "folder.jpg")
    return paths


def _bad_annotations(d: Path) -> list[Path]:
    good = {
        "images": [{"id": 1, "file_name": JPG.name, "width": 640, "height": 480}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }
    variants = {
        "syntax.json": "{not json",
        "empty.json": "",
        "list.json": "[1, 2, 3]",
        "no_images.json": json.dumps({k: v for k, v in good.items() if k != "images"}),
        "bbox_short.json": json.dumps({**good, "annotations": [{**good["annotations"][0], "bbox": [1, 2, 3]}]}),
        "bbox_text.json": json.dumps({**good, "annotations": [{**good["annotations"][0], "bbox": ["a", 1, 2, 3]}]}),
        "unknown_image.json": json.dumps({**good, "annotations": [{**good["annotations"][0], "image_id": 99}]}),
        "unknown_category.json": json.dumps({**good, "annotations": [{**good["annotations"][0], "category_id": 7}]}),
        "no_file_name.json": json.dumps({**good, "images": [{"id": 1, "width": 640, "height": 480}]}),
        "missing_file.json": json.dumps({**good, "images": [{**good["images"][0], "file_name": "absent.jpg"}]}),
        "binary.json": "\x00\xff\xfe garbage",
    }
    paths = []
    for name, text in variants.items():
        (d / name).write_text(text, encoding="latin-1")
        paths.append(d / name)
    return paths


def _bad_configs(d: Path) -> list[Path]:
    variants = {
        "syntax.yaml": "model: [unclosed\n",
        "top_list.yaml": "- 1\n- 2\n",
        "unknown_key.yaml": "model:\n  nmae: x\n",
        "wrong_type.yaml": "train:\n  epochs: many\n",
        "nan_lr.yaml": "train:\n  lr: .nan\n",
        "negative_epochs.yaml": "train:\n  epochs: -3\n",
        "gamma.yaml": "train:\n  lr_gamma: -1\n",
        "unknown_model.yaml": "model:\n  name: vfnet_r5O_fpn\n",
        "missing_data.yaml": f"data:\n  root: {d / 'nowhere'}\nmodel:\n  pretrained_backbone: false\n",
        "bad_scale.yaml": "model:\n  test_scale: [0, 100]\n",
    }
    paths = []
    for name, text in variants.items():
        (d / name).write_text(text)
        paths.append(d / name)
    return paths


def _bad_checkpoints(d: Path, good: Path, rng: random.Random) -> list[Path]:
    (d / "random.pth").write_bytes(bytes(rng.getrandbits(8) for _ in range(4096)))
    (d / "empty.pth").write_bytes(b"")
    (d / "text.pth").write_text("state_dict = {}\n")
    with open(d / "unsafe.pth", "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Unsafe()}, f)
    torch.save({"something": 1}, d / "no_state.pth")
    torch.save({"state_dict": {"bbox_head.foo.weight": torch.zeros(2)}}, d / "unknown_head.pth")
    flipped = bytearray(good.read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # one bit inside the weights
    (d / "flipped.pth").write_bytes(bytes(flipped))
    (d / "folder.pth").mkdir()
    return [
        d / n
        for n in (
            "random.pth",
            "empty.pth",
            "text.pth",
            "unsafe.pth",
            "no_state.pth",
            "unknown_head.pth",
            "flipped.pth",
            "folder.pth",
        )
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("fuzz_inputs")
    for sub in ("images", "annotations", "configs", "checkpoints"):
        (root / sub).mkdir()
    good = root / "checkpoints" / "good.pth"
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96])
    varifocal.save_checkpoint(
        good, model, model_name="vfnet_lite0_fpn", model_kwargs={"num_classes": 3, "scale": [128, 96]}
    )
    shutil.copy(JPG, root / "images" / "good.jpg")
    preds = root / "annotations" / "preds.json"
    preds.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "score": 0.9}]))
    return {
        "root": root,
        "good_ckpt": good,
        "good_jpg": root / "images" / "good.jpg",
        "preds": preds,
        "images": _bad_images(root / "images", rng),
        "annotations": _bad_annotations(root / "annotations"),
        "configs": _bad_configs(root / "configs"),
        "checkpoints": _bad_checkpoints(root / "checkpoints", good, rng),
    }


def _cases(inputs) -> list[tuple[str, list[str]]]:
    """(case id, argv with '{out}' for the case's own out dir)."""
    ck, jpg = str(inputs["good_ckpt"]), str(inputs["good_jpg"])
    cases = []
    for img in inputs["images"]:
        cases.append((f"predict-{img.name}", ["predict", str(img), "--checkpoint", ck, "--out-dir", "{out}"]))
    for ann in inputs["annotations"]:
        cases.append(
            (
                f"val-predictions-{ann.name}",
                ["val", "--predictions", str(inputs["preds"]), "--ann", str(ann), "--out-dir", "{out}"],
            )
        )
        cases.append(
            (
                f"val-ann-{ann.name}",
                [
                    "val",
                    "data.root=''",
                    f"data.val_ann={ann}",
                    f"data.val_images={JPG.parent}",
                    "--checkpoint",
                    ck,
                    "--out-dir",
                    "{out}",
                ],
            )
        )
    for cfg in inputs["configs"]:
        cases.append((f"train-{cfg.name}", ["train", str(cfg), "train.out_dir={out}"]))
    for bad in inputs["checkpoints"]:
        cases.append((f"predict-ckpt-{bad.name}", ["predict", jpg, "--checkpoint", str(bad), "--out-dir", "{out}"]))
        cases.append((f"convert-{bad.name}", ["convert", str(bad), "{out}/converted.pth"]))
    for thr in ("2", "-0.5", "nan", "inf", "abc"):
        cases.append(
            (f"score-thr-{thr}", ["predict", jpg, "--checkpoint", ck, "--score-thr", thr, "--out-dir", "{out}"])
        )
    for device in ("cuda:7", "tpu", "cpu:x"):
        cases.append(
            (f"device-{device}", ["predict", jpg, "--checkpoint", ck, "--device", device, "--out-dir", "{out}"])
        )
    cases += [
        ("no-command", []),
        ("unknown-command", ["explode"]),
        (
            "predict-missing-file",
            ["predict", str(inputs["root"] / "absent.jpg"), "--checkpoint", ck, "--out-dir", "{out}"],
        ),
        ("predict-out-is-input", ["predict", jpg, "--checkpoint", ck, "--out-dir", str(inputs["good_jpg"])]),
        ("val-without-checkpoint", ["val", "--out-dir", "{out}"]),
        ("convert-onto-itself", ["convert", ck, ck]),
        ("train-override-syntax", ["train", "train.epochs"]),
        ("train-override-unknown", ["train", "trian.epochs=3", "train.out_dir={out}"]),
    ]
    return cases


def test_at_least_40_generated_cases(inputs):
    assert len(_cases(inputs)) >= 40


def test_no_traceback_and_nothing_outside_the_out_dir_changes(inputs, tmp_path, capsys):
    before = _tree(inputs["root"])
    failures = []
    for i, (name, argv) in enumerate(_cases(inputs)):
        out = tmp_path / f"out{i}"
        argv = [a.replace("{out}", str(out)) for a in argv]
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse on an empty command line may still exit
            rc = exc.code
        captured = capsys.readouterr()
        err = captured.err.strip()
        if "Traceback" in err or "Traceback" in captured.out:
            failures.append(f"{name}: traceback\n{err[-800:]}")
        elif name in VALID and rc not in (0, None):
            failures.append(f"{name}: a valid input failed: exit {rc}, stderr {err!r}")
        elif rc not in (0, None) and (rc not in (1, 2) or not err or len(err.splitlines()) != 1):
            failures.append(f"{name}: exit {rc}, stderr {err!r}")
        elif rc in (0, None) and name not in VALID:
            # A bad input that "succeeds" must at least not pretend: predict/convert of junk fails.
            failures.append(f"{name}: exit 0 on a bad input; stdout {captured.out[-300:]!r}")
        stray = {str(p.relative_to(tmp_path)) for p in tmp_path.iterdir()} - {f"out{j}" for j in range(i + 1)}
        if stray:
            failures.append(f"{name}: wrote outside its out dir: {sorted(stray)}")
    assert _tree(inputs["root"]) == before, "an input file changed or a file appeared beside the inputs"
    assert not failures, "\n".join(failures)
