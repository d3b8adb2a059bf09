"""Property tests (hypothesis): every op in perfloss/ops against plain PyTorch written here or in
tests/op_helpers.py, over drawn shapes (1x1, odd, very wide), layouts (contiguous, channels_last,
transposed, sliced), dtypes, and values with ties, zeros, -0.0, subnormals, huge magnitudes, NaN and
Inf. Each op runs on the C++ kernel (the CPU default) and on its plain-PyTorch reference; Triton (the
interpreter) gets a handful of examples. NaN and Inf follow each op's documented policy: the same
non-finite entries as PyTorch, never a crash or a finite number where PyTorch has none.

Derandomized with small example counts, so CI is reproducible and the file stays well under a minute.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_helpers import TOL, ref_distance, ref_gram, ref_style, ref_tv, ref_value_grad
from perfloss.kernels.common import work_channels_last
from perfloss.ops import library
from perfloss.ops.feature_distance import feature_distance_values
from perfloss.ops.gram import gram
from perfloss.ops.maxpool_codes import maxpool_codes, maxpool_unroute
from perfloss.ops.pgn_input import pgn_input
from perfloss.ops.pgn_output import pgn_output
from perfloss.ops.relu_mask import relu_mask, relu_mask_, relu_mask_backward
from perfloss.ops.sign_pack import sign_pack, sign_unpack
from perfloss.ops.style_loss import style_loss_values
from perfloss.ops.tv_loss import tv_loss_op

pytestmark = pytest.mark.usefixtures("one_thread")

PROPERTY = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
IMPLS = ["cpp", "reference"]
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced")
SPECIALS = ("zero", "negzero", "subnormal", "huge", "nan", "inf", "ninf")
# magnitudes whose squares and sums stay finite in each dtype's accumulator (fp16 and bf16 accumulate
# in fp32, whose range bf16 shares)
HUGE = {torch.float32: 1e8, torch.float16: 1e4, torch.bfloat16: 1e8, torch.float64: 1e30}


@st.composite
def shapes(draw, min_hw=1, max_c=9):
    kind = draw(st.sampled_from(("small", "1x1", "wide", "tall", "many_channels")))
    b = draw(st.integers(1, 3))
    if kind == "1x1":
        return b, draw(st.integers(1, max_c)), max(1, min_hw), max(1, min_hw)
    if kind == "wide":
        return b, draw(st.integers(1, 3)), min_hw, draw(st.integers(100, 300))
    if kind == "tall":
        return b, draw(st.integers(1, 3)), draw(st.integers(100, 300)), min_hw
    if kind == "many_channels":
        return b, draw(st.integers(60, 200)), min_hw, draw(st.integers(min_hw, min_hw + 2))
    return b, draw(st.integers(1, max_c)), draw(st.integers(min_hw, 9)), draw(st.integers(min_hw, 9))


def laid_out(x: torch.Tensor, lay: str) -> torch.Tensor:
    if lay == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if lay == "transposed":  # dense, neither NCHW nor NHWC
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if lay == "sliced":  # every other column of a wider tensor whose gaps hold NaN
        wide = torch.repeat_interleave(x, 2, dim=3)
        wide[..., 1::2] = float("nan")
        return wide[..., ::2]
    return x.contiguous()


@st.composite
def tensors(draw, shape, dtype, specials=SPECIALS, layouts=LAYOUTS):
    """A tensor of ``shape``: normal values, optionally rounded to a few levels (ties) and sprinkled
    with drawn special values, in a drawn layout."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if draw(st.booleans()):
        x = torch.round(x * 2) / 2  # ties, and exact zeros
    chosen = draw(st.lists(st.sampled_from(specials), max_size=3, unique=True)) if specials else []
    tiny = torch.finfo(dtype).smallest_normal / 4  # subnormal in dtype
    values = {"zero": 0.0, "negzero": -0.0, "subnormal": tiny, "huge": HUGE[dtype],
              "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")}
    flat = x.view(-1)
    for name in chosen:
        picks = torch.randint(0, flat.numel(), (max(1, flat.numel() // 10),), generator=g)
        sign = -1.0 if name in ("huge", "subnormal") and draw(st.booleans()) else 1.0
        flat[picks] = sign * values[name]
    return laid_out(x.to(dtype), draw(st.sampled_from(layouts)))


def memory_order(x: torch.Tensor) -> torch.Tensor:
    """x flattened in the order the bit-packing ops pack it: its working layout's memory order."""
    return x.permute(0, 2, 3, 1).reshape(-1) if work_channels_last(x) else x.reshape(-1)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Codes 0..n-1 packed little-end first, ``8 // bits`` per byte."""
    per = 8 // bits
    i = torch.arange(n)
    return (packed[i // per].long() >> ((i % per) * bits)) & ((1 << bits) - 1)


def assert_matches(actual, expected, rtol, atol=1e-30):
    """Same NaN and same-signed Inf entries (expected computed in float64 and rounded to actual's dtype);
    the finite entries within rtol * max|finite expected| + atol."""
    expected = expected.to(actual.dtype).double()
    actual = actual.double()
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), "NaN entries differ"
    inf = torch.isinf(expected)
    assert torch.equal(torch.isinf(actual), inf) and torch.equal(actual[inf], expected[inf]), "Inf entries differ"
    finite = torch.isfinite(expected)
    if finite.any():
        scale = expected[finite].abs().max().item()
        err = (actual[finite] - expected[finite]).abs().max().item()
        assert err <= rtol * scale + atol, f"max error {err:.3g} vs scale {scale:.3g} (rtol {rtol})"


def running(op, impl):
    assert library.backend_info()[op]["cpu"] == impl


# -- relu_mask -----------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(data=st.data(), slope=st.sampled_from((0.0, 0.2)), dtype=st.sampled_from(DTYPES))
def test_relu_mask(impl, data, slope, dtype):
    x = data.draw(tensors(data.draw(shapes()), dtype))
    keep = data.draw(st.integers(0, x.shape[0]))
    eager = torch.relu(x) if slope == 0 else F.leaky_relu(x, slope)
    with library.use(impl):
        running("relu_mask", impl)
        y, mask = relu_mask(x, slope, keep)
        torch.testing.assert_close(y, eager, rtol=0, atol=0, equal_nan=True)
        per_sample = x[0].numel()
        assert torch.equal(unpack_codes(mask, 1, keep * per_sample).bool(), memory_order(x)[:keep * per_sample] > 0)

        dense = x.contiguous(memory_format=torch.channels_last) if work_channels_last(x) else x.contiguous()
        x_in = dense.clone()
        mask_ = relu_mask_(x_in, slope)
        torch.testing.assert_close(x_in, eager, rtol=0, atol=0, equal_nan=True)
        # the backward: eager autograd where x is not NaN; at NaN the mask bit is 0 (NaN > 0 is false)
        grad = data.draw(tensors(tuple(x.shape), dtype, specials=("zero", "nan", "inf"), layouts=("contiguous",)))
        grad = grad.contiguous(memory_format=torch.channels_last) if work_channels_last(x) else grad
        grad_in = relu_mask_backward(grad, mask_, slope)
    leaf = x.detach().clone().requires_grad_()  # eager autograd in x's dtype: the kernels match it exactly
    out = torch.relu(leaf) if slope == 0 else F.leaky_relu(leaf, slope)
    (expected,) = torch.autograd.grad(out, leaf, grad)
    if slope == 0:  # documented: NaN's mask bit is 0 (NaN > 0 is false); eager's ReLU backward passes grad
        expected[torch.isnan(x)] = 0.0
    assert_matches(grad_in, expected, rtol=0, atol=0)


# -- maxpool_codes / maxpool_unroute ---------------------------------------------------------------
@st.composite
def pool_args(draw):
    k = draw(st.sampled_from((2, 3)))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    d = draw(st.sampled_from((1, 1, 2)))
    span = d * (k - 1) + 1
    return k, s, p, d, draw(st.booleans()), span


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_maxpool_codes_and_unroute(impl, data, dtype):
    k, s, p, d, ceil, span = data.draw(pool_args())
    x = data.draw(tensors(data.draw(shapes(min_hw=span)), dtype, specials=("zero", "negzero", "huge", "nan", "inf",
                                                                             "ninf")))
    y_ref, idx = F.max_pool2d(x.double(), k, s, p, d, ceil, return_indices=True)
    with library.use(impl):
        running("maxpool_codes", impl)
        y, codes = maxpool_codes(x, k, s, p, d, ceil)
        torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=0, equal_nan=True)
        w = x.shape[3]
        oh, ow = y_ref.shape[2:]
        h0 = (torch.arange(oh) * s - p).view(-1, 1)
        w0 = (torch.arange(ow) * s - p).view(1, -1)
        expected_codes = ((idx // w - h0) // d) * k + (idx % w - w0) // d
        # the codes follow y's memory order (x's working layout)
        expected_codes = memory_order(torch.empty_like(y, dtype=torch.long).copy_(expected_codes))
        got = unpack_codes(codes, 2 if k == 2 else 4, y_ref.numel())
        assert torch.equal(got, expected_codes), "argmax codes (first maximum in window order; NaN wins)"
        grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        grad_in = maxpool_unroute(torch.empty_like(y).copy_(grad), codes, x.shape[2:], k, s, p, d)  # in y's layout
    leaf = x.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad(F.max_pool2d(leaf, k, s, p, d, ceil), leaf, grad.double())
    assert_matches(grad_in, expected, rtol=TOL[dtype][0] if dtype != torch.float64 else 1e-12)


# -- sign_pack / sign_unpack ---------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(DTYPES), channels_last=st.booleans())
def test_sign_pack_and_unpack(impl, data, dtype, channels_last):
    g = data.draw(tensors(data.draw(shapes()), dtype))
    flat = memory_order(g)
    with library.use(impl):
        running("sign_pack", impl)
        codes = sign_pack(g)
        # NaN has no sign: it packs as 0 (documented; the L1 value that produced it is NaN itself)
        expected = (flat > 0).long() + 2 * (flat < 0).long()
        assert torch.equal(unpack_codes(codes, 2, flat.numel()), expected)
        scale = torch.tensor(data.draw(st.sampled_from((0.25, 3.0, 1e-3))), dtype=dtype)
        grad_values = torch.tensor(data.draw(st.lists(st.sampled_from((1.0, -2.0, 0.0, float("nan"))),
                                                      min_size=g.shape[0], max_size=g.shape[0])))
        t = sign_unpack(codes, scale, grad_values, g.shape, channels_last)
    sign = (expected == 1).double() - (expected == 2).double()
    sizes = g.shape
    sign = sign.view(sizes[0], sizes[2], sizes[3], sizes[1]).permute(0, 3, 1, 2) if channels_last else sign.view(sizes)
    ref = grad_values.double().view(-1, 1, 1, 1) * (sign * scale.double())
    assert t.dtype == dtype and t.shape == g.shape
    assert_matches(t, ref, rtol=0, atol=0)


# -- feature_distance, gram, style_loss, tv_loss ---------------------------------------------------
def value_and_grad_reference(fn, x, *args):
    """float64 values and d(sum of values)/dx by autograd (NaN and Inf propagate as PyTorch's do)."""
    return ref_value_grad(fn, x, *args)


def rtols(dtype):
    return {torch.float64: (1e-10, 1e-10)}.get(dtype, (2e-4 if dtype == torch.float32 else 4e-3, TOL[dtype][1]))


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(data=st.data(), kind=st.sampled_from(("mse", "l1", "cosine", "lpips")), dtype=st.sampled_from(DTYPES))
def test_feature_distance(impl, data, kind, dtype):
    shape = data.draw(shapes())
    f0 = data.draw(tensors(shape, dtype))
    f1 = data.draw(tensors(shape, dtype))
    weight = torch.rand(shape[1], generator=torch.Generator().manual_seed(2)) if kind == "lpips" else None
    with library.use(impl):
        running("feature_distance", impl)
        values, grad = feature_distance_values(f0, f1, kind, weight, compute_grad=True)
    v_ref, g_ref = value_and_grad_reference(ref_distance, f0, f1, kind, weight)
    v_tol, g_tol = rtols(dtype)
    if shape[1] == 1 and kind in ("cosine", "lpips"):
        g_tol = max(g_tol, 1e-3)  # at C = 1 the normalised gradient is 0 up to rounding
    assert_matches(values, v_ref, v_tol, atol=1e-6 if dtype != torch.float64 else 1e-12)
    assert_matches(grad, g_ref, g_tol, atol=1e-6 if dtype != torch.float64 else 1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(DTYPES))
def test_gram_and_style_loss(impl, data, dtype):
    shape = data.draw(shapes())
    x = data.draw(tensors(shape, dtype))
    target = torch.randn((data.draw(st.sampled_from((1, shape[0]))), shape[1], shape[1]),
                         generator=torch.Generator().manual_seed(3)).to(dtype) * 0.1
    v_tol, g_tol = rtols(dtype)
    with library.use(impl):
        running("gram", impl)
        g = gram(x)
        assert_matches(g, ref_gram(x), v_tol if dtype != torch.float32 else 1e-5, atol=1e-6)
        values, grad = style_loss_values(x, target, compute_grad=True)
    v_ref, g_ref = value_and_grad_reference(ref_style, x, target)
    assert_matches(values, v_ref, v_tol, atol=1e-6)
    assert_matches(grad, g_ref, g_tol, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@PROPERTY
@given(data=st.data(), kind=st.sampled_from(("l1", "l2")), dtype=st.sampled_from(DTYPES))
def test_tv_loss(impl, data, kind, dtype):
    x = data.draw(tensors(data.draw(shapes(min_hw=2)), dtype))
    with library.use(impl):
        running("tv_loss", impl)
        values, grad = tv_loss_op(x, kind, True)
    v_ref, g_ref = value_and_grad_reference(ref_tv, x, kind)
    v_tol, g_tol = rtols(dtype)
    assert_matches(values, v_ref, v_tol, atol=1e-6)
    assert_matches(grad, g_ref, g_tol, atol=1e-6)


# -- the PGN's input and output stages (plain PyTorch on CPU) ----------------------------------------
@PROPERTY
@given(data=st.data(), dtype=st.sampled_from(DTYPES), out_dtype=st.sampled_from(DTYPES))
def test_pgn_input_and_output(data, dtype, out_dtype):
    shape = data.draw(shapes())
    y_hat, y = data.draw(tensors(shape, dtype)), data.draw(tensors(shape, dtype))
    c = shape[1]
    scale, shift = torch.linspace(0.5, 2.0, 2 * c), torch.linspace(-1.0, 1.0, 2 * c)
    x = pgn_input(y_hat, y, scale, shift, out_dtype)
    ref = torch.cat([y_hat.double(), y.double()], 1) * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)
    assert x.dtype == out_dtype and x.is_contiguous(memory_format=torch.channels_last)
    assert_matches(x, ref.float(), rtol=1e-6 if out_dtype in (torch.float32, torch.float64) else 1e-2, atol=1e-6)
    offset = torch.linspace(-0.1, 0.1, c)
    proxy, grad = pgn_output(y, y_hat, offset, 1.1, 0.5)
    p_ref = 1.1 * torch.sigmoid(y.double()) + offset.double().view(1, -1, 1, 1)
    assert_matches(proxy, p_ref.float(), rtol=1e-6 if dtype in (torch.float32, torch.float64) else 1e-2, atol=1e-6)
    assert_matches(grad, (0.5 * (y_hat.double() - p_ref.float().double())).float(),
                   rtol=1e-6 if dtype in (torch.float32, torch.float64) else 1e-2, atol=1e-6)


# -- Triton through its interpreter: a handful of examples -------------------------------------------
TRITON = pytest.mark.skipif(not (library.triton_available() and __import__("perfloss.kernels.common",
                                                                            fromlist=["interpreting"]).interpreting()),
                            reason="needs triton and TRITON_INTERPRET=1")


@TRITON
@settings(PROPERTY, max_examples=3)
@given(data=st.data(), kind=st.sampled_from(("mse", "lpips")))
def test_triton_feature_distance_and_relu_mask(data, kind):
    shape = data.draw(shapes(max_c=4).filter(lambda s: s[0] * s[1] * s[2] * s[3] <= 600))
    f0, f1 = data.draw(tensors(shape, torch.float32)), data.draw(tensors(shape, torch.float32))
    with library.use("triton"):
        running("feature_distance", "triton")
        values, grad = feature_distance_values(f0, f1, kind, None, compute_grad=True)
        y, mask = relu_mask(f0)
    v_ref, g_ref = value_and_grad_reference(ref_distance, f0, f1, kind, None)
    assert_matches(values, v_ref, 2e-4, atol=1e-6)
    assert_matches(grad, g_ref, 1e-3 if shape[1] > 1 else 1e-3, atol=1e-6)
    torch.testing.assert_close(y, torch.relu(f0), rtol=0, atol=0, equal_nan=True)
    assert torch.equal(unpack_codes(mask, 1, f0.numel()).bool(), memory_order(f0) > 0)
