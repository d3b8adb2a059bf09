"""The loss-network study's networks (issue 13): ResNeXt-50, DenseNet-121, GoogLeNet, Inception-v3,
EfficientNet-B0/B7: parameter counts, torchvision's state-dict layout, shapes, the study's taps,
transform_input, and the lean engine against eager autograd.

Expected values are written out here from torchvision's architectures and published figures, not
computed by the code under test. Heavy networks are built on the meta device (no memory, no RNG);
the lean checks run at small inputs, truncated at a study tap.
"""

import warnings

import pytest
import torch

from perfloss.backbones import (Backbone, densenet, efficientnet, get_backbone, googlenet, inception, list_taps, resnet,
                                study_taps)
from perfloss.engine import lean_loss, plan_for
from perfloss.heads import TapHead

pytestmark = pytest.mark.filterwarnings("ignore:perfloss.*random weights:UserWarning")

ARCH = {"resnext50_32x4d": resnet, "densenet121": densenet, "googlenet": googlenet, "inception_v3": inception,
        "efficientnet_b0": efficientnet, "efficientnet_b7": efficientnet}


def meta_state_dict(name):
    """The full network's state dict (shapes only), built on the meta device."""
    with torch.device("meta"):
        children, _ = ARCH[name].build(name)
    return {f"{key}.{k}": v for key, module in children.items() for k, v in module.state_dict().items()}


def linear(n_in, n_out):
    return {"weight": (n_out, n_in), "bias": (n_out,)}


def basic_conv(n_in, n_out, k):
    """torchvision's BasicConv2d (GoogLeNet / Inception): bias-free conv + BN."""
    kh, kw = (k, k) if isinstance(k, int) else k
    return {"conv.weight": (n_out, n_in, kh, kw), "bn.weight": (n_out,), "bn.bias": (n_out,),
            "bn.running_mean": (n_out,), "bn.running_var": (n_out,), "bn.num_batches_tracked": ()}


def prefixed(prefix, shapes):
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


