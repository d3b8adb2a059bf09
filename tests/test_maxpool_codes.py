"""perfloss::maxpool_codes and maxpool_unroute in every implementation, against eager max_pool2d and its
autograd (ties and NaN included)."""
import os

import pytest
import torch
import torch.nn.functional as F

from op_helpers import check_running, same_bits
from perfloss.kernels.common import code_bits
from perfloss.ops import library
from perfloss.ops.maxpool_codes import maxpool_codes, maxpool_codes_reference, maxpool_unroute


@pytest.mark.parametrize("cfg", [
    dict(kernel=2, stride=2, padding=0, dilation=1, ceil_mode=False, hw=(8, 6)),
    dict(kernel=2, stride=2, padding=0, dilation=1, ceil_mode=False, hw=(7, 9)),  # odd: last row dropped
    dict(kernel=3, stride=2, padding=0, dilation=1, ceil_mode=True, hw=(7, 10)),   # SqueezeNet
    dict(kernel=3, stride=2, padding=1, dilation=1, ceil_mode=False, hw=(9, 8)),   # ResNet
    dict(kernel=3, stride=2, padding=0, dilation=1, ceil_mode=False, hw=(11, 11)),  # AlexNet
    dict(kernel=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=True, hw=(6, 7)),
    dict(kernel=5, stride=3, padding=2, dilation=1, ceil_mode=True, hw=(8, 8)),  # 25 positions: 8 bits
])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_codes_match_eager(impl, cfg, channels_last, ties):
    check_running("maxpool_codes", impl)
    b, c = 3, 4
    x = torch.randn(b, c, *cfg["hw"], dtype=torch.float64)
    if ties:
        x = torch.randint(-2, 2, x.shape).double()  # many equal maxima: first one in window order wins
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"])
    keep = 2
    y, codes = maxpool_codes(x, *args, keep=keep)
    ref = F.max_pool2d(x, *args)
    assert torch.equal(y, ref)
    k = cfg["kernel"] if isinstance(cfg["kernel"], tuple) else (cfg["kernel"],) * 2
    assert codes.numel() == -(-keep * ref[0].numel() * code_bits(k[0] * k[1]) // 8)

    xl = x[:keep].detach().clone().requires_grad_()
    out = F.max_pool2d(xl, *args)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.randn(out.shape, dtype=torch.float64).contiguous(memory_format=layout)  # the codes' layout: y's
    (expected,) = torch.autograd.grad(out, xl, g)
    got = maxpool_unroute(g, codes, cfg["hw"], cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("hw", [(16, 40), (7, 9), (9, 35), (2, 2), (3, 17)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_maxpool_2x2_fast_path_matches_eager(hw, ceil_mode, dtype, ties, channels_last):
    """VGG's 2x2 / stride 2 pool (specialised, vectorised for fp32; channels_last walked in its own
    memory order): values, codes (vs the reference, NaN and ties included) and the un-routing (vs
    autograd) exact, with odd sizes and ceil_mode."""
    torch.manual_seed(0)
    b, c = 3, 11  # channels_last: one 8-channel vector step and a tail
    x = torch.randn(b, c, *hw, dtype=dtype)
    if ties:
        x = torch.randint(-2, 2, x.shape).to(dtype)
    x.view(-1)[3::29] = float("nan")
    x.view(-1)[5::31] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for keep in (0, 1, b):
        y, codes = maxpool_codes(x, 2, 2, 0, 1, ceil_mode, keep=keep)
        ref = F.max_pool2d(x, 2, 2, 0, 1, ceil_mode)
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(), ref.nan_to_num())
        with library.use("reference"):
            _, codes_ref = maxpool_codes(x, 2, 2, 0, 1, ceil_mode, keep=keep)
        assert torch.equal(codes, codes_ref)
    xf = x.nan_to_num(0.5, 2.0, -2.0).detach().requires_grad_()  # autograd's routing of NaN differs by design
    out = F.max_pool2d(xf, 2, 2, 0, 1, ceil_mode)
    _, codes = maxpool_codes(xf.detach(), 2, 2, 0, 1, ceil_mode)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.randn(out.shape, dtype=dtype)
    g.view(-1)[::7] = -0.0
    g = g.contiguous(memory_format=layout)  # the codes' layout: y's
    (expected,) = torch.autograd.grad(out, xf, g)
    got = maxpool_unroute(g, codes, hw, 2, 2)
    if out[0, 0].numel() == 1:  # a grad of 1x1 planes is contiguous in both layouts: read as NCHW
        layout = torch.contiguous_format
    assert same_bits(got, expected) and got.is_contiguous(memory_format=layout)


def test_fake_kernel_gives_the_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        y, c = maxpool_codes(torch.empty(3, 4, 7, 10), 3, 2, 0, 1, True, keep=2)
        assert y.shape == (3, 4, 3, 5) and c.shape == ((2 * 4 * 15 + 1) // 2,)


def test_opcheck(impl):
    x = torch.randn(2, 3, 6, 5)
    torch.library.opcheck(torch.ops.perfloss.maxpool_codes, (x, [2, 2], [2, 2], [0, 0], [1, 1], False, 2))
    _, codes = maxpool_codes(x, 2, 2)
    torch.library.opcheck(torch.ops.perfloss.maxpool_unroute, (torch.randn(2, 3, 3, 2), codes, [6, 5], [2, 2],
                                                               [2, 2], [0, 0], [1, 1]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="more than 8 bits"):
        maxpool_codes(torch.randn(1, 1, 20, 20), 17)


CUDA_CONFIGS = [  # (kernel, stride, padding, dilation, ceil_mode, hw): every code width, padding, dilation
    ((2, 2), (2, 2), (0, 0), (1, 1), False, (64, 62)),
    ((2, 2), (2, 2), (0, 0), (1, 1), True, (33, 31)),
    ((3, 3), (2, 2), (0, 0), (1, 1), True, (27, 30)),
    ((3, 3), (2, 2), (1, 1), (1, 1), False, (32, 29)),
    ((2, 3), (1, 2), (1, 1), (2, 1), True, (17, 20)),
    ((5, 5), (3, 3), (2, 2), (1, 1), True, (24, 23)),
]


@pytest.mark.cuda
@pytest.mark.parametrize("cfg", CUDA_CONFIGS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_cpp_matches_reference(cfg, channels_last, dtype):
    """The CUDA C++ kernels against plain PyTorch on CPU: values and layout as max_pool2d, codes as the
    reference packs them (ties, NaN, -inf included), the un-routing as max_pool2d's autograd."""
    kernel, stride, padding, dilation, ceil_mode, hw = cfg
    b, c = 3, 24
    x = torch.randint(-3, 3, (b, c, *hw)).to(dtype)  # many ties
    x.view(-1)[3::29] = float("nan")
    x.view(-1)[5::31] = float("-inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (list(kernel), list(stride), list(padding), list(dilation), ceil_mode)
    with library.use("cpp"):
        assert library.backend_info()["maxpool_codes"]["cuda"] == "cpp"
        for keep in (0, 1, b):
            y, codes = maxpool_codes(x.cuda(), *args, keep=keep)
            y_ref, codes_ref = maxpool_codes_reference(x, *args, keep)
            assert y.stride() == y_ref.stride()
            y = y.cpu()
            assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.nan_to_num(), y_ref.nan_to_num())
            assert torch.equal(codes.cpu(), codes_ref)
        xf = x.double().nan_to_num(0.5, 2.0, -2.0).requires_grad_()  # autograd's routing of NaN differs by design
        out = F.max_pool2d(xf, *args)
        _, codes = maxpool_codes(xf.detach().to(dtype).cuda(), *args)
        g = torch.randn(out.shape, dtype=torch.float64).to(dtype)
        # the codes' layout (y's); an NCHW-ordered grad is read through any strides
        g_in = (g.cuda().contiguous(memory_format=torch.channels_last) if channels_last
                else g.cuda().transpose(2, 3).contiguous().transpose(2, 3))
        (expected,) = torch.autograd.grad(out, xf, g.double())
        got = maxpool_unroute(g_in, codes, hw, kernel, stride, padding, dilation)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert got.is_contiguous(memory_format=layout) and got.dtype == dtype
        # where overlapping windows add gradients, the sum is rounded once to dtype (float64 sums may
        # differ in order); everywhere else the routed value is exact
        tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(got.cpu().double(), expected, rtol=tol, atol=tol)


@pytest.mark.cuda
def test_cuda_cpp_bad_inputs():
    x = torch.randn(2, 3, 8, 8, device="cuda")
    with library.use("cpp"):
        y, codes = maxpool_codes(x, 2, 2)
        with pytest.raises(RuntimeError, match="codes is on cpu but grad is on cuda"):
            torch.ops.perfloss.maxpool_unroute(y, codes.cpu(), [8, 8], [2, 2], [2, 2], [0, 0], [1, 1])
        with pytest.raises(RuntimeError, match="codes has 23 bytes, expected 24"):
            torch.ops.perfloss.maxpool_unroute(y, codes[:-1], [8, 8], [2, 2], [2, 2], [0, 0], [1, 1])
        with pytest.raises(RuntimeError, match="stride and dilation must be positive"):
            torch.ops.perfloss.maxpool_codes(x, [2, 2], [0, 2], [0, 0], [1, 1], False, 2)
        with pytest.raises(RuntimeError, match="more than 256 positions"):
            torch.ops.perfloss.maxpool_codes(x, [17, 17], [1, 1], [0, 0], [1, 1], False, 2)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PERFLOSS_TEST_LARGE") != "1", reason="set PERFLOSS_TEST_LARGE=1 (needs ~10 GB)")
def test_cuda_cpp_past_2_31_elements():
    """More than 2**31 input elements (bf16), 3x3 / stride 2 windows: the last planes' values, codes and
    un-routed gradient (past index 2**31 of the input) against plain PyTorch on those planes."""
    x = torch.randn(1, 2049, 1024, 1024, dtype=torch.bfloat16, device="cuda")  # 2**31 + 2**20 elements
    with library.use("cpp"):
        y, codes = maxpool_codes(x, 3, 2, 1)
        g = torch.randn(y.shape, dtype=torch.bfloat16, device="cuda")
        gi = maxpool_unroute(g, codes, (1024, 1024), 3, 2, 1)
    tail = x[:, -2:].cpu()  # input elements from 2**31 - 2**20 on
    y_ref, codes_ref = maxpool_codes_reference(tail, [3, 3], [2, 2], [1, 1], [1, 1], False, 1)
    assert torch.equal(y[:, -2:].cpu(), y_ref)
    per_plane = y[0, 0].numel() // 2  # codes bytes per plane (4 bits per code)
    assert torch.equal(codes[-2 * per_plane:].cpu(), codes_ref)
    xf = tail.double().requires_grad_()
    (expected,) = torch.autograd.grad(F.max_pool2d(xf, 3, 2, 1), xf, g[:, -2:].cpu().double())
    torch.testing.assert_close(gi[:, -2:].cpu().double(), expected, rtol=8e-3, atol=8e-3)
