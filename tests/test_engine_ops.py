"""The lean engine's packing ops (perfloss::relu_mask, maxpool_codes, sign_pack), every implementation.

References are written here in plain PyTorch: eager activations / max_pool2d and their autograd.
"""
import pytest
import torch
import torch.nn.functional as F

from perfloss.ops import dispatch
from perfloss.ops.maxpool_codes import code_bits, maxpool_codes, maxpool_unroute
from perfloss.ops.relu_mask import relu_mask, relu_mask_backward
from perfloss.ops.sign_pack import sign_pack, sign_unpack


def impls(op):
    names = [impl for impl, _ in dispatch._REGISTRY[op]["cpu"]]
    return [n for n in names if n != "triton" or dispatch.triton_interpreting()]


@pytest.fixture
def force(monkeypatch):
    def _force(impl):
        monkeypatch.setenv("PERFLOSS_IMPL", impl)
        assert dispatch.choose(OP[0], "cpu")[0] == impl
    OP = [None]

    def setter(op, impl):
        OP[0] = op
        _force(impl)
    return setter


def _bits_ref(x, keep):
    """x > 0 for the first keep samples, in memory order, as a flat bool tensor."""
    xs = x[:keep]
    if not x.is_contiguous() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        xs = xs.permute(0, 2, 3, 1)
    return (xs > 0).reshape(-1)


def _unpack_bits(mask, n):
    return ((mask.view(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).view(-1)[:n].bool()


SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 5, 4, 9)]


