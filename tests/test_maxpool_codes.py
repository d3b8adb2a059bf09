"""perfloss::maxpool_codes and maxpool_unroute in every implementation, against eager max_pool2d and its
autograd (ties and NaN included)."""
import pytest
import torch
import torch.nn.functional as F

from op_helpers import check_running, same_bits
from perfloss.kernels.common import code_bits
from perfloss.ops import library
from perfloss.ops.maxpool_codes import maxpool_codes, maxpool_unroute


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
    g = torch.randn(out.shape, dtype=torch.float64)
    (expected,) = torch.autograd.grad(out, xl, g)
    got = maxpool_unroute(g, codes, cfg["hw"], cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw", [(16, 40), (7, 9), (9, 35), (2, 2), (3, 17)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_2x2_fast_path_matches_eager(hw, ceil_mode, dtype, ties):
    """VGG's 2x2 / stride 2 pool (specialised, vectorised for fp32): values, codes (vs the reference,
    NaN and ties included) and the un-routing (vs autograd) exact, with odd sizes and ceil_mode."""
    torch.manual_seed(0)
    b, c = 3, 5
    x = torch.randn(b, c, *hw, dtype=dtype)
    if ties:
        x = torch.randint(-2, 2, x.shape).to(dtype)
    x.view(-1)[3::29] = float("nan")
    x.view(-1)[5::31] = float("-inf")
    for keep in (0, 1, b):
        y, codes = maxpool_codes(x, 2, 2, 0, 1, ceil_mode, keep=keep)
        ref = F.max_pool2d(x, 2, 2, 0, 1, ceil_mode)
        assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(), ref.nan_to_num())
        with library.use("reference"):
            _, codes_ref = maxpool_codes(x, 2, 2, 0, 1, ceil_mode, keep=keep)
        assert torch.equal(codes, codes_ref)
    xf = x.nan_to_num(0.5, 2.0, -2.0).detach().requires_grad_()  # autograd's routing of NaN differs by design
    out = F.max_pool2d(xf, 2, 2, 0, 1, ceil_mode)
    _, codes = maxpool_codes(xf.detach(), 2, 2, 0, 1, ceil_mode)
    g = torch.randn(out.shape, dtype=dtype)
    g.view(-1)[::7] = -0.0
    (expected,) = torch.autograd.grad(out, xf, g)
    got = maxpool_unroute(g, codes, hw, 2, 2)
    assert same_bits(got, expected)


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
