"""perfloss.compat.piq against piq 0.8.0 itself (imported with the stand-in torchvision; the weights piq
downloads at run time are served from the files perfloss reads: the lpips wheel's vgg.pth and the
dists-pytorch wheel's weights.pt)."""
import warnings

import pytest
import torch

from perfloss.compat import piq as compat
from perfloss.inputs import IMAGENET_MEAN, IMAGENET_STD
from perfloss.losses.dists import packaged_dists_weights_path
from perfloss.losses.lpips import packaged_lin_weights_path
import peers
from peers import import_peer, random_state

torchvision_standin = peers.torchvision_standin  # the fixture, for the tests here

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-10, atol=1e-13)}


@pytest.fixture(scope="module")
def states():
    return {name: random_state(name) for name in ("vgg16", "vgg19")}


@pytest.fixture
def piq(monkeypatch, torchvision_standin, states):
    torchvision_standin.states.update(states)
    piq = import_peer("piq")

    def served(url, progress=True, **kwargs):
        if url.endswith("lpips_weights.pt"):
            lins = torch.load(packaged_lin_weights_path("vgg"), map_location="cpu", weights_only=True)
            return [lins[f"lin{i}.model.1.weight"] for i in range(5)]
        if url.endswith("dists_weights.pt"):
            return torch.load(packaged_dists_weights_path(), map_location="cpu", weights_only=True)
        raise AssertionError(f"unexpected download {url}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", served)
    return piq


def ours(cls, states, extractor="vgg16", **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(vgg_weights=states[extractor], **kwargs)


def images(dtype, size=32, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=gen, dtype=dtype)
    y = (x + 0.2 * torch.randn(x.shape, generator=gen, dtype=dtype)).clamp(0, 1)
    return x, y


def assert_same(peer, mine, dtype, size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    # piq keeps mean and std as float32 tensors: give its float64 run the exact constants
    peer.mean = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    peer.std = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    x, y = images(dtype, size)
    results = []
    for module in (peer, mine):
        xi = x.clone().requires_grad_()
        value = module(xi, y)
        value.sum().backward()
        results.append((value, xi.grad))
    (v0, g0), (v1, g1) = results
    assert v1.shape == v0.shape
    torch.testing.assert_close(v1, v0, **TOL[dtype])
    rtol = TOL[dtype]["rtol"]
    torch.testing.assert_close(g1, g0, rtol=rtol, atol=rtol * g0.abs().max().item())


CONTENT_CASES = [
    dict(),
    dict(feature_extractor="vgg19", layers=("conv2_1", "relu3_4", "pool4"), weights=[0.5, 1.0, 2.0], distance="mae",
         reduction="none"),
    dict(layers=("relu1_2", "relu2_2"), weights=[1.0, 0.3], normalize_features=True, reduction="sum",
         replace_pooling=True),
    dict(layers=("relu2_1",), mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 0.75]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(len(CONTENT_CASES)))
def test_content_loss_matches_piq(piq, states, case, dtype):
    kwargs = CONTENT_CASES[case]
    peer = piq.ContentLoss(**kwargs)
    mine = ours(compat.ContentLoss, states, kwargs.get("feature_extractor", "vgg16"), **kwargs).to(dtype)
    assert_same(peer, mine, dtype, mean=kwargs.get("mean", IMAGENET_MEAN), std=kwargs.get("std", IMAGENET_STD))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_style_loss_matches_piq(piq, states, dtype):
    kwargs = dict(layers=("relu1_2", "relu3_3"), weights=[1e-3, 2e-3], reduction="none")
    assert_same(piq.StyleLoss(**kwargs), ours(compat.StyleLoss, states, **kwargs).to(dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lpips_matches_piq(piq, states, dtype):
    peer = piq.LPIPS(reduction="none")
    peer.weights = [w.to(dtype) for w in peer.weights]
    assert_same(peer, ours(compat.LPIPS, states, reduction="none").to(dtype), dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_dists_matches_piq(piq, states, reduction):
    assert_same(piq.DISTS(reduction=reduction), ours(compat.DISTS, states, reduction=reduction), torch.float32)


def test_dists_resizes_large_inputs_as_piq(piq, states):
    """Values only (gradients are compared at 32 x 32 above; VGG-16 at 256 x 256 is slow here)."""
    x, y = images(torch.float32, size=257, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(ours(compat.DISTS, states)(x, y), piq.DISTS()(x, y), **TOL[torch.float32])


def test_arguments_perfloss_cannot_honour_are_named(states):
    with pytest.raises(ValueError, match="feature_extractor must be 'vgg16' or 'vgg19'"):
        compat.ContentLoss(feature_extractor=torch.nn.Identity(), vgg_weights=None)
    with pytest.raises(ValueError, match="normalize_features=True with distance='mae'"):
        ours(compat.ContentLoss, states, normalize_features=True, distance="mae")
    with pytest.raises(ValueError, match=r"distance='mae' \(L1 between Gram matrices\)"):
        ours(compat.StyleLoss, states, distance="mae")
    with pytest.raises(ValueError, match=r"allow_layers_weights_mismatch=True is not supported"):
        ours(compat.ContentLoss, states, layers=("relu1_2", "relu2_2"), allow_layers_weights_mismatch=True)
    with pytest.raises(ValueError, match="distance='mae' is not supported by perfloss.compat.piq.LPIPS"):
        ours(compat.LPIPS, states, distance="mae")
