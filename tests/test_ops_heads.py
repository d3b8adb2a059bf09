"""The loss-head ops (gram, style_loss, feature_distance, tv_loss) in every implementation.

Each implementation (reference, cpp when perfloss._C is built, triton through TRITON_INTERPRET=1)
is forced with PERFLOSS_IMPL and compared with float64 references written here from the formulas
(gradients by autograd through those formulas, not from the ops' closed forms).
"""
import pytest
import torch

from perfloss.ops import dispatch
from perfloss.ops.feature_distance import feature_distance, feature_distance_op, feature_distance_values
from perfloss.ops.gram import gram, gram_op
from perfloss.ops.style_loss import style_loss, style_loss_op, style_loss_values
from perfloss.ops.tv_loss import tv_loss, tv_loss_op

OPS = ("gram", "style_loss", "feature_distance", "tv_loss")


# ---- independent float64 references ------------------------------------------------------------
def ref_gram(x, normalize=True):
    b, c, h, w = x.shape
    f = x.double().reshape(b, c, h * w)
    g = torch.einsum("bik,bjk->bij", f, f)
    return g / (c * h * w) if normalize else g


def ref_style(x, target):
    return (ref_gram(x) - target.double()).pow(2).sum(dim=(1, 2))


def ref_distance(f0, f1, kind, weight=None):
    a, b = f0.double(), f1.double()
    if kind == "mse":
        return ((a - b) ** 2).flatten(1).mean(1)
    if kind == "l1":
        return (a - b).abs().flatten(1).mean(1)
    na = a / torch.sqrt((a * a).sum(1, keepdim=True) + 1e-10)
    nb = b / torch.sqrt((b * b).sum(1, keepdim=True) + 1e-10)
    if kind == "cosine":
        return (1.0 - (na * nb).sum(1)).flatten(1).mean(1)
    w = torch.ones(a.shape[1], dtype=torch.float64) if weight is None else weight.double().reshape(-1)
    return ((na - nb) ** 2 * w.view(1, -1, 1, 1)).sum(1).flatten(1).mean(1)


def ref_tv(x, kind):
    a = x.double()
    dh = a[:, :, 1:] - a[:, :, :-1]
    dw = a[:, :, :, 1:] - a[:, :, :, :-1]
    f = torch.abs if kind == "l1" else torch.square
    return f(dh).flatten(1).mean(1) + f(dw).flatten(1).mean(1)


def ref_value_grad(fn, x, *args):
    """Values of fn(x, *args) in float64 and d(sum of values)/dx by autograd."""
    xd = x.detach().double().requires_grad_(True)
    v = fn(xd, *args)
    (g,) = torch.autograd.grad(v.sum(), xd)
    return v.detach(), g


# ---- helpers ----------------------------------------------------------------------------------
def impls():
    out = ["reference"]
    if dispatch.native_op("gram_kernel") is not None:
        out.append("cpp")
    else:
        out.append(pytest.param("cpp", marks=pytest.mark.skip(reason="perfloss._C not built")))
    out.append(pytest.param("triton", marks=pytest.mark.skipif(
        not (dispatch.triton_available() and dispatch.triton_interpreting()), reason="needs triton + TRITON_INTERPRET=1")))
    return out


@pytest.fixture(params=impls())
def impl(request, monkeypatch):
    monkeypatch.setenv("PERFLOSS_IMPL", request.param)
    for op in OPS:
        assert dispatch.choose(op, "cpu")[0] == request.param
    return request.param


def layout(x, kind):
    if kind == "contiguous":
        return x.contiguous()
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":  # non-dense: every other column of a wider tensor
        wide = torch.repeat_interleave(x, 2, dim=3)
        wide[..., 1::2] = float("nan")  # anything read from the gaps shows up
        out = wide[..., ::2]
        assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
        return out
    if kind == "transposed":  # dense but neither NCHW nor NHWC
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    raise ValueError(kind)


TOL = {torch.float32: (2e-5, 1e-5), torch.float16: (2e-3, 4e-3), torch.bfloat16: (1e-2, 2e-2), torch.float64: (1e-10, 1e-10)}


