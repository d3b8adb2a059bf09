"""Tests for perfloss.backbones.

Expectations (tap names, shapes, state-dict keys, minimum sizes, layer math) are written out by hand
here from the torchvision architectures and the conv/pool size formulas, not computed by the code under
test. Images are small (<= 64x64, AlexNet/SqueezeNet at 224 where the reference numbers are quoted) so
the file runs in seconds on CPU.
"""

import copy
import hashlib
import operator
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perfloss.backbones import Backbone, get_backbone, list_backbones, list_taps
from perfloss.backbones import weights as weights_mod

# weights=None warns on every build; the tests that check the warning use pytest.warns.
pytestmark = pytest.mark.filterwarnings("ignore:perfloss.*random weights:UserWarning")

ALL = ["alexnet", "resnet18", "resnet50", "squeezenet1_1", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
       "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

_CACHE = {}


def net(name, taps=None, **kw):
    """Shared read-only backbones (tests that mutate a module build their own)."""
    key = (name, None if taps is None else tuple(taps), tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = get_backbone(name, taps, **kw)
    return _CACHE[key]


def image(size, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=g)


# ------------------------------------------------------------------------------ hand-written tables

# VGG: convs per block and channels per block (torchvision configurations A, B, D, E).
VGG_CONVS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
VGG_CHANNELS = (64, 128, 256, 512, 512)

VGG16_AT_64 = {
    "conv1_1": (64, 64, 64), "relu1_1": (64, 64, 64), "conv1_2": (64, 64, 64), "relu1_2": (64, 64, 64),
    "pool1": (64, 32, 32),
    "conv2_1": (128, 32, 32), "relu2_1": (128, 32, 32), "conv2_2": (128, 32, 32), "relu2_2": (128, 32, 32),
    "pool2": (128, 16, 16),
    "conv3_1": (256, 16, 16), "relu3_1": (256, 16, 16), "conv3_2": (256, 16, 16), "relu3_2": (256, 16, 16),
    "conv3_3": (256, 16, 16), "relu3_3": (256, 16, 16), "pool3": (256, 8, 8),
    "conv4_1": (512, 8, 8), "relu4_1": (512, 8, 8), "conv4_2": (512, 8, 8), "relu4_2": (512, 8, 8),
    "conv4_3": (512, 8, 8), "relu4_3": (512, 8, 8), "pool4": (512, 4, 4),
    "conv5_1": (512, 4, 4), "relu5_1": (512, 4, 4), "conv5_2": (512, 4, 4), "relu5_2": (512, 4, 4),
    "conv5_3": (512, 4, 4), "relu5_3": (512, 4, 4), "pool5": (512, 2, 2),
}


def vgg_expected(name, size):
    """{tap: (C, H, W)} in network order from the hand-written block table."""
    out = {}
    for b, (n, c) in enumerate(zip(VGG_CONVS[name.replace("_bn", "")], VGG_CHANNELS), start=1):
        s = size >> (b - 1)
        for i in range(1, n + 1):
            out[f"conv{b}_{i}"] = (c, s, s)
            out[f"relu{b}_{i}"] = (c, s, s)
        out[f"pool{b}"] = (c, s // 2, s // 2)
    return out


EXPECTED = {  # name -> (input side, {tap: (C, H, W)} in network order)
    "alexnet": (224, {"relu1": (64, 55, 55), "relu2": (192, 27, 27), "relu3": (384, 13, 13),
                      "relu4": (256, 13, 13), "relu5": (256, 13, 13)}),
    "squeezenet1_1": (224, {"relu1": (64, 111, 111), "fire2": (128, 55, 55), "fire3": (128, 55, 55),
                            "fire4": (256, 27, 27), "fire5": (256, 27, 27), "fire6": (384, 13, 13),
                            "fire7": (384, 13, 13), "fire8": (512, 13, 13), "fire9": (512, 13, 13)}),
    "resnet18": (64, {"relu": (64, 32, 32), "layer1": (64, 16, 16), "layer2": (128, 8, 8),
                      "layer3": (256, 4, 4), "layer4": (512, 2, 2)}),
    "resnet50": (64, {"relu": (64, 32, 32), "layer1": (256, 16, 16), "layer2": (512, 8, 8),
                      "layer3": (1024, 4, 4), "layer4": (2048, 2, 2)}),
}
for _n in VGG_CONVS:
    EXPECTED[_n] = EXPECTED[_n + "_bn"] = (64, vgg_expected(_n, 64))

# The real forward runs at a smaller size (meta shapes are checked at the sizes above).
EXPECTED_SMALL = {
    "alexnet": (64, {"relu1": (64, 15, 15), "relu2": (192, 7, 7), "relu3": (384, 3, 3),
                     "relu4": (256, 3, 3), "relu5": (256, 3, 3)}),
    "squeezenet1_1": (64, {"relu1": (64, 31, 31), "fire2": (128, 15, 15), "fire3": (128, 15, 15),
                           "fire4": (256, 7, 7), "fire5": (256, 7, 7), "fire6": (384, 3, 3),
                           "fire7": (384, 3, 3), "fire8": (512, 3, 3), "fire9": (512, 3, 3)}),
    "resnet18": (32, {"relu": (64, 16, 16), "layer1": (64, 8, 8), "layer2": (128, 4, 4),
                      "layer3": (256, 2, 2), "layer4": (512, 1, 1)}),
    "resnet50": (32, {"relu": (64, 16, 16), "layer1": (256, 8, 8), "layer2": (512, 4, 4),
                      "layer3": (1024, 2, 2), "layer4": (2048, 1, 1)}),
}
for _n in VGG_CONVS:
    EXPECTED_SMALL[_n] = EXPECTED_SMALL[_n + "_bn"] = (32, vgg_expected(_n, 32))


# ------------------------------------------------------------------------------------ listing


def test_list_backbones():
    study_networks = ["densenet121", "efficientnet_b0", "efficientnet_b7", "googlenet", "inception_v3",
                      "resnext50_32x4d"]  # tested in test_networks.py
    assert list_backbones() == sorted(ALL + study_networks)


def test_list_taps():
    assert list_taps("vgg16") == list(VGG16_AT_64)
    assert list_taps("vgg16_bn") == list(VGG16_AT_64)
    assert list_taps("vgg11") == ["conv1_1", "relu1_1", "pool1", "conv2_1", "relu2_1", "pool2",
                                  "conv3_1", "relu3_1", "conv3_2", "relu3_2", "pool3",
                                  "conv4_1", "relu4_1", "conv4_2", "relu4_2", "pool4",
                                  "conv5_1", "relu5_1", "conv5_2", "relu5_2", "pool5"]
    assert [t for t in list_taps("vgg19") if t.startswith("relu")] == [
        "relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1", "relu3_2", "relu3_3", "relu3_4",
        "relu4_1", "relu4_2", "relu4_3", "relu4_4", "relu5_1", "relu5_2", "relu5_3", "relu5_4"]
    assert list_taps("alexnet") == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert list_taps("squeezenet1_1") == ["relu1"] + [f"fire{i}" for i in range(2, 10)]
    assert list_taps("resnet18") == list_taps("resnet50") == ["relu", "layer1", "layer2", "layer3", "layer4"]


def test_list_taps_does_not_touch_rng():
    state = torch.get_rng_state()
    list_taps("vgg19_bn")
    assert torch.equal(state, torch.get_rng_state())


def test_unknown_backbone():
    with pytest.raises(ValueError, match="vgg17.*vgg16"):
        get_backbone("vgg17")
    with pytest.raises(ValueError, match="vgg17"):
        list_taps("vgg17")


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("name", ALL)
def test_shapes_and_channels(name):
    size, expected = EXPECTED[name]
    b = net(name)
    assert isinstance(b, Backbone) and b.name == name
    assert b.taps == tuple(expected)
    assert b.tap_channels == {t: s[0] for t, s in expected.items()}
    assert list(b.tap_channels) == list(expected)
    assert b.output_shapes(size, size) == expected
    size, expected = EXPECTED_SMALL[name]
    assert b.output_shapes(size, size) == expected
    with torch.no_grad():
        out = b(image(size))
    assert list(out) == list(expected)  # network order
    assert {t: tuple(f.shape[1:]) for t, f in out.items()} == expected
    assert all(f.shape[0] == 1 and f.dtype == torch.float32 and torch.isfinite(f).all() for f in out.values())


def test_vgg16_output_shapes_table():
    assert net("vgg16").output_shapes(64, 64) == VGG16_AT_64
    # non-square input
    shapes = net("vgg16").output_shapes(64, 32)
    assert shapes["relu1_2"] == (64, 64, 32) and shapes["relu5_3"] == (512, 4, 2) and shapes["pool5"] == (512, 2, 1)


# -------------------------------------------------------------------------------- state dicts


def _kinds(index, bn=False):
    if bn:
        return [f"features.{index}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    return [f"features.{index}.weight", f"features.{index}.bias"]


def test_state_dict_keys_vgg():
    convs = {
        "vgg11": [0, 3, 6, 8, 11, 13, 16, 18],
        "vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
        "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34],
    }
    for name, idx in convs.items():
        assert set(net(name).state_dict()) == {k for i in idx for k in _kinds(i)}, name
    bn_convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
    sd = net("vgg16_bn").state_dict()
    assert set(sd) == {k for i in bn_convs for k in _kinds(i) + _kinds(i + 1, bn=True)}
    assert sd["features.40.weight"].shape == (512, 512, 3, 3)
    assert sd["features.41.running_var"].shape == (512,)
    assert sd["features.0.weight"].shape == (64, 3, 3, 3)
    assert net("vgg16").state_dict()["features.5.weight"].shape == (128, 64, 3, 3)


def test_state_dict_keys_alexnet():
    sd = net("alexnet").state_dict()
    assert set(sd) == {k for i in (0, 3, 6, 8, 10) for k in _kinds(i)}
    assert [tuple(sd[f"features.{i}.weight"].shape) for i in (0, 3, 6, 8, 10)] == [
        (64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3)]
    f = net("alexnet").features
    assert (f[0].stride, f[0].padding, f[3].padding) == ((4, 4), (2, 2), (2, 2))
    assert isinstance(f[2], nn.MaxPool2d) and f[2].kernel_size == 3 and f[2].stride == 2 and not f[2].ceil_mode


def test_state_dict_keys_squeezenet():
    sd = net("squeezenet1_1").state_dict()
    fires = {3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128),
             9: (256, 48, 192), 10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256)}
    expected = {"features.0.weight", "features.0.bias"}
    for i in fires:
        for part in ("squeeze", "expand1x1", "expand3x3"):
            expected |= {f"features.{i}.{part}.weight", f"features.{i}.{part}.bias"}
    assert set(sd) == expected
    assert sd["features.0.weight"].shape == (64, 3, 3, 3)
    for i, (cin, sq, ex) in fires.items():
        assert sd[f"features.{i}.squeeze.weight"].shape == (sq, cin, 1, 1)
        assert sd[f"features.{i}.expand1x1.weight"].shape == (ex, sq, 1, 1)
        assert sd[f"features.{i}.expand3x3.weight"].shape == (ex, sq, 3, 3)
    f = net("squeezenet1_1").features
    assert all(isinstance(f[i], nn.MaxPool2d) and f[i].ceil_mode for i in (2, 5, 8))
    assert [n for n, _ in f[3].named_children()] == ["squeeze", "squeeze_activation", "expand1x1",
                                                    "expand1x1_activation", "expand3x3", "expand3x3_activation"]


def _bn_keys(prefix):
    return {f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def test_state_dict_keys_resnet18():
    sd = net("resnet18").state_dict()
    expected = {"conv1.weight"} | _bn_keys("bn1")
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            expected |= {f"{p}.conv1.weight", f"{p}.conv2.weight"} | _bn_keys(f"{p}.bn1") | _bn_keys(f"{p}.bn2")
        if layer > 1:
            expected |= {f"layer{layer}.0.downsample.0.weight"} | _bn_keys(f"layer{layer}.0.downsample.1")
    assert set(sd) == expected
    assert len(sd) == 120  # torchvision's resnet18 has 122 keys, fc.weight and fc.bias included
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sd["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    b = net("resnet18")
    assert b.layer2[0].conv1.stride == (2, 2) and b.layer1[0].conv1.stride == (1, 1)
    assert not any(hasattr(b, a) for a in ("fc", "avgpool"))


def test_state_dict_keys_resnet50():
    sd = net("resnet50").state_dict()
    expected = {"conv1.weight"} | _bn_keys("bn1")
    for layer, blocks in zip(range(1, 5), (3, 4, 6, 3)):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            for j in (1, 2, 3):
                expected |= {f"{p}.conv{j}.weight"} | _bn_keys(f"{p}.bn{j}")
        expected |= {f"layer{layer}.0.downsample.0.weight"} | _bn_keys(f"layer{layer}.0.downsample.1")
    assert set(sd) == expected
    assert len(sd) == 318  # torchvision's resnet50: 320 with fc
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer2.0.conv1.weight"].shape == (128, 256, 1, 1)
    assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    b = net("resnet50")
    # V1.5: the stride sits on the 3x3 conv
    assert b.layer2[0].conv1.stride == (1, 1) and b.layer2[0].conv2.stride == (2, 2)
    assert b.layer2[0].downsample[0].stride == (2, 2)


# ------------------------------------------------------------------ layer math against F.* by hand


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                        False, 0.0, 1e-5)


def test_vgg16_bn_math():
    b = net("vgg16_bn", ["conv1_1", "relu1_1", "relu1_2", "pool1", "relu2_1"])
    sd = b.state_dict()
    x = image(32)
    with torch.no_grad():
        out = b(x)
    conv1_1 = F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], padding=1)
    relu1_1 = F.relu(_bn(conv1_1, sd, "features.1"))
    relu1_2 = F.relu(_bn(F.conv2d(relu1_1, sd["features.3.weight"], sd["features.3.bias"], padding=1), sd, "features.4"))
    pool1 = F.max_pool2d(relu1_2, 2)
    relu2_1 = F.relu(_bn(F.conv2d(pool1, sd["features.7.weight"], sd["features.7.bias"], padding=1), sd, "features.8"))
    for name, ref in [("conv1_1", conv1_1), ("relu1_1", relu1_1), ("relu1_2", relu1_2), ("pool1", pool1),
                      ("relu2_1", relu2_1)]:
        torch.testing.assert_close(out[name], ref, msg=name)
    assert not torch.allclose(relu1_1, F.relu(conv1_1))  # BN in eval is not the identity


def test_alexnet_math():
    b = net("alexnet")
    sd = b.state_dict()
    x = image(64)
    with torch.no_grad():
        out = b(x)

    def conv(h, i, **kw):
        return F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], **kw))

    r1 = conv(x, 0, stride=4, padding=2)
    r2 = conv(F.max_pool2d(r1, 3, 2), 3, padding=2)
    r3 = conv(F.max_pool2d(r2, 3, 2), 6, padding=1)
    r4 = conv(r3, 8, padding=1)
    r5 = conv(r4, 10, padding=1)
    for name, ref in zip(["relu1", "relu2", "relu3", "relu4", "relu5"], [r1, r2, r3, r4, r5]):
        torch.testing.assert_close(out[name], ref, msg=name)


