"""perfloss::style_loss in every implementation: values and gradient against float64 autograd through
the Gram formula written in tests/op_helpers.py."""
import pytest
import torch

from op_helpers import (GPU_RTOL, TOL, assert_close, assert_layout_like, case_id, cases, check_running, gpu_cases,
                        layout, opcheck, rand, ref_gram, ref_style, ref_value_grad, subnormal_step)
from perfloss.ops import library
from perfloss.ops.gram import gram
from perfloss.ops.style_loss import style_loss, style_loss_op, style_loss_values

GPU_IMPLS = ("triton", "cpp")  # on CUDA tensors: the Triton kernels and the C++ CUDA kernel (cuBLAS + epilogue)


@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_style_loss(impl, case):
    check_running("style_loss", impl)
    shape, lay, dtype = case
    x = layout(rand(shape, dtype), lay)
    target = ref_gram(rand(shape, dtype, seed=1))[:1].float()  # one style image for the batch
    values, grad = style_loss_values(x, target, compute_grad=True)
    v_ref, g_ref = ref_value_grad(ref_style, x, target.expand(shape[0], -1, -1))
    assert values.dtype == torch.float32 and values.shape == (shape[0],)
    assert_close(values, v_ref, 1e-5 if dtype == torch.float32 else 1e-4)
    assert_layout_like(grad, x)
    assert_close(grad, g_ref, TOL[dtype][1])
    values2, empty = style_loss_values(x, target, compute_grad=False)
    assert empty.numel() == 0
    assert_close(values2, v_ref, 1e-5 if dtype == torch.float32 else 1e-4)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
def test_style_loss_per_sample_target(impl, dtype):
    """A target Gram per sample (B of them), in low precision and fp32 (the C++ kernel's two paths)."""
    x = rand((3, 5, 4, 3), dtype)
    target = ref_gram(rand((3, 5, 4, 3), torch.float32, seed=2)).to(dtype)
    values, grad = style_loss_values(x, target, compute_grad=True)
    v_ref, g_ref = ref_value_grad(ref_style, x, target)
    assert_close(values, v_ref, 1e-3 if dtype == torch.bfloat16 else 1e-5)
    assert_close(grad, g_ref, TOL[dtype][1])


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32))
def test_style_loss_asymmetric_target(impl, dtype):
    """A target that is no Gram (T_ij != T_ji), shared and per sample, over channels that span several
    32-row tiles: the gradient is (D + D^T) F scaled, with D_ji = G_ji - T_ji."""
    x = rand((2, 70, 5, 6), dtype)
    for target in (rand((2, 70, 70), torch.float32, seed=3) * 0.1, rand((1, 70, 70), torch.float32, seed=4) * 0.1):
        values, grad = style_loss_values(x, target, compute_grad=True)
        v_ref, g_ref = ref_value_grad(ref_style, x, target.expand(2, -1, -1))
        assert_close(values, v_ref, 1e-3 if dtype == torch.bfloat16 else 1e-5)
        assert_close(grad, g_ref, TOL[dtype][1])


@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("lay", ("contiguous", "channels_last"))
def test_style_loss_against_its_own_gram_is_zero(dtype, lay):
    """The C++ gram and style_loss form fp32 / float64 Grams with one GEMM and one scaling, so a batch
    against its own Grams gives exactly 0 and a zero gradient (VGG-like channel counts: BLAS tiles)."""
    with library.use("cpp"):
        for shape in ((2, 64, 16, 16), (1, 130, 7, 9)):
            x = layout(rand(shape, dtype), lay)
            values, grad = style_loss_values(x, gram(x), compute_grad=True)
            assert torch.count_nonzero(values) == 0 and torch.count_nonzero(grad) == 0


def test_gradcheck_float64(impl):
    shape = (1, 3, 2, 3) if impl == "triton" else (2, 3, 3, 4)
    x = rand(shape, torch.float64).requires_grad_(True)
    target = ref_gram(rand(shape, torch.float64, seed=2))
    assert torch.autograd.gradcheck(lambda x: style_loss(x, target, reduction="none"), (x,), eps=1e-6, atol=1e-5)


