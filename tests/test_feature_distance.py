"""perfloss::feature_distance (mse, l1, cosine, lpips) in every implementation: values and gradient
against float64 autograd through the formulas written in tests/op_helpers.py."""
import pytest
import torch

from op_helpers import (GPU_RTOL, TOL, assert_close, assert_layout_like, case_id, cases, check_running, gpu_cases,
                        layout, opcheck, rand, ref_distance, ref_value_grad, subnormal_step)
from perfloss.ops import library
from perfloss.ops.feature_distance import feature_distance, feature_distance_op, feature_distance_values

KINDS = ("mse", "l1", "cosine", "lpips")
GPU_IMPLS = ("triton", "cpp")  # on CUDA tensors: the Triton kernel and the C++ CUDA kernel


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", cases(), ids=case_id)
def test_feature_distance(impl, case, kind):
    check_running("feature_distance", impl)
    shape, lay, dtype = case
    f0 = layout(rand(shape, dtype), lay)
    f1 = layout(rand(shape, dtype, seed=1), "channels_last" if lay == "contiguous" else "contiguous")
    weight = torch.rand(shape[1], generator=torch.Generator().manual_seed(3)) if kind == "lpips" else None
    values, grad = feature_distance_values(f0, f1, kind, weight, compute_grad=True)
    v_ref, g_ref = ref_value_grad(ref_distance, f0, f1, kind, weight)
    assert values.dtype == torch.float32 and values.shape == (shape[0],)
    assert_close(values, v_ref, 2e-5 if dtype == torch.float32 else 2e-4)
    assert_layout_like(grad, f0)
    if shape[1] == 1 and kind in ("cosine", "lpips"):
        # At C = 1 the normalised gradient is 0 up to rounding: compare absolutely.
        assert (grad.double() - g_ref).abs().max() < 1e-4
    else:
        assert_close(grad, g_ref, TOL[dtype][1])
    values2, empty = feature_distance_values(f0, f1, kind, weight, compute_grad=False)
    assert empty.numel() == 0
    assert_close(values2, v_ref, 2e-5 if dtype == torch.float32 else 2e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_feature_distance_bfloat16(impl, kind):
    f0, f1 = rand((2, 6, 3, 5), torch.bfloat16), rand((2, 6, 3, 5), torch.bfloat16, seed=1)
    values, grad = feature_distance_values(f0, f1, kind, None, compute_grad=True)
    v_ref, g_ref = ref_value_grad(ref_distance, f0, f1, kind)
    assert_close(values, v_ref, 1e-3)
    assert_close(grad, g_ref, TOL[torch.bfloat16][1])


@pytest.mark.parametrize("kind", KINDS)
def test_feature_distance_zero_and_constant(impl, kind):
    zero = torch.zeros(2, 4, 3, 5)
    const = torch.full((2, 4, 3, 5), 0.5)
    for f0, f1 in ((zero, zero), (zero, const), (const, zero), (const, const)):
        values, grad = feature_distance_values(f0, f1, kind, None, compute_grad=True)
        v_ref, g_ref = ref_value_grad(ref_distance, f0, f1, kind)
        assert torch.isfinite(values).all() and torch.isfinite(grad).all()
        assert_close(values, v_ref, 1e-5, atol=1e-6)
        assert (grad.double() - g_ref).abs().max() <= 1e-5 * max(1.0, g_ref.abs().max().item())


def test_gradcheck_float64(impl):
    shape = (1, 3, 2, 3) if impl == "triton" else (2, 3, 3, 4)
    x = rand(shape, torch.float64).requires_grad_(True)
    y = rand(shape, torch.float64, seed=1)
    w = torch.rand(shape[1], dtype=torch.float64)
    for kind in KINDS:
        fn = lambda x, k=kind: feature_distance(x, y, k, w if k == "lpips" else None, reduction="none")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def test_backward_through_a_values_only_call(impl):
    """compute_grad=False and then differentiating anyway: backward computes the gradient itself."""
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    y = rand((2, 3, 4, 5), torch.float32, seed=1)
    (g,) = torch.autograd.grad(feature_distance_op(x, y, "lpips", None, False)[0].sum(), x)
    assert_close(g, ref_value_grad(ref_distance, x, y, "lpips")[1], 1e-5)


def test_no_grad_gives_values_only():
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    with torch.no_grad():
        v = feature_distance(x, rand((2, 3, 4, 5), torch.float32, seed=1), "cosine")
    assert not v.requires_grad


@pytest.mark.parametrize("compute_grad", (True, False))
def test_opcheck(impl, compute_grad):
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    y = rand((2, 3, 4, 5), torch.float32, seed=1)
    full = impl != "triton"  # the interpreter is slow: one layout and two kinds there
    for kind in KINDS if full else ("l1", "lpips"):
        opcheck(feature_distance_op, (x, y, kind, torch.rand(3) if kind == "lpips" else None, compute_grad))
    if full:
        cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        opcheck(feature_distance_op, (cl, y, "cosine", None, compute_grad))


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="kind"):
        feature_distance(x, x, "l3")
    with pytest.raises(ValueError, match="same shape"):
        feature_distance(x, torch.randn(2, 3, 4, 6))
    with pytest.raises(TypeError, match="same dtype"):
        feature_distance(x, x.double())
    with pytest.raises(ValueError, match="one entry per channel"):
        feature_distance(x, x, "lpips", torch.ones(4))
    with pytest.raises(ValueError, match="only used by"):
        feature_distance(x, x, "mse", torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        feature_distance(x, x, reduction="max")


@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_cpp_kernel_checks_its_arguments():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="kind"):
        torch.ops.perfloss.feature_distance(x, x, "l3", None, False)


