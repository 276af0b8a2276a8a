"""The precision switch: what ``auto`` picks on which CPU, and what runs in which dtype (issue 12)."""

from __future__ import annotations

import pytest
import torch

from varifocal.utils import precision as P


@pytest.fixture(autouse=True)
def _no_pinned_precision(monkeypatch):
    monkeypatch.delenv("VARIFOCAL_PRECISION", raising=False)


@pytest.mark.parametrize("amx, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_only_with_matrix_units(monkeypatch, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert P.cpu_has_bf16_matrix_units() is amx
    assert P.default_precision("cpu") == expected
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.resolve_precision(None, "cpu") == expected
    assert P.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice always wins
    assert P.resolve_precision("bf16", "cpu") == "bf16"


def test_a_failing_probe_means_fp32(monkeypatch):
    def broken():
        raise RuntimeError("cpuinfo unavailable")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken)
    assert P.default_precision("cpu") == "fp32"


def test_the_environment_pins_the_default(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    monkeypatch.setenv("VARIFOCAL_PRECISION", "fp32")
    assert P.resolve_precision("auto", "cpu") == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16"  # an explicit choice still wins
    monkeypatch.setenv("VARIFOCAL_PRECISION", "int8")
    with pytest.raises(ValueError, match="VARIFOCAL_PRECISION must be"):
        P.default_precision("cpu")


def test_cuda_defaults_to_fp32_and_bad_names_are_refused():
    assert P.default_precision("cuda") == "fp32"
    with pytest.raises(ValueError, match="one of auto, fp32, bf16, fp16"):
        P.resolve_precision("int8", "cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        P.resolve_precision("fp16", "cpu")


def test_autocast_regions():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with P.autocast("fp32", "cpu"):
        assert conv(x).dtype == torch.float32
    with P.autocast("bf16", "cpu"):
        out = conv(x).detach()
        assert out.dtype == torch.bfloat16
    ref = conv(x).detach()
    assert float((out.float() - ref).abs().max()) < 0.05 * float(ref.detach().abs().max())
    with pytest.raises(ValueError, match="resolved precision"):
        with P.autocast("auto", "cpu"):
            pass


def test_prepare_model_uses_channels_last_for_bf16_on_cpu():
    conv = torch.nn.Conv2d(3, 4, 3)
    assert P.prepare_model(conv, "fp32", "cpu").weight.is_contiguous()
    P.prepare_model(conv, "bf16", "cpu")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    inference = torch.nn.Conv2d(3, 4, 3)  # inference: channels-last in float32 too
    P.prepare_model(inference, "fp32", "cpu", inference=True)
    assert inference.weight.is_contiguous(memory_format=torch.channels_last)
