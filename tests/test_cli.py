"""The command line as a user meets it: help without heavy imports, and one-line errors for file problems."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGE_SSD = ROOT / ".venv" / "bin" / "edge-ssd"


def run(*args, env=None):
    return subprocess.run([str(EDGE_SSD), *map(str, args)], capture_output=True, text=True, timeout=300, env=env)


def test_help_lists_every_command():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("export", "fetch-model", "train", "synth", "eval", "inspect", "convert", "detect", "bench", "run",
                "config", "watch", "doctor", "demo"):
        assert f"    {cmd}" in r.stdout, cmd


def test_help_does_not_import_heavy_packages():
    code = ("import sys; from edge_ssd.cli import build_parser; build_parser(); "
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'ai_edge_litert', 'paho', 'cv2') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_os_errors_are_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # a folder that cannot be created (its parent is a file)
    r = run("synth", blocker / "data", "--train", "2", "--test", "1")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr and str(blocker) in lines[0]


def test_no_command_prints_help():
    r = run()
    assert r.returncode == 1 and "usage:" in r.stdout
