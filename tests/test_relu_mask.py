"""perfloss::relu_mask, relu_mask_ and relu_mask_backward in every implementation, against eager
torch.relu / leaky_relu and their autograd (bit for bit)."""
import os

import pytest
import torch
import torch.nn.functional as F

from op_helpers import check_running, same_bits, with_specials
from perfloss.ops import library
from perfloss.ops.relu_mask import (relu_mask, relu_mask_, relu_mask_backward, relu_mask_backward_reference,
                                    relu_mask_reference)

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 4, 9)]


def _bits_ref(x, keep):
    """x > 0 for the first keep samples, in memory order, as a flat bool tensor."""
    xs = x[:keep]
    if not x.is_contiguous() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        xs = xs.permute(0, 2, 3, 1)
    return (xs > 0).reshape(-1)


def _unpack_bits(mask, n):
    return ((mask.view(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).view(-1)[:n].bool()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_relu_mask_matches_eager(impl, shape, slope, channels_last, dtype):
    check_running("relu_mask", impl)
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[::5] = 0.0  # exact zeros: gradient 0 for ReLU, slope for LeakyReLU
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    keep = max(1, shape[0] - 1)
    y, mask = relu_mask(x, slope, keep)
    ref = torch.relu(x) if slope == 0 else F.leaky_relu(x, slope)
    if impl == "triton" and dtype == torch.bfloat16:
        torch.testing.assert_close(y, ref)  # the interpreter rounds bf16 stores differently
    else:
        assert torch.equal(y, ref)
    n = keep * x[0].numel()
    assert mask.dtype == torch.uint8 and mask.numel() == (n + 7) // 8
    assert torch.equal(_unpack_bits(mask, n), _bits_ref(x, keep))

    # backward: grad laid out like x, only the kept samples
    xl = x[:keep].detach().clone().requires_grad_()
    out = torch.relu(xl) if slope == 0 else F.leaky_relu(xl, slope)
    g = torch.randn(out.shape, dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    (expected,) = torch.autograd.grad(out, xl, g)
    got = relu_mask_backward(g, mask, slope)
    if impl == "triton" and dtype == torch.bfloat16:
        torch.testing.assert_close(got, expected)
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("shape", [(2, 3, 17, 19), (3, 8, 16, 16), (1, 1, 1, 37)])  # vector bodies and tails
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_relu_mask_fast_paths_and_in_place_match_reference(shape, slope, channels_last, dtype):
    """The default implementation (hand-vectorised fp32 C++ where built) and the in-place form give
    the reference's bits exactly, for every keep, on sizes that hit the vector loops and their tails."""
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with_specials(x)
    g = torch.randn(x.shape).to(dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    for keep in range(shape[0] + 1):
        with library.use("reference"):
            y_ref, m_ref = relu_mask(x, slope, keep)
            gi_ref = relu_mask_backward(g, m_ref, slope) if keep == shape[0] else None
        y, m = relu_mask(x, slope, keep)
        assert torch.equal(m, m_ref)
        assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.nan_to_num(), y_ref.nan_to_num())
        xi = x.clone()
        m_in = relu_mask_(xi, slope, keep)
        assert torch.equal(m_in, m) and same_bits(xi, y)  # in place: the out-of-place result, bit for bit
        if gi_ref is not None:
            assert torch.equal(relu_mask_backward(g, m, slope), gi_ref)


def test_fake_kernel_gives_the_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        y, m = relu_mask(torch.empty(3, 4, 7, 10), 0.0, 2)
        assert y.shape == (3, 4, 7, 10) and m.shape == ((2 * 4 * 70 + 7) // 8,)


def test_opcheck(impl):
    x = torch.randn(2, 3, 6, 5)
    torch.library.opcheck(torch.ops.perfloss.relu_mask, (x, 0.1, 1))
    torch.library.opcheck(torch.ops.perfloss.relu_mask_, (x.clone(), 0.1, 1))
    _, m = relu_mask(x, 0.1, 2)
    torch.library.opcheck(torch.ops.perfloss.relu_mask_backward, (torch.randn_like(x), m, 0.1))


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="keep"):
        relu_mask(x, 0.0, 3)
    with pytest.raises(ValueError, match="contiguous or channels_last"):
        relu_mask_(x[..., ::2], 0.0, 1)
    with pytest.raises(ValueError, match="mask must be uint8"):
        relu_mask_backward(x, torch.zeros(3, dtype=torch.uint8))


def _same_values(a, b):
    """Equal values (as the CPU tests compare: -0 == +0) and NaN at the same places, whatever its
    payload (a GPU's arithmetic makes its own NaN)."""
    nan = b.isnan()
    return torch.equal(a.isnan(), nan) and torch.equal(a.masked_fill(nan, 0), b.masked_fill(nan, 0))


def _cuda_input(shape, dtype, channels_last, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return with_specials(x).cuda()


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(3, 5, 33, 37), (16, 64, 64, 64)])  # ragged tails; more warps than the grid
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_cpp_matches_reference(shape, slope, channels_last, dtype):
    """The CUDA C++ kernels against the plain-PyTorch reference computed on CPU: activation, mask bits
    (every keep: tail bytes) and backward exactly, in place too."""
    x = _cuda_input(shape, dtype, channels_last)
    g = _cuda_input(shape, dtype, channels_last, seed=1)
    with library.use("cpp"):
        assert library.backend_info()["relu_mask"]["cuda"] == "cpp"
        for keep in (0, 1, shape[0]):
            y, m = relu_mask(x, slope, keep)
            y_ref, m_ref = relu_mask_reference(x.cpu(), slope, keep)
            assert y.is_cuda and y.stride() == y_ref.stride()
            assert _same_values(y.cpu(), y_ref)
            assert torch.equal(m.cpu(), m_ref)
            xi = x.clone()
            assert torch.equal(relu_mask_(xi, slope, keep), m) and _same_values(xi, y)
        got = relu_mask_backward(g, m, slope)
        expected = relu_mask_backward_reference(g.cpu(), m.cpu(), slope)
        assert got.stride() == expected.stride()
        assert _same_values(got.cpu(), expected)


@pytest.mark.cuda
def test_cuda_cpp_bad_inputs():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    with library.use("cpp"):
        _, m = relu_mask(x)
        with pytest.raises(RuntimeError, match="mask is on cpu but grad is on cuda"):
            torch.ops.perfloss.relu_mask_backward(x, m.cpu(), 0.0)
        with pytest.raises(RuntimeError, match="mask has 14 bytes, expected 15"):
            torch.ops.perfloss.relu_mask_backward(x, m[:-1], 0.0)
        with pytest.raises(RuntimeError, match="keep must be in"):
            torch.ops.perfloss.relu_mask(x, 0.0, 3)
        with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16"):
            torch.ops.perfloss.relu_mask(x.to(torch.int32), 0.0, 1)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PERFLOSS_TEST_LARGE") != "1", reason="set PERFLOSS_TEST_LARGE=1 (needs ~13 GB)")
def test_cuda_cpp_past_2_31_elements():
    """More than 2**31 elements (bf16): the elements and mask bits around index 2**31 against plain PyTorch."""
    x = torch.randn(2**31 + 4099, dtype=torch.bfloat16, device="cuda").view(1, 1, 1, -1)
    around = slice(2**31 - 4096, 2**31 + 4099)
    with library.use("cpp"):
        y, m = relu_mask(x, 0.2)
        gi = relu_mask_backward(x, m, 0.2)
    xs = x.view(-1)[around].cpu()
    assert _same_values(y.view(-1)[around].cpu(), F.leaky_relu(xs, 0.2))
    assert torch.equal(_unpack_bits(m[(2**31 - 4096) // 8:].cpu(), 8195), xs > 0)
    assert _same_values(gi.view(-1)[around].cpu(), torch.where(xs > 0, xs, xs * 0.2))