@pytest.mark.cuda
def test_gpu_default_is_triton():
    assert library.backend_info()["feature_distance"]["cuda"] == "triton"


@pytest.mark.parametrize("gpu_impl", GPU_IMPLS)
@gpu_cases
def test_gpu(gpu_impl, shape, dtype, lay):
    x = layout(rand(shape, dtype).cuda(), lay)
    y = layout(rand(shape, dtype, seed=1).cuda(), lay)
    w = torch.rand(shape[1], generator=torch.Generator().manual_seed(3))
    with library.use(gpu_impl):
        assert library.backend_info()["feature_distance"]["cuda"] == gpu_impl
        for kind in KINDS:
            weight = w.cuda() if kind == "lpips" else None
            v, g = feature_distance_values(x, y, kind, weight, compute_grad=True)
            v_ref, g_ref = ref_value_grad(ref_distance, x.cpu(), y.cpu(), kind, None if weight is None else w)
            assert_close(v.cpu(), v_ref, 1e-3)
            assert_layout_like(g, x)
            assert_close(g.cpu(), g_ref, GPU_RTOL[dtype], atol=subnormal_step(dtype))
            v2, empty = feature_distance_values(x, y, kind, weight, compute_grad=False)
            assert empty.numel() == 0
            assert_close(v2.cpu(), v_ref, 1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("lay", ("contiguous", "channels_last"))
@pytest.mark.parametrize("channels", (5, 48))  # channels_last: a thread per pixel / a warp per pixel
def test_gpu_cpp_float64_and_reproducible(lay, channels):
    """The C++ CUDA kernel in float64 against float64 autograd, and bit-identical when run again (its
    per-sample sums take no atomics)."""
    x = layout(rand((3, channels, 9, 11), torch.float64).cuda(), lay)
    y = layout(rand((3, channels, 9, 11), torch.float64, seed=1).cuda(), lay)
    w = torch.rand(channels, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with library.use("cpp"):
        for kind in KINDS:
            weight = w.cuda() if kind == "lpips" else None
            v, g = feature_distance_values(x, y, kind, weight, compute_grad=True)
            v_ref, g_ref = ref_value_grad(ref_distance, x.cpu(), y.cpu(), kind, None if weight is None else w)
            assert v.dtype == torch.float64 and g.dtype == torch.float64
            assert_close(v.cpu(), v_ref, TOL[torch.float64][0])
            assert_close(g.cpu(), g_ref, TOL[torch.float64][1])
            x32, y32 = x.float(), y.float()
            first = feature_distance_values(x32, y32, kind, None if weight is None else weight.float(), True)
            again = feature_distance_values(x32, y32, kind, None if weight is None else weight.float(), True)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.cuda
def test_gpu_cpp_kernel_checks_its_arguments():
    x = torch.randn(2, 3, 4, 5, device="cuda")
    op = torch.ops.perfloss.feature_distance
    with library.use("cpp"):
        with pytest.raises(RuntimeError, match="kind must be one of"):
            op(x, x, "l3", None, False)
        with pytest.raises(RuntimeError, match="f0 and f1 must be on the same device"):
            op(x, x.cpu(), "mse", None, False)
        with pytest.raises(RuntimeError, match="weight must be on f0's device"):
            op(x, x, "lpips", torch.ones(3), False)
        with pytest.raises(RuntimeError, match="f0 and f1 must have the same dtype"):
            op(x, x.double(), "mse", None, False)
        with pytest.raises(RuntimeError, match="f0 must be floating point"):
            op(x.int(), x.int(), "mse", None, False)


@pytest.mark.cuda
@pytest.mark.parametrize("gpu_impl", GPU_IMPLS)
def test_gpu_large_offsets(gpu_impl):
    """More than 2^31 elements in one tensor: the 64-bit offsets (needs ~20 GB of GPU memory)."""
    x = torch.ones((1, 2, 2**15, 2**15 + 8), dtype=torch.float16, device="cuda")
    x[0, 1, -1, -1] = 1000.0  # one element past index 2^31; its gradient 2 * 999 / numel is an fp16 subnormal; a difference of 2 would round to 0
    with library.use(gpu_impl):
        v, g = feature_distance_values(x, torch.ones_like(x), "mse", None, compute_grad=True)
    assert v.item() == pytest.approx(999.0**2 / x.numel(), rel=1e-3)
    assert g[0, 1, -1, -1].item() > 0 and g[0, 0, 0, 0].item() == 0
