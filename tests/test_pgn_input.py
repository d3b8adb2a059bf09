"""Op perfloss::pgn_input (a PGN's input stage: concatenation, per-channel affine map, channels_last):
reference and Triton (under the interpreter) against a float64 formula, against each other, opcheck,
fake, bad inputs."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from perfloss.kernels.common import interpreting
from perfloss.ops import library
from perfloss.ops.pgn_input import pgn_input, pgn_input_op, pgn_input_reference

pytestmark = pytest.mark.usefixtures("one_thread")

needs_triton = pytest.mark.skipif(not (library.triton_available() and interpreting()),
                                  reason="needs triton with TRITON_INTERPRET=1")
IMPLEMENTATIONS = ["reference", pytest.param("triton", marks=needs_triton)]


def pgn_input_float64(y_hat, y, scale, shift):
    """Channel c of the result: (y_hat if c < C else y)[:, c % C] * scale[c] + shift[c], in float64."""
    n, c, h, w = y_hat.shape
    x = torch.empty(n, 2 * c, h, w, dtype=torch.float64)
    for k in range(2 * c):
        src = y_hat if k < c else y
        x[:, k] = src[:, k % c].double() * scale[k].double() + shift[k].double()
    return x


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_matches_float64_formula(implementation, out_dtype):
    y_hat, y = torch.rand(2, 3, 7, 9), torch.rand(2, 3, 7, 9)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    with library.use(implementation):
        assert library.backend_info()["pgn_input"]["cpu"] == implementation
        x = pgn_input(y_hat, y, scale, shift, out_dtype)
    assert x.dtype == out_dtype and x.shape == (2, 6, 7, 9) and x.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-6 if out_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(x.double(), pgn_input_float64(y_hat, y, scale, shift), rtol=tol, atol=tol)


@needs_triton
@pytest.mark.parametrize("in_dtype, out_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                                 (torch.float16, torch.float16), (torch.float64, torch.float64)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_kernel_matches_reference(in_dtype, out_dtype, channels_last):
    from perfloss.kernels.pgn_input import pgn_input as pgn_input_triton

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y_hat = torch.rand(2, 3, 5, 6, dtype=in_dtype).contiguous(memory_format=fmt)
    y = torch.rand(2, 3, 5, 6, dtype=in_dtype).contiguous(memory_format=fmt)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    expected = pgn_input_reference(y_hat, y, scale, shift, out_dtype)
    got = pgn_input_triton(y_hat, y, scale, shift, out_dtype)
    assert got.dtype == out_dtype and got.stride() == expected.stride()
    # the same fp32 values rounded to out_dtype; bf16 within one unit in the last place, since the
    # interpreter's fp32 -> bf16 rounding is not torch's round-to-nearest-even
    rtol = 2.0 ** -7 if out_dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_opcheck(implementation, out_dtype):
    args = (torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 5), torch.rand(6) + 0.5, torch.randn(6), out_dtype)
    with library.use(implementation):
        torch.library.opcheck(pgn_input_op, args)


def test_fake_is_channels_last_in_out_dtype():
    y_hat, y, scale, shift = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5), torch.ones(6), torch.zeros(6)
    real = pgn_input(y_hat, y, scale, shift, torch.float16)
    with FakeTensorMode() as mode:
        fake = pgn_input(*(mode.from_tensor(t) for t in (y_hat, y, scale, shift)), torch.float16)
    assert fake.shape == real.shape == (2, 6, 4, 5) and fake.dtype == real.dtype == torch.float16
    assert fake.stride() == real.stride() and fake.is_contiguous(memory_format=torch.channels_last)


def test_bad_inputs():
    y_hat, y, scale, shift = torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 5), torch.ones(6), torch.zeros(6)
    with pytest.raises(ValueError, match=r"y_hat and y must be \(N, C, H, W\) of one shape"):
        pgn_input(y_hat, torch.rand(1, 3, 4, 6), scale, shift)
    with pytest.raises(ValueError, match=r"y_hat and y must be \(N, C, H, W\) of one shape"):
        pgn_input(y_hat[0], y[0], scale, shift)
    with pytest.raises(ValueError, match=r"scale and shift must have shape \(6,\)"):
        pgn_input(y_hat, y, torch.ones(3), shift)
    with pytest.raises(ValueError, match="out_dtype must be one of"):
        pgn_input(y_hat, y, scale, shift, torch.int32)


@pytest.mark.cuda
@pytest.mark.parametrize("implementation", ["triton", "cpp"])
@pytest.mark.parametrize("in_dtype, out_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                                 (torch.float16, torch.float16), (torch.bfloat16, torch.float32),
                                                 (torch.float64, torch.float64)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu(implementation, in_dtype, out_dtype, channels_last):
    """On CUDA tensors (scale and shift left on the CPU, as callers may): the float64 formula, and the
    reference's dtype and strides."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y_hat = torch.rand(3, 3, 37, 41, dtype=in_dtype).contiguous(memory_format=fmt)
    y = torch.rand(3, 3, 37, 41, dtype=in_dtype).contiguous(memory_format=fmt)
    scale, shift = torch.rand(6) + 0.5, torch.randn(6)
    with library.use(implementation):
        assert library.backend_info()["pgn_input"]["cuda"] == implementation
        x = pgn_input(y_hat.cuda(), y.cuda(), scale, shift, out_dtype)
    expected = pgn_input_reference(y_hat, y, scale, shift, out_dtype)
    assert x.is_cuda and x.dtype == out_dtype and x.stride() == expected.stride()
    tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3}.get(out_dtype, 1e-6)
    torch.testing.assert_close(x.cpu().double(), pgn_input_float64(y_hat.float(), y.float(), scale, shift), rtol=tol,
                               atol=tol)


@pytest.mark.cuda
def test_gpu_cpp_kernel_checks_its_arguments():
    y_hat, scale, shift = torch.rand(1, 3, 4, 5, device="cuda"), torch.ones(6), torch.zeros(6)
    op = torch.ops.perfloss.pgn_input
    with library.use("cpp"):
        with pytest.raises(RuntimeError, match="y_hat and y must be on one CUDA device"):
            op(y_hat, y_hat.cpu(), scale, shift, torch.float32)
        with pytest.raises(RuntimeError, match=r"scale and shift must have shape \(6,\)"):
            op(y_hat, y_hat, torch.ones(3), shift, torch.float32)
        with pytest.raises(RuntimeError, match="out_dtype must be float32, float64, float16 or bfloat16"):
            op(y_hat, y_hat, scale, shift, torch.int32)
