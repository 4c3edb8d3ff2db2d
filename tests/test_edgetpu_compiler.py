"""The Edge TPU compiler path: its absence, and recorded compiler logs (the format of coral.ai/docs/edgetpu/compiler)
replayed by a stand-in `edgetpu_compiler` on PATH, through the code that runs it, parses its log and decides."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge_ssd.convert.edgetpu import body_ops_on_cpu, compile_for_edgetpu, parse_compiler_log
from edge_ssd.convert.postprocess_model import TAIL_OPS

DATA = Path(__file__).resolve().parent / "data"
# the ops --postprocess-model appends to the face model's body (the input QUANTIZE excluded: it must map)
FACE_TAIL = ["DEQUANTIZE"] * 8 + ["CONCATENATION"] * 2 + ["SOFTMAX", "TRANSPOSE", "TOPK_V2", "SLICE", "RESHAPE",
                                                          "GREATER_EQUAL", "CAST", "MUL", "GATHER",
                                                          "TFLite_Detection_PostProcess"]


def _log(name: str) -> str:
    return (DATA / f"edgetpu_compiler_{name}.log").read_text()


def test_parse_postprocess_model_log():
    lg = parse_compiler_log(_log("postprocess"))
    assert lg.version == "16.0.384591198" and lg.compiled and lg.subgraphs == 1
    assert (lg.total_ops, lg.ops_on_tpu, lg.ops_on_cpu) == (77, 57, 20)
    assert lg.on_chip_bytes == round(352.25 * 1024) and lg.off_chip_bytes == 0
    assert lg.on_chip_remaining_bytes == round(7.37 * 2**20)
    assert sum(r.count for r in lg.operators) == 77
    assert sum(lg.cpu_ops().values()) == 20 and lg.cpu_ops()["RESHAPE"] == 1
    assert set(FACE_TAIL) <= set(TAIL_OPS)
    assert body_ops_on_cpu(lg, FACE_TAIL) == {}  # exactly the appended tail stays on the CPU


def test_parse_body_left_on_cpu():
    lg = parse_compiler_log(_log("body_on_cpu"))
    extra = body_ops_on_cpu(lg, FACE_TAIL)
    assert extra == {"CONV_2D": 11, "DEPTHWISE_CONV_2D": 9, "PAD": 1, "RESHAPE": 5}
    assert lg.ops_on_cpu == 46 and sum(extra.values()) + len(FACE_TAIL) == 46


def test_parse_fully_mapped_and_failed():
    ok = parse_compiler_log(_log("model"))
    assert ok.compiled and (ok.ops_on_tpu, ok.ops_on_cpu) == (56, 0) and body_ops_on_cpu(ok, []) == {}
    bad = parse_compiler_log(_log("not_quantized"))
    assert not bad.compiled and "Model not quantized" in bad.error


def test_compiler_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    r = compile_for_edgetpu(tmp_path / "model.tflite", tmp_path)
    assert r["ok"] is None and r["compiler"] is None
    assert "edgetpu-compiler" in r["note"] and f"edgetpu_compiler -s -o {tmp_path}" in r["note"]


def _fake_compiler(bindir: Path, log: str, rc: int = 0, write_output: bool = True) -> None:
    """An `edgetpu_compiler` that answers like the real one: prints a recorded log, writes <stem>_edgetpu.tflite
    into the -o directory."""
    bindir.mkdir(exist_ok=True)
    exe = bindir / "edgetpu_compiler"
    out = 'cp "$model" "$out/$(basename "${model%.tflite}")_edgetpu.tflite"' if write_output else ":"
    exe.write_text(f"""#!/bin/sh
out=.
while [ $# -gt 0 ]; do case "$1" in -o) out=$2; shift 2 ;; -*) shift ;; *) model=$1; shift ;; esac; done
cat "{DATA / f'edgetpu_compiler_{log}.log'}"
{out}
exit {rc}
""")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def model(tmp_path) -> Path:
    p = tmp_path / "model_postprocess.tflite"
    p.write_bytes(b"TFL3 stand-in")
    return p


def test_compile_maps_the_body(tmp_path, model, monkeypatch):
    _fake_compiler(tmp_path / "bin", "postprocess")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    r = compile_for_edgetpu(model, tmp_path, tail_ops=FACE_TAIL)
    assert r["ok"] is True and r["output"] == "model_postprocess_edgetpu.tflite" and r["body_ops_on_cpu"] == {}
    assert r["log"]["ops_on_tpu"] == 57 and (tmp_path / "model_postprocess_edgetpu_compiler.log").is_file()


def test_compile_fails_when_body_ops_stay_on_cpu(tmp_path, model, monkeypatch):
    _fake_compiler(tmp_path / "bin", "body_on_cpu")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    r = compile_for_edgetpu(model, tmp_path, tail_ops=FACE_TAIL)
    assert r["ok"] is False and "CONV_2D x11" in r["failure"] and "--allow-cpu-ops" in r["failure"]
    allowed = compile_for_edgetpu(model, tmp_path, tail_ops=FACE_TAIL, allow_cpu_ops=True)
    assert allowed["ok"] is True and allowed["body_ops_on_cpu"]["PAD"] == 1


def test_compile_error_is_one_line(tmp_path, model, monkeypatch):
    _fake_compiler(tmp_path / "bin", "not_quantized", rc=1, write_output=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    r = compile_for_edgetpu(model, tmp_path)
    assert r["ok"] is False and "\n" not in r["failure"] and "Model not quantized" in r["failure"]
