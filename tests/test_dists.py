"""DISTS against the dists-pytorch package itself (0.1, imported with the stand-in torchvision), and the
lean L2-pooling rule against eager autograd."""
import warnings

import pytest
import torch

import perfloss
from perfloss import engine
from perfloss.backbones import get_backbone
from perfloss.losses.dists import TAPS, load_dists_weights, packaged_dists_weights_path
import peers
from peers import import_peer, random_state

torchvision_standin = peers.torchvision_standin  # the fixture, for the tests here

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-10, atol=1e-13)}
# The input gradient goes back through 13 convolutions whose fp32 sums oneDNN orders per CPU kind: 2.5e-5
# of the largest element apart from the package's on an AMD AVX2 machine, within 1e-5 on earlier ones.
# float64 pins the math.
GRAD_RTOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def assert_grad_close(got, expected, dtype):
    """Within the dtype's tolerance relative to the largest gradient element (elementwise relative
    errors of near-zero elements say nothing)."""
    rtol = GRAD_RTOL[dtype]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def quiet(cls, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(*args, **kwargs)


def image_pair(dtype, batch=2, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=gen, dtype=dtype)
    y = (x + 0.2 * torch.rand(batch, 3, size, size, generator=gen, dtype=dtype)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def vgg16_state():
    return random_state("vgg16")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine_name", ["lean", "eager"])
def test_dists_matches_dists_pytorch(torchvision_standin, vgg16_state, dtype, engine_name):
    torchvision_standin.states["vgg16"] = vgg16_state
    peer = import_peer("DISTS_pytorch").DISTS().to(dtype)
    # the package's mean/std buffers are float32 constants: give its float64 run the exact ones
    peer.mean.copy_(torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1))
    peer.std.copy_(torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1))
    ours = quiet(perfloss.DISTS, weights=vgg16_state, reduction="none", engine=engine_name).to(dtype)
    x, y = image_pair(dtype)
    x_peer, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = peer(x_peer, y, require_grad=True)
    got = ours(x_ours, y)
    torch.testing.assert_close(got, expected, **TOL[dtype])
    expected.sum().backward()
    got.sum().backward()
    assert_grad_close(x_ours.grad, x_peer.grad, dtype)


def test_dists_compat_call_form(torchvision_standin, vgg16_state):
    """perfloss.compat.dists_pytorch.DISTS: the package's constructor and forward(x, y, require_grad,
    batch_average), no gradient unless require_grad=True."""
    from perfloss.compat.dists_pytorch import DISTS

    torchvision_standin.states["vgg16"] = vgg16_state
    peer = import_peer("DISTS_pytorch").DISTS()
    ours = quiet(DISTS, weights=vgg16_state)
    x, y = image_pair(torch.float32)
    torch.testing.assert_close(ours(x, y), peer(x, y), **TOL[torch.float32])
    torch.testing.assert_close(ours(x, y, batch_average=True), peer(x, y, batch_average=True), **TOL[torch.float32])
    assert not ours(x.requires_grad_(), y).requires_grad
    assert ours(x[:1], y[:1]).dim() == 0  # the package squeezes a batch of one to a scalar
    with pytest.raises(ValueError, match="load_weights=False"):
        DISTS(load_weights=False, weights=vgg16_state)


def test_dists_is_zero_on_identical_images_with_finite_gradient():
    loss = quiet(perfloss.DISTS, weights=None, reduction="none").double()
    x, _ = image_pair(torch.float64, size=16)  # the smallest input relu5_3 takes
    x.requires_grad_()
    value = loss(x, x.detach())
    torch.testing.assert_close(value, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    value.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_l2_pool_rule_is_lean_and_matches_eager_autograd():
    backbone = quiet(get_backbone, "vgg16", TAPS, None, pooling="l2")
    report = engine.plan_for(backbone).report()
    assert engine.plan_for(backbone).is_lean
    assert report.count("l2pool") == 4 and "keeps its input (the output is recomputed in backward)" in report
    lean = quiet(perfloss.DISTS, weights=None, reduction="none", engine="lean", chunk_size=2).double()
    eager = quiet(perfloss.DISTS, weights=None, reduction="none", engine="eager").double()
    x, y = image_pair(torch.float64, batch=3)
    weights = torch.rand(3, dtype=torch.float64)
    grads = []
    for loss in (lean, eager):
        xi = x.clone().requires_grad_()
        value = loss(xi, y)
        (value * weights).sum().backward()
        grads.append((value.detach(), xi.grad))
    (v_lean, g_lean), (v_eager, g_eager) = grads
    torch.testing.assert_close(v_lean, v_eager, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(g_lean, g_eager, rtol=1e-10, atol=1e-10 * g_eager.abs().max().item())


def test_dists_head_gradient_matches_gradcheck():
    alpha, beta = torch.rand(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64)
    x = torch.rand(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 4, 5, 6, dtype=torch.float64)
    head = perfloss.losses.dists.DISTSHead("relu1_2", alpha, beta)
    assert torch.autograd.gradcheck(lambda f: head.values(f, y), (x,))
    v, g = head.values_and_grad(x.detach(), y)
    (grad,) = torch.autograd.grad(head.values(x, y).sum(), x)
    torch.testing.assert_close(v, head.values(x, y).detach(), rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(g, grad, rtol=1e-10, atol=1e-14)


def test_dists_weights_file_and_errors(tmp_path):
    path = packaged_dists_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    alphas, betas = load_dists_weights(state)
    assert [a.numel() for a in alphas] == [3, 64, 128, 256, 512, 512]
    torch.testing.assert_close(sum(a.sum() for a in alphas) + sum(b.sum() for b in betas),
                               torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"exactly the keys \['alpha', 'beta'\]"):
        load_dists_weights({"alpha": state["alpha"]})
    with pytest.raises(ValueError, match=r"dists_weights\['beta'\] must have shape \(1, 1475, 1, 1\)"):
        load_dists_weights({"alpha": state["alpha"], "beta": state["beta"][:, :10]})
    with pytest.raises(TypeError, match="dists_weights must be None, a path or a state dict"):
        load_dists_weights(3)
