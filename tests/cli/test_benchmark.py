"""``varifocal benchmark`` (issue 14): the JSON of a tiny run, FLOP counts against the analytic
values, the round-robin timing, peak memory, and the one-line errors / rows of what is missing."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import varifocal
from varifocal.cli import bench_runtimes
from varifocal.cli.bench_runtimes import make_input, memory_child, missing_runtime
from varifocal.cli.main import main
from varifocal.models.layers.dcn import ModulatedDeformConv2d
from varifocal.models.layers.deform_conv import DeformConv2d
from varifocal.models.layers.star_deform_conv import StarDeformConv2d
from varifocal.utils.timing import Case, count_flops, model_flops, peak_rss_mib, run_rounds

TINY = ["vfnet_lite0_fpn", "--size", "128x96", "--threads", "1", "--matmul-size", "64", "--skip-memory"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ FLOPs
def test_flops_of_one_conv_equal_the_analytic_value():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    x = torch.randn(2, 3, 10, 12)
    expected = 2 * (3 * 3 * 3) * 8 * 10 * 12 * 2  # 2·C_in·k²·C_out·H·W·N = 103 680
    assert count_flops(lambda: conv(x)) == expected == 103_680
    assert model_flops(conv, lambda: conv(x)) == expected  # no deformable conv: nothing added


def test_star_conv_counts_as_its_dense_equivalent():
    star = StarDeformConv2d(4, 4)
    x, dist = torch.randn(1, 4, 5, 6), torch.rand(1, 4, 5, 6) * 3 + 1
    assert model_flops(star, lambda: star(x, dist)) == 2 * 4 * 4 * 9 * 5 * 6  # 8 640
    assert "forward" not in vars(star)  # the stub is gone afterwards
    assert torch.equal(star(x, dist), varifocal.models.layers.star_deform_conv.star_deform_conv2d(x, dist, star.weight))


def test_dcn_counts_its_offset_conv_and_its_dense_equivalent():
    dcn = ModulatedDeformConv2d(4, 6, 3, padding=1).eval()
    x = torch.randn(1, 4, 5, 6)
    offset_conv = 2 * 4 * 9 * 27 * 5 * 6  # conv_offset: 3·3·3 = 27 output channels, counted by FlopCounterMode
    dense = 2 * 4 * 9 * 6 * 5 * 6  # deform_conv2d (invisible to the counter) as a 3×3 conv 4 → 6
    torchvision_dcn = ModulatedDeformConv2d(4, 6, 3, padding=1, impl="torchvision").eval()
    assert count_flops(lambda: torchvision_dcn(x)) == offset_conv  # the op is invisible to the counter
    assert model_flops(dcn, lambda: dcn(x)) == offset_conv + dense == 71_280
    assert "forward" not in vars(dcn)
    # stride 2 (the fast kernel's sparse sampling would be counted as a dense matmul)
    dcn2 = ModulatedDeformConv2d(4, 6, 3, stride=2, padding=1).eval()
    assert model_flops(dcn2, lambda: dcn2(x)) == (2 * 4 * 9 * 27 + 2 * 4 * 9 * 6) * 3 * 3


def test_generic_deform_conv_counts_as_its_dense_equivalent():
    conv = DeformConv2d(4, 6, 3, padding=1)
    x, offset = torch.randn(1, 4, 5, 6), torch.randn(1, 18, 5, 6)
    assert model_flops(conv, lambda: conv(x, offset)) == 2 * 4 * 9 * 6 * 5 * 6
    assert "forward" not in vars(conv)


# ------------------------------------------------------------------------------ timing, memory
def test_run_rounds_rotates_the_start_and_times_only_after_warmup():
    calls: list[str] = []
    before: list[str] = []
    cases = [Case(n, (lambda n=n: calls.append(n)), before=(lambda n=n: before.append(n))) for n in "abc"]
    run_rounds(cases, warmup=1, repeat=2)
    assert calls == list("abcbcacab") == before
    assert [len(c.times) for c in cases] == [2, 2, 2] and all(t >= 0 for c in cases for t in c.times)
    with pytest.raises(ValueError, match="repeat >= 1"):
        run_rounds(cases, warmup=0, repeat=0)


def _vm_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_peak_rss_grows_by_a_touched_allocation():
    rss = _vm_rss_mib()
    block = torch.ones(64 * 1024 * 1024 // 4 * 3)  # 192 MiB, every page written
    hwm, ru = peak_rss_mib()
    assert hwm is not None and hwm >= rss + 180 and ru >= hwm - 1
    del block


def test_memory_child_reports_the_growth_of_one_setting():
    spec = {
        "model": "vfnet_lite0_fpn",
        "num_classes": 3,
        "input_shape": [1, 3, 64, 64],
        "img_shape": [64, 60],
        "runtime": "eager",
        "precision": "fp32",
        "threads": 1,
    }
    out = memory_child(spec)
    assert out["source"] == "VmHWM" and out["peak_mib"] >= 0
    assert math.isclose(out["peak_rss_mib"] - out["baseline_mib"], out["peak_mib"])


def test_make_input_pads_with_zeros():
    batch, metas = make_input((2, 3, 64, 96), (50, 90))
    assert batch.shape == (2, 3, 64, 96) and batch[:, :, 50:].abs().sum() == 0 and batch[:, :, :, 90:].abs().sum() == 0
    assert batch[:, :, :50, :90].std() > 0.9
    assert metas[0]["img_shape"] == (50, 90) and metas[1]["batch_input_shape"] == (64, 96)


# ------------------------------------------------------------------------------ the command
def test_tiny_run_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["benchmark", *TINY, "--repeat", "2", "--warmup", "0", "--runtimes", "eager,channels_last"]
    threads = torch.get_num_threads()
    assert main([*argv, "--json", str(out), "--threads", "1" if threads > 1 else "2"]) == 0
    assert torch.get_num_threads() == threads  # the caller's thread count is restored
    result = json.loads(out.read_text())
    for key in ("torch", "cpu_model", "logical_cpus", "amx", "settings", "matmul_limit", "models"):
        assert key in result
    (mm,) = result["matmul_limit"]
    assert (mm["precision"], mm["threads"], mm["n"]) == ("fp32", 1, 64)
    assert math.isclose(mm["gflop_s"], 2 * 64**3 / (mm["median_ms"] / 1e3) / 1e9)
    (m,) = result["models"]
    assert m["input_shape"] == [1, 3, 96, 128] and m["image_size"] == [128, 96]
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=80).eval()
    batch, metas = make_input((1, 3, 96, 128), (96, 128))
    with torch.no_grad():
        assert m["gflops"] * 1e9 == model_flops(model, lambda: model.predict(batch, metas))
    rows = m["results"]
    assert [(r["runtime"], r["precision"], r["threads"], r["status"]) for r in rows] == [
        ("eager", "fp32", 1, "ok"),
        ("channels_last", "fp32", 1, "ok"),
    ]
    for r in rows:
        assert r["n"] == 2 and len(r["times_ms"]) == 2 and r["ms_per_image"] > 0
        assert math.isclose(r["median_ms"], sorted(r["times_ms"])[0] / 2 + sorted(r["times_ms"])[1] / 2)
        assert math.isclose(r["gflop_s"], m["gflops"] / (r["median_ms"] / 1e3))
        assert math.isclose(r["fraction_of_matmul_limit"], r["gflop_s"] / mm["gflop_s"])
        assert r["peak_mib"] is None and r["detections"] is not None
    best = min(rows, key=lambda r: r["ms_per_image"])
    assert m["fastest"] == {k: best[k] for k in ("runtime", "precision", "threads", "ms_per_image")}
    printed = capsys.readouterr().out
    assert "fastest for vfnet_lite0_fpn" in printed and f"| {best['runtime']} | fp32 | 1 |" in printed


def test_missing_runtime_names_the_install_command(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    message = missing_runtime("openvino")
    assert message == "not available: needs openvino; pip install 'varifocal[openvino]'"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert missing_runtime("onnxruntime") == "not available: needs onnx; pip install 'varifocal[export]'"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    out = tmp_path / "b.json"
    argv = ["benchmark", *TINY, "--repeat", "1", "--warmup", "0", "--runtimes", "openvino", "--json", str(out)]
    assert main(argv) == 0
    (row,) = json.loads(out.read_text())["models"][0]["results"]
    assert (row["runtime"], row["status"], row["message"]) == ("openvino", "not available", message)
    assert json.loads(out.read_text())["models"][0]["fastest"] is None
    assert "openvino | fp32 | - | not available: needs openvino" in capsys.readouterr().out


def test_missing_exporter_is_named(monkeypatch):
    pytest.importorskip("onnxruntime")
    import varifocal.export

    monkeypatch.delattr(varifocal.export, "export_onnx", raising=False)
    assert missing_runtime("onnxruntime") == "not available: varifocal.export missing (export_onnx / OnnxDetector)"


def test_failing_runtime_is_one_row(monkeypatch, tmp_path):
    def broken(self, precision, threads):
        raise RuntimeError("inductor failed\nwith a long log")

    monkeypatch.setattr(bench_runtimes.RuntimeSet, "_compile", broken)
    out = tmp_path / "b.json"
    argv = ["benchmark", *TINY, "--repeat", "1", "--warmup", "0", "--runtimes", "compile,eager", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["models"][0]["results"]
    assert [(r["runtime"], r["status"]) for r in rows] == [("compile", "failed"), ("eager", "ok")]
    assert rows[0]["message"] == "RuntimeError: inductor failed with a long log"


def test_a_failed_export_fails_each_onnx_setting_and_runs_once(monkeypatch, tmp_path):
    if missing_runtime("onnxruntime"):
        pytest.skip(missing_runtime("onnxruntime"))
    import varifocal.export

    calls = []

    def export_onnx(*args, **kwargs):
        calls.append(kwargs["input_size"])
        print("a long graph dump")
        raise ValueError("unsupported layer")

    monkeypatch.setattr(varifocal.export, "export_onnx", export_onnx)
    out = tmp_path / "b.json"
    argv = ["benchmark", *TINY, "--threads", "1,2", "--repeat", "1", "--warmup", "0", "--runtimes", "onnxruntime"]
    assert main([*argv, "--precision", "fp32,bf16", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["models"][0]["results"]
    assert calls == [(128, 96)]  # the padded batch's (w, h), exported once
    failed = "ONNX export failed: ValueError: unsupported layer"
    assert [(r["precision"], r["threads"], r["status"], r["message"]) for r in rows] == [
        ("fp32", 1, "failed", failed),
        ("fp32", 2, "failed", failed),
        ("bf16", None, "not supported", "not supported: onnxruntime's CPU provider has no bf16 kernels"),
    ]


def test_onnxruntime_bf16_is_not_supported_without_exporting(tmp_path):
    rs = bench_runtimes.RuntimeSet(None, *make_input((1, 3, 32, 32), (32, 32)), onnx_path=lambda: 1 / 0)
    if missing_runtime("onnxruntime"):
        pytest.skip(missing_runtime("onnxruntime"))
    with pytest.raises(bench_runtimes.RuntimeUnsupported, match="no bf16"):
        rs.prepare("onnxruntime", "bf16", 1)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--runtimes", "eager,tensorrt"], ["'tensorrt'", "choose from eager,channels_last,compile"]),
        (["--runtimes", ","], ["(empty list)"]),
        (["--threads", "0,2"], ["--threads", ">= 1"]),
        (["--precision", "fp16"], ["'fp16'", "needs CUDA"]),
        (["--size", "128"], ["WxH"]),
    ],
)
def test_bad_options_are_one_line(argv, words, capsys):
    assert main(["benchmark", "vfnet_lite0_fpn", *argv]) == 2
    err = one_line_error(capsys)
    assert err.startswith("varifocal benchmark: error:") and all(w in err for w in words), err


def test_bad_model_is_one_line(capsys, tmp_path):
    assert main(["benchmark", "vfnet_lite0_fnp", "--skip-memory", "--matmul-size", "8", "--repeat", "1"]) == 2
    err = one_line_error(capsys)
    assert "vfnet_lite0_fnp" in err and "did you mean vfnet_lite0_fpn" in err
    assert main(["benchmark", str(tmp_path / "gone.pth"), "--skip-memory", "--matmul-size", "8"]) == 2
    assert "gone.pth: no such checkpoint file" in one_line_error(capsys)


def test_onnxruntime_runs_the_exported_graph_on_the_same_input(tmp_path):
    if missing_runtime("onnxruntime"):
        pytest.skip(missing_runtime("onnxruntime"))
    model = varifocal.build_model("vfnet_lite0_fpn", num_classes=3, scale=[64, 64])
    kwargs = {"num_classes": 3, "scale": [64, 64], "test_cfg": {"score_thr": 0.0, "max_per_img": 7}}
    ckpt = tmp_path / "m.pth"
    varifocal.save_checkpoint(ckpt, model, model_name="vfnet_lite0_fpn", model_kwargs=kwargs)
    out = tmp_path / "b.json"
    argv = ["benchmark", str(ckpt), "--threads", "1", "--matmul-size", "16", "--skip-memory", "--repeat", "1"]
    assert main([*argv, "--runtimes", "eager,onnxruntime", "--onnx-dir", str(tmp_path), "--json", str(out)]) == 0
    m = json.loads(out.read_text())["models"][0]
    assert m["input_shape"] == [1, 3, 64, 64] and m["onnx_export_s"] > 0
    assert (tmp_path / "0_m_64x64.onnx").is_file()  # --onnx-dir keeps it
    rows = {r["runtime"]: r for r in m["results"]}
    assert rows["onnxruntime"]["status"] == "ok" and rows["onnxruntime"]["ms_per_image"] > 0
    # score_thr 0: every point is a candidate; NMS of the random boxes leaves the same few in both
    assert 0 < rows["eager"]["detections"] == rows["onnxruntime"]["detections"] <= 7
