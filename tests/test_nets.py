"""MobileNet-SSD networks: pytorch-ssd checkpoint compatibility (keys, shapes), forward contract, strict load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_ssd.errors import UserError
from edge_ssd.model.box import decode_boxes, softmax
from edge_ssd.model.priors import generate_priors
from edge_ssd.nets import create_net, describe_state_dict, load_weights, read_state_dict

torch.set_num_threads(1)

# ------------------------------------------------------------------------------------------------------------
# The expected state dicts, written out from qfgaohao/pytorch-ssd's source (vision/nn/mobilenet.py,
# vision/nn/mobilenet_v2.py, vision/ssd/mobilenetv1_ssd.py, mobilenetv1_ssd_lite.py, mobilenet_v2_ssd_lite.py,
# vision/ssd/ssd.py) - independently of edge_ssd.nets - as ordered lists of (key, shape).


def _bn(prefix: str, c: int) -> list:
    return [
        (f"{prefix}.weight", (c,)),
        (f"{prefix}.bias", (c,)),
        (f"{prefix}.running_mean", (c,)),
        (f"{prefix}.running_var", (c,)),
        (f"{prefix}.num_batches_tracked", ()),
    ]


def _conv(prefix: str, out: int, inp: int, k: int, bias: bool) -> list:
    return [(f"{prefix}.weight", (out, inp, k, k))] + ([(f"{prefix}.bias", (out,))] if bias else [])


def _mobilenet_v1() -> list:
    # MobileNetV1(1001).model: conv_bn(3,32,2) then conv_dw blocks
    keys = _conv("base_net.0.0", 32, 3, 3, False) + _bn("base_net.0.1", 32)
    chans = [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    for i in range(1, 14):
        inp, oup = chans[i - 1], chans[i]
        keys += _conv(f"base_net.{i}.0", inp, 1, 3, False) + _bn(f"base_net.{i}.1", inp)
        keys += _conv(f"base_net.{i}.3", oup, inp, 1, False) + _bn(f"base_net.{i}.4", oup)
    return keys


def _expected_mb1_ssd(c: int) -> list:
    keys = _mobilenet_v1()
    for k, (i, m, o) in enumerate([(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)]):
        keys += _conv(f"extras.{k}.0", m, i, 1, True) + _conv(f"extras.{k}.2", o, m, 3, True)
    ins = [512, 1024, 512, 256, 256, 256]
    for name, per in (("classification_headers", c), ("regression_headers", 4)):
        for j, cin in enumerate(ins):
            keys += _conv(f"{name}.{j}", 6 * per, cin, 3, True)
    return keys


def _expected_mb1_ssd_lite(c: int) -> list:
    keys = _mobilenet_v1()
    for k, (i, m, o) in enumerate([(1024, 256, 512), (512, 128, 256), (256, 128, 256), (256, 128, 256)]):
        keys += _conv(f"extras.{k}.0", m, i, 1, True)
        keys += _conv(f"extras.{k}.2.0", m, 1, 3, True) + _conv(f"extras.{k}.2.2", o, m, 1, True)
    ins = [512, 1024, 512, 256, 256]
    for name, per in (("classification_headers", c), ("regression_headers", 4)):
        for j, cin in enumerate(ins):
            keys += _conv(f"{name}.{j}.0", cin, 1, 3, True) + _conv(f"{name}.{j}.2", 6 * per, cin, 1, True)
        keys += _conv(f"{name}.5", 6 * per, 256, 1, True)
    return keys


def _inverted_residual(prefix: str, inp: int, oup: int, t: float) -> list:
    hid = round(inp * t)
    if t == 1:
        return (
            _conv(f"{prefix}.conv.0", hid, 1, 3, False) + _bn(f"{prefix}.conv.1", hid)
            + _conv(f"{prefix}.conv.3", oup, hid, 1, False) + _bn(f"{prefix}.conv.4", oup)
        )  # fmt: skip
    return (
        _conv(f"{prefix}.conv.0", hid, inp, 1, False) + _bn(f"{prefix}.conv.1", hid)
        + _conv(f"{prefix}.conv.3", hid, 1, 3, False) + _bn(f"{prefix}.conv.4", hid)
        + _conv(f"{prefix}.conv.6", oup, hid, 1, False) + _bn(f"{prefix}.conv.7", oup)
    )  # fmt: skip


def _expected_mb2_ssd_lite(c: int) -> list:
    keys = _conv("base_net.0.0", 32, 3, 3, False) + _bn("base_net.0.1", 32)
    idx, inp = 1, 32
    for t, ch, n, _s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                         (6, 320, 1, 1)]:  # fmt: skip
        for _ in range(n):
            keys += _inverted_residual(f"base_net.{idx}", inp, ch, t)
            inp, idx = ch, idx + 1
    keys += _conv(f"base_net.{idx}.0", 1280, 320, 1, False) + _bn(f"base_net.{idx}.1", 1280)
    assert idx == 18
    for k, (i, o, t) in enumerate([(1280, 512, 0.2), (512, 256, 0.25), (256, 256, 0.5), (256, 64, 0.25)]):
        keys += _inverted_residual(f"extras.{k}", i, o, t)
    ins = [576, 1280, 512, 256, 256]
    for name, per in (("classification_headers", c), ("regression_headers", 4)):
        for j, cin in enumerate(ins):
            keys += _conv(f"{name}.{j}.0", cin, 1, 3, True) + _bn(f"{name}.{j}.1", cin)
            keys += _conv(f"{name}.{j}.3", 6 * per, cin, 1, True)
        keys += _conv(f"{name}.5", 6 * per, 64, 1, True)
    return keys


EXPECTED = {
    "mb1-ssd": _expected_mb1_ssd,
    "mb1-ssd-lite": _expected_mb1_ssd_lite,
    "mb2-ssd-lite": _expected_mb2_ssd_lite,
}


@pytest.mark.parametrize("arch", list(EXPECTED))
@pytest.mark.parametrize("num_classes", [21, 3])
def test_state_dict_matches_pytorch_ssd(arch, num_classes):
    net = create_net(arch, num_classes)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    want = EXPECTED[arch](num_classes)
    assert [k for k, _ in got] == [k for k, _ in want]  # same keys in the same order
    assert got == want
    n_params = sum(p.numel() for p in net.parameters())
    want_params = sum(int(np.prod(s)) for k, s in want if not k.endswith(("running_mean", "running_var", "tracked")))
    assert n_params == want_params
    assert net.arch == arch and net.num_classes == num_classes and net.width_mult == 1.0
    assert "priors" not in net.state_dict()


def test_param_counts_voc():
    # sanity anchors: the VOC models are ~9.5 M (mb1-ssd), ~4.3 M (mb1-ssd-lite), ~3.4 M (mb2-ssd-lite) params
    counts = {a: sum(p.numel() for p in create_net(a, 21).parameters()) for a in EXPECTED}
    assert 9.3e6 < counts["mb1-ssd"] < 9.6e6
    assert 4.2e6 < counts["mb1-ssd-lite"] < 4.4e6
    assert 3.3e6 < counts["mb2-ssd-lite"] < 3.5e6


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_forward_train_and_test_modes(arch):
    torch.manual_seed(0)
    net = create_net(arch, 5).eval()
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        conf, loc = net(x)
    assert conf.shape == (2, 3000, 5) and loc.shape == (2, 3000, 4)
    test_net = create_net(arch, 5, is_test=True).eval()
    test_net.load_state_dict(net.state_dict())
    with torch.no_grad():
        scores, boxes = test_net(x)
        test_net.raw = True
        raw_conf, raw_loc = test_net(x)
    np.testing.assert_allclose(raw_conf.numpy(), conf.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(raw_loc.numpy(), loc.numpy(), rtol=0, atol=1e-5)
    # the decoded outputs equal the lead's numpy tail applied to the raw outputs
    priors = generate_priors()
    np.testing.assert_allclose(test_net.priors.numpy(), priors)
    np.testing.assert_allclose(scores.numpy(), softmax(conf.numpy(), axis=-1), atol=1e-6)
    for b in range(2):
        np.testing.assert_allclose(boxes[b].numpy(), decode_boxes(loc[b].numpy(), priors), rtol=1e-5, atol=1e-5)
    assert np.allclose(scores.sum(-1).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch,width", [("mb1-ssd", 0.5), ("mb1-ssd-lite", 0.25), ("mb2-ssd-lite", 0.5),
                                        ("mb2-ssd-lite", 0.35), ("mb2-ssd-lite", 0.75)])  # fmt: skip
def test_width_mult(arch, width):
    net = create_net(arch, 3, width_mult=width).eval()
    assert net.width_mult == width
    assert net.state_dict()["base_net.0.0.weight"].shape[0] == int(32 * width)
    with torch.no_grad():
        conf, loc = net(torch.zeros(1, 3, 300, 300))
    assert conf.shape == (1, 3000, 3) and loc.shape == (1, 3000, 4)
    small = sum(p.numel() for p in net.parameters())
    assert small < sum(p.numel() for p in create_net(arch, 3).parameters())


def test_mb2_header_channels_follow_pytorch_ssd_rounding():
    # pytorch-ssd sizes the first mb2 head as round(576 * width_mult); at the usual widths that is what we build
    for w in (1.0, 0.75, 0.5):
        sd = create_net("mb2-ssd-lite", 21, width_mult=w).state_dict()
        assert sd["classification_headers.0.0.weight"].shape[0] == round(576 * w)


def test_bad_arguments():
    with pytest.raises(UserError, match="--arch"):
        create_net("vgg16-ssd", 21)
    with pytest.raises(UserError, match="num_classes"):
        create_net("mb1-ssd", 1)


def _save(obj, path):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("arch", ["mb1-ssd-lite", "mb2-ssd-lite"])
def test_load_round_trip(tmp_path, arch):
    torch.manual_seed(1)
    src = create_net(arch, 4).eval()
    for m in src.modules():  # non-trivial BN statistics, so a missed buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        ref = src(x)
    variants = {
        "plain.pth": src.state_dict(),
        "wrapped.pth": {"state_dict": src.state_dict(), "epoch": 7},
        "model.pth": {"model": {"module." + k: v for k, v in src.state_dict().items()}},
    }
    for name, obj in variants.items():
        dst = load_weights(create_net(arch, 4).eval(), _save(obj, tmp_path / name))
        with torch.no_grad():
            got = dst(x)
        for a, b in zip(ref, got, strict=True):
            assert torch.equal(a, b), name


def test_mismatched_class_count(tmp_path):
    path = _save(create_net("mb1-ssd", 21).state_dict(), tmp_path / "voc.pth")
    with pytest.raises(UserError) as e:
        load_weights(create_net("mb1-ssd", 3), path)
    msg = str(e.value)
    assert "\n" not in msg
    assert "classification_headers.0.weight" in msg
    assert "(18, 512, 3, 3)" in msg and "(126, 512, 3, 3)" in msg
    assert "21 lines" in msg


def test_mismatched_arch(tmp_path):
    path = _save(create_net("mb2-ssd-lite", 21).state_dict(), tmp_path / "mb2.pth")
    with pytest.raises(UserError) as e:
        load_weights(create_net("mb1-ssd", 21), path)
    msg = str(e.value)
    assert "'base_net.1.0.weight' (32, 1, 3, 3) is missing" in msg and "--arch mb2-ssd-lite" in msg and "\n" not in msg
    # lite vs non-lite mb1: the first key that differs is named
    path = _save(create_net("mb1-ssd", 21).state_dict(), tmp_path / "mb1.pth")
    with pytest.raises(UserError, match=r"extras\.0\.2\.0\.weight.*--arch mb1-ssd\b"):
        load_weights(create_net("mb1-ssd-lite", 21), path)


def test_mismatched_width(tmp_path):
    path = _save(create_net("mb2-ssd-lite", 21, width_mult=0.5).state_dict(), tmp_path / "half.pth")
    with pytest.raises(UserError, match=r"base_net\.0\.0\.weight.*\(32, 3, 3, 3\).*\(16, 3, 3, 3\).*--width-mult 0\.5"):
        load_weights(create_net("mb2-ssd-lite", 21), path)


def test_unexpected_extra_key(tmp_path):
    sd = create_net("mb1-ssd-lite", 3).state_dict()
    sd["source_layer_add_ons.0.weight"] = torch.zeros(3)
    with pytest.raises(UserError, match="unexpected key 'source_layer_add_ons.0.weight'"):
        load_weights(create_net("mb1-ssd-lite", 3), _save(sd, tmp_path / "x.pth"))


def test_truncated_and_foreign_files(tmp_path):
    good = _save(create_net("mb1-ssd-lite", 3).state_dict(), tmp_path / "good.pth")
    data = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    for bad in (cut, tmp_path / "text.pth", tmp_path / "empty.pth", tmp_path / "missing.pth"):
        if bad.name == "text.pth":
            bad.write_text("BACKGROUND\nperson\n")
        elif bad.name == "empty.pth":
            bad.write_bytes(b"")
        with pytest.raises(UserError) as e:
            load_weights(create_net("mb1-ssd-lite", 3), bad)
        assert "\n" not in str(e.value) and bad.name in str(e.value)
    with pytest.raises(UserError, match="truncated"):
        read_state_dict(cut)
    with pytest.raises(UserError, match="not a state dict"):
        read_state_dict(_save({"lr": 0.1}, tmp_path / "opt.pth"))


@pytest.mark.parametrize("arch,width,classes", [("mb1-ssd", 1.0, 21), ("mb1-ssd-lite", 0.5, 3),
                                                ("mb2-ssd-lite", 0.75, 7)])  # fmt: skip
def test_describe_state_dict(arch, width, classes):
    d = describe_state_dict(create_net(arch, classes, width_mult=width).state_dict())
    assert d == {"arch": arch, "width_mult": width, "num_classes": classes}
