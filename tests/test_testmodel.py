"""The cached trained test model: its recorded metrics, and a fresh ONNX Runtime evaluation of the ONNX file."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_ssd.data.datasets import OpenImagesDataset, read_labels
from edge_ssd.eval import evaluate, onnx_predictor
from edge_ssd.train.testmodel import TestModel, cache_root, get_test_model, model_key

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def test_model() -> TestModel:
    return get_test_model()


def test_recorded_fp32_map_reaches_the_bar(test_model):
    assert test_model.metrics["map_voc07"] >= 0.80, test_model.metrics
    assert test_model.metrics["map_auc"] >= 0.78, test_model.metrics
    assert test_model.metrics["num_images"] >= 100


def test_onnx_contract_and_labels(test_model):
    m = onnx.load(str(test_model.onnx_path))
    assert [o.name for o in m.graph.output] == ["scores", "boxes"]
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    n = len(test_model.labels)
    assert shapes["scores"] == [1, 3000, n] and shapes["boxes"] == [1, 3000, 4]
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["edge_ssd.labels"]) == test_model.labels
    assert read_labels(test_model.labels_path) == test_model.labels
    assert test_model.labels[0] == "BACKGROUND" and test_model.arch == "mb1-ssd"
    assert test_model.pth_path.is_file()


def test_onnx_runtime_reevaluation_on_a_subset(test_model):
    ds = OpenImagesDataset(test_model.dataset_dir, "test")
    assert len(OpenImagesDataset(test_model.dataset_dir, "train")) > len(ds)
    report = evaluate(onnx_predictor(test_model.onnx_path, threads=2), ds, limit=100, progress=False)
    assert report["map_voc07"] >= 0.78, report["per_class"]
    # the scores are probabilities, the boxes normalised corners
    pred = onnx_predictor(test_model.onnx_path)
    dets = pred(ds.load_image(0))
    assert len(dets) > 0 and np.all(dets.scores <= 1.0) and np.all(dets.boxes[:, 2] >= dets.boxes[:, 0])


def test_cache_is_reused(test_model):
    again = get_test_model()
    assert again.root == test_model.root and again.key == model_key()
    assert test_model.root.parent == cache_root()
    assert not list(Path(test_model.root.parent).glob(f".build-{test_model.key}-*"))  # no build leftovers
