"""Losses against the independent references in tests/references.py (float64), and their input rules."""
import math
import warnings

import pytest
import torch

import perfloss
from perfloss.losses.lpips import packaged_lin_weights_path

from references import alexnet_features, gram, imagenet_normalize, lpips_reference, tv_reference, vgg16_features

ENGINES = ["eager", "lean", "checkpoint"]


def quiet(factory, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory(*args, **kwargs)


def images(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


def state64(loss):
    return {k: v.double() for k, v in loss.backbone.state_dict().items()}


def reference_perceptual(state, x, t, layers, weights, distance, input_range=(0, 1)):
    fx = vgg16_features(state, imagenet_normalize(x, input_range))
    with torch.no_grad():
        ft = vgg16_features(state, imagenet_normalize(t, input_range))
    total = 0
    for layer, w in zip(layers, weights):
        a, b = fx[layer], ft[layer]
        if distance == "mse":
            d = ((a - b) ** 2).mean(dim=(1, 2, 3))
        elif distance == "l1":
            d = (a - b).abs().mean(dim=(1, 2, 3))
        elif distance == "cosine":
            d = (1 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)).mean(dim=(1, 2))
        else:
            na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
            d = ((na - nb) ** 2).sum(1).mean(dim=(1, 2))
        total = total + w * d
    return total


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("distance", ["mse", "l1", "cosine", "lpips"])
def test_perceptual_value_and_gradient(distance, engine):
    layers, weights = ["relu1_2", "relu2_2"], [0.5, 2.0]
    loss = quiet(perfloss.PerceptualLoss, "vgg16", layers, weights, distance=distance, weights=None,
                 reduction="none", engine=engine).double()
    x = images(2, 3, 20, 18, seed=1).requires_grad_(True)
    t = images(2, 3, 20, 18, seed=2)
    ours = loss(x, t)
    ours.sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    ref = reference_perceptual(state64(loss), xr, t, layers, weights, distance)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-7, atol=1e-12)
    assert t.grad is None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_perceptual_reduction_and_range(reduction):
    loss = quiet(perfloss.PerceptualLoss, "vgg16", ["relu2_2"], weights=None, input_range=(-1, 1),
                 reduction=reduction, engine="eager").double()
    x, t = images(3, 3, 16, 16, seed=3) * 2 - 1, images(3, 3, 16, 16, seed=4) * 2 - 1
    per_sample = reference_perceptual(state64(loss), x, t, ["relu2_2"], [1.0], "mse", input_range=(-1, 1))
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    torch.testing.assert_close(loss(x, t), expected.detach())


def test_perceptual_gradcheck():
    loss = quiet(perfloss.PerceptualLoss, "vgg16", ["relu1_2"], weights=None, engine="eager").double()
    x, t = images(1, 3, 6, 5, seed=5).requires_grad_(True), images(1, 3, 6, 5, seed=6)
    assert torch.autograd.gradcheck(lambda a: loss(a, t), (x,))


def test_grayscale_is_replicated_rgb():
    loss = quiet(perfloss.PerceptualLoss, "vgg16", ["relu1_2"], weights=None, engine="eager").double()
    g, h = images(2, 1, 16, 16, seed=7), images(2, 1, 16, 16, seed=8)
    torch.testing.assert_close(loss(g, h), loss(g.expand(-1, 3, -1, -1), h.expand(-1, 3, -1, -1)))


def test_gradient_reaches_a_target_that_requires_grad():
    loss = quiet(perfloss.PerceptualLoss, "vgg16", ["relu2_2"], weights=None).double()
    x = images(2, 3, 16, 16, seed=9).requires_grad_(True)
    t = images(2, 3, 16, 16, seed=10).requires_grad_(True)
    loss(x, t).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def reference_style(state, x, style, layers, weights):
    fx = vgg16_features(state, imagenet_normalize(x))
    fs = vgg16_features(state, imagenet_normalize(style))
    return sum(w * ((gram(fx[l]) - gram(fs[l])) ** 2).sum(dim=(1, 2)) for l, w in zip(layers, weights))


@pytest.mark.parametrize("engine", ENGINES)
def test_style_loss_cached_target_and_batch_target(engine):
    layers, weights = ["relu1_2", "relu2_2", "relu3_3"], [1.0, 0.5, 3.0]
    loss = quiet(perfloss.StyleLoss, "vgg16", layers, weights, weights=None, reduction="none", engine=engine).double()
    x, style = images(2, 3, 16, 16, seed=11).requires_grad_(True), images(1, 3, 24, 20, seed=12)
    loss.set_target(style)
    ours = loss(x)
    ours.sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    ref = reference_style(state64(loss), xr, style, layers, weights)
    ref.sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-7, atol=1e-15)
    batch_style = images(2, 3, 16, 16, seed=13)
    torch.testing.assert_close(loss(x, batch_style), reference_style(state64(loss), x, batch_style, layers, weights))


