"""perfloss::gram in every implementation, against a float64 einsum reference."""
import pytest
import torch

from op_helpers import (GPU_RTOL, TOL, assert_close, case_id, cases, check_running, gpu_cases, layout, opcheck, rand,
                        ref_gram)
from perfloss.ops import library
from perfloss.ops.gram import gram, gram_op

GPU_IMPLS = ("triton", "cpp")  # on CUDA tensors: the Triton kernel and the C++ CUDA kernel (cuBLAS + epilogue)


@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_gram(impl, case):
    check_running("gram", impl)
    shape, lay, dtype = case
    x = layout(rand(shape, dtype), lay)
    for normalize in (True, False):
        g = gram_op(x, normalize)
        assert g.shape == (shape[0], shape[1], shape[1]) and g.dtype == dtype and g.is_contiguous()
        assert_close(g, ref_gram(x, normalize), TOL[dtype][0] if dtype != torch.float32 else 1e-5)
        assert torch.equal(g, g.transpose(1, 2))


def test_gram_bfloat16(impl):
    x = rand((2, 3, 5, 7), torch.bfloat16)
    assert_close(gram(x), ref_gram(x), TOL[torch.bfloat16][0])


def test_gradcheck_float64(impl):
    x = rand((1, 3, 2, 3) if impl == "triton" else (2, 3, 3, 4), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(gram, (x,), eps=1e-6, atol=1e-5)


def test_opcheck(impl):
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    opcheck(gram_op, (x, True))
    opcheck(gram_op, (x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True), False))


def test_bad_inputs():
    with pytest.raises(ValueError, match="4-D"):
        gram(torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        gram(torch.ones(2, 3, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        gram(torch.randn(0, 3, 4, 5))


@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_cpp_kernel_checks_its_arguments():
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.perfloss.gram(torch.randn(3, 4, 5), True)


@pytest.mark.cuda
@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_gpu_default_is_the_cpp_kernel():
    """library.CUDA_ORDER: cuBLAS GEMMs beat the Triton kernels on an H200 (benchmarks/results/gpu)."""
    assert library.backend_info()["gram"]["cuda"] == "cpp"


@pytest.mark.parametrize("gpu_impl", GPU_IMPLS)
@gpu_cases
def test_gpu(gpu_impl, shape, dtype, lay):
    torch.backends.cuda.matmul.allow_tf32 = False
    x = layout(rand(shape, dtype).cuda(), lay)
    with library.use(gpu_impl):
        assert library.backend_info()["gram"]["cuda"] == gpu_impl
        for normalize in (True, False):
            g = gram_op(x, normalize)
            assert g.shape == (shape[0], shape[1], shape[1]) and g.dtype == dtype and g.is_contiguous()
            assert_close(g.cpu(), ref_gram(x.cpu(), normalize), GPU_RTOL[dtype])
            assert torch.equal(g, g.transpose(1, 2))


@pytest.mark.cuda
@pytest.mark.parametrize("lay", ("contiguous", "channels_last"))
def test_gpu_cpp_float64_and_backward(lay):
    x = layout(rand((3, 40, 7, 9), torch.float64).cuda(), lay)
    with library.use("cpp"):
        assert_close(gram(x).cpu(), ref_gram(x.cpu()), TOL[torch.float64][0])
        assert torch.autograd.gradcheck(gram, (x[:1, :4, :3, :3].detach().requires_grad_(True),), eps=1e-6, atol=1e-5)


@pytest.mark.cuda
def test_gpu_cpp_kernel_checks_its_arguments():
    with library.use("cpp"):
        with pytest.raises(RuntimeError, match="4-D"):
            torch.ops.perfloss.gram(torch.randn(3, 4, 5, device="cuda"), True)
        with pytest.raises(RuntimeError, match="floating point"):
            torch.ops.perfloss.gram(torch.ones(2, 3, 4, 5, dtype=torch.int32, device="cuda"), True)
