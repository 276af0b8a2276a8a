"""``varifocal export``: bad checkpoints and arguments end with one line (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'varifocal[export]')")

from varifocal.cli.main import main  # noqa: E402
from varifocal.export import read_metadata  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "vfnet_lite0_bccd.pth"
IMAGES = REPO / "data" / "bccd" / "JPEGImages"


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("varifocal export: error:"), err
    for p in parts:
        assert p in err, err
    return err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")]) == 2
    _one_line_error(capsys, str(bad))
    assert not (tmp_path / "m.onnx").exists()


def test_mismatched_checkpoint(tmp_path, capsys):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is absent")
    code = main(["export", "fcos_lite0_fpn", "--checkpoint", str(MODEL), "--out", str(tmp_path / "m.onnx")])
    assert code == 2
    _one_line_error(capsys, "holds a vfnet_lite0_fpn model, not fcos_lite0_fpn")


def test_unsupported_precision_and_bad_size(tmp_path, capsys):
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} is absent")
    out = str(tmp_path / "m.onnx")
    assert main(["export", "--checkpoint", str(MODEL), "--out", out, "--precision", "bf16"]) == 2
    _one_line_error(capsys, "'bf16' is not supported")
    assert main(["export", "--checkpoint", str(MODEL), "--out", out, "--input-size", "100x96"]) == 2
    _one_line_error(capsys, "multiple of the size divisor 32")


def test_export_and_check_on_a_folder(tmp_path, capsys):
    """A small static export (128×96 test scale) checked on 2 real BCCD images: it passes."""
    if not MODEL.is_file() or not IMAGES.is_dir():
        pytest.skip(f"{MODEL} or {IMAGES} is absent")
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("BloodImage_00000.jpg", "BloodImage_00003.jpg"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    out = tmp_path / "m.onnx"
    args = ["export", "model.test_scale=[128,96]", "--checkpoint", str(MODEL), "--out", str(out)]
    code = main([*args, "--check", "--images", str(folder), "--deform", "deformconv"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "check on 2 images" in text and "PASS" in text
    meta = read_metadata(out)
    assert meta["input_size"] == [128, 96] and meta["model"] == "vfnet_lite0_fpn" and meta["deform"] == "deformconv"