def test_johnson_loss_combines_terms():
    loss = quiet(perfloss.JohnsonLoss, tv_weight=1e-2, weights=None, reduction="sum", engine="eager").double()
    x, content, style = images(2, 3, 16, 16, seed=14), images(2, 3, 16, 16, seed=15), images(1, 3, 16, 16, seed=16)
    loss.set_target(style)
    state = state64(loss)
    style_layers = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    expected = (reference_perceptual(state, x, content, ["relu2_2"], [1.0], "mse")
                + reference_style(state, x, style, style_layers, [5.0] * 4)
                + 1e-2 * tv_reference(x, "l2")).sum()
    torch.testing.assert_close(loss(x, content), expected)
    torch.testing.assert_close(loss(x, content, style), expected)


def lpips_module(net, **kwargs):
    return quiet(perfloss.LPIPS, net=net, weights=None, reduction="none", engine="eager", **kwargs).double()


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_reference_formula_with_packaged_lin_weights(net):
    loss = lpips_module(net)
    lin_state = torch.load(packaged_lin_weights_path(net), map_location="cpu", weights_only=True)
    lins = [lin_state[f"lin{i}.model.1.weight"].double() for i in range(len(lin_state))]
    x, t = images(2, 3, 64, 64, seed=17) * 2 - 1, images(2, 3, 64, 64, seed=18) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    features = vgg16_features if net == "vgg" else alexnet_features
    taps = list(perfloss.losses.lpips.NETS[net][1])
    state = state64(loss)
    f0, f1 = features(state, (x - shift) / scale), features(state, (t - shift) / scale)
    expected = lpips_reference([f0[k] for k in taps], [f1[k] for k in taps], lins)
    torch.testing.assert_close(loss(x, t), expected, rtol=1e-6, atol=1e-9)
    # normalize=True takes [0, 1] images
    torch.testing.assert_close(lpips_module(net, normalize=True)(((x + 1) / 2), (t + 1) / 2), expected, rtol=1e-6, atol=1e-9)


def test_lpips_squeeze_runs_and_is_zero_on_identical_inputs():
    loss = lpips_module("squeeze")
    x = images(2, 3, 32, 32, seed=19) * 2 - 1
    assert loss(x, x).abs().max() < 1e-12
    assert (loss(x, images(2, 3, 32, 32, seed=20) * 2 - 1) > 0).all()


def test_lpips_gradient_finite_at_identical_inputs_and_zero_features():
    loss = lpips_module("alex")
    x = (images(1, 3, 64, 64, seed=21) * 2 - 1).requires_grad_(True)
    loss(x, x.detach()).sum().backward()
    assert torch.isfinite(x.grad).all()
    # Negative biases silence every ReLU: all features are zero, where the lpips package gives NaN.
    state = {k: (torch.full_like(v, -1e3) if k.endswith("bias") else v) for k, v in loss.backbone.state_dict().items()}
    dead = quiet(perfloss.LPIPS, net="alex", weights=state, reduction="none", engine="eager").double()
    x.grad = None
    value = dead(x, images(1, 3, 64, 64, seed=22) * 2 - 1)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(x.grad).all()


def test_lpips_lin_weights_from_path_and_errors(tmp_path):
    state = torch.load(packaged_lin_weights_path("alex"), map_location="cpu", weights_only=True)
    path = tmp_path / "lin.pth"
    torch.save(state, path)
    a, b = lpips_module("alex", lin_weights=str(path)), lpips_module("alex")
    x, t = images(1, 3, 64, 64, seed=23) * 2 - 1, images(1, 3, 64, 64, seed=24) * 2 - 1
    torch.testing.assert_close(a(x, t), b(x, t))
    del state["lin4.model.1.weight"]
    with pytest.raises(ValueError, match="lin_weights"):
        lpips_module("alex", lin_weights=state)
    with pytest.raises(ValueError, match="net"):
        lpips_module("resnet")


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_tv_loss(kind):
    x = images(2, 3, 7, 5, seed=25).requires_grad_(True)
    torch.testing.assert_close(perfloss.TVLoss(kind, reduction="none")(x), tv_reference(x, kind))
    assert torch.autograd.gradcheck(lambda a: perfloss.TVLoss(kind, reduction="sum")(a), (x,))