# The classifier layers torchvision's file holds besides the backbone, from torchvision's definitions.
HEADS = {
    "resnext50_32x4d": prefixed("fc", linear(2048, 1000)),
    "densenet121": prefixed("classifier", linear(1024, 1000)),
    "googlenet": {**prefixed("fc", linear(1024, 1000)),
                  # the aux classifiers are in the .pth file but not in the published parameter count
                  **{k: v for i, c in ((1, 512), (2, 528)) for k, v in prefixed(f"aux{i}", {
                      **prefixed("conv", basic_conv(c, 128, 1)), **prefixed("fc1", linear(2048, 1024)),
                      **prefixed("fc2", linear(1024, 1000))}).items()}},
    "inception_v3": {**prefixed("fc", linear(2048, 1000)),
                     **prefixed("AuxLogits", {**prefixed("conv0", basic_conv(768, 128, 1)),
                                              **prefixed("conv1", basic_conv(128, 768, 5)),
                                              **prefixed("fc", linear(768, 1000))})},
    "efficientnet_b0": prefixed("classifier.1", linear(1280, 1000)),
    "efficientnet_b7": prefixed("classifier.1", linear(2560, 1000)),
}
# Which head keys torchvision's published num_params counts (GoogLeNet's figure is the model without
# aux1/aux2; Inception-v3's is with AuxLogits, the model its weights are published with).
COUNTED_HEAD_PREFIXES = {"googlenet": ("fc.",)}
PUBLISHED_PARAMS = {"resnext50_32x4d": 25_028_904, "densenet121": 7_978_856, "googlenet": 6_624_904,
                    "inception_v3": 27_161_264, "efficientnet_b0": 5_288_548, "efficientnet_b7": 66_347_960}


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_parameter_count_equals_torchvision(name):
    with torch.device("meta"):
        children, _ = ARCH[name].build(name)
    backbone = sum(p.numel() for m in children.values() for p in m.parameters())
    counted = COUNTED_HEAD_PREFIXES.get(name, ("",))
    head = sum(_numel(shape) for key, shape in HEADS[name].items()
               if key.startswith(counted) and not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert backbone + head == PUBLISHED_PARAMS[name]


# Convolutions and BatchNorms per network, counted from the architecture descriptions:
#   resnext50: stem 1 + 16 bottlenecks x 3 + 4 downsamples = 53 of each;
#   densenet121: stem 1 + 58 dense layers x 2 + 3 transitions = 120 convs, + norm5 = 121 BNs;
#   googlenet: 3 stem + 9 modules x 6 = 57; inception_v3: 5 stem + 3x7 (A) + 4 (B) + 4x10 (C) + 6 (D) + 2x9 (E) = 94;
#   efficientnet_b0: 16 blocks (1 without expansion: dw, SE fc1/fc2, project = 4 convs, 2 BNs; 15 with:
#   5 convs, 3 BNs) + stem + last conv = 81 convs, 49 BNs; b7: ceil(3.1 x (1,2,2,3,3,4,1)) = 4,7,7,10,10,13,4
#   = 55 blocks, the first 4 without expansion: 1 + 16 + 51x5 + 1 = 273 convs, 1 + 8 + 51x3 + 1 = 163 BNs.
LAYER_COUNTS = {"resnext50_32x4d": (53, 53), "densenet121": (120, 121), "googlenet": (57, 57),
                "inception_v3": (94, 94), "efficientnet_b0": (81, 49), "efficientnet_b7": (273, 163)}

# Hand-written keys and shapes (torchvision's names), a sample per network including each kind of module.
SAMPLE_KEYS = {
    "resnext50_32x4d": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (128, 64, 1, 1),
                        "layer1.0.conv2.weight": (128, 4, 3, 3), "layer1.0.conv3.weight": (256, 128, 1, 1),
                        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer4.2.conv2.weight": (1024, 32, 3, 3),
                        "layer4.2.bn3.running_var": (2048,)},
    "densenet121": {"features.conv0.weight": (64, 3, 7, 7), "features.norm0.running_mean": (64,),
                    "features.denseblock1.denselayer1.norm1.weight": (64,),
                    "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
                    "features.denseblock1.denselayer6.conv2.weight": (32, 128, 3, 3),
                    "features.transition1.conv.weight": (128, 256, 1, 1),
                    "features.denseblock4.denselayer16.norm1.weight": (992,),
                    "features.norm5.bias": (1024,)},
    "googlenet": {"conv1.conv.weight": (64, 3, 7, 7), "conv1.bn.running_var": (64,),
                  "conv3.conv.weight": (192, 64, 3, 3), "inception3a.branch1.conv.weight": (64, 192, 1, 1),
                  "inception3a.branch2.1.conv.weight": (128, 96, 3, 3),
                  "inception3a.branch3.1.conv.weight": (32, 16, 3, 3),
                  "inception3a.branch4.1.conv.weight": (32, 192, 1, 1),
                  "inception5b.branch4.1.bn.bias": (128,)},
    "inception_v3": {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
                     "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
                     "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                     "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
                     "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                     "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
                     "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1), "Mixed_7c.branch_pool.bn.bias": (192,)},
    "efficientnet_b0": {"features.0.0.weight": (32, 3, 3, 3), "features.0.1.running_var": (32,),
                        "features.1.0.block.0.0.weight": (32, 1, 3, 3),
                        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1), "features.1.0.block.1.fc2.bias": (32,),
                        "features.1.0.block.2.0.weight": (16, 32, 1, 1),
                        "features.2.0.block.0.0.weight": (96, 16, 1, 1),
                        "features.3.1.block.1.0.weight": (240, 1, 5, 5),
                        "features.6.3.block.2.fc1.weight": (48, 1152, 1, 1),
                        "features.7.0.block.3.1.weight": (320,), "features.8.0.weight": (1280, 320, 1, 1)},
    "efficientnet_b7": {"features.0.0.weight": (64, 3, 3, 3), "features.1.3.block.0.0.weight": (32, 1, 3, 3),
                        "features.1.3.block.1.fc1.weight": (8, 32, 1, 1),
                        "features.2.0.block.0.0.weight": (192, 32, 1, 1),
                        "features.4.9.block.2.fc1.weight": (40, 960, 1, 1),
                        "features.6.12.block.1.0.weight": (2304, 1, 5, 5),
                        "features.7.3.block.3.0.weight": (640, 3840, 1, 1), "features.8.0.weight": (2560, 640, 1, 1),
                        "features.8.1.running_mean": (2560,)},
}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_state_dict_layout(name):
    sd = meta_state_dict(name)
    for key, shape in SAMPLE_KEYS[name].items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    convs = sum(1 for k, v in sd.items() if k.endswith("weight") and v.dim() == 4)
    bns = sum(1 for k in sd if k.endswith("running_var"))
    assert (convs, bns) == LAYER_COUNTS[name]
    assert not any(k.startswith(p) for k in sd for p in ARCH[name].HEAD_PREFIXES)


