"""perfloss::sign_pack and sign_unpack in every implementation: the round trip is eager's product bit
for bit."""
import os

import pytest
import torch

from op_helpers import check_running
from perfloss.ops import library
from perfloss.ops.sign_pack import sign_pack, sign_pack_reference, sign_unpack, sign_unpack_reference

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 4, 9)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sign_pack_roundtrip_is_exact(impl, shape, channels_last, dtype):
    check_running("sign_pack", impl)
    scale = torch.tensor(1.0, dtype=dtype) / (shape[1] * shape[2] * shape[3]) * 0.7
    g = torch.sign(torch.randint(-1, 2, shape).to(dtype)) * scale
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    codes = sign_pack(g)
    assert codes.numel() == (g.numel() + 3) // 4
    gv = torch.randn(shape[0])
    got = sign_unpack(codes, g.abs().amax(), gv, g.shape, channels_last and shape[1] > 1)
    expected = gv.to(dtype).view(-1, 1, 1, 1) * g
    if impl == "triton" and dtype == torch.bfloat16:
        torch.testing.assert_close(got, expected)  # the interpreter rounds bf16 stores differently
    else:
        assert torch.equal(got, expected)


def test_fake_kernel_gives_the_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(3, 4, 7, 10)
        assert sign_pack(x).shape == ((x.numel() + 3) // 4,)


def test_opcheck(impl):
    g = torch.sign(torch.randn(2, 3, 6, 5))
    torch.library.opcheck(torch.ops.perfloss.sign_pack, (g,))
    torch.library.opcheck(torch.ops.perfloss.sign_unpack, (sign_pack(g), torch.tensor(0.5), torch.randn(2),
                                                           [2, 3, 6, 5], False))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(3, 5, 33, 37), (16, 64, 64, 64)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_cpp_matches_reference(shape, channels_last, dtype):
    """The CUDA C++ kernels against the plain-PyTorch reference on CPU: codes (zeros, signed zeros, NaN,
    infinities included) and the unpacked product, bit for bit."""
    g = torch.randn(shape).to(dtype)
    g.view(-1)[::5] = 0.0
    g.view(-1)[1::7] = -0.0
    g.view(-1)[2::11] = float("nan")
    g.view(-1)[3::13] = float("-inf")
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    scale = torch.tensor(0.3).to(dtype)
    gv = torch.randn(shape[0])
    with library.use("cpp"):
        assert library.backend_info()["sign_pack"]["cuda"] == "cpp"
        codes = sign_pack(g.cuda())
        codes_ref = sign_pack_reference(g)
        assert torch.equal(codes.cpu(), codes_ref)
        got = sign_unpack(codes, scale.cuda(), gv.cuda(), shape, channels_last)
    expected = sign_unpack_reference(codes_ref, scale, gv, list(shape), channels_last)
    assert got.stride() == expected.stride() and got.dtype == dtype
    assert torch.equal(got.cpu(), expected) and torch.equal(got.cpu().signbit(), expected.signbit())


@pytest.mark.cuda
def test_cuda_cpp_bad_inputs():
    g = torch.randn(2, 3, 4, 5, device="cuda")
    with library.use("cpp"):
        codes = sign_pack(g)
        with pytest.raises(RuntimeError, match="grad_values is on cpu but scale is on cuda"):
            torch.ops.perfloss.sign_unpack(codes, torch.tensor(0.5, device="cuda"), torch.ones(2), [2, 3, 4, 5], False)
        with pytest.raises(RuntimeError, match="codes has 29 bytes, expected 30"):
            torch.ops.perfloss.sign_unpack(codes[:-1], torch.tensor(0.5, device="cuda"), torch.ones(2, device="cuda"),
                                           [2, 3, 4, 5], False)
        with pytest.raises(RuntimeError, match="one entry per sample"):
            torch.ops.perfloss.sign_unpack(codes, torch.tensor(0.5, device="cuda"), torch.ones(3, device="cuda"),
                                           [2, 3, 4, 5], False)


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PERFLOSS_TEST_LARGE") != "1", reason="set PERFLOSS_TEST_LARGE=1 (needs ~10 GB)")
def test_cuda_cpp_past_2_31_elements():
    """More than 2**31 elements (bf16): codes and unpacked values around index 2**31 against plain PyTorch."""
    n = 2**31 + 4100
    g = torch.randn(2, n // 2, dtype=torch.bfloat16, device="cuda")
    gv = torch.tensor([0.5, -2.0], device="cuda")
    with library.use("cpp"):
        codes = sign_pack(g)
        out = sign_unpack(codes, torch.tensor(0.25, dtype=torch.bfloat16, device="cuda"), gv, g.shape)
    lo, hi = 2**31 - 4096, n
    gs = g.view(-1)[lo:hi].cpu()
    assert torch.equal(codes[lo // 4:].cpu(), sign_pack_reference(gs))
    per_sample_gv = torch.where(torch.arange(lo, hi) < n // 2, 0.5, -2.0).to(torch.bfloat16)
    expected = per_sample_gv * (torch.sign(gs) * 0.25)
    assert torch.equal(out.view(-1)[lo:hi].cpu(), expected)