def test_squeezenet_math():
    b = net("squeezenet1_1", ["relu1", "fire2", "fire3", "fire4"])
    sd = b.state_dict()
    x = image(48)
    with torch.no_grad():
        out = b(x)

    def fire(h, i):
        p = f"features.{i}"
        s = F.relu(F.conv2d(h, sd[p + ".squeeze.weight"], sd[p + ".squeeze.bias"]))
        e1 = F.relu(F.conv2d(s, sd[p + ".expand1x1.weight"], sd[p + ".expand1x1.bias"]))
        e3 = F.relu(F.conv2d(s, sd[p + ".expand3x3.weight"], sd[p + ".expand3x3.bias"], padding=1))
        return torch.cat([e1, e3], 1)

    relu1 = F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], stride=2))
    fire2 = fire(F.max_pool2d(relu1, 3, 2, ceil_mode=True), 3)
    fire3 = fire(fire2, 4)
    fire4 = fire(F.max_pool2d(fire3, 3, 2, ceil_mode=True), 6)
    for name, ref in [("relu1", relu1), ("fire2", fire2), ("fire3", fire3), ("fire4", fire4)]:
        torch.testing.assert_close(out[name], ref, msg=name)


def _basic(x, sd, p, stride):
    h = F.relu(_bn(F.conv2d(x, sd[p + ".conv1.weight"], stride=stride, padding=1), sd, p + ".bn1"))
    h = _bn(F.conv2d(h, sd[p + ".conv2.weight"], padding=1), sd, p + ".bn2")
    if p + ".downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), sd, p + ".downsample.1")
    return F.relu(h + x)


