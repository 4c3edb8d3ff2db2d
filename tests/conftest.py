"""Session-scoped fixtures shared by the test modules, each built once per test session (once for all
pytest-xdist workers: the first worker builds it under a file lock, the others wait and reuse it).

- ``face_bundle``: a float32 bundle of the ultralight face model (onnx2tf run directly);
- ``face_int8_bundle``: an int8 bundle of the face model made by ``edge-ssd convert``;
- ``test_model``: the shipped trained test model, exported into the cache (``edge_ssd.train.testmodel``);
- ``test_model_int8_bundle``: its int8 bundle, calibrated on its train split, validated on its test split;
- ``photos``: the shared face photos, decoded (BGR).

The bundles are shared: a test that needs to change one copies it first.
The shared paths live in ``_paths.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import pytest
from _paths import FACE_ONNX, FACES, ONNX2TF


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` once per session; under xdist once for all workers (their common base temp dir)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / f"shared-{name}"
    done = folder / ".done"
    with _locked(base / f"shared-{name}.lock"):
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            result = build(folder)
            done.write_text(str(result))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def face_bundle(tmp_path_factory) -> Path:
    from _runtime_util import make_face_bundle

    if not ONNX2TF.exists() or not FACE_ONNX.exists():
        pytest.skip("convert/.venv (onnx2tf) or the shared face model is missing: run scripts/setup.sh")
    return _once(tmp_path_factory, "face", make_face_bundle)


@pytest.fixture(scope="session")
def face_int8_bundle(tmp_path_factory) -> Path:
    from _runtime_util import make_face_int8_bundle

    if not ONNX2TF.exists() or not FACE_ONNX.exists():
        pytest.skip("convert/.venv (onnx2tf) or the shared face model is missing: run scripts/setup.sh")
    return _once(tmp_path_factory, "face-int8", make_face_int8_bundle)


@pytest.fixture(scope="session")
def test_model():
    from edge_ssd.train.testmodel import get_test_model

    return get_test_model(progress=False)  # the cache has its own lock


@pytest.fixture(scope="session")
def test_model_int8_bundle(tmp_path_factory, test_model) -> Path:
    """The test model converted to int8, labels from its metadata (report.json: the validation against fp32)."""

    def build(folder: Path) -> Path:
        from edge_ssd.convert.api import convert_model

        r = convert_model(test_model.onnx_path, folder / "tm-int8.bundle", calib=[test_model.dataset_dir],
                          calib_split="train", val=[test_model.dataset_dir], val_split="test", progress=False)
        assert r.ok, r.report.get("validation")
        return Path(r.bundle_dir)

    if not ONNX2TF.exists():
        pytest.skip("convert/.venv (onnx2tf) is missing: run scripts/setup.sh")
    return _once(tmp_path_factory, "testmodel-int8", build)


@pytest.fixture(scope="session")
def photos():
    import cv2

    return [cv2.imread(str(p)) for p in sorted(FACES.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]


# `make test-fast` (-m "not slow and not integration") is the edit-run loop: it leaves out the tests that need a
# converted bundle (the fixtures below) and these, the heaviest of the rest (each tens of seconds of CPU: a real
# onnx2tf run, training, a pip install, daemons as subprocesses). `make test` runs them all.
HEAVY_FIXTURES = {"face_bundle", "face_int8_bundle", "test_model_int8_bundle"}
HEAVY = {
    "test_convert.py": "onnx2tf conversions",
    "test_rollout.py": "three daemons roll bundles out over MQTT",
    "test_daemon_e2e.py": "the daemon as a subprocess, broker killed and restarted",
    "test_train.py::test_cli_trains_keeps_best_and_resumes": "training through the CLI, twice",
    "test_train.py::test_overfits_a_handful_of_images": "80 optimiser steps",
    "test_testmodel.py::test_training_end_to_end_on_small_settings": "training",
    "test_testmodel.py::test_the_wheel_ships_the_checkpoint": "builds a wheel",
    "test_install.py::test_real_venv_and_offline_pip_install": "a venv and a pip install",
    "test_export.py::test_cli_": "each CLI call imports torch and exports",
    "test_fetch.py::test_cli_fetch_model": "CLI export of fetched checkpoints",
    "test_fleet_archive.py::test_cli_errors_are_one_line": "many CLI subprocesses",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        node = item.nodeid.split("/")[-1]
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())) or any(node.startswith(k) for k in HEAVY):
            item.add_marker(pytest.mark.slow)
