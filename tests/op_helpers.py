"""Shared by the per-op tests: float64 references written from the formulas, layouts, tolerances."""
import pytest
import torch

from perfloss.ops import library


def check_running(op, impl):
    """The ``impl`` fixture (tests/conftest.py) has put ``op`` on ``impl`` for CPU tensors."""
    assert library.backend_info()[op]["cpu"] == impl


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


def subnormal_step(dtype):
    """The spacing of dtype's subnormals: gradient entries of large feature maps (2 / (C H W) times a
    difference) fall below fp16's normal range, where any implementation rounds them to a multiple of it."""
    return torch.finfo(dtype).tiny * torch.finfo(dtype).eps


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


GPU_SHAPES = [(16, 64, 64, 64), (4, 128, 33, 31), (2, 512, 16, 16), (3, 3, 17, 19)]
GPU_RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def gpu_cases(test):
    """The GPU machine's cases (PERFLOSS_TEST_GPU=1): shapes of real taps, three dtypes, both layouts."""
    test = pytest.mark.parametrize("lay", ("contiguous", "channels_last"))(test)
    test = pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))(test)
    test = pytest.mark.parametrize("dtype", tuple(GPU_RTOL))(test)
    return pytest.mark.cuda(test)


def case_id(case):
    s, l, d = case
    return f"{'x'.join(map(str, s))}-{l}-{str(d).split('.')[-1]}"


def opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                 "test_aot_dispatch_dynamic"))


def with_specials(x):
    """Zeros, signed zeros, NaN and infinities sprinkled over x (in place), to exercise every select."""
    flat = x.view(-1) if x.is_contiguous() else x.permute(0, 2, 3, 1).reshape(-1)
    for start, step, v in [(0, 5, 0.0), (1, 7, -0.0), (2, 11, float("nan")), (3, 13, float("-inf")),
                           (4, 17, float("inf"))]:
        flat[start::step] = v
    return x


def same_bits(a, b):
    it = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[a.dtype]
    return a.shape == b.shape and torch.equal(a.contiguous().view(it), b.contiguous().view(it))