def test_backward_through_a_values_only_call(impl):
    """compute_grad=False and then differentiating anyway: backward computes the gradient itself."""
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    target = ref_gram(rand((2, 3, 4, 5), torch.float32, seed=1)).float()
    (g,) = torch.autograd.grad(style_loss_op(x, target, False)[0].sum(), x)
    assert_close(g, ref_value_grad(ref_style, x, target)[1], 1e-5)


@pytest.mark.parametrize("compute_grad", (True, False))
def test_opcheck(impl, compute_grad):
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    target = ref_gram(rand((2, 3, 4, 5), torch.float32, seed=1)).float()
    opcheck(style_loss_op, (x, target, compute_grad))
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    opcheck(style_loss_op, (cl, target, compute_grad))


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="target_gram"):
        style_loss(x, torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        style_loss(x, torch.randn(3, 3, 3))


@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_cpp_kernel_checks_its_arguments():
    with pytest.raises(RuntimeError, match="target_gram"):
        torch.ops.perfloss.style_loss(torch.randn(2, 3, 4, 5), torch.randn(2, 4, 4), False)


@pytest.mark.cuda
@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_gpu_default_is_the_cpp_kernel():
    """library.CUDA_ORDER: cuBLAS GEMMs beat the Triton kernels on an H200 (benchmarks/results/gpu)."""
    assert library.backend_info()["style_loss"]["cuda"] == "cpp"


@pytest.mark.parametrize("gpu_impl", GPU_IMPLS)
@gpu_cases
def test_gpu(gpu_impl, shape, dtype, lay):
    torch.backends.cuda.matmul.allow_tf32 = False
    x = layout(rand(shape, dtype).cuda(), lay)
    with library.use(gpu_impl):
        assert library.backend_info()["style_loss"]["cuda"] == gpu_impl
        for target in (ref_gram(rand(shape, dtype, seed=1)).float(), ref_gram(rand(shape, dtype, seed=2))[:1].float()):
            v, g = style_loss_values(x, target.cuda(), compute_grad=True)
            v_ref, g_ref = ref_value_grad(ref_style, x.cpu(), target.expand(shape[0], -1, -1))
            assert_close(v.cpu(), v_ref, 1e-3)
            assert_layout_like(g, x)
            assert_close(g.cpu(), g_ref, GPU_RTOL[dtype], atol=subnormal_step(dtype))
            v2, empty = style_loss_values(x, target.cuda(), compute_grad=False)
            assert empty.numel() == 0
            assert_close(v2.cpu(), v_ref, 1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("lay", ("contiguous", "channels_last"))
def test_gpu_cpp_float64_and_reproducible(lay):
    x = layout(rand((3, 40, 7, 9), torch.float64).cuda(), lay)
    target = ref_gram(rand((1, 40, 7, 9), torch.float64, seed=2))
    with library.use("cpp"):
        v, g = style_loss_values(x, target.cuda(), compute_grad=True)
        v_ref, g_ref = ref_value_grad(ref_style, x.cpu(), target.expand(3, -1, -1))
        assert v.dtype == torch.float64 and g.dtype == torch.float64
        assert_close(v.cpu(), v_ref, TOL[torch.float64][0])
        assert_close(g.cpu(), g_ref, TOL[torch.float64][1])
        again = style_loss_values(x, target.cuda(), compute_grad=True)
        assert torch.equal(v, again[0]) and torch.equal(g, again[1])


@pytest.mark.cuda
def test_gpu_cpp_kernel_checks_its_arguments():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    with library.use("cpp"):
        with pytest.raises(RuntimeError, match="target_gram must be"):
            torch.ops.perfloss.style_loss(x, torch.randn(2, 4, 4, device="cuda"), False)
        with pytest.raises(RuntimeError, match="target_gram must be on the features' device"):
            torch.ops.perfloss.style_loss(x, torch.randn(2, 3, 3), False)
        with pytest.raises(RuntimeError, match="features must be floating point"):
            torch.ops.perfloss.style_loss(x.int(), torch.randn(2, 3, 3, device="cuda"), False)
