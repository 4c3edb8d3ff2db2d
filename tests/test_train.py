"""Training: overfitting a handful of images, spawn-safe data loading, the CLI and its errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from edge_ssd.data.datasets import OpenImagesDataset
from edge_ssd.nets import create_net, xavier_init
from edge_ssd.train.augment import TestTransform, TrainAugmentation
from edge_ssd.train.loss import MultiboxLoss
from edge_ssd.train.matching import MatchPrior
from edge_ssd.train.synth import SynthConfig, make_dataset
from edge_ssd.train.trainer import EpochSampler, SSDTrainDataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("train-data")
    make_dataset(out, train=8, test=4, seed=11, cfg=SynthConfig(min_scale=0.2, max_objects=2), progress=False)
    return out


def test_overfits_a_handful_of_images(data):
    torch.manual_seed(0)
    ds = OpenImagesDataset(data, "train")
    net = xavier_init(create_net("mb1-ssd", len(ds.class_names), width_mult=0.25))
    target = MatchPrior(net.priors.numpy())
    train_set = SSDTrainDataset(ds, TestTransform(), target)
    images, locs, labels = (torch.from_numpy(np.stack(x)) for x in zip(*[train_set[i] for i in range(4)],
                                                                      strict=True))
    crit = MultiboxLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    net.train()
    for _ in range(80):
        conf, pred = net(images)
        reg, cls = crit(conf, pred, labels, locs)
        loss = reg + cls
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert np.isfinite(losses).all()
    assert last < first / 5, (first, last)


def test_dataloader_with_spawn_matches_in_process(data):
    ds = OpenImagesDataset(data, "train")
    priors = create_net("mb1-ssd", len(ds.class_names), width_mult=0.25).priors.numpy()
    train_set = SSDTrainDataset(ds, TrainAugmentation(), MatchPrior(priors), seed=3)
    sampler = EpochSampler(len(train_set), seed=3, epoch=2)
    ref = next(iter(DataLoader(train_set, batch_size=4, sampler=sampler, num_workers=0)))
    spawned = next(iter(DataLoader(train_set, batch_size=4, sampler=sampler, num_workers=1,
                                   multiprocessing_context="spawn")))
    for a, b in zip(ref, spawned, strict=True):
        assert torch.equal(a, b)
    assert ref[0].shape == (4, 3, 300, 300) and ref[1].shape == (4, priors.shape[0], 4)
    assert (ref[2] > 0).any()  # some priors matched
    sampler.set_epoch(3)
    other = next(iter(DataLoader(train_set, batch_size=4, sampler=sampler, num_workers=0)))
    assert not torch.equal(ref[0], other[0])  # a new epoch draws new augmentations


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge_ssd", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def test_cli_trains_keeps_best_and_resumes(data, tmp_path):
    ck = tmp_path / "ck"
    common = ["train", "--dataset-type", "open_images", "--datasets", data, "--net", "mb1-ssd", "--width-mult",
              "0.25", "--batch-size", "4", "--lr", "0.01", "--num-workers", "0", "--validation-epochs", "1",
              "--checkpoint-folder", ck, "--threads", "2"]
    r = _cli(*common, "--num-epochs", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (ck / "labels.txt").read_text().splitlines()[0] == "BACKGROUND"
    best = list(ck.glob("mb1-ssd-Epoch-0-Loss-*.pth"))
    assert len(best) == 1 and (ck / "last.pth").is_file()
    hist = json.loads((ck / "history.json").read_text())
    assert len(hist["history"]) == 1 and "val_loss" in hist["history"][0] and "map_voc07" in hist["history"][0]
    r = _cli(*common, "--num-epochs", "2", "--resume", ck / "last.pth", "--no-validation-map")
    assert r.returncode == 0, r.stderr[-2000:]
    hist = json.loads((ck / "history.json").read_text())
    assert [h["epoch"] for h in hist["history"]] == [1, 2]
    # underscore aliases of pytorch-ssd's original flags are accepted
    r = _cli("train", "--dataset_type", "open_images", "--datasets", data, "--width_mult", "0.25", "--batch_size",
             "4", "--num_epochs", "1", "--max_steps", "1", "--num_workers", "0", "--checkpoint_folder", tmp_path / "u",
             "--no_validation_map")
    assert r.returncode == 0, r.stderr[-2000:]


def _bad_copy(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    p = dst / "sub-train-annotations-bbox.csv"
    lines = p.read_text().splitlines()
    lines[2] = edit(lines[2].split(","))
    p.write_text("\n".join(lines) + "\n")
    return dst


@pytest.mark.parametrize("case,edit,needle", [
    ("outside", lambda r: ",".join(r[:4] + ["1.5"] + r[5:]), "outside 0..1"),
    ("xmin>xmax", lambda r: ",".join(r[:4] + [r[5], r[4]] + r[6:]), "XMin > XMax"),
    ("unknown class", lambda r: ",".join(r[:-1] + ["hexagon"]), "hexagon"),
    ("missing image", lambda r: ",".join(["deadbeef"] + r[1:]), "missing"),
])
def test_cli_bad_csv_row_is_one_clear_line(data, tmp_path, case, edit, needle):
    bad = _bad_copy(data, tmp_path / "bad", edit)
    r = _cli("train", "--datasets", bad, "--width-mult", "0.25", "--num-epochs", "1", "--num-workers", "0",
             "--checkpoint-folder", tmp_path / "ck", timeout=120)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(err) == 1, r.stderr
    assert needle in err[0]
    if case != "missing image":
        assert "row 3" in err[0]  # line 3 of the CSV: the header is line 1
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").glob("*.pth"))


def test_cli_without_data_is_a_user_error(tmp_path):
    r = _cli("train", "--checkpoint-folder", tmp_path)
    assert r.returncode == 2 and "--datasets" in r.stderr and "Traceback" not in r.stderr


def test_pretrained_ssd_transfer_with_another_class_count_and_frozen_base(data, tmp_path):
    from edge_ssd.train.trainer import TrainConfig, train

    torch.manual_seed(5)
    src = xavier_init(create_net("mb1-ssd", 3, width_mult=0.25))  # 2 classes + background: heads differ
    torch.save(src.state_dict(), tmp_path / "pre.pth")
    res = train(TrainConfig(datasets=[str(data)], width_mult=0.25, batch_size=4, num_epochs=1, max_steps=2,
                            num_workers=0, pretrained_ssd=str(tmp_path / "pre.pth"), freeze_base_net=True,
                            validation_map=False, checkpoint_folder=str(tmp_path / "ck"), lr=0.01), progress=False)
    got = res.net.state_dict()
    want = src.state_dict()
    base = [k for k in want if k.startswith("base_net.")]
    assert base and all(torch.equal(got[k], want[k]) for k in base)  # loaded and frozen (BN stats too)
    assert got["classification_headers.0.weight"].shape[0] == 6 * len(res.labels) != \
        want["classification_headers.0.weight"].shape[0]
    extra = [k for k in want if k.startswith("extras.") and k.endswith("weight")]
    assert any(not torch.equal(got[k], want[k]) for k in extra)  # extras loaded, then trained
