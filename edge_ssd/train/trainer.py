"""Train a MobileNet-SSD the way qfgaohao/pytorch-ssd's ``train_ssd.py`` does, deterministically.

Data: :class:`SSDTrainDataset` wraps an ``edge_ssd.data`` dataset (VOC or Open Images), applies the
augmentations of :mod:`.augment` and the prior matching of :mod:`.matching`. Every sample is drawn from a
generator seeded by ``(seed, epoch, index)``; the epoch travels with the index through :class:`EpochSampler`,
so results do not depend on the number of DataLoader workers or their start method (``spawn`` works: nothing
here is a lambda or a closure).

Optimisation: SGD with momentum and weight decay, separate learning rates for the base net
(``base_net_lr``), the extra layers (``extra_layers_lr``) and the heads (``lr``); cosine annealing
(``t_max`` epochs) or multi-step; optional transfer from a pretrained SSD (heads re-initialised when the class
count differs), frozen base net, resume. Validation loss (and mAP via :func:`edge_ssd.eval.evaluate`) every
``validation_epochs`` epochs and at the end; the best checkpoint is kept with the labels file beside it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- data


class EpochSampler:
    """Yields ``(epoch, index)`` pairs: a shuffled permutation of the dataset seeded by ``(seed, epoch)``.
    The epoch counter advances on each pass, or is set with :meth:`set_epoch`."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, epoch: int = 0):
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        e = self.epoch
        if self.shuffle:
            order = np.random.default_rng([self.seed, e, 7]).permutation(self.n)
        else:
            order = np.arange(self.n)
        return iter([(e, int(i)) for i in order])


class SSDTrainDataset:
    """Map-style torch dataset: ``ds[(epoch, i)]`` (or ``ds[i]``) -> (image CHW float32, locations (P, 4),
    labels (P,)). ``transform`` sees RGB uint8 and normalised boxes; ``target_transform`` is a
    :class:`~.matching.MatchPrior` (or None to return the raw boxes/labels)."""

    def __init__(self, dataset, transform, target_transform=None, seed: int = 0, keep_difficult: bool = False):
        self.dataset = dataset
        self.transform = transform
        self.target_transform = target_transform
        self.seed = int(seed)
        self.keep_difficult = bool(keep_difficult)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        import cv2

        epoch, i = key if isinstance(key, tuple) else (0, key)
        s = self.dataset[i]
        boxes, labels = s.boxes.astype(np.float32), s.labels.astype(np.int64)
        if not self.keep_difficult and len(s.difficult):
            keep = ~np.asarray(s.difficult, bool)
            boxes, labels = boxes[keep], labels[keep]
        img = cv2.cvtColor(self.dataset.load_image(i), cv2.COLOR_BGR2RGB)
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        img, boxes, labels = self.transform(img, boxes, labels, rng)
        if self.target_transform is not None:
            boxes, labels = self.target_transform(boxes, labels)
        return img.astype(np.float32), boxes.astype(np.float32), labels.astype(np.int64)


def open_datasets(dataset_type: str, roots, split: str, class_names=None):
    """Open one or more datasets of ``dataset_type`` (open_images | voc) for ``split``; return (dataset, names).
    Several roots are concatenated (all must share the class list)."""
    from ..data import datasets as D

    dt = dataset_type.replace("-", "_").lower()
    out = []
    for root in roots:
        if dt == "open_images":
            ds = D.OpenImagesDataset(root, split, class_names=class_names)
        elif dt == "voc":
            voc_split = {"train": "trainval", "test": "test"}.get(split, split)
            try:
                ds = D.VOCDataset(root, voc_split, class_names=class_names)
            except UserError:
                if split != "test":
                    raise
                ds = D.VOCDataset(root, None, class_names=class_names)
        else:
            raise UserError(f"unknown --dataset-type {dataset_type!r}; use open_images or voc")
        if class_names is None:
            class_names = list(ds.class_names)
        elif list(ds.class_names) != list(class_names):
            raise UserError(f"dataset {root} has classes {ds.class_names} but the first has {class_names}; "
                            "train on datasets with the same labels")
        out.append(ds)
    if len(out) == 1:
        return out[0], list(class_names)
    return ConcatSamples(out), list(class_names)


