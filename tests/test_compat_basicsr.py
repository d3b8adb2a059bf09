"""perfloss.compat.basicsr.PerceptualLoss against BasicSR 1.4.2's own PerceptualLoss
(basicsr/losses/basic_loss.py and basicsr/archs/vgg_arch.py, loaded by file path with the stand-in
torchvision; the package __init__ needs cv2 and the training stack)."""
import warnings

import pytest
import torch

from perfloss.compat.basicsr import PerceptualLoss
import peers
from peers import basicsr_loss_module, random_state

torchvision_standin = peers.torchvision_standin  # the fixture, for the tests here

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-10, atol=1e-13)}
ESRGAN = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def vgg19_state():
    return random_state("vgg19")


def peer_loss(monkeypatch, standin, state, dtype, layer_weights, **kwargs):
    standin.states["vgg19"] = state
    criterion = kwargs.pop("criterion", "l1")
    # basicsr 1.4.2 builds 'l2' as torch.nn.L2loss, which does not exist: build with 'l1', then set the
    # MSELoss its source means (basic_loss.py, PerceptualLoss.__init__ and forward)
    peer = basicsr_loss_module(monkeypatch).PerceptualLoss(layer_weights, criterion="l1", **kwargs).to(dtype)
    if criterion == "l2":
        peer.criterion, peer.criterion_type = torch.nn.MSELoss(), "l2"
    if dtype == torch.float64 and hasattr(peer.vgg, "mean"):  # its constants are float32 buffers
        peer.vgg.mean.copy_(torch.tensor(MEAN, dtype=dtype).view(1, 3, 1, 1))
        peer.vgg.std.copy_(torch.tensor(STD, dtype=dtype).view(1, 3, 1, 1))
    return peer


def our_loss(state, dtype, layer_weights, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PerceptualLoss(layer_weights, weights=state, **kwargs).to(dtype)


def images(dtype, lo=0.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=dtype)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen, dtype=dtype)).clamp(0, 1)
    return x * (1 - lo) + lo, y * (1 - lo) + lo


def assert_same(peer, ours, x, y, dtype):
    results = []
    for module in (peer, ours):
        xi, yi = x.clone().requires_grad_(), y.clone().requires_grad_()
        percep, style = module(xi, yi)
        total = sum(t for t in (percep, style) if t is not None)
        total.backward()
        results.append((percep, style, xi.grad, yi.grad))
    (p0, s0, g0, t0), (p1, s1, g1, t1) = results
    for a, b in ((p0, p1), (s0, s1)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, **TOL[dtype])
    rtol = TOL[dtype]["rtol"]
    torch.testing.assert_close(g1, g0, rtol=rtol, atol=rtol * g0.abs().max().item())
    assert t0 is None and t1 is None  # the target is detached on both sides


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_esrgan_perceptual_loss_matches_basicsr(monkeypatch, torchvision_standin, vgg19_state, dtype):
    peer = peer_loss(monkeypatch, torchvision_standin, vgg19_state, dtype, ESRGAN)
    ours = our_loss(vgg19_state, dtype, ESRGAN)
    x, y = images(dtype)
    assert_same(peer, ours, x, y, dtype)


def test_l2_style_range_norm_without_input_norm_matches_basicsr(monkeypatch, torchvision_standin, vgg19_state):
    dtype = torch.float64
    layers = {"relu1_1": 1.0, "pool2": 0.5, "relu3_2": 2.0}
    kwargs = dict(use_input_norm=False, range_norm=True, perceptual_weight=0.7, style_weight=3.0, criterion="l2")
    peer = peer_loss(monkeypatch, torchvision_standin, vgg19_state, dtype, layers, **kwargs)
    ours = our_loss(vgg19_state, dtype, layers, **kwargs)
    x, y = images(dtype, lo=-1.0)
    assert_same(peer, ours, x, y, dtype)


def test_zero_weights_give_none(vgg19_state):
    loss = our_loss(vgg19_state, torch.float32, {"conv1_2": 1.0})
    x, y = images(torch.float32)
    percep, style = loss(x, y)
    assert style is None and percep.dim() == 0
    with pytest.raises(ValueError, match="criterion='fro'"):
        PerceptualLoss(ESRGAN, criterion="fro", weights=None)
    with pytest.raises(ValueError, match="style_weight > 0 with criterion='l1'"):
        PerceptualLoss(ESRGAN, style_weight=1.0, weights=None)
    with pytest.raises(ValueError, match="vgg_type must be one of"):
        PerceptualLoss(ESRGAN, vgg_type="vgg20", weights=None)
