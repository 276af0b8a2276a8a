"""Checkpoint safety: the content hash, refused pickles, inference-only resume and unknown
builder arguments (one-line CheckpointErrors naming the file)."""

from __future__ import annotations

import hashlib
import struct
import zipfile
from pathlib import Path

import pytest
import torch

import varifocal
from varifocal.checkpoint import (
    HASH_KEY,
    CheckpointError,
    read_checkpoint,
    save_checkpoint,
    slim_checkpoint,
    state_dict_sha256,
    validate_model_kwargs,
)
from varifocal.engine.optim import build_optimizer
from varifocal.engine.state import restore

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "vfnet_lite0_bccd.pth"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = varifocal.build_model("vfnet_lite0_fpn", num_classes=3)
    m.class_names = ["a", "b", "c"]
    return m


def _save(path: Path, model, **kwargs) -> Path:
    kwargs.setdefault("model_kwargs", {"num_classes": 3})
    save_checkpoint(path, model, model_name="vfnet_lite0_fpn", **kwargs)
    return path


def _flip_bit(path: Path, member_suffix: str = "data/0", byte: int = 17, bit: int = 3) -> None:
    """Flip one bit of a tensor's stored bytes inside the zip (torch.load does not check CRCs)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + byte] ^= 1 << bit
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------------------ content hash
def test_hash_definition_is_sha256_over_key_dtype_shape_and_bytes():
    state = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(7, dtype=torch.int64)}
    ref = hashlib.sha256()
    ref.update(b"a\0torch.float32\x002\x008\0" + torch.tensor([1.0, 2.0]).numpy().tobytes())
    ref.update(b"b\0torch.int64\0\x008\0" + torch.tensor(7).numpy().tobytes())
    assert state_dict_sha256(state) == ref.hexdigest()
    # dtype, shape, key and order all count, not only the bytes.
    assert state_dict_sha256({"a": torch.tensor([1.0, 2.0]).view(1, 2), "b": state["b"]}) != ref.hexdigest()
    assert state_dict_sha256({"b": state["b"], "a": state["a"]}) != ref.hexdigest()
    assert state_dict_sha256({"a": state["a"].view(torch.int32), "b": state["b"]}) != ref.hexdigest()


def test_saved_checkpoint_stores_the_hash_and_reads_back(tmp_path, model):
    path = _save(tmp_path / "m.pth", model)
    raw = torch.load(path, weights_only=True)
    assert raw[HASH_KEY] == state_dict_sha256(model.state_dict())
    assert raw["format_version"] == 1
    ckpt = read_checkpoint(path)
    assert ckpt["format"] == "varifocal" and ckpt["model_name"] == "vfnet_lite0_fpn"


def test_bit_flip_is_refused_with_a_hash_error(tmp_path, model):
    path = _save(tmp_path / "m.pth", model)
    _flip_bit(path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: content hash mismatch: the weights' SHA-256 is ")
    assert "corrupted or was modified" in msg and "\n" not in msg
    fresh = varifocal.build_model("vfnet_lite0_fpn", num_classes=3)
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        varifocal.load_checkpoint(fresh, path)


def test_flip_in_a_half_precision_slim_checkpoint_is_refused(tmp_path, model):
    full = _save(tmp_path / "last.pth", model, extra={"optimizer": {"state": {}, "param_groups": []}})
    slim = tmp_path / "slim.pth"
    slim_checkpoint(full, slim)
    raw = torch.load(slim, weights_only=True)
    assert raw[HASH_KEY] == state_dict_sha256(raw["state_dict"])  # over the float16 tensors stored
    read_checkpoint(slim)
    _flip_bit(slim, byte=1, bit=6)
    with pytest.raises(CheckpointError, match=rf"^{slim}: content hash mismatch"):
        read_checkpoint(slim)


def test_malformed_hash_entry_is_refused(tmp_path, model):
    path = _save(tmp_path / "m.pth", model)
    raw = torch.load(path, weights_only=True)
    raw[HASH_KEY] = "not-a-digest"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: malformed state_dict_sha256 entry 'not-a-digest'"):
        read_checkpoint(path)


def test_hashless_checkpoints_still_load(tmp_path, model):
    # A varifocal file as written before the hash existed (what the running jobs still write).
    obj = torch.load(_save(tmp_path / "m.pth", model), weights_only=True)
    del obj[HASH_KEY]
    old = tmp_path / "old.pth"
    torch.save(obj, old)
    fresh = varifocal.build_model("vfnet_lite0_fpn", num_classes=3)
    info = varifocal.load_checkpoint(fresh, old)
    assert info["format"] == "varifocal" and info["missing"] == [] and fresh.class_names == ["a", "b", "c"]
    assert torch.equal(fresh.bbox_head.vfnet_cls.weight, model.bbox_head.vfnet_cls.weight)
    # An MMDetection-style file.
    mm = tmp_path / "mmdet.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"CLASSES": ("x", "y", "z")}}, mm)
    assert varifocal.load_checkpoint(fresh, mm)["class_names"] == ["x", "y", "z"]


def test_bundled_model_has_no_hash_and_still_loads():
    if not BUNDLED.is_file():
        pytest.skip(f"{BUNDLED} is absent")
    ckpt = read_checkpoint(BUNDLED)
    assert HASH_KEY not in ckpt["raw"] and ckpt["model_name"] == "vfnet_lite0_fpn"
    model = varifocal.build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    assert varifocal.load_checkpoint(model, BUNDLED)["missing"] == []


# ------------------------------------------------------------------------------ unsafe pickles
def test_unsafe_pickle_is_refused_without_suggesting_to_disable_the_safety(tmp_path):
    bad = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Path("/etc")}, bad)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(bad)
    msg = str(err.value)
    assert msg == (
        f"{bad}: not a loadable weights-only torch checkpoint: it contains Python objects beyond tensors "
        f"and plain containers ({type(Path('/etc')).__module__}.{type(Path('/etc')).__name__}), and unpickling "
        "those can run arbitrary code, so it was refused; varifocal reads only checkpoints of tensors, "
        "numbers, strings, lists and dicts"
    )
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    assert "trust" not in msg and "add_safe_globals" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # torch's hint is not chained
    with pytest.raises(CheckpointError) as err:
        varifocal.load_checkpoint(varifocal.build_model("vfnet_lite0_fpn", num_classes=3), bad)
    assert str(err.value) == msg


# ------------------------------------------------------------------------------ resume
def _optimizer(model):
    return build_optimizer(model, 0.01, 0.9, 1e-4)


@pytest.mark.parametrize("kind", ["best", "slim", "mmdet"])
def test_resume_from_an_inference_only_checkpoint_is_a_one_line_error(tmp_path, model, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "best":
        _save(path, model, meta={"epoch": 3, "AP": 0.5})
    elif kind == "slim":
        full = _save(tmp_path / "last.pth", model, extra={"optimizer": {"state": {}, "param_groups": []}})
        slim_checkpoint(full, path)
    else:
        torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    fresh = varifocal.build_model("vfnet_lite0_fpn", num_classes=3)
    before = fresh.bbox_head.vfnet_cls.weight.clone()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    fmt = "mmdet" if kind == "mmdet" else "varifocal"
    with pytest.raises(CheckpointError) as err:
        restore(path, fresh, _optimizer(fresh), scaler, use_amp=False)
    assert str(err.value) == (
        f"{path}: an inference-only {fmt} checkpoint with no training state to resume from "
        "(missing optimizer, epoch, iteration, best_ap, rng); resume from a last.pth written by training, "
        "or start a new run with model.load_from to initialise the weights from it"
    )
    assert torch.equal(fresh.bbox_head.vfnet_cls.weight, before)  # nothing was loaded


def test_resume_from_a_training_checkpoint_still_works(tmp_path, model):
    from varifocal.config import Config

    opt = _optimizer(model)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    cfg = Config()
    cfg.model.name = "vfnet_lite0_fpn"
    path = tmp_path / "last.pth"
    from varifocal.engine.state import save_last

    save_last(path, model, opt, scaler, cfg, {"num_classes": 3}, {"class_names": ["a", "b", "c"]}, 2, 40, 0.25)
    assert HASH_KEY in torch.load(path, weights_only=True)
    fresh = varifocal.build_model("vfnet_lite0_fpn", num_classes=3)
    assert restore(path, fresh, _optimizer(fresh), scaler, use_amp=False) == (2, 40, 0.25)
    assert torch.equal(fresh.bbox_head.vfnet_cls.weight, model.bbox_head.vfnet_cls.weight)


# ------------------------------------------------------------------------------ builder arguments
def test_unknown_builder_argument_is_named(tmp_path, model):
    path = _save(tmp_path / "m.pth", model, model_kwargs={"num_classes": 3, "fancy_neck": True})
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: stored builder argument 'fancy_neck' of vfnet_lite0_fpn is not known to varifocal ")
    assert "(unknown: 'fancy_neck')" in msg and "\n" not in msg
    # The weights still go into a model built elsewhere.
    fresh = varifocal.build_model("vfnet_lite0_fpn", num_classes=3)
    assert varifocal.load_checkpoint(fresh, path)["missing"] == []


def test_unknown_test_cfg_field_is_named(tmp_path, model):
    path = _save(tmp_path / "m.pth", model, model_kwargs={"num_classes": 3, "test_cfg": {"soft_nms": True}})
    with pytest.raises(
        CheckpointError, match=rf"^{path}: stored builder argument 'test_cfg.soft_nms' of vfnet_lite0_fpn"
    ):
        read_checkpoint(path)


def test_known_builder_arguments_pass():
    # Builder parameters, head parameters forwarded through **head_kwargs, legacy test keys.
    validate_model_kwargs("vfnet_lite0_fpn", {"num_classes": 3, "scale": [640, 480], "use_vfl": False})
    validate_model_kwargs("fcos_r50_caffe_fpn_gn_head", {"num_classes": 3, "center_sampling": True, "style": "caffe"})
    validate_model_kwargs("retinanet_r50_fpn", {"neck_channels": 256, "test_cfg": {"nms_iou": 0.5}})
    validate_model_kwargs("not_a_model_here", {"anything": 1})  # the caller reports the name
    with pytest.raises(CheckpointError, match=r"^x\.pth: stored builder argument 'center_sampling' of atss_r50_fpn"):
        validate_model_kwargs("atss_r50_fpn", {"center_sampling": True}, "x.pth")
    # The bundled file's flat legacy test settings are upgraded to test_cfg first.
    if BUNDLED.is_file():
        read_checkpoint(BUNDLED)
