"""Output safety of the ``varifocal`` command: drawings never over inputs or each other, atomic
writes with normal permissions, ``config.yaml`` only after a valid set-up and never over
another run's."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import varifocal
from varifocal.cli.main import main
from varifocal.cli.outputs import drawing_paths
from varifocal.utils.io import atomic_write, atomic_write_json

REPO = Path(__file__).resolve().parents[2]
BCCD = REPO / "data" / "bccd"
JPG = BCCD / "JPEGImages" / "BloodImage_00000.jpg"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[128, 96])
    path = tmp_path_factory.mktemp("ckpt") / "m.pth"
    varifocal.save_checkpoint(
        path, model, model_name="vfnet_lite0_fpn", model_kwargs={"num_classes": 3, "scale": [128, 96]}
    )
    return path


@pytest.fixture()
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_predict_into_the_photos_folder_keeps_the_png_input(tmp_path, ckpt):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.open(JPG).save(photo)
    before = _sha(photo)
    assert main(["predict", str(photo), "--checkpoint", str(ckpt), "--out-dir", str(tmp_path)]) == 0
    assert _sha(photo) == before
    drawn = tmp_path / "photo_png.png"
    assert Image.open(drawn).size == (640, 480)
    pred = json.loads((tmp_path / "predictions.json").read_text())
    assert pred["images"][0]["drawing"] == str(drawn)


def test_same_stem_inputs_give_two_drawings(tmp_path, ckpt):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(JPG, src / "a.jpg")
    Image.open(JPG).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "a.png")
    hashes = {p.name: _sha(p) for p in src.iterdir()}
    out = tmp_path / "out"
    assert main(["predict", str(src), "--checkpoint", str(ckpt), "--out-dir", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["a_jpg.png", "a_png.png"]
    assert _sha(out / "a_jpg.png") != _sha(out / "a_png.png")
    assert {p.name: _sha(p) for p in src.iterdir()} == hashes


def test_drawing_names_avoid_inputs_hard_links_and_each_other(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a1, a2 = tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.jpg"
    for p in (a1, a2):
        p.write_bytes(b"1")
    b = tmp_path / "x" / "b.png"
    b.write_bytes(b"2")
    out = tmp_path / "out"
    out.mkdir()
    os.link(b, out / "b.png")  # the out dir holds a hard link to an input
    names = [p.name for p in drawing_paths([a1, a2, b], out)]
    assert names == ["a_jpg.png", "a_jpg_2.png", "b_png.png"]
    assert [p.name for p in drawing_paths([b], tmp_path / "x")] == ["b_png.png"]
    assert [p.name for p in drawing_paths([a1], tmp_path / "x")] == ["a.png"]


def test_atomic_writes_respect_the_umask(tmp_path, umask_027):
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    atomic_write(tmp_path / "t.txt", lambda tmp: Path(tmp).write_text("x"))
    for name in ("m.json", "t.txt"):
        assert (os.stat(tmp_path / name).st_mode & 0o777) == 0o666 & ~umask_027
    os.chmod(tmp_path / "t.txt", 0o600)  # a replaced file keeps its mode
    atomic_write(tmp_path / "t.txt", lambda tmp: Path(tmp).write_text("y"))
    assert (os.stat(tmp_path / "t.txt").st_mode & 0o777) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_predict_outputs_have_normal_permissions(tmp_path, ckpt, umask_027):
    out = tmp_path / "out"
    assert main(["predict", str(JPG), "--checkpoint", str(ckpt), "--out-dir", str(out)]) == 0
    for name in ("predictions.json", "BloodImage_00000.png"):
        assert (os.stat(out / name).st_mode & 0o777) == 0o666 & ~umask_027


def _tiny_train_config(tmp_path: Path, out: str, **train) -> Path:
    from ..engine.test_trainer import tiny_config

    return tiny_config(tmp_path, out, epochs=1, **train)


def test_failed_train_leaves_the_existing_config_unchanged(tmp_path, capsys):
    cfg = _tiny_train_config(tmp_path, "run")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("previous: run\n")
    (out / "last.pth").write_bytes(b"previous checkpoint")
    before = {p.name: _sha(p) for p in out.iterdir()}
    # another run's config, no --resume: refused with one line before any work
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert str(out / "config.yaml") in err and "--resume" in err
    # an input error found during set-up (missing annotation file): config.yaml not written
    (out / "last.pth").unlink()
    assert main(["train", str(cfg), f"data.train_ann={tmp_path / 'missing.json'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.json" in err and "Traceback" not in err
    assert _sha(out / "config.yaml") == before["config.yaml"]


def test_train_writes_config_after_set_up(tmp_path, capsys):
    cfg = _tiny_train_config(tmp_path, "ok")
    out = tmp_path / "ok"
    assert main(["train", str(cfg), "train.lr=0.02"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["lr"] == 0.02 and saved["model"]["name"] == "vfnet_lite0_fpn"
    assert (out / "last.pth").is_file()
    # the same run again, or with an execution-only change, is allowed; another recipe is not
    from varifocal.config import ConfigError, load_config
    from varifocal.engine.trainer import _check_run_config

    _check_run_config(load_config(str(cfg), ["train.lr=0.02", "data.skip_bad_images=true"]), out, resume=False)
    with pytest.raises(ConfigError, match=r"differs in train\.lr"):
        _check_run_config(load_config(str(cfg), []), out, resume=False)
    _check_run_config(load_config(str(cfg), []), out, resume=True)


def test_a_second_run_into_a_locked_out_dir_refuses(tmp_path, capsys):
    """Concurrent trains into one out dir: the second refuses in one line (exit 2) and leaves the
    first run's files alone; a lock left by a dead process is taken over."""
    import os
    import subprocess
    import sys

    from varifocal.cli.main import main
    from varifocal.utils.io import run_lock

    from ..engine.test_trainer import tiny_config

    cfg = tiny_config(tmp_path, "run", epochs=1)
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".varifocal.lock").write_text(f"{sleeper.pid}\n")  # a live holder
        assert main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"another run (process {sleeper.pid})" in err
        assert sorted(p.name for p in out.iterdir()) == [".varifocal.lock"]
    finally:
        sleeper.kill()
        sleeper.wait()
    with run_lock(out) as lock:  # the holder is dead now: its stale lock is taken over
        assert lock.read_text().strip() == str(os.getpid())
    assert not (out / ".varifocal.lock").exists()
