"""Finding the onnx2tf toolchain without assuming a source checkout (env variable, beside the venv, PATH)."""

import os
import sys
from pathlib import Path

import pytest

from edge_ssd.convert import onnx2tf_runner as runner
from edge_ssd.errors import DependencyError


def _fake_exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_patched_wrapper_ships_inside_the_package():
    assert runner.PATCHED.is_file() and runner.PATCHED.parent == Path(runner.__file__).resolve().parent


def test_environment_variable_wins(tmp_path, monkeypatch):
    exe = _fake_exe(tmp_path / "elsewhere" / "onnx2tf")
    monkeypatch.setenv("EDGE_SSD_ONNX2TF", str(exe))
    assert runner.find_onnx2tf() == exe


def test_venv_beside_the_running_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_SSD_ONNX2TF", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    prefix = tmp_path / "site" / ".venv"
    exe = _fake_exe(tmp_path / "site" / "convert" / ".venv" / "bin" / "onnx2tf")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert runner.find_onnx2tf() == exe


def test_onnx2tf_on_path(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_SSD_ONNX2TF", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "no-venv"))
    exe = _fake_exe(tmp_path / "bin" / "onnx2tf")
    monkeypatch.setenv("PATH", str(exe.parent) + os.pathsep + os.environ.get("PATH", ""))
    assert runner.find_onnx2tf() == exe


def test_missing_toolchain_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_SSD_ONNX2TF_TF", raising=False)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "no-venv"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DependencyError) as e:
        runner.find_onnx2tf("tf_converter")
    msg = str(e.value)
    assert "\n" not in msg and "setup.sh --with-tf" in msg and "EDGE_SSD_ONNX2TF_TF" in msg