@pytest.mark.parametrize("impl", impls("relu_mask"))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_relu_mask_matches_eager(force, impl, shape, slope, channels_last, dtype):
    force("relu_mask", impl)
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[::5] = 0.0  # exact zeros: gradient 0 for ReLU, slope for LeakyReLU
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    keep = max(1, shape[0] - 1)
    y, mask = relu_mask(x, slope, keep)
    ref = torch.relu(x) if slope == 0 else F.leaky_relu(x, slope)
    if impl == "triton" and dtype == torch.bfloat16:
        torch.testing.assert_close(y, ref)  # the interpreter rounds bf16 stores differently
    else:
        assert torch.equal(y, ref)
    n = keep * x[0].numel()
    assert mask.dtype == torch.uint8 and mask.numel() == (n + 7) // 8
    assert torch.equal(_unpack_bits(mask, n), _bits_ref(x, keep))

    # backward: grad laid out like x, only the kept samples
    xl = x[:keep].detach().clone().requires_grad_()
    out = torch.relu(xl) if slope == 0 else F.leaky_relu(xl, slope)
    g = torch.randn(out.shape, dtype=dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    (expected,) = torch.autograd.grad(out, xl, g)
    got = relu_mask_backward(g, mask, slope)
    if impl == "triton" and dtype == torch.bfloat16:
        torch.testing.assert_close(got, expected)
    else:
        assert torch.equal(got, expected)


@pytest.mark.parametrize("impl", impls("maxpool_codes"))
@pytest.mark.parametrize("cfg", [
    dict(kernel=2, stride=2, padding=0, dilation=1, ceil_mode=False, hw=(8, 6)),
    dict(kernel=2, stride=2, padding=0, dilation=1, ceil_mode=False, hw=(7, 9)),  # odd: last row dropped
    dict(kernel=3, stride=2, padding=0, dilation=1, ceil_mode=True, hw=(7, 10)),   # SqueezeNet
    dict(kernel=3, stride=2, padding=1, dilation=1, ceil_mode=False, hw=(9, 8)),   # ResNet
    dict(kernel=3, stride=2, padding=0, dilation=1, ceil_mode=False, hw=(11, 11)),  # AlexNet
    dict(kernel=(2, 3), stride=(1, 2), padding=(1, 1), dilation=(2, 1), ceil_mode=True, hw=(6, 7)),
    dict(kernel=5, stride=3, padding=2, dilation=1, ceil_mode=True, hw=(8, 8)),  # 25 positions: 8 bits
])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_codes_match_eager(force, impl, cfg, channels_last, ties):
    force("maxpool_codes", impl)
    b, c = 3, 4
    x = torch.randn(b, c, *cfg["hw"], dtype=torch.float64)
    if ties:
        x = torch.randint(-2, 2, x.shape).double()  # many equal maxima: first one in window order wins
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["ceil_mode"])
    keep = 2
    y, codes = maxpool_codes(x, *args, keep=keep)
    ref = F.max_pool2d(x, *args)
    assert torch.equal(y, ref)
    k = cfg["kernel"] if isinstance(cfg["kernel"], tuple) else (cfg["kernel"],) * 2
    assert codes.numel() == -(-keep * ref[0].numel() * code_bits(k[0] * k[1]) // 8)

    xl = x[:keep].detach().clone().requires_grad_()
    out = F.max_pool2d(xl, *args)
    g = torch.randn(out.shape, dtype=torch.float64)
    (expected,) = torch.autograd.grad(out, xl, g)
    force("maxpool_unroute", impl)
    got = maxpool_unroute(g, codes, cfg["hw"], cfg["kernel"], cfg["stride"], cfg["padding"], cfg["dilation"])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", impls("sign_pack"))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sign_pack_roundtrip_is_exact(force, impl, shape, channels_last, dtype):
    force("sign_pack", impl)
    scale = torch.tensor(1.0, dtype=dtype) / (shape[1] * shape[2] * shape[3]) * 0.7
    g = torch.sign(torch.randint(-1, 2, shape).to(dtype)) * scale
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    codes = sign_pack(g)
    assert codes.numel() == (g.numel() + 3) // 4
    gv = torch.randn(shape[0])
    force("sign_unpack", impl)
    got = sign_unpack(codes, g.abs().amax(), gv, g.shape, channels_last and shape[1] > 1)
    expected = gv.to(dtype).view(-1, 1, 1, 1) * g
    if impl == "triton" and dtype == torch.bfloat16:
        torch.testing.assert_close(got, expected)  # the interpreter rounds bf16 stores differently
    else:
        assert torch.equal(got, expected)


@pytest.mark.skipif(dispatch.native_op("relu_mask_kernel") is None, reason="C++ extension not built")
def test_cpp_kernels_are_registered_first():
    for op in ("relu_mask", "relu_mask_backward", "maxpool_codes", "maxpool_unroute", "sign_pack", "sign_unpack"):
        assert dispatch.choose(op, "cpu")[0] == "cpp"


def test_fake_kernels_give_the_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(3, 4, 7, 10)
        y, m = relu_mask(x, 0.0, 2)
        assert y.shape == x.shape and m.shape == ((2 * 4 * 70 + 7) // 8,)
        y, c = maxpool_codes(x, 3, 2, 0, 1, True, keep=2)
        assert y.shape == (3, 4, 3, 5) and c.shape == ((2 * 4 * 15 + 1) // 2,)
        assert sign_pack(x).shape == ((x.numel() + 3) // 4,)


def test_opcheck():
    x = torch.randn(2, 3, 6, 5)
    torch.library.opcheck(torch.ops.perfloss.relu_mask, (x, 0.1, 1))
    y, m = relu_mask(x, 0.1, 2)
    torch.library.opcheck(torch.ops.perfloss.relu_mask_backward, (torch.randn_like(x), m, 0.1))
    torch.library.opcheck(torch.ops.perfloss.maxpool_codes, (x, [2, 2], [2, 2], [0, 0], [1, 1], False, 2))
    torch.library.opcheck(torch.ops.perfloss.sign_pack, (torch.sign(x),))


def _specials(x):
    """Zeros, signed zeros, NaN and infinities sprinkled over x (in place), to exercise every select."""
    flat = x.view(-1) if x.is_contiguous() else x.permute(0, 2, 3, 1).reshape(-1)
    for start, step, v in [(0, 5, 0.0), (1, 7, -0.0), (2, 11, float("nan")), (3, 13, float("-inf")),
                           (4, 17, float("inf"))]:
        flat[start::step] = v
    return x


def _same_bits(a, b):
    it = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[a.dtype]
    return a.shape == b.shape and torch.equal(a.contiguous().view(it), b.contiguous().view(it))


@pytest.mark.parametrize("shape", [(2, 3, 17, 19), (3, 8, 16, 16), (1, 1, 1, 37)])  # vector bodies and tails
@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_relu_mask_fast_paths_and_in_place_match_reference(monkeypatch, shape, slope, channels_last, dtype):
    """The default implementation (hand-vectorised fp32 C++ where built) and the in-place form give
    the reference's bits exactly, for every keep, on sizes that hit the vector loops and their tails."""
    from perfloss.ops.relu_mask import relu_mask_

    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _specials(x)
    g = torch.randn(x.shape).to(dtype)
    if channels_last:
        g = g.contiguous(memory_format=torch.channels_last)
    for keep in range(shape[0] + 1):
        monkeypatch.setenv("PERFLOSS_IMPL", "reference")
        y_ref, m_ref = relu_mask(x, slope, keep)
        gi_ref = relu_mask_backward(g, m_ref, slope) if keep == shape[0] else None
        monkeypatch.delenv("PERFLOSS_IMPL")
        y, m = relu_mask(x, slope, keep)
        assert torch.equal(m, m_ref)
        assert torch.equal(y.isnan(), y_ref.isnan()) and torch.equal(y.nan_to_num(), y_ref.nan_to_num())
        xi = x.clone()
        m_in = relu_mask_(xi, slope, keep)
        assert torch.equal(m_in, m) and _same_bits(xi, y)  # in place: the out-of-place result, bit for bit
        if gi_ref is not None:
            assert torch.equal(relu_mask_backward(g, m, slope), gi_ref)


@pytest.mark.parametrize("hw", [(16, 40), (7, 9), (9, 35), (2, 2), (3, 17)])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_2x2_fast_path_matches_eager(monkeypatch, hw, ceil_mode, dtype, ties):
    """VGG's 2x2 / stride 2 pool (specialised, vectorised for fp32): values, codes (vs the reference,
    NaN and ties included) and the un-routing (vs autograd) exact, with odd sizes and ceil_mode."""
    torch.manual_seed(0)
    b, c = 3, 5
    x = torch.randn(b, c, *hw, dtype=dtype)
    if ties:
        x = torch.randint(-2, 2, x.shape).to(dtype)
    x.view(-1)[3::29] = float("nan")
    x.view(-1)[5::31] = float("-inf")
    for keep in (0, 1, b):
        y, codes = maxpool_codes(x, 2, 2, 0, 1, ceil_mode, keep=keep)
        ref = F.max_pool2d(x, 2, 2, 0, 1, ceil_mode)
        assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(), ref.nan_to_num())
        monkeypatch.setenv("PERFLOSS_IMPL", "reference")
        _, codes_ref = maxpool_codes(x, 2, 2, 0, 1, ceil_mode, keep=keep)
        monkeypatch.delenv("PERFLOSS_IMPL")
        assert torch.equal(codes, codes_ref)
    xf = x.nan_to_num(0.5, 2.0, -2.0).detach().requires_grad_()  # autograd's routing of NaN differs by design
    out = F.max_pool2d(xf, 2, 2, 0, 1, ceil_mode)
    _, codes = maxpool_codes(xf.detach(), 2, 2, 0, 1, ceil_mode)
    g = torch.randn(out.shape, dtype=dtype)
    g.view(-1)[::7] = -0.0
    (expected,) = torch.autograd.grad(out, xf, g)
    got = maxpool_unroute(g, codes, hw, 2, 2)
    assert _same_bits(got, expected)


def test_relu_mask_inplace_opcheck():
    x = torch.randn(2, 3, 6, 5)
    torch.library.opcheck(torch.ops.perfloss.relu_mask_, (x, 0.1, 1))
