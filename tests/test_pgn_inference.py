import pytest
import torch

from perfloss.ops import dispatch
from perfloss.ops.pgn_head import pgn_head, pgn_head_op
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
        p, g = net.inference(channels_last=channels_last)(y_hat, y)
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())


@pytest.mark.parametrize("head", ["raw", "direct"])
def test_folded_inference_other_heads(head):
    net = _trained_bn(PerceptualGradientNetwork("resnet4", head=head))
    y_hat, y = torch.rand(1, 3, 12, 12), torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        ref = net(y_hat, y)
    for a, b in zip(fold(net)(y_hat, y), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=5e-5 * b.abs().max().item())


def test_inference_copy_is_eval_only_and_has_no_batchnorm():
    inf = PerceptualGradientNetwork("resnet4").inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inf.modules())
    assert not any(p.requires_grad for p in inf.parameters())
    parent = torch.nn.ModuleDict({"pgn": inf}).train()
    assert parent.training and not inf.training


def test_bf16_inference_is_close():
    net = _trained_bn(PerceptualGradientNetwork("resnet4"))
    y_hat, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        p_ref, _ = net(y_hat, y)
    p, g = net.inference(dtype=torch.bfloat16)(y_hat, y)
    assert p.dtype == torch.float32 and g.dtype == torch.float32
    assert (p - p_ref).abs().max() < 0.05


def _independent_head(out, y_hat, lo, hi, s):
    """The sigmoid head written from the paper's formula in normalised space."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    p_norm = 1.1 * (torch.sigmoid(out.double()) - mean) / std
    p = lo + (hi - lo) * (p_norm * std + mean)
    c, h, w = y_hat.shape[1:]
    g = 2 * (y_hat.double() - p) / (c * h * w * s)
    return p, g


def _head_args(lo, hi):
    mean = torch.tensor([0.485, 0.456, 0.406])
    return lo - 0.1 * (hi - lo) * mean, 1.1 * (hi - lo)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_fused_head_matches_independent_formula(monkeypatch, impl, channels_last, out_dtype):
    if impl == "triton" and not (dispatch.triton_available() and dispatch.triton_interpreting()):
        pytest.skip("needs triton with TRITON_INTERPRET=1")
    monkeypatch.setenv("PERFLOSS_IMPL", impl)
    assert dispatch.choose("pgn_head", "cpu")[0] == impl
    lo, hi, s = -1.0, 1.0, 0.025
    shape = (2, 3, 13, 21)  # 1638 elements: a masked tail in every block size
    out = (torch.randn(shape) * 3).to(out_dtype)
    y_hat = torch.rand(shape) * 2 - 1
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
        y_hat = y_hat.contiguous(memory_format=torch.channels_last)
    offset, gain = _head_args(lo, hi)
    coef = 2.0 / (3 * 13 * 21 * s)
    p, g = pgn_head(out, y_hat, offset, gain, coef)
    p_ref, g_ref = _independent_head(out.float(), y_hat, lo, hi, s)
    assert p.dtype == torch.float32 and p.shape == shape
    torch.testing.assert_close(p.double(), p_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-6 * g_ref.abs().max().item())


def test_fused_head_opcheck():
    out, y_hat = torch.randn(1, 3, 4, 5), torch.rand(1, 3, 4, 5)
    offset, gain = _head_args(0.0, 1.0)
    torch.library.opcheck(pgn_head_op, (out, y_hat, offset, gain, 0.5),
                          test_utils=("test_schema", "test_faketensor"))


def test_fused_head_bad_inputs():
    with pytest.raises(ValueError, match="y_hat must have the shape of out"):
        pgn_head(torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 5), torch.zeros(3), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"offset must have shape \(3,\)"):
        pgn_head(torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.zeros(4), 1.0, 1.0)


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_fused_input_matches_independent_formula(monkeypatch, impl, out_dtype):
    if impl == "triton" and not (dispatch.triton_available() and dispatch.triton_interpreting()):
        pytest.skip("needs triton with TRITON_INTERPRET=1")
    from perfloss.ops.pgn_input import pgn_input
    monkeypatch.setenv("PERFLOSS_IMPL", impl)
    assert dispatch.choose("pgn_input", "cpu")[0] == impl
    y_hat, y = torch.rand(2, 3, 7, 9), torch.rand(2, 3, 7, 9)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    x = pgn_input(y_hat, y, scale, shift, out_dtype)
    assert x.dtype == out_dtype and x.is_contiguous(memory_format=torch.channels_last)
    ref = torch.empty(2, 6, 7, 9)
    for c in range(6):
        src = y_hat if c < 3 else y
        ref[:, c] = src[:, c % 3] * scale[c] + shift[c]
    tol = 1e-6 if out_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(x.float(), ref, rtol=tol, atol=tol)


def test_fused_input_opcheck():
    from perfloss.ops.pgn_input import pgn_input_op
    args = (torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 5), torch.ones(6), torch.zeros(6), "float32")
    torch.library.opcheck(pgn_input_op, args, test_utils=("test_schema", "test_faketensor"))


def test_inference_end_to_end_with_triton_ops(monkeypatch):
    if not (dispatch.triton_available() and dispatch.triton_interpreting()):
        pytest.skip("needs triton with TRITON_INTERPRET=1")
    net = _trained_bn(PerceptualGradientNetwork("resnet4"))
    y_hat, y = torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        p_ref, g_ref = net(y_hat, y)
    monkeypatch.setenv("PERFLOSS_IMPL", "triton")
    p, g = net.inference()(y_hat, y)
    torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())