def assert_close(actual, expected, rtol, atol=1e-12):
    """|actual - expected| <= rtol * max|expected| + atol, elementwise."""
    expected = expected.double()
    scale = expected.abs().max().item() if expected.numel() else 0.0
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    assert torch.isfinite(actual).all()
    assert err <= rtol * scale + atol, f"max error {err:.3g} vs scale {scale:.3g} (rtol {rtol})"


def assert_layout_like(grad, x):
    """The gradient is laid out like torch.empty_like(x), which is what the fake kernels promise."""
    like = torch.empty_like(x)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    for d in range(4):
        if x.shape[d] > 1:
            assert grad.stride(d) == like.stride(d), (grad.stride(), like.stride())


def rand(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)


SHAPES = [(1, 1, 3, 5), (2, 3, 5, 7), (5, 64, 3, 3), (3, 96, 2, 5)]
BIG_C = (1, 512, 2, 3)  # C = 512 at a tiny H*W: the interpreter runs it in about a second
LAYOUTS = ("contiguous", "channels_last", "strided", "transposed")
DTYPES = (torch.float32, torch.float16)


def cases(with_big=True):
    out = [(s, l, d) for s in SHAPES for l in LAYOUTS[:2] for d in DTYPES]
    out += [(s, l, torch.float32) for s in SHAPES[1::2] for l in LAYOUTS[2:]]
    if with_big:
        out += [(BIG_C, "contiguous", torch.float32), (BIG_C, "channels_last", torch.float16)]
    return out


def _id(case):
    s, l, d = case
    return f"{'x'.join(map(str, s))}-{l}-{str(d).split('.')[-1]}"


# ---- gram ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases(), ids=_id)
def test_gram(impl, case):
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


# ---- style loss ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", cases(), ids=_id)
def test_style_loss(impl, case):
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


def test_style_loss_per_sample_target_and_bfloat16(impl):
    x = rand((3, 5, 4, 3), torch.bfloat16)
    target = ref_gram(rand((3, 5, 4, 3), torch.float32, seed=2)).to(torch.bfloat16)
    values, grad = style_loss_values(x, target, compute_grad=True)
    v_ref, g_ref = ref_value_grad(ref_style, x, target)
    assert_close(values, v_ref, 1e-3)
    assert_close(grad, g_ref, TOL[torch.bfloat16][1])


# ---- feature distance ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ("mse", "l1", "cosine", "lpips"))
@pytest.mark.parametrize("case", cases(), ids=_id)
def test_feature_distance(impl, case, kind):
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


@pytest.mark.parametrize("kind", ("mse", "l1", "cosine", "lpips"))
def test_feature_distance_bfloat16(impl, kind):
    f0, f1 = rand((2, 6, 3, 5), torch.bfloat16), rand((2, 6, 3, 5), torch.bfloat16, seed=1)
    values, grad = feature_distance_values(f0, f1, kind, None, compute_grad=True)
    v_ref, g_ref = ref_value_grad(ref_distance, f0, f1, kind)
    assert_close(values, v_ref, 1e-3)
    assert_close(grad, g_ref, TOL[torch.bfloat16][1])


@pytest.mark.parametrize("kind", ("mse", "l1", "cosine", "lpips"))
def test_feature_distance_zero_and_constant(impl, kind):
    zero = torch.zeros(2, 4, 3, 5)
    const = torch.full((2, 4, 3, 5), 0.5)
    for f0, f1 in ((zero, zero), (zero, const), (const, zero), (const, const)):
        values, grad = feature_distance_values(f0, f1, kind, None, compute_grad=True)
        v_ref, g_ref = ref_value_grad(ref_distance, f0, f1, kind)
        assert torch.isfinite(values).all() and torch.isfinite(grad).all()
        assert_close(values, v_ref, 1e-5, atol=1e-6)
        assert (grad.double() - g_ref).abs().max() <= 1e-5 * max(1.0, g_ref.abs().max().item())


# ---- total variation ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ("l1", "l2"))
@pytest.mark.parametrize("case", [c for c in cases(with_big=False) if c[0][2] >= 2 and c[0][3] >= 2]
                         + [((2, 3, 2, 2), "channels_last", torch.float32), ((1, 2, 9, 2), "contiguous", torch.float16)],
                         ids=_id)
