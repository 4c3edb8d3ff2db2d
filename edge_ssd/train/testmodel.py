"""The trained test model: a small mb1-ssd trained on the synthetic shapes, shipped with the package.

The checkpoint was trained once (``edge-ssd testmodel --rebuild --write``, 15-20 minutes on 2 cores) and ships in
``edge_ssd/train/assets/testmodel/``: ``model.pth``, ``labels.txt`` and ``record.json`` (the settings, the hash of
the training code, the dataset seed, the fp32 metrics measured with ONNX Runtime on the held-out split, the torch
version). ``get_test_model()`` loads that checkpoint strictly, regenerates the deterministic synthetic dataset
and exports the ONNX model into ``$EDGE_SSD_CACHE`` (default ``~/.cache/edge-ssd``) ``/testmodel/<key>`` in
seconds; ``key`` hashes the checkpoint and the code of the export and of the generator, so editing those
re-exports but never retrains. A build happens in a temporary directory renamed into place, under a file lock,
so concurrent pytest processes build it once.

``edge-ssd testmodel --rebuild`` trains it again from scratch with :data:`SETTINGS` and compares the metrics
with the record (``--write`` replaces the shipped files).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError

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
    "threads": 1,  # one torch thread: what the shipped checkpoint was trained with (float sums in one order)
    "opset": 13,
}
INFO_FILE = "testmodel.json"
RECORD_FILE = "record.json"
CHECKPOINT_FILE = "model.pth"
LABELS_FILE = "labels.txt"
ASSETS = Path(__file__).resolve().parent / "assets" / "testmodel"
_PKG = Path(__file__).resolve().parents[1]
# what the trained weights depend on (the record's code hash; a change means --rebuild may give other weights)
TRAIN_SOURCES = (
    "train/synth.py", "train/trainer.py", "train/loss.py", "train/matching.py", "train/augment.py",
    "nets/__init__.py", "nets/build.py", "nets/ssd.py", "nets/mobilenetv1.py", "nets/mobilenetv2.py",
    "model/priors.py", "model/box.py",
)  # fmt: skip
# what the exported ONNX model and the regenerated dataset depend on, besides the checkpoint (the cache key)
EXPORT_SOURCES = (
    "train/testmodel.py", "train/synth.py", "nets/__init__.py", "nets/build.py", "nets/ssd.py",
    "nets/mobilenetv1.py", "nets/mobilenetv2.py", "nets/export.py", "model/priors.py", "model/box.py",
    "model/preprocess.py",
)  # fmt: skip
METRIC_TOLERANCE = 0.02  # a rebuild on other hardware or torch may differ in the last digits of mAP


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


@dataclass(frozen=True)
class Record:
    """How the shipped checkpoint was made, and what it measured (``record.json``)."""

    settings: dict
    code_hash: str  # training_code_hash() of the code that trained it
    checkpoint_sha256: str
    labels: list[str]
    metrics: dict  # fp32, ONNX Runtime, held-out split: map_voc07, map_auc, map_101, per_class_ap_voc07, ...
    torch: str
    train_seconds: float
    trained_from: str = ""  # git commit of the training code, when known

    @classmethod
    def load(cls, assets: Path | None = None) -> Record:
        path = Path(assets or ASSETS) / RECORD_FILE
        try:
            d = json.loads(path.read_text())
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except FileNotFoundError:
            raise UserError(f"the shipped test model is missing ({path}); reinstall edge-ssd, or train it with "
                            "`edge-ssd testmodel --rebuild --write` in a source checkout") from None
        except (ValueError, TypeError) as e:
            raise UserError(f"{path} is not a valid test-model record ({e}); restore it from the repository "
                            "(git checkout) or run `edge-ssd testmodel --rebuild --write`") from None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MetricDelta:
    name: str
    recorded: float
    rebuilt: float

    @property
    def ok(self) -> bool:
        return abs(self.rebuilt - self.recorded) <= METRIC_TOLERANCE


@dataclass(frozen=True)
class Comparison:
    """A retrained model's metrics against the record."""

    rows: list[MetricDelta]
    same_settings: bool
    same_code: bool
    same_weights: bool

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def lines(self) -> list[str]:
        out = [f"{'metric':<22}{'recorded':>10}{'rebuilt':>10}{'delta':>9}"]
        out += [f"{r.name:<22}{r.recorded:>10.4f}{r.rebuilt:>10.4f}{r.rebuilt - r.recorded:>+9.4f}"
                + ("" if r.ok else f"  > {METRIC_TOLERANCE}") for r in self.rows]
        out.append(f"settings {'same as' if self.same_settings else 'DIFFER from'} the record; training code "
                   f"{'unchanged' if self.same_code else 'changed'} since the record; weights "
                   f"{'bit-identical' if self.same_weights else 'differ'}")
        return out