class ConcatSamples:
    """Several datasets seen as one (samples and ``load_image`` by global index)."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        self.class_names = list(self.datasets[0].class_names)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.root = self.datasets[0].root

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int):
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.datasets[k], i - int(self.offsets[k])

    def __getitem__(self, i):
        d, j = self._locate(int(i))
        return d[j]

    def load_image(self, i):
        d, j = self._locate(int(i))
        return d.load_image(j)


# ------------------------------------------------------------------------------------------------ config


@dataclass
class TrainConfig:
    dataset_type: str = "open_images"
    datasets: list[str] = field(default_factory=list)
    validation_dataset: str | None = None
    net: str = "mb1-ssd"
    width_mult: float = 1.0
    batch_size: int = 32
    num_epochs: int = 120
    lr: float = 0.01
    momentum: float = 0.9
    optimizer: str = "sgd"  # sgd (pytorch-ssd) or adam (AdamW: converges faster from scratch)
    weight_decay: float = 5e-4
    gamma: float = 0.1
    base_net_lr: float | None = None
    extra_layers_lr: float | None = None
    scheduler: str = "cosine"
    milestones: str = "80,100"
    t_max: float | None = None
    warmup_epochs: float = 0.0
    pretrained_ssd: str | None = None
    resume: str | None = None
    freeze_base_net: bool = False
    freeze_net: bool = False
    num_workers: int = 2
    mp_context: str | None = None  # None: torch's default; "spawn"/"fork"/"forkserver"
    validation_epochs: int = 5
    validation_map: bool = True
    validation_map_limit: int | None = None  # evaluate mAP on the first N validation images only
    checkpoint_folder: str = "models"
    seed: int = 0
    threads: int | None = None
    channel_swap: bool = True
    max_expand: float = 4.0
    neg_pos_ratio: int = 3
    iou_threshold: float = 0.5
    keep_last: bool = True  # also write last.pth (full state, for --resume)
    max_steps: int | None = None  # stop after this many optimiser steps (tests, quick checks)


@dataclass
class TrainResult:
    best_path: Path | None
    last_path: Path | None
    labels_path: Path
    labels: list[str]
    history: list[dict]
    best: dict
    seconds: float
    net: object = None  # the trained network (best weights loaded when a best checkpoint exists)


# ----------------------------------------------------------------------------------------------- helpers


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def param_groups(net, cfg: TrainConfig):
    """pytorch-ssd's three groups: base net, extra layers (+ source layer add-ons), heads."""
    base_lr = cfg.base_net_lr if cfg.base_net_lr is not None else cfg.lr
    extra_lr = cfg.extra_layers_lr if cfg.extra_layers_lr is not None else cfg.lr
    heads = itertools.chain(net.regression_headers.parameters(), net.classification_headers.parameters())
    extras = itertools.chain(net.source_layer_add_ons.parameters(), net.extras.parameters())
    if cfg.freeze_net:
        for m in (net.base_net, net.source_layer_add_ons, net.extras):
            for p in m.parameters():
                p.requires_grad = False
        return [{"params": list(heads), "lr": cfg.lr}]
    if cfg.freeze_base_net:
        for p in net.base_net.parameters():
            p.requires_grad = False
        return [{"params": list(extras), "lr": extra_lr}, {"params": list(heads), "lr": cfg.lr}]
    return [
        {"params": list(net.base_net.parameters()), "lr": base_lr},
        {"params": list(extras), "lr": extra_lr},
        {"params": list(heads), "lr": cfg.lr},
    ]


def load_pretrained_ssd(net, path) -> list[str]:
    """Load a pretrained SSD checkpoint; heads whose shapes differ (another class count) keep their fresh
    initialisation. Returns the names of the tensors that were not loaded."""
    import torch

    from ..nets import read_state_dict

    sd = read_state_dict(path)
    own = net.state_dict()
    skipped = [k for k in own if k not in sd or tuple(sd[k].shape) != tuple(own[k].shape)]
    non_head = [k for k in skipped if not k.startswith(("classification_headers", "regression_headers"))]
    if non_head:
        raise UserError(f"pretrained SSD {path} does not fit {net.arch} (width {net.width_mult:g}): tensor "
                        f"{non_head[0]!r} differs; pass a checkpoint of the same --net and --width-mult")
    with torch.no_grad():
        for k, v in own.items():
            if k not in skipped:
                v.copy_(sd[k])
    return skipped


def make_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """A per-step LambdaLR equivalent of pytorch-ssd's per-epoch CosineAnnealingLR / MultiStepLR (with
    optional linear warm-up). The multiplier is a picklable object, so the scheduler state can be saved."""
    import torch

    mult = LRMultiplier(cfg.scheduler, steps_per_epoch, cfg.t_max or cfg.num_epochs, cfg.milestones, cfg.gamma,
                        cfg.warmup_epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, mult)