def _bottleneck(x, sd, p, stride):
    h = F.relu(_bn(F.conv2d(x, sd[p + ".conv1.weight"]), sd, p + ".bn1"))
    h = F.relu(_bn(F.conv2d(h, sd[p + ".conv2.weight"], stride=stride, padding=1), sd, p + ".bn2"))
    h = _bn(F.conv2d(h, sd[p + ".conv3.weight"]), sd, p + ".bn3")
    if p + ".downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[p + ".downsample.0.weight"], stride=stride), sd, p + ".downsample.1")
    return F.relu(h + x)


@pytest.mark.parametrize("name, block, counts", [("resnet18", _basic, (2, 2, 2, 2)),
                                                 ("resnet50", _bottleneck, (3, 4, 6, 3))])
def test_resnet_math(name, block, counts):
    b = net(name)
    sd = b.state_dict()
    x = image(32)
    with torch.no_grad():
        out = b(x)
    h = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    refs = {"relu": h}
    h = F.max_pool2d(h, 3, 2, padding=1)
    for layer, count in enumerate(counts, start=1):
        for j in range(count):
            h = block(h, sd, f"layer{layer}.{j}", 2 if (j == 0 and layer > 1) else 1)
        refs[f"layer{layer}"] = h
    assert list(out) == list(refs)
    for tap, ref in refs.items():
        torch.testing.assert_close(out[tap], ref, msg=tap)