def test_tv_loss(impl, case, kind):
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


# ---- autograd, opcheck, compile -----------------------------------------------------------------
def test_gradcheck_float64(impl):
    if impl == "triton":
        shape = (1, 3, 2, 3)
    else:
        shape = (2, 3, 3, 4)
    x = rand(shape, torch.float64).requires_grad_(True)
    y = rand(shape, torch.float64, seed=1)
    target = ref_gram(rand(shape, torch.float64, seed=2))
    w = torch.rand(shape[1], dtype=torch.float64)
    checks = [
        lambda x: gram(x),
        lambda x: style_loss(x, target, reduction="none"),
        lambda x: tv_loss(x, "l2", reduction="none"),
        lambda x: tv_loss(x, "l1", reduction="sum"),
    ] + [lambda x, k=k: feature_distance(x, y, k, w if k == "lpips" else None, reduction="none")
         for k in ("mse", "l1", "cosine", "lpips")]
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                 "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("compute_grad", (True, False))
def test_opcheck(impl, compute_grad):
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    y = rand((2, 3, 4, 5), torch.float32, seed=1)
    cl = rand((2, 3, 4, 5), torch.float32, seed=2).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    target = ref_gram(y).float()
    full = impl != "triton"  # the interpreter is slow: one layout and kind set there
    _opcheck(gram_op, (x, True))
    _opcheck(style_loss_op, (x, target, compute_grad))
    for kind in ("mse", "l1", "cosine", "lpips") if full else ("l1", "lpips"):
        _opcheck(feature_distance_op, (x, y, kind, torch.rand(3) if kind == "lpips" else None, compute_grad))
    _opcheck(tv_loss_op, (x, "l1", compute_grad))
    if full:
        _opcheck(gram_op, (cl, False))
        _opcheck(style_loss_op, (cl, target, compute_grad))
        _opcheck(feature_distance_op, (cl, y, "cosine", None, compute_grad))
        _opcheck(tv_loss_op, (cl, "l2", compute_grad))