class LRMultiplier:
    def __init__(self, kind: str, steps_per_epoch: int, t_max: float, milestones: str, gamma: float,
                 warmup_epochs: float = 0.0):
        kind = kind.replace("_", "-").lower()
        if kind not in ("cosine", "multi-step", "none"):
            raise UserError(f"unknown --scheduler {kind!r}; use cosine, multi-step or none")
        self.kind = kind
        self.spe = max(int(steps_per_epoch), 1)
        self.t_max = float(t_max)
        try:
            self.milestones = [int(m) for m in str(milestones).split(",") if m.strip()]
        except ValueError:
            raise UserError(f"--milestones {milestones!r} must be comma-separated epochs, e.g. 80,100") from None
        self.gamma = float(gamma)
        self.warmup = float(warmup_epochs)

    def __call__(self, step: int) -> float:
        epoch = step / self.spe
        if self.kind == "cosine":
            m = 0.5 * (1 + math.cos(math.pi * min(epoch, self.t_max) / max(self.t_max, 1e-9)))
        elif self.kind == "multi-step":
            m = self.gamma ** sum(1 for x in self.milestones if epoch >= x)
        else:
            m = 1.0
        if self.warmup > 0 and epoch < self.warmup:
            m *= max(epoch / self.warmup, 0.01)
        return m


def predict_fn_for(net, prob_threshold: float = 0.01):
    """A ``BGR image -> Detections`` function running ``net`` in PyTorch (for validation mAP)."""
    import torch

    from ..model.box import postprocess
    from ..model.preprocess import preprocess

    size = net.image_size if isinstance(net.image_size, int) else net.image_size[0]
    priors = net.priors.detach().cpu().numpy()

    def predict(bgr):
        x = torch.from_numpy(preprocess(bgr, size, size))
        with torch.no_grad():
            conf, loc = net(x)
        return postprocess(conf[0].numpy(), loc[0].numpy(), priors, score_fn="softmax",
                           prob_threshold=prob_threshold)

    return predict


def _collate_check(n: int, batch_size: int) -> None:
    if n == 0:
        raise UserError("the training dataset has no images (check --datasets and --dataset-type)")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")


# ----------------------------------------------------------------------------------------------- training


def _start(cfg: TrainConfig):
    """Check the settings, set threads and seeds, open the data: (train set, validation set or None, labels)."""
    import torch

    if not cfg.datasets:
        raise UserError("no training data: pass --datasets DIR (an Open Images or VOC root)")
    if cfg.num_epochs < 1:
        raise UserError(f"--num-epochs must be >= 1, got {cfg.num_epochs}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    set_seed(cfg.seed)
    train_ds, labels = open_datasets(cfg.dataset_type, cfg.datasets, "train")
    val_root = cfg.validation_dataset or cfg.datasets[0]
    try:
        val_ds, _ = open_datasets(cfg.dataset_type, [val_root], "test", class_names=labels)
    except UserError as e:
        log.warning("no validation split (%s); validating on nothing", e)
        val_ds = None
    _collate_check(len(train_ds), cfg.batch_size)
    return train_ds, val_ds, labels


def _build_net(cfg: TrainConfig, num_classes: int):
    from ..nets import create_net, xavier_init

    net = create_net(cfg.net, num_classes, cfg.width_mult)
    xavier_init(net)
    if cfg.pretrained_ssd:
        skipped = load_pretrained_ssd(net, cfg.pretrained_ssd)
        if skipped:
            log.info("pretrained SSD: %d head tensors re-initialised (class count differs)", len(skipped))
    return net


def _loaders(cfg: TrainConfig, net, train_ds, val_ds):
    """(train loader, its epoch sampler, validation loader or None)."""
    from torch.utils.data import DataLoader

    from .augment import TestTransform, TrainAugmentation
    from .matching import MatchPrior

    priors = net.priors.cpu().numpy()
    target = MatchPrior(priors, net.center_variance, net.size_variance, cfg.iou_threshold)
    train_set = SSDTrainDataset(train_ds, TrainAugmentation(channel_swap=cfg.channel_swap,
                                                            max_expand=cfg.max_expand), target, cfg.seed)
    sampler = EpochSampler(len(train_set), cfg.seed)
    loader_kw = {}
    if cfg.num_workers > 0:
        loader_kw["persistent_workers"] = True
        if cfg.mp_context:
            loader_kw["multiprocessing_context"] = cfg.mp_context
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=len(train_set) >= cfg.batch_size * 2, **loader_kw)
    val_loader = None
    if val_ds is not None and len(val_ds):
        val_set = SSDTrainDataset(val_ds, TestTransform(), target, cfg.seed, keep_difficult=False)
        val_loader = DataLoader(val_set, batch_size=cfg.batch_size, sampler=EpochSampler(len(val_set), 0, False),
                                num_workers=0)
    return loader, sampler, val_loader


