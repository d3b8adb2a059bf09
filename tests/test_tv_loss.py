"""perfloss::tv_loss in every implementation: values and gradient against float64 autograd through
the total-variation formula written in tests/op_helpers.py."""
import pytest
import torch

from op_helpers import (GPU_RTOL, TOL, assert_close, assert_layout_like, case_id, cases, check_running, layout,
                        opcheck, rand, ref_tv, ref_value_grad)
from perfloss.ops import library
from perfloss.ops.tv_loss import tv_loss, tv_loss_op


@pytest.mark.parametrize("kind", ("l1", "l2"))
@pytest.mark.parametrize("case", [c for c in cases(with_big=False) if c[0][2] >= 2 and c[0][3] >= 2]
                         + [((2, 3, 2, 2), "channels_last", torch.float32), ((1, 2, 9, 2), "contiguous", torch.float16)],
                         ids=case_id)
def test_tv_loss(impl, case, kind):
    check_running("tv_loss", impl)
    shape, lay, dtype = case
    x = layout(rand(shape, dtype), lay)
    values, grad = tv_loss_op(x, kind, True)
    v_ref, g_ref = ref_value_grad(ref_tv, x, kind)
    assert values.dtype == torch.float32
    assert_close(values, v_ref, 2e-5 if dtype == torch.float32 else 2e-4)
    assert_layout_like(grad, x)
    assert_close(grad, g_ref, TOL[dtype][1])


def test_tv_loss_constant_and_zero(impl):
    for x in (torch.zeros(2, 3, 4, 5), torch.full((2, 3, 4, 5), 2.0)):
        values, grad = tv_loss_op(x, "l1", True)
        assert torch.equal(values, torch.zeros(2)) and torch.equal(grad, torch.zeros_like(x))


def test_gradcheck_float64(impl):
    x = rand((1, 3, 2, 3) if impl == "triton" else (2, 3, 3, 4), torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: tv_loss(x, "l2", reduction="none"), (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda x: tv_loss(x, "l1", reduction="sum"), (x,), eps=1e-6, atol=1e-5)


def test_backward_through_a_values_only_call(impl):
    """compute_grad=False and then differentiating anyway: backward computes the gradient itself."""
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    (g,) = torch.autograd.grad(tv_loss_op(x, "l2", False)[0].sum(), x)
    assert_close(g, ref_value_grad(ref_tv, x, "l2")[1], 1e-5)


@pytest.mark.parametrize("compute_grad", (True, False))
def test_opcheck(impl, compute_grad):
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    opcheck(tv_loss_op, (x, "l1", compute_grad))
    if impl != "triton":  # the interpreter is slow: one layout there
        cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        opcheck(tv_loss_op, (cl, "l2", compute_grad))


def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="kind"):
        tv_loss(x, "l3")
    with pytest.raises(ValueError, match="2x2"):
        tv_loss(torch.randn(1, 3, 1, 5))
    with pytest.raises(ValueError, match="reduction"):
        tv_loss(x, reduction="max")


@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_cpp_kernel_checks_its_arguments():
    with pytest.raises(RuntimeError, match="2x2"):
        torch.ops.perfloss.tv_loss(torch.randn(1, 3, 1, 5), "l1", False)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("lay", ("contiguous", "channels_last"))
def test_gpu(dtype, lay):
    assert library.backend_info()["tv_loss"]["cuda"] == "triton"
    x = layout(rand((4, 128, 33, 31), dtype).cuda(), lay)
    v, g = tv_loss_op(x, "l2", True)
    v_ref, g_ref = ref_value_grad(ref_tv, x.cpu(), "l2")
    assert_close(v.cpu(), v_ref, 1e-3)
    assert_close(g.cpu(), g_ref, GPU_RTOL[dtype])