def test_multiscale_loss_scales_and_output_lists():
    inner = quiet(perfloss.PerceptualLoss, "vgg16", ["relu1_2"], distance="l1", weights=None, engine="eager").double()
    x, t = images(2, 3, 32, 32, seed=26), images(2, 3, 32, 32, seed=27)
    pool = lambda a, k: torch.nn.functional.avg_pool2d(a, k) if k > 1 else a  # area = box filter here
    expected = sum(w * inner(pool(x, k), pool(t, k)) for k, w in [(1, 1.0), (2, 0.5), (4, 0.25)])
    ms = perfloss.MultiScaleLoss(inner, scales=(1, 0.5, 0.25), scale_weights=(1.0, 0.5, 0.25))
    torch.testing.assert_close(ms(x, t), expected)
    outputs = [pool(x, 4), pool(x, 2), x]
    expected_list = inner(outputs[0], pool(t, 4)) + inner(outputs[1], pool(t, 2)) + inner(x, t)
    torch.testing.assert_close(perfloss.MultiScaleLoss(inner)(outputs, t), expected_list)
    with pytest.raises(ValueError, match="scales"):
        perfloss.MultiScaleLoss(inner, scales=(1, 2))


@pytest.fixture(scope="module")
def small_loss():
    return quiet(perfloss.PerceptualLoss, "vgg16", ["relu3_3"], weights=None, engine="eager")


@pytest.mark.parametrize("make_input, error, match", [
    (lambda: torch.rand(2, 4, 32, 32), ValueError, "input must have 1 or 3 channels"),
    (lambda: torch.rand(3, 32, 32), ValueError, "input must be a 4-D"),
    (lambda: torch.randint(0, 255, (2, 3, 32, 32)), TypeError, "input must be a floating-point"),
    (lambda: [[0.0]], TypeError, "input must be a torch.Tensor"),
    (lambda: torch.rand(2, 3, 2, 2), ValueError, "relu3_3.*at least"),
])
def test_bad_input_raises(small_loss, make_input, error, match):
    x = make_input()
    t = torch.rand(*x.shape) if isinstance(x, torch.Tensor) else torch.rand(2, 3, 32, 32)
    with pytest.raises(error, match=match):
        small_loss(x, t)


def test_bad_target_raises(small_loss):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="same shape"):
        small_loss(x, torch.rand(2, 3, 32, 30))
    with pytest.raises(TypeError, match="same dtype"):
        small_loss(x, torch.rand(2, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match="target must have 1 or 3 channels"):
        small_loss(x, torch.rand(2, 2, 32, 32))


@pytest.mark.parametrize("kwargs, match", [
    ({"distance": "l3"}, "distance"), ({"reduction": "avg"}, "reduction"), ({"engine": "fast"}, "engine"),
    ({"input_range": (1, 0)}, "input_range"), ({"input_range": 1}, "input_range"), ({"layers": ()}, "layers"),
    ({"layers": ["relu9_9"]}, "relu9_9"), ({"layers": ["relu1_2"], "layer_weights": [1, 2]}, "layer_weights"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quiet(perfloss.PerceptualLoss, **{"weights": None, **kwargs})


def test_check_range_is_opt_in():
    loss = quiet(perfloss.PerceptualLoss, "vgg16", ["relu1_2"], weights=None, check_range=True)
    with pytest.raises(ValueError, match=r"input values span .* input_range is \(0, 1\)"):
        loss(torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="target contains NaN"):
        loss(torch.rand(1, 3, 16, 16), torch.full((1, 3, 16, 16), math.nan))
    unchecked = quiet(perfloss.PerceptualLoss, "vgg16", ["relu1_2"], weights=None)
    unchecked(torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16))


def test_style_loss_without_target_raises():
    loss = quiet(perfloss.StyleLoss, weights=None)
    with pytest.raises(ValueError, match="set_target"):
        loss(torch.rand(1, 3, 32, 32))
    loss.set_target(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="style target batch"):
        loss(torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32))


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_lpips_lean_engine_matches_eager(net):
    eager = lpips_module(net)
    lean = quiet(perfloss.LPIPS, net=net, weights=eager.backbone.state_dict(), reduction="none",
                 engine="lean").double()
    x = (images(2, 3, 48, 48, seed=28) * 2 - 1).requires_grad_(True)
    t = images(2, 3, 48, 48, seed=29) * 2 - 1
    ours = lean(x, t)
    (g_lean,) = torch.autograd.grad(ours.sum(), x)
    ref = eager(x, t)
    (g_eager,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(g_lean, g_eager, rtol=1e-8, atol=1e-13)