def _optimizer(cfg: TrainConfig, net):
    import torch

    groups = param_groups(net, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise UserError(f"unknown --optimizer {cfg.optimizer!r}; use sgd or adam")


class _Run:
    """The state of one training run, advanced epoch by epoch by :func:`train`."""

    def __init__(self, cfg: TrainConfig, net, labels: list[str], loader, sampler, val_loader, val_ds):
        from .loss import MultiboxLoss

        self.cfg = cfg
        self.net = net
        self.labels = labels
        self.loader, self.sampler, self.val_loader, self.val_ds = loader, sampler, val_loader, val_ds
        self.optimizer = _optimizer(cfg, net)
        self.scheduler = make_scheduler(self.optimizer, cfg, len(loader))
        self.criterion = MultiboxLoss(cfg.neg_pos_ratio)
        self.ckpt_dir = Path(cfg.checkpoint_folder)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.start_epoch, self.history, self.best = 0, [], {}
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self.step = 0

    def resume(self) -> None:
        if self.cfg.resume:
            self.start_epoch, self.history, self.best = _resume(self.cfg.resume, self.net, self.optimizer,
                                                                self.scheduler)
            log.info("resumed from %s at epoch %d", self.cfg.resume, self.start_epoch)
        self.best_path = Path(self.best["path"]) if self.best.get("path") else None

    def total_steps(self) -> int:
        total = len(self.loader) * (self.cfg.num_epochs - self.start_epoch)
        return min(total, int(self.cfg.max_steps)) if self.cfg.max_steps else total

    def train_epoch(self, epoch: int, bar) -> tuple[dict, bool]:
        """One pass over the training data; (the epoch's record, whether ``max_steps`` was reached)."""
        cfg, net = self.cfg, self.net
        self.sampler.set_epoch(epoch)
        net.train()
        if cfg.freeze_base_net or cfg.freeze_net:
            net.base_net.eval()  # keep frozen BN statistics
        run_loss = run_reg = run_cls = 0.0
        nb = 0
        stop = False
        for images, locs, labs in self.loader:
            conf, pred = net(images)
            reg, cls = self.criterion(conf, pred, labs, locs)
            loss = reg + cls
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            lv = float(loss.item())
            if not math.isfinite(lv):
                raise UserError(f"training diverged (loss {lv}) at epoch {epoch}; lower --lr")
            run_loss += lv
            run_reg += float(reg.item())
            run_cls += float(cls.item())
            nb += 1
            self.step += 1
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.num_epochs}", loss=f"{run_loss / nb:.3f}",
                            reg=f"{run_reg / nb:.3f}", cls=f"{run_cls / nb:.3f}")
            bar.update(1)
            if cfg.max_steps and self.step >= cfg.max_steps:
                stop = True
                break
        rec = {"epoch": epoch + 1, "train_loss": run_loss / max(nb, 1), "train_regression": run_reg / max(nb, 1),
               "train_classification": run_cls / max(nb, 1), "lr": self.optimizer.param_groups[-1]["lr"]}
        return rec, stop

    def validate(self, epoch: int, rec: dict, bar) -> None:
        """Validation loss (and mAP) into ``rec``; keep the checkpoint when it is the best so far."""
        import torch

        cfg = self.cfg
        rec.update(_validate(self.net, self.val_loader, self.criterion))
        if cfg.validation_map:
            rec.update(_validate_map(self.net, self.val_ds, self.labels, cfg.validation_map_limit))
        score = rec.get("map_voc07", -rec["val_loss"])
        if not self.best or score > self.best["score"]:
            new = self.ckpt_dir / f"{cfg.net}-Epoch-{epoch}-Loss-{rec['val_loss']:.4f}.pth"
            torch.save(self.net.state_dict(), new)
            if self.best_path is not None and self.best_path != new and self.best_path.exists():
                self.best_path.unlink()
            self.best_path = new
            self.best = {"score": score, "epoch": epoch + 1, "path": str(new),
                         **{k: v for k, v in rec.items() if k.startswith(("val_", "map_"))}}
        msg = ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float))
        bar.write(f"epoch {epoch + 1}: {msg}")

    def save_last(self, epoch: int) -> None:
        """last.pth: the full state for --resume (written atomically)."""
        import torch

        self.last_path = self.ckpt_dir / "last.pth"
        tmp = self.last_path.with_suffix(".pth.tmp")
        torch.save({"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "epoch": epoch + 1, "history": self.history,
                    "best": self.best, "config": asdict(self.cfg)}, tmp)
        os.replace(tmp, self.last_path)

    def finish(self) -> Path:
        """The best checkpoint (the final weights when nothing was validated), loaded into the net."""
        import torch

        from ..nets import load_weights

        if self.best_path is None:  # no validation split: the final weights are the result
            last = self.history[-1]
            name = f"{self.cfg.net}-Epoch-{last['epoch'] - 1}-Loss-{last['train_loss']:.4f}.pth"
            self.best_path = self.ckpt_dir / name
            torch.save(self.net.state_dict(), self.best_path)
            self.best = {"epoch": last["epoch"], "path": str(self.best_path)}
        else:
            load_weights(self.net, self.best_path)
        (self.ckpt_dir / "history.json").write_text(json.dumps({"history": self.history, "best": self.best},
                                                               indent=1))
        return self.best_path


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Run training; return where the checkpoints are and the history of validation metrics."""
    from tqdm import tqdm

    from ..data.datasets import write_labels

    t_start = time.perf_counter()
    train_ds, val_ds, labels = _start(cfg)
    net = _build_net(cfg, len(labels))
    loader, sampler, val_loader = _loaders(cfg, net, train_ds, val_ds)
    run = _Run(cfg, net, labels, loader, sampler, val_loader, val_ds)
    labels_path = write_labels(run.ckpt_dir / "labels.txt", labels)
    run.resume()
    bar = tqdm(total=run.total_steps(), desc="train", unit="step", disable=None if progress else True,
               dynamic_ncols=True)
    try:
        for epoch in range(run.start_epoch, cfg.num_epochs):
            rec, stop = run.train_epoch(epoch, bar)
            last_epoch = stop or epoch + 1 == cfg.num_epochs
            if val_loader is not None and ((epoch + 1) % max(cfg.validation_epochs, 1) == 0 or last_epoch):
                run.validate(epoch, rec, bar)
            run.history.append(rec)
            if cfg.keep_last:
                run.save_last(epoch)
            if stop:
                break
    finally:
        bar.close()
    best_path = run.finish()
    return TrainResult(best_path, run.last_path, labels_path, labels, run.history, run.best,
                       time.perf_counter() - t_start, net)


def _validate(net, loader, criterion) -> dict:
    import torch

    net.eval()
    tot = reg_t = cls_t = 0.0
    n = 0
    with torch.no_grad():
        for images, locs, labs in loader:
            conf, pred = net(images)
            reg, cls = criterion(conf, pred, labs, locs)
            tot += float((reg + cls).item())
            reg_t += float(reg.item())
            cls_t += float(cls.item())
            n += 1
    net.train()
    n = max(n, 1)
    return {"val_loss": tot / n, "val_regression": reg_t / n, "val_classification": cls_t / n}


def _validate_map(net, dataset, labels, limit=None) -> dict:
    try:
        from ..eval import evaluate
    except ImportError:  # evaluation package not available: loss only
        return {}
    net.eval()
    try:
        report = evaluate(predict_fn_for(net), dataset, limit=limit, model_labels=labels, progress=False)
    finally:
        net.train()
    return {"map_voc07": float(report["map_voc07"]), "map_auc": float(report["map_auc"])}


def _resume(path, net, optimizer, scheduler):
    import torch

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--resume {p} does not exist; pass last.pth or a checkpoint from --checkpoint-folder")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise UserError(f"cannot read --resume {p} ({type(e).__name__}); pass last.pth from a training run") from None
    if isinstance(obj, dict) and "model" in obj and "optimizer" in obj:
        net.load_state_dict(obj["model"])
        optimizer.load_state_dict(obj["optimizer"])
        scheduler.load_state_dict(obj["scheduler"])
        return int(obj["epoch"]), list(obj.get("history", [])), dict(obj.get("best", {}))
    from ..nets import load_weights

    load_weights(net, p)  # weights only (pytorch-ssd style): restart the schedule
    return 0, [], {}
