import pytest
import torch

from perfloss.kernels.common import interpreting
from perfloss.ops import library
from perfloss.pgn import PerceptualGradientNetwork, fold


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained_bn(net):
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("arch, input_range, shape", [
    ("resnet4", (0.0, 1.0), (2, 3, 16, 16)),
    ("unet", (-1.0, 1.0), (1, 3, 11, 14)),  # odd sizes: border bias map, nearest upsampling to size
])
def test_folded_inference_equals_eval_module(arch, input_range, shape):
    net = _trained_bn(PerceptualGradientNetwork(arch, input_range=input_range))
    lo, hi = input_range
    y_hat = lo + (hi - lo) * torch.rand(shape)
    y = lo + (hi - lo) * torch.rand(shape)
    with torch.no_grad():
        p_ref, g_ref = net(y_hat, y)
    for channels_last in (True, False):
        p, g = fold(net, channels_last=channels_last)(y_hat, y)
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())


@pytest.mark.parametrize("output", ["raw", "direct"])
def test_folded_inference_other_outputs(output):
    net = _trained_bn(PerceptualGradientNetwork("resnet4", output=output))
    y_hat, y = torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        ref = net(y_hat, y)
    for a, b in zip(fold(net)(y_hat, y), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-5 * b.abs().max().item())


def test_inference_copy_is_eval_only_and_has_no_batchnorm():
    inf = fold(PerceptualGradientNetwork("resnet4"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inf.modules())
    assert not any(p.requires_grad for p in inf.parameters())
    parent = torch.nn.ModuleDict({"pgn": inf}).train()
    assert parent.training and not inf.training


def test_bf16_inference_is_close():
    net = _trained_bn(PerceptualGradientNetwork("resnet4"))
    y_hat, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        p_ref, _ = net(y_hat, y)
    p, g = fold(net, dtype=torch.bfloat16)(y_hat, y)
    assert p.dtype == torch.float32 and g.dtype == torch.float32
    assert (p - p_ref).abs().max() < 0.05


def test_fold_rejects_what_it_cannot_fold():
    with pytest.raises(TypeError, match="pgn must be a PerceptualGradientNetwork"):
        fold(torch.nn.Conv2d(6, 3, 3))
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        fold(PerceptualGradientNetwork("resnet4"), dtype=torch.int8)


def test_inference_end_to_end_with_triton_ops():
    if not (library.triton_available() and interpreting()):
        pytest.skip("needs triton with TRITON_INTERPRET=1")
    net = _trained_bn(PerceptualGradientNetwork("resnet4"))
    y_hat, y = torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        p_ref, g_ref = net(y_hat, y)
    with library.use("triton"):
        assert library.backend_info()["pgn_input"]["cpu"] == library.backend_info()["pgn_output"]["cpu"] == "triton"
        p, g = fold(net)(y_hat, y)
    torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())


@pytest.mark.parametrize("device,cuda_graph", [
    pytest.param("cpu", False, id="cpu"),
    pytest.param("cuda", False, id="cuda", marks=pytest.mark.cuda),
    pytest.param("cuda", True, id="cuda-graph", marks=pytest.mark.cuda),
])
def test_folded_inference_on_device(device, cuda_graph, monkeypatch):
    """The folded copy against the eval module on the same device; with CUDA graphs, a second batch of
    the same shape replays the captured graph (new inputs copied in, outputs cloned out) and a third
    shape captures another."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # IEEE fp32 convolutions on both sides
    net = _trained_bn(PerceptualGradientNetwork("resnet4")).to(device)
    inference = fold(net, cuda_graph=cuda_graph)
    for seed, shape in ((0, (2, 3, 16, 16)), (1, (2, 3, 16, 16)), (2, (1, 3, 12, 20))):
        gen = torch.Generator().manual_seed(seed)
        y_hat, y = torch.rand(shape, generator=gen).to(device), torch.rand(shape, generator=gen).to(device)
        with torch.no_grad():
            p_ref, g_ref = net(y_hat, y)
        p, g = inference(y_hat, y)
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())
    assert len(inference._graphs) == (2 if cuda_graph else 0)