def test_compile_fullgraph(impl):
    torch._dynamo.reset()
    target = ref_gram(rand((2, 4, 5, 6), torch.float32, seed=2))[:1].float()

    def loss_fn(x, y):
        return (style_loss(x, target) + feature_distance(x, y, "lpips") + feature_distance(x, y, "mse")
                + tv_loss(x, "l1") + gram(x).sum())

    x = rand((2, 4, 5, 6), torch.float32).requires_grad_(True)
    y = rand((2, 4, 5, 6), torch.float32, seed=1)
    counts = {"n": 0}

    def backend(gm, example_inputs):
        counts["n"] += 1
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    out = compiled(x, y)
    (g,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_(True)
    out2 = loss_fn(x2, y)
    (g2,) = torch.autograd.grad(out2, x2)
    assert counts["n"] == 1  # one graph, no breaks
    assert torch.allclose(out, out2, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g, g2, rtol=1e-4, atol=1e-7)


def test_backward_through_a_values_only_call(impl):
    """compute_grad=False and then differentiating anyway: backward computes the gradient itself."""
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    y = rand((2, 3, 4, 5), torch.float32, seed=1)
    target = ref_gram(y).float()
    calls = [
        (lambda: style_loss_op(x, target, False)[0], ref_style, (target,)),
        (lambda: feature_distance_op(x, y, "lpips", None, False)[0], ref_distance, (y, "lpips")),
        (lambda: tv_loss_op(x, "l2", False)[0], ref_tv, ("l2",)),
    ]
    for call, ref, args in calls:
        (g,) = torch.autograd.grad(call().sum(), x)
        assert_close(g, ref_value_grad(ref, x, *args)[1], 1e-5)


def test_no_grad_values_only():
    x = rand((2, 3, 4, 5), torch.float32).requires_grad_(True)
    with torch.no_grad():
        v = feature_distance(x, rand((2, 3, 4, 5), torch.float32, seed=1), "cosine")
    assert not v.requires_grad


# ---- bad inputs ---------------------------------------------------------------------------------
def test_bad_inputs():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="4-D"):
        gram(torch.randn(3, 4, 5))
    with pytest.raises(TypeError, match="floating-point"):
        gram(torch.ones(2, 3, 4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        gram(torch.randn(0, 3, 4, 5))
    with pytest.raises(ValueError, match="target_gram"):
        style_loss(x, torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        style_loss(x, torch.randn(3, 3, 3))
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
    with pytest.raises(ValueError, match="kind"):
        tv_loss(x, "l3")
    with pytest.raises(ValueError, match="2x2"):
        tv_loss(torch.randn(1, 3, 1, 5))
    with pytest.raises(ValueError, match="reduction"):
        tv_loss(x, reduction="max")


def test_native_kernels_check_their_arguments():
    if dispatch.native_op("feature_distance_kernel") is None:
        pytest.skip("perfloss._C not built")
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="kind"):
        torch.ops.perfloss.feature_distance_kernel(x, x, "l3", None, False)
    with pytest.raises(RuntimeError, match="2x2"):
        torch.ops.perfloss.tv_loss_kernel(torch.randn(1, 3, 1, 5), "l1", False)
    with pytest.raises(RuntimeError, match="target_gram"):
        torch.ops.perfloss.style_loss_kernel(x, torch.randn(2, 4, 4), False)
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.perfloss.gram_kernel(torch.randn(3, 4, 5), True)


def test_backend_info_reports_the_cpu_kernels():
    info = dispatch.backend_info()
    want = "cpp" if dispatch.native_op("gram_kernel") is not None else "reference"
    for op in OPS:
        assert info[op]["cpu"] == want
        assert info[op]["cuda"] == ("triton" if dispatch.triton_available() else "reference")


# ---- GPU (run on the device with PERFLOSS_TEST_GPU=1) --------------------------------------------
GPU_SHAPES = [(16, 64, 64, 64), (4, 128, 33, 31), (2, 512, 16, 16), (3, 3, 17, 19)]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("lay", ("contiguous", "channels_last"))
def test_gpu_kernels(shape, dtype, lay, monkeypatch):
    monkeypatch.setenv("PERFLOSS_IMPL", "triton")
    torch.backends.cuda.matmul.allow_tf32 = False
    x = layout(rand(shape, dtype).cuda(), lay)
    y = layout(rand(shape, dtype, seed=1).cuda(), lay)
    rtol_g = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    assert_close(gram(x).cpu(), ref_gram(x.cpu()), rtol_g)
    target = ref_gram(y.cpu()).float()
    v, g = style_loss_values(x, target.cuda(), compute_grad=True)
    v_ref, g_ref = ref_value_grad(ref_style, x.cpu(), target)
    assert_close(v.cpu(), v_ref, 1e-3)
    assert_close(g.cpu(), g_ref, rtol_g)
    for kind in ("mse", "l1", "cosine", "lpips"):
        v, g = feature_distance_values(x, y, kind, None, compute_grad=True)
        v_ref, g_ref = ref_value_grad(ref_distance, x.cpu(), y.cpu(), kind)
        assert_close(v.cpu(), v_ref, 1e-3)
        assert_close(g.cpu(), g_ref, rtol_g)
    v, g = tv_loss_op(x, "l2", True)
    v_ref, g_ref = ref_value_grad(ref_tv, x.cpu(), "l2")
    assert_close(v.cpu(), v_ref, 1e-3)
    assert_close(g.cpu(), g_ref, rtol_g)


@pytest.mark.cuda
def test_gpu_large_offsets(monkeypatch):
    """More than 2^31 elements in one tensor: the 64-bit offsets (needs ~20 GB of GPU memory)."""
    monkeypatch.setenv("PERFLOSS_IMPL", "triton")
    x = torch.ones((1, 2, 2**15, 2**15 + 8), dtype=torch.float16, device="cuda")
    x[..., -1, -1] = 3.0
    v, g = feature_distance_values(x, torch.ones_like(x), "mse", None, compute_grad=True)
    assert v.item() == pytest.approx(4.0 / x.numel(), rel=1e-3)
    assert g[0, 1, -1, -1].item() > 0 and g[0, 0, 0, 0].item() == 0
