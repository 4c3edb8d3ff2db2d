"""The trained test model: a small mb1-ssd trained on the synthetic shapes, built once and cached.

``get_test_model()`` returns a :class:`TestModel` (ONNX with pytorch-ssd's ``scores``/``boxes`` contract,
the ``.pth``, the labels file, the synthetic open-images dataset with ``train/`` and ``test/`` splits, and the
fp32 metrics measured with ONNX Runtime on the held-out test split). The cache lives in
``$EDGE_SSD_CACHE`` (default ``~/.cache/edge-ssd``) ``/testmodel/<key>``, where ``key`` hashes the source of
every file that defines the model (generator, trainer, nets, export, box coding) and :data:`SETTINGS`; a build
happens in a temporary directory renamed into place, under a file lock, so concurrent pytest processes build
it once.

Run ``python -m edge_ssd.train.testmodel`` (or ``edge-ssd train --test-model``) to build it and print it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SETTINGS: dict = {
    "arch": "mb1-ssd",
    "width_mult": 0.25,
    "train_images": 1000,
    "test_images": 200,
    "data_seed": 2024,
    "min_scale": 0.15,
    "max_scale": 0.9,
    "max_objects": 3,
    "train_seed": 0,
    "batch_size": 16,
    "num_epochs": 28,
    "optimizer": "adam",  # AdamW: from scratch it gets there in a fraction of SGD's epochs
    "lr": 0.003,
    "weight_decay": 1e-4,
    "max_expand": 1.5,  # the data already spans 0.15..0.9 of the image; 4x zoom-out makes unlearnable specks
    "warmup_epochs": 1.0,
    "scheduler": "cosine",
    "channel_swap": False,
    "num_workers": 1,
    "threads": 2,
    "opset": 13,
}
INFO_FILE = "testmodel.json"
_PKG = Path(__file__).resolve().parents[1]
SOURCE_FILES = (
    "train/synth.py", "train/trainer.py", "train/loss.py", "train/matching.py", "train/augment.py",
    "train/testmodel.py", "nets/__init__.py", "nets/build.py", "nets/ssd.py", "nets/mobilenetv1.py",
    "nets/mobilenetv2.py", "nets/export.py", "model/priors.py", "model/box.py",
)  # fmt: skip


@dataclass
class TestModel:
    __test__ = False  # not a pytest test class

    onnx_path: Path
    pth_path: Path
    labels_path: Path
    dataset_dir: Path
    arch: str
    width_mult: float
    labels: list[str]
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    key: str = ""
    root: Path | None = None
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Path):
                d[k] = str(v)
        return d


def cache_root(cache_dir=None) -> Path:
    base = cache_dir or os.environ.get("EDGE_SSD_CACHE") or Path.home() / ".cache" / "edge-ssd"
    return Path(base) / "testmodel"


def model_key(settings: dict | None = None) -> str:
    """Hash of the defining source files and the settings."""
    h = hashlib.sha256()
    for rel in SOURCE_FILES:
        p = _PKG / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    h.update(json.dumps(settings or SETTINGS, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _load(root: Path) -> TestModel | None:
    info = root / INFO_FILE
    if not info.is_file():
        return None
    d = json.loads(info.read_text())
    return TestModel(
        onnx_path=root / d["onnx"], pth_path=root / d["pth"], labels_path=root / d["labels_file"],
        dataset_dir=root / d["dataset"], arch=d["arch"], width_mult=float(d["width_mult"]), labels=list(d["labels"]),
        metrics=dict(d["metrics"]), train_seconds=float(d["train_seconds"]), key=d["key"], root=root,
        settings=dict(d["settings"]),
    )  # fmt: skip


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_dead_builds(base: Path) -> None:
    """Delete ``.build-<key>-<pid>`` directories left by processes that were killed mid-build."""
    for d in base.glob(".build-*-*"):
        try:
            pid = int(d.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(d, ignore_errors=True)


def get_test_model(cache_dir=None, progress: bool = True, settings: dict | None = None) -> TestModel:
    """The cached test model, built first if missing (several minutes on 2 cores)."""
    settings = dict(SETTINGS if settings is None else settings)
    key = model_key(settings)
    base = cache_root(cache_dir)
    final = base / key
    tm = _load(final)
    if tm is not None:
        return tm
    with _file_lock(base / f"{key}.lock"):
        tm = _load(final)  # another process may have built it while we waited
        if tm is not None:
            return tm
        _remove_dead_builds(base)
        tmp = base / f".build-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp, settings, key, progress)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tm = _load(final)
    assert tm is not None
    return tm


def build(out: Path, settings: dict, key: str = "", progress: bool = True) -> dict:
    """Generate the data, train, export and evaluate into ``out``; return the info written to testmodel.json."""
    import torch

    from ..data.datasets import OpenImagesDataset
    from ..eval import evaluate, onnx_predictor
    from ..nets.export import export_onnx
    from .synth import SynthConfig, make_dataset
    from .trainer import TrainConfig, train

    s = settings
    t0 = time.perf_counter()
    data = out / "data"
    make_dataset(data, train=s["train_images"], test=s["test_images"], seed=s["data_seed"], progress=progress,
                 cfg=SynthConfig(min_scale=s["min_scale"], max_scale=s["max_scale"], max_objects=s["max_objects"]))
    gen_s = time.perf_counter() - t0
    old_threads = torch.get_num_threads()
    try:
        res = train(TrainConfig(
            dataset_type="open_images", datasets=[str(data)], net=s["arch"], width_mult=s["width_mult"],
            batch_size=s["batch_size"], num_epochs=s["num_epochs"], lr=s["lr"], warmup_epochs=s["warmup_epochs"],
            scheduler=s["scheduler"], num_workers=s["num_workers"], validation_epochs=s["num_epochs"],
            validation_map=False, checkpoint_folder=str(out / "checkpoints"), seed=s["train_seed"],
            threads=s["threads"], channel_swap=s["channel_swap"], keep_last=False, optimizer=s["optimizer"],
            weight_decay=s["weight_decay"], max_expand=s["max_expand"],
        ), progress=progress)  # fmt: skip
        train_s = res.seconds
        net = res.net
        pth = out / "model.pth"
        torch.save(net.state_dict(), pth)
        labels_path = out / "labels.txt"
        shutil.copyfile(res.labels_path, labels_path)
        onnx_path = out / "model.onnx"
        export_onnx(net, res.labels, onnx_path, opset=s["opset"],
                    metadata={"edge_ssd.test_model_key": key})
    finally:
        torch.set_num_threads(old_threads)
    test = OpenImagesDataset(data, "test")
    report = evaluate(onnx_predictor(onnx_path, threads=s["threads"]), test, model_labels=res.labels,
                      progress=progress)
    metrics = {k: report[k] for k in ("map_voc07", "map_auc", "map_101", "num_images", "num_gt")}
    metrics["per_class_ap_voc07"] = {k: v["ap_voc07"] for k, v in report["per_class"].items()}
    metrics["val_loss"] = res.best.get("val_loss")
    info = {
        "onnx": "model.onnx", "pth": "model.pth", "labels_file": "labels.txt", "dataset": "data",
        "arch": s["arch"], "width_mult": s["width_mult"], "labels": res.labels, "metrics": metrics,
        "train_seconds": train_s, "generate_seconds": gen_s, "build_seconds": time.perf_counter() - t0,
        "key": key, "settings": s, "torch": torch.__version__,
        "onnx_bytes": onnx_path.stat().st_size, "pth_bytes": pth.stat().st_size,
    }  # fmt: skip
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / INFO_FILE).write_text(json.dumps(info, indent=1))
    log.info("test model built in %.0f s: mAP voc07 %.3f", info["build_seconds"], metrics["map_voc07"])
    return info


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="build (or find) the cached synthetic test model and print it")
    ap.add_argument("--cache-dir")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tm = get_test_model(cache_dir=a.cache_dir)
    print(json.dumps(tm.to_json(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