def torchvision_file(name, legacy=False, seed=0):
    """A state dict in torchvision's file layout: the backbone's keys (random values), the head's keys
    (which must be ignored), and, ``legacy``, DenseNet's pre-0.3 "norm.1" names as in its .pth."""
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.rand(v.shape, generator=g) if v.is_floating_point() else torch.zeros((), dtype=torch.long)
          for k, v in meta_state_dict(name).items()}
    sd.update({k: torch.rand(shape, generator=g) for k, shape in HEADS[name].items()})
    if legacy:
        sd = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2.").replace(".conv1.", ".conv.1.")
              .replace(".norm2.", ".norm.2."): v for k, v in sd.items()}
    return sd


@pytest.mark.parametrize("name,legacy", [("resnext50_32x4d", False), ("densenet121", True),
                                         ("googlenet", False), ("inception_v3", False), ("efficientnet_b0", False)])
def test_torchvision_state_dict_loads_strictly(tmp_path, name, legacy):
    sd = torchvision_file(name, legacy)
    weights = sd
    if legacy:  # as torchvision's densenet121-a639ec97.pth: a file with the old names
        assert "features.denseblock1.denselayer1.norm.1.weight" in sd
        weights = tmp_path / "densenet121.pth"
        torch.save(sd, weights)
    net = get_backbone(name, list_taps(name)[-1], weights=weights)
    own = net.state_dict()
    checked = 0
    for key, value in own.items():
        source = key
        if legacy:
            for new, old in ((".norm1.", ".norm.1."), (".norm2.", ".norm.2."), (".conv1.", ".conv.1."),
                             (".conv2.", ".conv.2.")):
                source = source.replace(new, old)
        if value.is_floating_point():
            assert torch.equal(value, sd[source]), key
            checked += 1
    assert checked > 100
    # a missing backbone key is an error, a head key is not needed
    broken = dict(sd)
    del broken[next(k for k in broken if k.endswith("weight") and not k.startswith(ARCH[name].HEAD_PREFIXES))]
    with pytest.raises(ValueError, match="missing keys"):
        get_backbone(name, list_taps(name)[-1], weights=broken)


