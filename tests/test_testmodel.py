"""The shipped trained test model: its checkpoint loads strictly and reproduces the recorded mAP on the held-out
synthetic split; the export cache; the training path end to end on small settings; the wheel carries it."""

import dataclasses
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_ssd.data.datasets import OpenImagesDataset, read_labels
from edge_ssd.errors import UserError
from edge_ssd.eval import onnx_predictor
from edge_ssd.train import testmodel
from edge_ssd.train.testmodel import ASSETS, Record, cache_root, get_test_model, model_key

ROOT = Path(__file__).resolve().parents[1]
SMALL = {**testmodel.SETTINGS, "train_images": 16, "test_images": 8, "num_epochs": 1, "batch_size": 8,
         "num_workers": 0, "threads": 1}


def test_shipped_record_and_strict_load():
    import torch

    from edge_ssd.nets import create_net, load_weights
    from edge_ssd.nets.build import check_state_dict

    rec = Record.load()
    assert rec.settings["data_seed"] == testmodel.SETTINGS["data_seed"] and rec.torch and rec.code_hash
    assert rec.labels[0] == "BACKGROUND" and read_labels(ASSETS / "labels.txt") == rec.labels
    assert testmodel._sha256(ASSETS / "model.pth") == rec.checkpoint_sha256
    assert rec.metrics["map_voc07"] >= 0.80 and rec.metrics["map_auc"] >= 0.78, rec.metrics
    assert rec.metrics["num_images"] == rec.settings["test_images"]
    net = create_net(rec.settings["arch"], len(rec.labels), width_mult=rec.settings["width_mult"])
    load_weights(net, ASSETS / "model.pth")  # strict: every key, every shape
    sd = torch.load(ASSETS / "model.pth", map_location="cpu", weights_only=True)
    sd.pop(next(iter(sd)))
    with pytest.raises(UserError, match="is missing"):
        check_state_dict(net, sd)


@pytest.mark.slow
def test_shipped_checkpoint_reproduces_the_recorded_map(test_model):
    """The exported ONNX model, evaluated afresh with ONNX Runtime on the regenerated held-out split, gives the
    mAP measured when the checkpoint was trained."""
    rec = Record.load()
    got = testmodel.measure(test_model.onnx_path, test_model.dataset_dir, test_model.labels, rec.settings,
                            progress=False)
    assert got["num_images"] == rec.metrics["num_images"] and got["num_gt"] == rec.metrics["num_gt"]
    for k in ("map_voc07", "map_auc", "map_101"):
        assert got[k] == pytest.approx(rec.metrics[k], abs=2e-3), (k, got[k], rec.metrics[k])
    assert test_model.metrics["map_voc07"] == rec.metrics["map_voc07"]


def test_onnx_contract_and_labels(test_model):
    m = onnx.load(str(test_model.onnx_path))
    assert [o.name for o in m.graph.output] == ["scores", "boxes"]
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    n = len(test_model.labels)
    assert shapes["scores"] == [1, 3000, n] and shapes["boxes"] == [1, 3000, 4]
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["edge_ssd.labels"]) == test_model.labels
    assert meta["edge_ssd.test_model_key"] == test_model.key
    assert read_labels(test_model.labels_path) == test_model.labels
    assert test_model.labels[0] == "BACKGROUND" and test_model.arch == "mb1-ssd"
    assert test_model.pth_path.read_bytes() == (ASSETS / "model.pth").read_bytes()
    ds = OpenImagesDataset(test_model.dataset_dir, "test")
    assert len(OpenImagesDataset(test_model.dataset_dir, "train")) == test_model.settings["train_images"] > len(ds)
    # the scores are probabilities, the boxes normalised corners
    dets = onnx_predictor(test_model.onnx_path)(ds.load_image(0))
    assert len(dets) > 0 and np.all(dets.scores <= 1.0) and np.all(dets.boxes[:, 2] >= dets.boxes[:, 0])


def test_cache_is_reused_and_keyed_by_the_checkpoint(test_model):
    again = get_test_model()
    assert again.root == test_model.root and again.key == model_key()
    assert test_model.root.parent == cache_root()
    assert not list(Path(test_model.root.parent).glob(f".build-{test_model.key}-*"))  # no build leftovers
    rec = Record.load()
    assert model_key(dataclasses.replace(rec, checkpoint_sha256="0" * 64)) != model_key(rec)


def test_a_tampered_checkpoint_is_refused(tmp_path):
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS, assets)
    data = bytearray((assets / "model.pth").read_bytes())
    data[-100] ^= 0xFF
    (assets / "model.pth").write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match"):
        get_test_model(cache_dir=tmp_path / "cache", assets=assets, progress=False)
    (assets / "record.json").unlink()
    with pytest.raises(UserError, match="missing"):
        get_test_model(cache_dir=tmp_path / "cache", assets=assets, progress=False)


def test_training_end_to_end_on_small_settings(tmp_path):
    """rebuild() (what `edge-ssd testmodel --rebuild --write` runs) generates, trains, exports and measures, compares
    with the record and ships the new checkpoint; get_test_model() then exports from it. A 1-epoch model is not
    the shipped one, and compare() says so."""
    assets = tmp_path / "assets"
    shutil.copytree(ASSETS, assets)
    new, cmp = testmodel.rebuild(cache_dir=tmp_path / "cache", progress=False, settings=SMALL, write=True,
                                 assets=assets)
    assert new.metrics["num_images"] == 8 and new.code_hash == testmodel.training_code_hash(SMALL)
    assert cmp is not None and not cmp.ok and not cmp.same_settings and not cmp.same_weights
    assert any("map_voc07" in line for line in cmp.lines())
    assert Record.load(assets) == new  # --write replaced the record and the checkpoint
    tm = get_test_model(cache_dir=tmp_path / "cache", assets=assets, progress=False)
    assert tm.onnx_path.is_file() and tm.metrics == new.metrics and tm.settings == SMALL
    assert testmodel.measure(tm.onnx_path, tm.dataset_dir, tm.labels, SMALL, progress=False)["map_voc07"] == \
        pytest.approx(new.metrics["map_voc07"], abs=1e-6)
    assert compare_ok(new, new)


def compare_ok(a, b) -> bool:
    c = testmodel.compare(a, b)
    return c.ok and c.same_settings and c.same_code and c.same_weights


def test_cli_write_needs_rebuild():
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "testmodel", "--write"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "--rebuild" in r.stderr and "Traceback" not in r.stderr


def test_the_wheel_ships_the_checkpoint(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "edge_ssd", src / "edge_ssd", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "w"), str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = (tmp_path / "w").glob("edge_ssd-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ("model.pth", "labels.txt", "record.json"):
        assert f"edge_ssd/train/assets/testmodel/{f}" in names