def _hash_sources(files, h) -> None:
    for rel in files:
        p = _PKG / rel
        h.update(rel.encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")


def training_code_hash(settings: dict | None = None) -> str:
    """Hash of the training code (:data:`TRAIN_SOURCES`) and the settings."""
    h = hashlib.sha256()
    _hash_sources(TRAIN_SOURCES, h)
    h.update(json.dumps(settings or SETTINGS, sort_keys=True).encode())
    return h.hexdigest()[:16]


def model_key(record: Record | None = None) -> str:
    """The cache key of the exported model: the checkpoint, its settings and :data:`EXPORT_SOURCES`."""
    rec = record or Record.load()
    h = hashlib.sha256(rec.checkpoint_sha256.encode())
    _hash_sources(EXPORT_SOURCES, h)
    h.update(json.dumps(rec.settings, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cache_root(cache_dir=None) -> Path:
    base = cache_dir or os.environ.get("EDGE_SSD_CACHE") or Path.home() / ".cache" / "edge-ssd"
    return Path(base) / "testmodel"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _build_once(base: Path, key: str, build_fn) -> TestModel:
    """``base/key`` as a :class:`TestModel`, made first by ``build_fn(tmp_dir)`` under a lock if missing."""
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
            build_fn(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tm = _load(final)
    assert tm is not None
    return tm


def get_test_model(cache_dir=None, progress: bool = True, assets: Path | None = None) -> TestModel:
    """The shipped test model, exported with its dataset into the cache first if missing (under a minute)."""
    rec = Record.load(assets)
    key = model_key(rec)
    return _build_once(cache_root(cache_dir), key, lambda tmp: export_shipped(tmp, rec, key, assets, progress))


# ------------------------------------------------------------------------------------------- the steps


def generate_data(out: Path, settings: dict, progress: bool = True) -> Path:
    """The deterministic synthetic dataset of ``settings`` (train/ and test/ splits) under ``out``."""
    from .synth import SynthConfig, make_dataset

    s = settings
    return make_dataset(out, train=s["train_images"], test=s["test_images"], seed=s["data_seed"], progress=progress,
                        cfg=SynthConfig(min_scale=s["min_scale"], max_scale=s["max_scale"],
                                        max_objects=s["max_objects"]))


def export(net, labels: list[str], out: Path, settings: dict, key: str) -> Path:
    from ..nets.export import export_onnx

    onnx_path = out / "model.onnx"
    export_onnx(net, labels, onnx_path, opset=settings["opset"], metadata={"edge_ssd.test_model_key": key})
    return onnx_path


def measure(onnx_path: Path, data: Path, labels: list[str], settings: dict, progress: bool = True) -> dict:
    """fp32 metrics of ``onnx_path`` with ONNX Runtime on the held-out ``test`` split of ``data``."""
    from ..data.datasets import OpenImagesDataset
    from ..eval import evaluate, onnx_predictor

    test = OpenImagesDataset(data, "test")
    report = evaluate(onnx_predictor(onnx_path, threads=settings["threads"]), test, model_labels=labels,
                      progress=progress)
    metrics = {k: report[k] for k in ("map_voc07", "map_auc", "map_101", "num_images", "num_gt")}
    metrics["per_class_ap_voc07"] = {k: v["ap_voc07"] for k, v in report["per_class"].items()}
    return metrics


def _write_info(out: Path, settings: dict, labels: list[str], metrics: dict, key: str, train_seconds: float,
                t0: float, **extra) -> dict:
    info = {
        "onnx": "model.onnx", "pth": CHECKPOINT_FILE, "labels_file": LABELS_FILE, "dataset": "data",
        "arch": settings["arch"], "width_mult": settings["width_mult"], "labels": labels, "metrics": metrics,
        "train_seconds": train_seconds, "build_seconds": time.perf_counter() - t0, "key": key, "settings": settings,
        **extra,
    }  # fmt: skip
    (out / INFO_FILE).write_text(json.dumps(info, indent=1))
    return info


def export_shipped(out: Path, rec: Record, key: str, assets: Path | None = None, progress: bool = True) -> dict:
    """Load the shipped checkpoint strictly, regenerate its dataset and export it into ``out``."""
    from ..nets import create_net, load_weights

    src = Path(assets or ASSETS)
    t0 = time.perf_counter()
    pth = src / CHECKPOINT_FILE
    if not pth.is_file() or _sha256(pth) != rec.checkpoint_sha256:
        raise UserError(f"the shipped checkpoint {pth} is missing or does not match {src / RECORD_FILE}; restore "
                        "both from the repository (git checkout) or run `edge-ssd testmodel --rebuild --write`")
    s = rec.settings
    generate_data(out / "data", s, progress)
    net = load_weights(create_net(s["arch"], len(rec.labels), width_mult=s["width_mult"]), pth)
    shutil.copyfile(pth, out / CHECKPOINT_FILE)
    (out / LABELS_FILE).write_text("".join(f"{x}\n" for x in rec.labels))
    export(net, list(rec.labels), out, s, key)
    info = _write_info(out, s, list(rec.labels), dict(rec.metrics), key, rec.train_seconds, t0,
                       source="shipped checkpoint", checkpoint_sha256=rec.checkpoint_sha256)
    log.info("test model exported from the shipped checkpoint in %.0f s", info["build_seconds"])
    return info


def train_net(data: Path, out: Path, settings: dict, progress: bool = True):
    """Train ``settings``' network on ``data``; return the trainer's :class:`TrainResult`."""
    import torch

    from .trainer import TrainConfig, train

    s = settings
    old_threads = torch.get_num_threads()
    try:
        return train(TrainConfig(
            dataset_type="open_images", datasets=[str(data)], net=s["arch"], width_mult=s["width_mult"],
            batch_size=s["batch_size"], num_epochs=s["num_epochs"], lr=s["lr"], warmup_epochs=s["warmup_epochs"],
            scheduler=s["scheduler"], num_workers=s["num_workers"], validation_epochs=s["num_epochs"],
            validation_map=False, checkpoint_folder=str(out / "checkpoints"), seed=s["train_seed"],
            threads=s["threads"], channel_swap=s["channel_swap"], keep_last=False, optimizer=s["optimizer"],
            weight_decay=s["weight_decay"], max_expand=s["max_expand"],
        ), progress=progress)  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)


def build(out: Path, settings: dict, key: str = "", progress: bool = True) -> dict:
    """Generate the data, train, export and evaluate into ``out`` (minutes); return the info of testmodel.json."""
    import torch

    t0 = time.perf_counter()
    data = generate_data(out / "data", settings, progress)
    res = train_net(data, out, settings, progress)
    torch.save(res.net.state_dict(), out / CHECKPOINT_FILE)
    shutil.copyfile(res.labels_path, out / LABELS_FILE)
    onnx_path = export(res.net, res.labels, out, settings, key)
    metrics = measure(onnx_path, data, res.labels, settings, progress)
    metrics["val_loss"] = res.best.get("val_loss")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    info = _write_info(out, settings, res.labels, metrics, key, res.seconds, t0, source="trained",
                       torch=torch.__version__, code_hash=training_code_hash(settings))
    log.info("test model trained in %.0f s: mAP voc07 %.3f", info["build_seconds"], metrics["map_voc07"])
    return info


def record_of(root: Path, trained_from: str = "") -> Record:
    """The :class:`Record` of a model trained by :func:`build` into ``root``."""
    info = json.loads((root / INFO_FILE).read_text())
    return Record(settings=info["settings"], code_hash=info["code_hash"],
                  checkpoint_sha256=_sha256(root / info["pth"]), labels=list(info["labels"]),
                  metrics=info["metrics"], torch=info["torch"], train_seconds=float(info["train_seconds"]),
                  trained_from=trained_from)


def compare(rec: Record, new: Record) -> Comparison:
    names = ("map_voc07", "map_auc", "map_101")
    rows = [MetricDelta(n, float(rec.metrics[n]), float(new.metrics[n])) for n in names]
    rows += [MetricDelta(f"AP {c}", float(v), float(new.metrics["per_class_ap_voc07"].get(c, 0.0)))
             for c, v in rec.metrics.get("per_class_ap_voc07", {}).items()]
    return Comparison(rows, same_settings=rec.settings == new.settings, same_code=rec.code_hash == new.code_hash,
                      same_weights=rec.checkpoint_sha256 == new.checkpoint_sha256)


def _git_commit() -> str:
    try:
        r = subprocess.run(["git", "-C", str(_PKG), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10, check=False)
    except OSError:
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def write_assets(root: Path, rec: Record, assets: Path | None = None) -> Path:
    """Copy the checkpoint and labels trained into ``root`` and their record into the shipped assets."""
    dst = Path(assets or ASSETS)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / CHECKPOINT_FILE, dst / CHECKPOINT_FILE)
    shutil.copyfile(root / LABELS_FILE, dst / LABELS_FILE)
    (dst / RECORD_FILE).write_text(json.dumps(rec.to_json(), indent=1) + "\n")
    return dst


def rebuild(cache_dir=None, progress: bool = True, settings: dict | None = None, write: bool = False,
            assets: Path | None = None) -> tuple[Record, Comparison | None]:
    """Train the test model again from scratch and compare it with the record; ``write`` ships the new one."""
    settings = dict(SETTINGS if settings is None else settings)
    base = cache_root(cache_dir)
    out = base / f"trained-{training_code_hash(settings)}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    build(out, settings, key=f"trained-{training_code_hash(settings)}", progress=progress)
    new = record_of(out, trained_from=_git_commit())
    cmp = compare(Record.load(assets), new) if (Path(assets or ASSETS) / RECORD_FILE).is_file() else None
    if write:
        write_assets(out, new, assets)
    return new, cmp


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="export (or find) the shipped synthetic test model and print it")
    ap.add_argument("--cache-dir")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tm = get_test_model(cache_dir=a.cache_dir)
    print(json.dumps(tm.to_json(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
