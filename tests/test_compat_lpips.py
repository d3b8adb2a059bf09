"""perfloss.compat.lpips.LPIPS against the lpips package itself (0.1.4, imported with the stand-in
torchvision, the same backbone weights loaded into both; the linear weights are the wheel's on both sides)."""
import warnings

import pytest
import torch
from torch import nn

from perfloss.compat.lpips import LPIPS
import peers
from peers import import_peer, random_state

torchvision_standin = peers.torchvision_standin  # the fixture, for the tests here

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-10, atol=1e-13)}


def assert_grad_close(got, expected, dtype):
    """Within the dtype's relative tolerance of the largest gradient element (elementwise relative
    errors of near-zero elements say nothing)."""
    rtol = TOL[dtype]["rtol"]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * expected.abs().max().item())
BACKBONES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}
SIZE = {"alex": 64, "vgg": 32, "squeeze": 48}
SCALING = ((-0.030, -0.088, -0.188), (0.458, 0.448, 0.450))


@pytest.fixture(scope="module")
def states():
    return {name: random_state(name) for name in BACKBONES.values()}


def pair(net, dtype, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, SIZE[net], SIZE[net], generator=gen, dtype=dtype) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen, dtype=dtype)).clamp(-1, 1)
    return x, y


def both(standin, states, net, dtype, **kwargs):
    """(package module, compat module) on the same weights, in ``dtype``."""
    standin.states[BACKBONES[net]] = states[BACKBONES[net]]
    lpips = import_peer("lpips")
    peer = lpips.LPIPS(net=net, verbose=False, **kwargs).to(dtype)
    if dtype == torch.float64:  # the package's scaling constants are float32 buffers: give it the exact ones
        peer.scaling_layer.shift.copy_(torch.tensor(SCALING[0], dtype=dtype).view(1, 3, 1, 1))
        peer.scaling_layer.scale.copy_(torch.tensor(SCALING[1], dtype=dtype).view(1, 3, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = LPIPS(net=net, verbose=False, weights=states[BACKBONES[net]], **kwargs).to(dtype)
    return peer, ours


def compare(peer_out, our_out, dtype):
    if isinstance(peer_out, tuple):
        compare(peer_out[0], our_out[0], dtype)
        assert len(peer_out[1]) == len(our_out[1])
        for p, o in zip(peer_out[1], our_out[1]):
            compare(p, o, dtype)
        return
    assert our_out.shape == peer_out.shape
    torch.testing.assert_close(our_out, peer_out, **TOL[dtype])


def run_both(peer, ours, x, y, dtype, **forward_kwargs):
    """Values and input gradients of both on the same inputs (gradient of a weighted sum of the outputs)."""
    grads = []
    outs = []
    for module in (peer, ours):
        xi = x.clone().requires_grad_()
        out = module(xi, y, **forward_kwargs)
        value = out[0] if isinstance(out, tuple) else out
        weights = torch.linspace(0.5, 1.5, value.numel(), dtype=dtype).view(value.shape)
        (value * weights).sum().backward()
        outs.append(out)
        grads.append(xi.grad)
    compare(outs[0], outs[1], dtype)
    assert_grad_close(grads[1], grads[0], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_value_and_gradient_match_lpips(torchvision_standin, states, net, dtype):
    peer, ours = both(torchvision_standin, states, net, dtype)
    x, y = pair(net, dtype)
    run_both(peer, ours, x, y, dtype)
    assert ours(x, y).shape == (2, 1, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spatial_per_layer_baseline_and_normalize_match_lpips(torchvision_standin, states, dtype):
    x, y = pair("alex", dtype)
    peer, ours = both(torchvision_standin, states, "alex", dtype, spatial=True)
    run_both(peer, ours, x, y, dtype)
    run_both(peer, ours, x, y, dtype, retPerLayer=True)
    assert ours(x, y).shape == (2, 1, SIZE["alex"], SIZE["alex"])
    peer, ours = both(torchvision_standin, states, "alex", dtype)
    run_both(peer, ours, x, y, dtype, retPerLayer=True)
    run_both(peer, ours, (x + 1) / 2, (y + 1) / 2, dtype, normalize=True)
    peer, ours = both(torchvision_standin, states, "alex", dtype, lpips=False)
    run_both(peer, ours, x, y, dtype)
    peer, ours = both(torchvision_standin, states, "alex", dtype, lpips=False, spatial=True)
    run_both(peer, ours, x, y, dtype, retPerLayer=True)


def user_training_loop(loss_fn, steps=3):
    """A user's loop as written for lpips: a small generator trained on LPIPS of [0, 1] images."""
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1), nn.Sigmoid())
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-2)
    source, target = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(generator(source), target, normalize=True).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in generator.parameters()]


def test_training_loop_runs_unchanged_with_the_compat_class(torchvision_standin, states):
    peer, ours = both(torchvision_standin, states, "alex", torch.float32)
    peer_losses, peer_params = user_training_loop(peer)
    our_losses, our_params = user_training_loop(ours)
    assert len(set(peer_losses)) == 3  # it trained
    torch.testing.assert_close(our_losses, peer_losses, rtol=1e-5, atol=0)
    for p, o in zip(peer_params, our_params):
        torch.testing.assert_close(o, p, rtol=1e-4, atol=1e-6)


def test_arguments_perfloss_cannot_honour_are_named():
    with pytest.raises(ValueError, match="pnet_tune=True"):
        LPIPS(pnet_tune=True, verbose=False, weights=None)
    with pytest.raises(ValueError, match="pretrained=False"):
        LPIPS(pretrained=False, verbose=False, weights=None)
    with pytest.raises(ValueError, match="eval_mode=False with use_dropout=True"):
        LPIPS(eval_mode=False, verbose=False, weights=None)
    with pytest.raises(ValueError, match="version must be '0.1'"):
        LPIPS(version="0.0", verbose=False, weights=None)
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPS(net="resnet", verbose=False, weights=None)


def test_model_path_and_pnet_rand_are_honoured(states):
    from perfloss.losses.lpips import packaged_lin_weights_path

    state = states["alexnet"]
    default = LPIPS(verbose=False, weights=state)
    from_path = LPIPS(verbose=False, weights=state, model_path=packaged_lin_weights_path("alex"))
    for a, b in zip(default.loss.heads, from_path.loss.heads):
        assert torch.equal(a.lin, b.lin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LPIPS(pnet_rand=True, verbose=False)  # a random backbone, as the package's pnet_rand
    assert any("random weights" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="pnet_rand=True asks for a random backbone"):
        LPIPS(pnet_rand=True, verbose=False, weights=state)
    with pytest.raises(ValueError, match="model_path or lin_weights, not both"):
        LPIPS(verbose=False, weights=state, model_path="a.pth", lin_weights="b.pth")
