"""perfloss.compat.torchmetrics against torchmetrics' own LearnedPerceptualImagePatchSimilarity (1.9.0,
imported with the stand-in torchvision; torchmetrics decides torchvision's presence from installed
metadata at import, so its flag is set for the test)."""
import warnings

import pytest
import torch

import peers
from peers import import_peer, random_state

torchvision_standin = peers.torchvision_standin  # the fixture, for the tests here

pytest.importorskip("torchmetrics")
from perfloss.compat.torchmetrics import LearnedPerceptualImagePatchSimilarity  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def alexnet_state():
    return random_state("alexnet")


@pytest.fixture
def peer_class(monkeypatch, torchvision_standin, alexnet_state):
    torchvision_standin.states["alexnet"] = alexnet_state
    lpip = import_peer("torchmetrics.image.lpip")
    functional = import_peer("torchmetrics.functional.image.lpips")
    monkeypatch.setattr(lpip, "_TORCHVISION_AVAILABLE", True)
    monkeypatch.setattr(functional, "_TORCHVISION_AVAILABLE", True)
    return lpip.LearnedPerceptualImagePatchSimilarity


def ours(state, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LearnedPerceptualImagePatchSimilarity(weights=state, **kwargs)


def batches(seed=0, normalize=False):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in (2, 1, 3):
        x = torch.rand(b, 3, SIZE, SIZE, generator=gen)
        y = (x + 0.2 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        out.append((x, y) if normalize else (2 * x - 1, 2 * y - 1))
    return out


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalize", [False, True])
def test_update_compute_reset_match_torchmetrics(peer_class, alexnet_state, reduction, normalize):
    peer = peer_class(net_type="alex", reduction=reduction, normalize=normalize)
    mine = ours(alexnet_state, net_type="alex", reduction=reduction, normalize=normalize)
    for x, y in batches(normalize=normalize):
        torch.testing.assert_close(mine(x, y), peer(x, y), rtol=1e-5, atol=1e-7)  # forward: this batch's value
    torch.testing.assert_close(mine.compute(), peer.compute(), rtol=1e-5, atol=1e-7)
    mine.reset()
    x, y = batches(seed=1, normalize=normalize)[0]
    mine.update(x, y)
    torch.testing.assert_close(mine.compute(), peer_class(net_type="alex", reduction=reduction,
                                                          normalize=normalize)(x, y), rtol=1e-5, atol=1e-7)


def test_input_gradient_matches_torchmetrics(peer_class, alexnet_state):
    x, y = batches()[0]
    grads = []
    for metric in (peer_class(net_type="alex"), ours(alexnet_state, net_type="alex")):
        xi = x.clone().requires_grad_()
        metric(xi, y).backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5 * grads[0].abs().max().item())


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_states_merge_as_across_processes(peer_class, alexnet_state, reduction):
    """Two ranks' states merged with the states' own dist_reduce_fx (what DDP's sync applies) give the
    value of the whole data set."""
    data = batches()
    rank0, rank1 = ours(alexnet_state, reduction=reduction), ours(alexnet_state, reduction=reduction)
    rank0.update(*data[0])
    for x, y in data[1:]:
        rank1.update(x, y)
    rank0.merge_state(rank1)
    whole = peer_class(net_type="alex", reduction=reduction)
    for x, y in data:
        whole.update(x, y)
    merged, expected = rank0.compute(), whole.compute()
    if reduction == "none":  # merge_state's concatenation order is not the data's
        merged, expected = merged.sort().values, expected.sort().values
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-7)


def test_bad_arguments_and_inputs_are_named(alexnet_state):
    with pytest.raises(ValueError, match="`net_type` must be one of"):
        ours(alexnet_state, net_type="resnet")
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        ours(alexnet_state, reduction="max")
    metric = ours(alexnet_state, normalize=True)
    with pytest.raises(ValueError, match=r"values in the \[0.0, 1.0\] range"):
        metric.update(torch.full((1, 3, SIZE, SIZE), 2.0), torch.zeros(1, 3, SIZE, SIZE))