# Hand-written tap shapes at 224x224 (299x299 for Inception-v3), from torchvision's comments and the papers.
SHAPES = {
    "resnext50_32x4d": (224, {"relu": (64, 112, 112), "layer1": (256, 56, 56), "layer2": (512, 28, 28),
                              "layer3": (1024, 14, 14), "layer4": (2048, 7, 7)}),
    "densenet121": (224, {"relu0": (64, 112, 112), "denseblock1": (256, 56, 56), "transition1": (128, 28, 28),
                          "denseblock2": (512, 28, 28), "transition2": (256, 14, 14), "denseblock3": (1024, 14, 14),
                          "transition3": (512, 7, 7), "denseblock4": (1024, 7, 7), "norm5": (1024, 7, 7)}),
    "googlenet": (224, {"conv1": (64, 112, 112), "conv2": (64, 56, 56), "conv3": (192, 56, 56),
                        "inception3a": (256, 28, 28), "inception3b": (480, 28, 28), "inception4a": (512, 14, 14),
                        "inception4b": (512, 14, 14), "inception4c": (512, 14, 14), "inception4d": (528, 14, 14),
                        "inception4e": (832, 14, 14), "inception5a": (832, 7, 7), "inception5b": (1024, 7, 7)}),
    "inception_v3": (299, {"Conv2d_1a_3x3": (32, 149, 149), "Conv2d_2a_3x3": (32, 147, 147),
                           "Conv2d_2b_3x3": (64, 147, 147), "Conv2d_3b_1x1": (80, 73, 73),
                           "Conv2d_4a_3x3": (192, 71, 71), "Mixed_5b": (256, 35, 35), "Mixed_5c": (288, 35, 35),
                           "Mixed_5d": (288, 35, 35), "Mixed_6a": (768, 17, 17), "Mixed_6b": (768, 17, 17),
                           "Mixed_6c": (768, 17, 17), "Mixed_6d": (768, 17, 17), "Mixed_6e": (768, 17, 17),
                           "Mixed_7a": (1280, 8, 8), "Mixed_7b": (2048, 8, 8), "Mixed_7c": (2048, 8, 8)}),
    "efficientnet_b0": (224, {"stem": (32, 112, 112), "stage1": (16, 112, 112), "stage2": (24, 56, 56),
                              "stage3": (40, 28, 28), "stage4": (80, 14, 14), "stage5": (112, 14, 14),
                              "stage6": (192, 7, 7), "stage7": (320, 7, 7), "top": (1280, 7, 7)}),
    "efficientnet_b7": (224, {"stem": (64, 112, 112), "stage1": (32, 112, 112), "stage2": (48, 56, 56),
                              "stage3": (80, 28, 28), "stage4": (160, 14, 14), "stage5": (224, 14, 14),
                              "stage6": (384, 7, 7), "stage7": (640, 7, 7), "top": (2560, 7, 7)}),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_taps_and_shapes(name):
    size, expected = SHAPES[name]
    assert list_taps(name) == list(expected)
    with torch.device("meta"):
        children, stages = ARCH[name].build(name)
        root = torch.nn.Module()
        for key, module in children.items():
            root.add_module(key, module)
        x = torch.empty(1, 3, size, size)
        got = {}
        for path, tap in stages:
            x = root.get_submodule(path)(x)
            if tap is not None:
                got[tap] = tuple(x.shape[1:])
    assert got == expected


@pytest.mark.parametrize("name,size", [("densenet121", 29), ("googlenet", 15), ("inception_v3", 75)])
def test_min_input_size(name, size):  # torchvision's published min_size for these weights
    with torch.device("meta"):
        children, stages = ARCH[name].build(name)
    net = Backbone(name, children, stages)
    assert net.min_input_size() == size


# The study's extraction points, as issue 13 and Pihlgren et al. (2023) list them.
STUDY = {
    "alexnet": ["relu1", "relu2", "relu3", "relu5"], "vgg11": ["relu1_1", "relu2_1", "relu3_2", "relu5_2"],
    "vgg16": ["relu1_2", "relu2_2", "relu3_3", "relu5_3"], "vgg16_bn": ["relu1_2", "relu2_2", "relu3_3", "relu5_3"],
    "vgg19": ["relu1_2", "relu2_2", "relu3_4", "relu5_4"], "resnet18": ["relu", "layer1", "layer2", "layer4"],
    "resnet50": ["relu", "layer1", "layer2", "layer4"], "resnext50_32x4d": ["relu", "layer1", "layer2", "layer4"],
    "densenet121": ["relu0", "denseblock1", "denseblock2", "denseblock4"],
    "googlenet": ["conv1", "inception3a", "inception4a", "inception5b"],
    "inception_v3": ["Conv2d_2b_3x3", "Mixed_5b", "Mixed_5d", "Mixed_6e"],
    "squeezenet1_1": ["relu1", "fire2", "fire5", "fire9"],
    "efficientnet_b0": ["stem", "stage1", "stage4", "stage7"],
    "efficientnet_b7": ["stem", "stage1", "stage4", "stage7"],
}


def test_study_taps():
    for name, taps in STUDY.items():
        assert study_taps(name) == taps
        all_taps = list_taps(name)
        assert [t for t in all_taps if t in taps] == taps, name  # present, in network order
    with pytest.raises(ValueError, match="not one of the study's networks"):
        study_taps("vgg13")
    with pytest.raises(ValueError, match="unknown backbone"):
        study_taps("resnet101")


def torchvision_transform_input(x):
    """torchvision's GoogLeNet / Inception3 ``_transform_input``, transcribed."""
    x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    return torch.cat((x_ch0, x_ch1, x_ch2), 1)


@pytest.mark.parametrize("name,tap", [("googlenet", "conv1"), ("inception_v3", "Conv2d_1a_3x3")])
def test_transform_input_as_torchvision_and_lean(name, tap):
    net32 = get_backbone(name, tap)
    x = torch.randn(2, 3, 40, 37)
    first = getattr(net32, "conv1" if name == "googlenet" else "Conv2d_1a_3x3")
    torch.testing.assert_close(net32(x)[tap], first(torchvision_transform_input(x)), rtol=1e-6, atol=1e-6)
    net64 = get_backbone(name, tap).double()
    x64 = x.double()
    torch.testing.assert_close(net64.transform_input(x64), torchvision_transform_input(x64), rtol=1e-15, atol=1e-15)
    assert "transform_input.scale" not in net64.state_dict()
    # a per-channel affine with constant buffers: one scale step and one add step, nothing kept but them
    kinds = [s.kind for s in plan_for(net32).steps if s.kind != "const"]
    assert kinds[:2] == ["scale", "add"]


def eager_total(net, heads, x, target_x):
    feats = net(x)
    with torch.no_grad():
        tf = net(target_x)
    return sum(h.values(feats[h.tap], h.prepare_target(tf[h.tap])) for h in heads)


def lean_vs_eager(name, taps, size, dtype=torch.float64):
    net = get_backbone(name, taps).to(dtype)
    plan = plan_for(net)
    kinds = ("mse", "l1", "mse", "l1")
    heads = [TapHead(tap, kinds[i % 4], 1.0 + i) for i, tap in enumerate(net.taps)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size + 2, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randn(2, 3, size, size + 2, generator=g, dtype=dtype)
    v = lean_loss(plan, x, heads, target_x=t)
    ve = eager_total(net, heads, x, t)
    gv = torch.rand(2, generator=g, dtype=dtype)
    (g1,) = torch.autograd.grad(v, x, gv)
    (g2,) = torch.autograd.grad(ve, x, gv)
    return plan, (v, ve), (g1, g2)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", ["resnext50_32x4d", "densenet121", "googlenet", "inception_v3"])
def test_study_plans_have_no_fallback(name):
    plan = plan_for(get_backbone(name, study_taps(name)))
    assert plan.is_lean and not plan.fallbacks, plan.report()
    assert "FALLBACK" not in plan.report()


# Lean against eager, float64, at study taps; DenseNet and ResNeXt truncated early to keep CI fast (their
# deeper blocks repeat the same ops; ResNet-50's deeper layers are tested in test_engine.py). Odd sizes
# exercise ceil mode and dropped rows/columns; 45 is near Inception-v3's smallest input at Mixed_6e (43).
@pytest.mark.parametrize("name,taps,size", [("densenet121", ["relu0", "denseblock1", "denseblock2"], 29),
                                            ("googlenet", None, 19), ("inception_v3", None, 45),
                                            ("resnext50_32x4d", ["relu", "layer1"], 17)])
def test_lean_networks_exact(name, taps, size):
    plan, (v, ve), (g1, g2) = lean_vs_eager(name, taps or study_taps(name), size)
    assert plan.is_lean, plan.report()
    torch.testing.assert_close(v, ve, rtol=1e-12, atol=1e-14)
    assert rel_err(g1, g2) < 1e-10


def test_lean_networks_exact_float32():
    plan, (v, ve), (g1, g2) = lean_vs_eager("googlenet", ["conv1", "inception3a", "inception4a"], 31, torch.float32)
    torch.testing.assert_close(v, ve, rtol=1e-5, atol=1e-6)
    assert rel_err(g1, g2) < 1e-5


def fallback_kinds(plan):
    return sorted({s.reason.split(" has no")[0] for s in plan.fallbacks})


def test_efficientnet_b0_fallbacks_reported_and_exact():
    plan, (v, ve), (g1, g2) = lean_vs_eager("efficientnet_b0", ["stem", "stage1", "stage4"], 19)
    # stem SiLU; per block: one SiLU per conv-BN-SiLU (1 in the first block, 2 in the 7 others up to
    # stage4: 2 + 2 + 3 blocks) and the SE's SiLU, sigmoid and product: 1 + (1 + 3) + 7 x (2 + 3) = 40
    assert len(plan.fallbacks) == 40
    assert fallback_kinds(plan) == ["SiLU", "Sigmoid", "call_function mul"]
    report = plan.report()
    assert report.count("FALLBACK") == 40 and "SiLU" in report and "Sigmoid" in report
    lean_kinds = {s.kind for s in plan.steps if s.lean}
    assert {"conv", "bn", "add", "adaptive_avgpool"} <= lean_kinds
    torch.testing.assert_close(v, ve, rtol=1e-12, atol=1e-14)
    assert rel_err(g1, g2) < 1e-10


def test_efficientnet_b7_early_taps_exact():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan, (v, ve), (g1, g2) = lean_vs_eager("efficientnet_b7", ["stem", "stage1"], 9)
    # stem SiLU + 4 blocks x (depthwise SiLU + SE SiLU, sigmoid, product)
    assert len(plan.fallbacks) == 1 + 4 * 4
    torch.testing.assert_close(v, ve, rtol=1e-12, atol=1e-14)
    assert rel_err(g1, g2) < 1e-10
