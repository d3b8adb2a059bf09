"""Op perfloss::pgn_output (the fused sigmoid output of a PGN): reference and Triton (under the
interpreter) against the paper's formula in float64, against each other, opcheck, fake, bad inputs."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from perfloss.kernels.common import interpreting
from perfloss.ops import library
from perfloss.ops.pgn_output import pgn_output, pgn_output_op, pgn_output_reference

pytestmark = pytest.mark.usefixtures("one_thread")

needs_triton = pytest.mark.skipif(not (library.triton_available() and interpreting()),
                                  reason="needs triton with TRITON_INTERPRET=1")
IMPLEMENTATIONS = ["reference", pytest.param("triton", marks=needs_triton)]
LAYOUTS = {  # (out, y_hat): the folded PGN's body runs channels_last while y_hat is the user's NCHW
    "nchw": (torch.contiguous_format, torch.contiguous_format),
    "channels_last": (torch.channels_last, torch.channels_last),
    "mixed": (torch.channels_last, torch.contiguous_format),
}


def sigmoid_output_float64(out, y_hat, lo, hi, s):
    """The sigmoid output written from the paper's formula in normalised space, in float64."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    p_norm = 1.1 * (torch.sigmoid(out.double()) - mean) / std
    p = lo + (hi - lo) * (p_norm * std + mean)
    c, h, w = y_hat.shape[1:]
    g = 2 * (y_hat.double() - p) / (c * h * w * s)
    return p, g


def sigmoid_output_args(lo, hi):
    """(offset, gain) of the sigmoid output for images in (lo, hi)."""
    mean = torch.tensor([0.485, 0.456, 0.406])
    return lo - 0.1 * (hi - lo) * mean, 1.1 * (hi - lo)


def inputs(shape, layout, out_dtype=torch.float32, y_hat_dtype=torch.float32):
    out_format, y_hat_format = LAYOUTS[layout]
    out = (torch.randn(shape) * 3).to(out_dtype).contiguous(memory_format=out_format)
    y_hat = (torch.rand(shape) * 2 - 1).to(y_hat_dtype).contiguous(memory_format=y_hat_format)
    return out, y_hat


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_matches_float64_formula(implementation, layout, out_dtype):
    lo, hi, s = -1.0, 1.0, 0.025
    shape = (2, 3, 13, 21)  # 1638 elements: a masked tail in every block size
    out, y_hat = inputs(shape, layout, out_dtype)
    offset, gain = sigmoid_output_args(lo, hi)
    coef = 2.0 / (3 * 13 * 21 * s)
    with library.use(implementation):
        assert library.backend_info()["pgn_output"]["cpu"] == implementation
        p, g = pgn_output(out, y_hat, offset, gain, coef)
    p_ref, g_ref = sigmoid_output_float64(out.float(), y_hat, lo, hi, s)
    assert p.dtype == torch.float32 and p.shape == shape
    torch.testing.assert_close(p.double(), p_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-6 * g_ref.abs().max().item())


@needs_triton
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("out_dtype, y_hat_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                    (torch.float16, torch.float16)])
def test_triton_kernel_matches_reference(layout, out_dtype, y_hat_dtype):
    from perfloss.kernels.pgn_output import pgn_output as pgn_output_triton

    out, y_hat = inputs((2, 3, 9, 11), layout, out_dtype, y_hat_dtype)
    offset, gain = sigmoid_output_args(0.0, 1.0)
    expected = pgn_output_reference(out, y_hat, offset, gain, 0.01)
    got = pgn_output_triton(out, y_hat, offset, gain, 0.01)
    tol = 1e-6 if y_hat_dtype == torch.float32 else 1e-3
    for a, b in zip(got, expected):
        assert a.dtype == y_hat_dtype and a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_opcheck(implementation, layout):
    out, y_hat = inputs((1, 3, 4, 5), layout)
    offset, gain = sigmoid_output_args(0.0, 1.0)
    with library.use(implementation):
        torch.library.opcheck(pgn_output_op, (out, y_hat, offset, gain, 0.5))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_fake_has_the_dtype_of_y_hat_and_the_layout_of_out(layout):
    out, y_hat = inputs((2, 3, 4, 5), layout, torch.bfloat16)
    offset, gain = sigmoid_output_args(0.0, 1.0)
    real = pgn_output(out, y_hat, offset, gain, 0.5)
    with FakeTensorMode() as mode:
        fake = pgn_output(mode.from_tensor(out), mode.from_tensor(y_hat), mode.from_tensor(offset), gain, 0.5)
    for f, r in zip(fake, real):
        assert f.shape == r.shape and f.dtype == r.dtype == torch.float32 and f.stride() == r.stride()
    assert fake[0].is_contiguous(memory_format=LAYOUTS[layout][0])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"out must have shape \(N, C, H, W\)"):
        pgn_output(torch.randn(3, 4, 4), torch.rand(3, 4, 4), torch.zeros(3), 1.0, 1.0)
    with pytest.raises(ValueError, match="y_hat must have the shape of out"):
        pgn_output(torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 5), torch.zeros(3), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"offset must have shape \(3,\)"):
        pgn_output(torch.randn(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.zeros(4), 1.0, 1.0)
    with pytest.raises(TypeError, match="must be floating point"):
        pgn_output(torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.int64), torch.zeros(3), 1.0, 1.0)


@pytest.mark.cuda
@pytest.mark.parametrize("implementation", ["triton", "cpp"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("out_dtype, y_hat_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                                    (torch.float16, torch.float16), (torch.float32, torch.float64)])
def test_gpu(implementation, layout, out_dtype, y_hat_dtype):
    """On CUDA tensors (offset left on the CPU, as callers may): the float64 formula, and the
    reference's dtype and strides."""
    lo, hi, s = -1.0, 1.0, 0.025
    shape = (3, 3, 37, 41)
    out, y_hat = inputs(shape, layout, out_dtype, y_hat_dtype)
    offset, gain = sigmoid_output_args(lo, hi)
    coef = 2.0 / (3 * 37 * 41 * s)
    with library.use(implementation):
        assert library.backend_info()["pgn_output"]["cuda"] == implementation
        p, g = pgn_output(out.cuda(), y_hat.cuda(), offset, gain, coef)
    expected = pgn_output_reference(out, y_hat, offset, gain, coef)
    p_ref, g_ref = sigmoid_output_float64(out.float(), y_hat.float(), lo, hi, s)
    tol = 1e-3 if y_hat_dtype == torch.float16 else 1e-6
    for got, want in zip((p, g), expected):
        assert got.is_cuda and got.dtype == y_hat_dtype and got.stride() == want.stride()
    torch.testing.assert_close(p.cpu().double(), p_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g.cpu().double(), g_ref, rtol=10 * tol, atol=tol * g_ref.abs().max().item())


@pytest.mark.cuda
def test_gpu_cpp_kernel_checks_its_arguments():
    out = torch.randn(1, 3, 4, 4, device="cuda")
    op = torch.ops.perfloss.pgn_output
    with library.use("cpp"):
        with pytest.raises(RuntimeError, match="out and y_hat must be on one CUDA device"):
            op(out, out.cpu(), torch.zeros(3), 1.0, 1.0)
        with pytest.raises(RuntimeError, match=r"offset must have shape \(3,\)"):
            op(out, out, torch.zeros(4), 1.0, 1.0)
        with pytest.raises(RuntimeError, match="y_hat must be float32, float64, float16 or bfloat16"):
            op(out, out.int(), torch.zeros(3), 1.0, 1.0)