# ------------------------------------------------------------------------------------ weights


def _torchvision_style(name, seed=3, with_nbt=False):
    """A state dict laid out like torchvision's file: backbone keys with new values plus a head."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in net(name).state_dict().items():
        if k.endswith("num_batches_tracked"):
            if with_nbt:
                sd[k] = torch.tensor(7)
            continue
        new = torch.randn(v.shape, generator=g) * 0.1
        sd[k] = new.abs() + 0.5 if k.endswith("running_var") else new
    if name.startswith("resnet"):
        sd["fc.weight"], sd["fc.bias"] = torch.randn(10, 7, generator=g), torch.randn(10, generator=g)
    else:  # fake classifier entries (shapes irrelevant: the head is ignored)
        sd["classifier.1.weight"], sd["classifier.1.bias"] = torch.randn(10, 5, generator=g), torch.zeros(10)
        sd["classifier.6.weight"] = torch.randn(3, 4, generator=g)
    return sd


@pytest.mark.parametrize("name, taps", [("vgg11_bn", ["relu1_1", "relu3_2"]), ("squeezenet1_1", ["fire3"]),
                                        ("resnet18", ["relu", "layer2"]), ("alexnet", ["relu2"])])
def test_torchvision_state_dict_round_trip(tmp_path, name, taps):
    sd = _torchvision_style(name)
    path = tmp_path / "weights.pth"
    torch.save(sd, path)
    from_path = get_backbone(name, taps, weights=path)
    from_str = get_backbone(name, taps, weights=str(path))
    from_dict = get_backbone(name, taps, weights=sd)
    for key, value in from_dict.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, sd[key]), key
    x = image(48)
    with torch.no_grad():
        a, b, c, r = from_path(x), from_str(x), from_dict(x), net(name, taps)(x)
    assert list(a) == list(b) == list(c) == list(taps)
    for t in taps:
        assert torch.equal(a[t], c[t]) and torch.equal(a[t], b[t])
        assert not torch.allclose(a[t], r[t])  # the weights were really loaded


def test_num_batches_tracked_optional_and_loaded():
    sd = _torchvision_style("resnet18", with_nbt=True)
    b = get_backbone("resnet18", ["layer1"], weights=sd)
    assert int(b.state_dict()["bn1.num_batches_tracked"]) == 7
    sd = _torchvision_style("resnet18", with_nbt=False)
    assert int(get_backbone("resnet18", ["layer1"], weights=sd).state_dict()["bn1.num_batches_tracked"]) == 0


def test_key_mismatches_raise():
    good = _torchvision_style("vgg16")
    missing = dict(good)
    del missing["features.10.weight"]
    with pytest.raises(ValueError, match=r"missing keys: features\.10\.weight"):
        get_backbone("vgg16", weights=missing)
    unexpected = dict(good, **{"features.99.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys: features\.99\.weight"):
        get_backbone("vgg16", weights=unexpected)
    wrong = dict(good, **{"features.0.weight": torch.zeros(64, 3, 5, 5)})
    with pytest.raises(ValueError, match=r"wrong shapes: features\.0\.weight: got \(64, 3, 5, 5\), expected \(64, 3, 3, 3\)"):
        get_backbone("vgg16", ["relu1_1"], weights=wrong)
    # a key of a layer that truncation removes must still have the right shape if present
    wrong_late = dict(good, **{"features.28.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"features\.28\.weight"):
        get_backbone("vgg16", ["relu1_1"], weights=wrong_late)
    # torchvision keys of another network
    with pytest.raises(ValueError, match="missing keys"):
        get_backbone("resnet18", weights=_torchvision_style("alexnet"))


def test_bad_weights_argument():
    with pytest.raises(TypeError, match="weights"):
        get_backbone("alexnet", weights=123)
    with pytest.raises(TypeError, match="weights"):
        get_backbone("alexnet", weights=True)
    with pytest.raises(FileNotFoundError, match="no_such_file.pth"):
        get_backbone("alexnet", weights="/nonexistent/no_such_file.pth")
    with pytest.raises(ValueError, match="state dict"):
        get_backbone("alexnet", weights={"features.0.weight": [1, 2]})


def test_truncated_state_dict_loads_back(tmp_path):
    small = get_backbone("vgg16", ["relu2_2"], weights=_torchvision_style("vgg16"))
    sd = small.state_dict()
    assert set(sd) == {k for i in (0, 2, 5, 7) for k in _kinds(i)}
    torch.save(sd, tmp_path / "small.pth")
    again = get_backbone("vgg16", ["relu1_2", "relu2_2"], weights=tmp_path / "small.pth")
    x = image(32)
    with torch.no_grad():
        assert torch.equal(small(x)["relu2_2"], again(x)["relu2_2"])
    # deeper taps need keys the truncated file does not have
    with pytest.raises(ValueError, match=r"missing keys: features\.10\.bias"):
        get_backbone("vgg16", ["relu3_1"], weights=sd)
    # a full (untruncated) perfloss backbone's state dict loads too
    full = net("resnet50")
    back = get_backbone("resnet50", ["layer1"], weights=full.state_dict())
    assert torch.equal(back.state_dict()["layer1.2.bn3.running_var"], full.state_dict()["layer1.2.bn3.running_var"])


IMAGENET = {
    "vgg11": "vgg11-8a719046.pth", "vgg13": "vgg13-19584684.pth", "vgg16": "vgg16-397923af.pth",
    "vgg19": "vgg19-dcbb9e9d.pth", "vgg11_bn": "vgg11_bn-6002323d.pth", "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth", "vgg19_bn": "vgg19_bn-c79401a0.pth",
    "alexnet": "alexnet-owt-7be5be79.pth", "squeezenet1_1": "squeezenet1_1-b8a52dc0.pth",
    "resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth",
    # torchvision's current files (older releases named EfficientNet's -3dd342df and -dcc49843)
    "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth", "densenet121": "densenet121-a639ec97.pth",
    "googlenet": "googlenet-1378be20.pth", "inception_v3": "inception_v3_google-0cc3c7bd.pth",
    "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth", "efficientnet_b7": "efficientnet_b7_lukemelas-c5b4e57e.pth",
}


def test_imagenet_file_names():
    assert weights_mod.IMAGENET_FILES == IMAGENET


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub directory and a download that fails without touching the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append((url, dst, kwargs.get("hash_prefix")))
        raise OSError("network is unreachable")

    monkeypatch.setattr(weights_mod, "download", offline)
    return tmp_path / "hub" / "checkpoints", calls


def test_imagenet_offline_error(empty_hub):
    directory, calls = empty_hub
    with pytest.raises(FileNotFoundError) as info:
        get_backbone("vgg16", ["relu1_2"], weights="imagenet")
    msg = str(info.value)
    url = "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert "vgg16-397923af.pth" in msg and str(directory) in msg and url in msg
    assert calls == [(url, str(directory / "vgg16-397923af.pth"), "397923af")]
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        get_backbone("alexnet", weights="imagenet")
    assert calls[-1][2] == "7be5be79"


def test_imagenet_file_present(empty_hub, monkeypatch):
    directory, calls = empty_hub
    directory.mkdir(parents=True)
    sd = _torchvision_style("resnet18")
    torch.save(sd, directory / "saved.pth")
    # the file name must carry the start of the file's sha256, as torchvision's do (weights are verified)
    name = f"resnet18-{hashlib.sha256((directory / 'saved.pth').read_bytes()).hexdigest()[:8]}.pth"
    os.replace(directory / "saved.pth", directory / name)
    monkeypatch.setitem(weights_mod.IMAGENET_FILES, "resnet18", name)
    b = get_backbone("resnet18", ["layer1"], weights="imagenet")
    assert calls == []
    assert torch.equal(b.state_dict()["layer1.1.conv2.weight"], sd["layer1.1.conv2.weight"])


def test_random_weights_warn_deterministic_and_rng_untouched():
    state = torch.get_rng_state()
    with pytest.warns(UserWarning, match="random weights.*NOT perceptually meaningful"):
        a = get_backbone("resnet18")
    assert torch.equal(state, torch.get_rng_state())
    with pytest.warns(UserWarning, match="random weights"):
        b = get_backbone("resnet18")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # BN statistics are not the identity's
    assert not torch.allclose(sa["bn1.running_var"], torch.ones(64))
    assert not torch.allclose(sa["bn1.running_mean"], torch.zeros(64))
    assert (sa["bn1.running_var"] > 0).all()
    # a truncated backbone has exactly the full one's leading weights
    part = get_backbone("resnet18", ["layer2"]).state_dict()
    assert all(torch.equal(part[k], sa[k]) for k in part)
    with pytest.warns(UserWarning, match="random weights"):
        get_backbone("squeezenet1_1", ["relu1"])  # every network warns, not just the first built


def test_loaded_weights_do_not_warn(recwarn):
    get_backbone("alexnet", ["relu1"], weights=_torchvision_style("alexnet"))
    assert not [w for w in recwarn if "random weights" in str(w.message)]


# ------------------------------------------------------------------------- taps and truncation


def test_taps_validation_and_order():
    b = get_backbone("vgg16", ["relu3_3", "relu1_2", "relu3_3", "conv2_1"])
    assert b.taps == ("relu1_2", "conv2_1", "relu3_3")
    with torch.no_grad():
        assert list(b(image(32))) == ["relu1_2", "conv2_1", "relu3_3"]
    assert get_backbone("alexnet", "relu2").taps == ("relu2",)  # a single name
    assert get_backbone("alexnet", iter(["relu2", "relu1"])).taps == ("relu1", "relu2")
    with pytest.raises(ValueError, match=r"'relu6_1'.*relu1_1.*relu5_3"):
        get_backbone("vgg16", ["relu1_2", "relu6_1"])
    with pytest.raises(ValueError, match="fire1.*fire2"):
        get_backbone("squeezenet1_1", ["fire1"])
    with pytest.raises(ValueError, match="empty"):
        get_backbone("vgg16", [])


def test_truncation():
    full = net("vgg16")
    b = get_backbone("vgg16", ["relu2_2"])
    assert len(b.features) == 9 and [n for n, _ in b.features.named_children()] == [str(i) for i in range(9)]
    assert not any(k.startswith("features.9") or k.startswith("features.10") for k in b.state_dict())
    n_params = sum(p.numel() for p in b.parameters())
    assert n_params == (3 * 64 * 9 + 64) + (64 * 64 * 9 + 64) + (64 * 128 * 9 + 128) + (128 * 128 * 9 + 128)
    assert n_params < sum(p.numel() for p in full.parameters())

    r = get_backbone("resnet18", ["relu"])
    assert [n for n, _ in r.named_children()] == ["conv1", "bn1", "relu"]
    r2 = get_backbone("resnet50", ["layer2", "relu"])
    assert [n for n, _ in r2.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    assert [path for path, _ in r2.stages] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2"]
    a = get_backbone("alexnet", ["relu5"])
    assert len(a.features) == 12  # the final max-pool (index 12) is gone
    s = get_backbone("squeezenet1_1", ["fire5"])
    assert len(s.features) == 8


def test_frozen_and_eval():
    b = get_backbone("resnet18", ["layer1"])
    assert not b.training and not any(m.training for m in b.modules())
    assert not any(p.requires_grad for p in b.parameters())
    before = {k: v.clone() for k, v in b.state_dict().items()}
    assert b.train() is b
    assert not b.training and not any(m.training for m in b.modules())
    x = image(32).requires_grad_()
    out = b(x)["layer1"]
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in b.parameters())
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())  # BN stats did not move


def test_dtype_and_copy():
    b = get_backbone("vgg16_bn", ["relu1_2", "relu2_2"])
    x = image(32)
    with torch.no_grad():
        ref = b(x)
        b64 = copy.deepcopy(b).to(torch.float64)
        out = b64(x.double())
    assert all(p.dtype == torch.float64 for p in b64.parameters())
    for t in ref:
        assert out[t].dtype == torch.float64
        torch.testing.assert_close(out[t].float(), ref[t], rtol=1e-4, atol=1e-4)
    # the shape probe lives outside the module: unaffected by dtype / device moves
    b.half()
    assert all(p.dtype == torch.float16 for p in b.parameters())
    assert b.output_shapes(32, 32) == {"relu1_2": (64, 32, 32), "relu2_2": (128, 16, 16)}
    assert not any(k.startswith("_meta") for k in b.state_dict())


def test_fx_symbolic_trace():
    for name, taps, size in [("vgg16_bn", ["conv1_1", "relu1_2", "pool2"], 32), ("squeezenet1_1", ["relu1", "fire4"], 48),
                             ("resnet18", None, 32), ("resnet50", None, 32), ("alexnet", None, 64)]:
        b = net(name, taps)
        gm = torch.fx.symbolic_trace(b)
        x = image(size)
        with torch.no_grad():
            ref, out = b(x), gm(x)
        assert list(out) == list(ref), name
        for t in ref:
            assert torch.equal(out[t], ref[t]), (name, t)
        nodes = list(gm.graph.nodes)
        targets = {n.target for n in nodes if n.op == "call_module"}
        if name == "squeezenet1_1":
            assert {"features.3.squeeze", "features.6.expand3x3_activation"} <= targets
            assert any(n.op == "call_function" and n.target is torch.cat for n in nodes)
        if name.startswith("resnet"):
            assert {"layer1.0.conv1", "layer2.0.downsample.0", "layer2.0.downsample.1"} <= targets
            assert any(n.op == "call_function" and n.target is operator.add for n in nodes)
        if name == "vgg16_bn":
            assert targets == {f"features.{i}" for i in range(14)}


# --------------------------------------------------------------------------------- size checks


def test_min_input_size_hand_values():
    # VGG: one halving per pool; conv3x3/pad1 runs on 1x1. AlexNet: conv1 (s-7)//4+1 must leave >=7 for
    # two 3x3/2 pools -> s >= 31. SqueezeNet 1.1: three ceil-mode pools need >=2 each -> conv1 out >= 8
    # -> s >= 17. ResNet: every conv/pool is padded, any size works.
    cases = [("vgg16", ["relu5_3"], 16), ("vgg16", None, 32), ("vgg16", ["relu1_2"], 1), ("vgg16", ["pool1"], 2),
             ("vgg11", ["relu4_2"], 8), ("alexnet", None, 31), ("alexnet", ["relu1"], 7),
             ("squeezenet1_1", None, 17), ("resnet18", None, 1), ("resnet50", None, 1)]
    for name, taps, expected in cases:
        assert net(name, taps).min_input_size() == expected, (name, taps)


@pytest.mark.parametrize("name", ["vgg16", "alexnet", "squeezenet1_1"])
def test_min_input_size_really_runs(name):
    b = net(name)
    m = b.min_input_size()
    with torch.no_grad():
        out = b(image(m))
    assert all(f.numel() > 0 for f in out.values())
    with pytest.raises(ValueError, match=f"tap '{b.taps[-1]}' of {name} needs at least {m}x{m}"):
        b(image(m - 1))


def test_too_small_input_message():
    b = net("vgg16", ["relu2_2", "relu5_3"])
    msg = "input is 12x12 but tap 'relu5_3' of vgg16 needs at least 16x16"
    with pytest.raises(ValueError, match=msg):
        b.check_input_size(12, 12)
    with pytest.raises(ValueError, match=msg):
        b.output_shapes(12, 12)
    with pytest.raises(ValueError, match="input is 64x8 but tap 'relu5_3'"):
        b.check_input_size(64, 8)
    b.check_input_size(16, 16)
    b.check_input_size(16, 40)
    with pytest.raises(ValueError, match=msg), torch.no_grad():
        b(image(12))


# ------------------------------------------------------------------------------------ pooling


def test_avg_pooling():
    full = get_backbone("vgg19", pooling="avg")
    assert not any(isinstance(m, nn.MaxPool2d) for m in full.modules())
    assert [i for i, m in enumerate(full.features) if isinstance(m, nn.AvgPool2d)] == [4, 9, 18, 27, 36]
    assert set(full.state_dict()) == set(net("vgg19").state_dict())
    assert full.output_shapes(32, 32)["pool5"] == (512, 1, 1)
    assert full.pooling == "avg" and "avg" in repr(full)
    taps = ["relu1_2", "pool1", "relu2_1"]
    avg, mx = get_backbone("vgg19", taps, pooling="avg"), net("vgg19", taps)
    x = image(32, batch=2)
    with torch.no_grad():
        a, m = avg(x), mx(x)
    assert torch.equal(a["relu1_2"], m["relu1_2"])  # same weights before the first pool
    torch.testing.assert_close(a["pool1"], F.avg_pool2d(a["relu1_2"], 2))
    torch.testing.assert_close(m["pool1"], F.max_pool2d(m["relu1_2"], 2))
    assert not torch.allclose(a["relu2_1"], m["relu2_1"])


def test_avg_pooling_rejected():
    for name in ("resnet18", "alexnet", "squeezenet1_1"):
        with pytest.raises(ValueError, match="pooling"):
            get_backbone(name, pooling="avg")
    with pytest.raises(ValueError, match="pooling"):
        get_backbone("vgg16", pooling="mean")


# ------------------------------------------------------------------------ the generic class


def test_backbone_class_with_real_modules():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    weight = conv.weight.detach().clone()
    b = Backbone("tiny", {"features": nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))},
                 [("features.0", "c"), ("features.1", "r"), ("features.2", "p")], ["r"])
    assert b.taps == ("r",) and b.tap_channels == {"r": 4} and len(b.features) == 2
    assert torch.equal(b.features[0].weight, weight)  # real modules keep their values
    x = image(8)
    with torch.no_grad():
        torch.testing.assert_close(b(x)["r"], F.relu(F.conv2d(x, weight, conv.bias, padding=1)))
    assert b.min_input_size() == 1 and b.output_shapes(5, 7) == {"r": (4, 5, 7)}
    assert [(p, t) for p, _, t in b.named_stages()] == [("features.0", "c"), ("features.1", "r")]


def test_torch_compile_fullgraph():
    b = net("resnet18", ["relu", "layer2"])
    compiled = torch.compile(b, backend="eager", fullgraph=True)  # dynamo only: no C++ build
    x = image(32)
    with torch.no_grad():
        ref, out = b(x), compiled(x)
    assert list(out) == ["relu", "layer2"] and all(torch.equal(out[t], ref[t]) for t in ref)
