"""Every C++ CPU kernel on a tensor with more than 2**31 elements (bf16: 4 GiB each), the elements past
index 2**31 checked against plain PyTorch computed on a slice around that index (per-sample values
from a chunked float64 sum). Opt-in and slow: ``PERFLOSS_TEST_LARGE=1 python -m pytest
tests/test_large_tensors.py -x``; each test peaks at about 4.5 to 9 GB, run them one at a time.

The big tensors repeat a random block whose length does not divide 2**32, so an index that wrapped
around 32 bits would read a different value. Two views of one buffer, one element apart, give two
different large feature maps for the price of one.
"""
import gc
import os

import pytest
import torch
import torch.nn.functional as F

from perfloss.ops import library
from perfloss.ops.feature_distance import EPS, feature_distance_values
from perfloss.ops.gram import gram
from perfloss.ops.maxpool_codes import maxpool_codes, maxpool_unroute
from perfloss.ops.relu_mask import relu_mask, relu_mask_, relu_mask_backward
from perfloss.ops.sign_pack import sign_pack, sign_unpack
from perfloss.ops.style_loss import style_loss_values
from perfloss.ops.tv_loss import tv_loss_op

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("PERFLOSS_TEST_LARGE") != "1", reason="set PERFLOSS_TEST_LARGE=1 (needs ~9 GB)"),
    pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built"),
]

SHAPE = (2, 8, 8192, 16386)  # 2 * 1_073_872_896 = 2**31 + 262_144 elements; H, W even for 2x2 pools
N = SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3]
SAMPLE = N // SHAPE[0]
PAST = 2**31
PERIOD = 2**20 + 7
DTYPE = torch.bfloat16


@pytest.fixture(autouse=True)
def _free_memory():
    yield
    gc.collect()


def filled(numel, dtype=DTYPE, seed=0, kind="normal"):
    """A flat tensor repeating one random block of PERIOD elements."""
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        block = torch.randn(PERIOD, generator=g).to(dtype)
    else:  # bytes
        block = torch.randint(0, 256, (PERIOD,), generator=g, dtype=torch.uint8)
    out = torch.empty(numel, dtype=block.dtype)
    whole = numel // PERIOD
    out[:whole * PERIOD].view(whole, PERIOD).copy_(block.expand(whole, PERIOD))
    out[whole * PERIOD:] = block[:numel - whole * PERIOD]
    return out


def window(lo=PAST - 4096, hi=PAST + 4096):
    return slice(lo, hi)


def unpack_bits(packed: torch.Tensor, bits: int, start: int, stop: int) -> torch.Tensor:
    """Codes start..stop of a little-end-first packing (test-side decoder)."""
    per = 8 // bits
    i = torch.arange(start, stop)
    return (packed[i // per].long() >> ((i % per) * bits)) & ((1 << bits) - 1)


def plane_rows_around(flat_index, pad=2):
    """(b, c, row slice) of the NCHW plane rows around a flat index, rows aligned to 2."""
    b, rest = divmod(flat_index, SAMPLE)
    c, rest = divmod(rest, SHAPE[2] * SHAPE[3])
    h = rest // SHAPE[3]
    lo = max(0, (h - pad) // 2 * 2)
    return b, c, slice(lo, lo + 2 * pad + 2)


def test_relu_mask_inplace_and_out_of_place():
    x = filled(N).view(SHAPE)
    ref = x.view(-1)[window()].clone()
    y, mask = relu_mask(x)
    torch.testing.assert_close(y.view(-1)[window()], torch.relu(ref), rtol=0, atol=0)
    bits = unpack_bits(mask, 1, PAST - 4096, PAST + 4096)
    assert torch.equal(bits.bool(), ref > 0)
    del y, mask
    mask_ = relu_mask_(x, 0.2)
    torch.testing.assert_close(x.view(-1)[window()], F.leaky_relu(ref, 0.2), rtol=0, atol=0)
    assert torch.equal(unpack_bits(mask_, 1, PAST - 4096, PAST + 4096).bool(), ref > 0)


def test_relu_mask_backward():
    grad = filled(N).view(SHAPE)
    mask = filled(N // 8, kind="bytes", seed=1)
    out = relu_mask_backward(grad, mask, 0.1)
    bits = unpack_bits(mask, 1, PAST - 4096, PAST + 4096).bool()
    g = grad.view(-1)[window()]
    torch.testing.assert_close(out.view(-1)[window()], torch.where(bits, g, g * 0.1), rtol=0, atol=0)


def test_sign_pack_and_unpack():
    g = filled(N).view(SHAPE)
    codes = sign_pack(g)
    ref = g.view(-1)[window()].clone()
    expected = (ref > 0).long() + 2 * (ref < 0).long()
    assert torch.equal(unpack_bits(codes, 2, PAST - 4096, PAST + 4096), expected)
    del g
    scale = torch.tensor(0.5, dtype=DTYPE)
    grad_values = torch.tensor([2.0, -3.0])
    t = sign_unpack(codes, scale, grad_values, SHAPE)
    sign = (expected == 1).to(DTYPE) - (expected == 2).to(DTYPE)
    # every element of the window lies in sample 1 (sample 0 ends before 2**31 - 4096)
    torch.testing.assert_close(t.view(-1)[window()], -3.0 * (sign * scale), rtol=0, atol=0)


def test_maxpool_codes_and_unroute():
    x = filled(N).view(SHAPE)
    b, c, rows = plane_rows_around(PAST)
    xs = x[b:b + 1, c:c + 1, rows].float().clone().requires_grad_()
    y, codes = maxpool_codes(x, 2, 2)
    y_ref, idx = F.max_pool2d(xs, 2, 2, return_indices=True)
    out_rows = slice(rows.start // 2, rows.stop // 2)
    torch.testing.assert_close(y[b, c, out_rows].float(), y_ref[0, 0], rtol=0, atol=0)
    # codes: position in the window, (row % 2) * 2 + col % 2, of each output element, NCHW order
    w = SHAPE[3]
    oh, ow = SHAPE[2] // 2, SHAPE[3] // 2
    first = ((b * SHAPE[1] + c) * oh + out_rows.start) * ow
    got = unpack_bits(codes, 2, first, first + y_ref.numel()).view(y_ref.shape[2:])
    assert torch.equal(got, (idx[0, 0] // w % 2) * 2 + idx[0, 0] % w % 2)
    assert first + y_ref.numel() > PAST // 4 > first  # these codes sit past 2**31 / 4 output elements
    del x, y
    gc.collect()
    grad = filled(N // 4, seed=2).view(SHAPE[0], SHAPE[1], oh, ow)
    grad_in = maxpool_unroute(grad, codes, SHAPE[2:], 2, 2)
    y_ref.backward(grad[b:b + 1, c:c + 1, out_rows].float())
    torch.testing.assert_close(grad_in[b, c, rows].float(), xs.grad[0, 0], rtol=0, atol=0)


def chunked_sample_sum(fn, *flats, start, length, chunk=2**24):
    """sum of fn(*chunks) over ``length`` elements of each flat tensor from ``start``, in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(start, start + length, chunk):
        j = min(i + chunk, start + length)
        total += fn(*(f[i:j].double() for f in flats)).sum()
    return total


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_feature_distance_elementwise_kinds(kind):
    base = filled(N + 1)
    f0, f1 = base[:N].view(SHAPE), base[1:].view(SHAPE)  # f1[i] = f0[i + 1]
    values, grad = feature_distance_values(f0, f1, kind, compute_grad=True)
    term = (lambda a, b: (a - b).square()) if kind == "mse" else (lambda a, b: (a - b).abs())
    expected = chunked_sample_sum(term, base[:N], base[1:], start=SAMPLE, length=SAMPLE) / SAMPLE
    torch.testing.assert_close(values[1].double(), expected, rtol=1e-4, atol=0)
    a, b = base[window()].float(), base[window(PAST - 4096 + 1, PAST + 4096 + 1)].float()
    g_ref = 2 * (a - b) / SAMPLE if kind == "mse" else torch.sign(a - b) / SAMPLE
    torch.testing.assert_close(grad.view(-1)[window()].float(), g_ref, rtol=1e-2, atol=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "lpips"])
def test_feature_distance_channel_kinds(kind):
    """Per-pixel channel normalisation: the reference runs on whole plane rows around 2**31."""
    base = filled(N + 1)
    f0, f1 = base[:N].view(SHAPE), base[1:].view(SHAPE)
    weight = torch.linspace(0.5, 1.5, SHAPE[1]) if kind == "lpips" else None
    values, grad = feature_distance_values(f0, f1, kind, weight, compute_grad=True)
    _, _, rows = plane_rows_around(PAST)
    a = f0[1:, :, rows].double().requires_grad_()
    b = f1[1:, :, rows].double()
    n0 = a / (a.square().sum(1, keepdim=True) + EPS).sqrt()
    n1 = b / (b.square().sum(1, keepdim=True) + EPS).sqrt()
    per_pixel = 1 - (n0 * n1).sum(1) if kind == "cosine" else ((n0 - n1).square() * weight.double().view(1, -1, 1, 1)).sum(1)
    (per_pixel.sum() / (SHAPE[2] * SHAPE[3])).backward()
    torch.testing.assert_close(grad[1:, :, rows].double(), a.grad, rtol=2e-2, atol=1e-12)
    # the value of sample 1, pixel-row chunk by pixel-row chunk, in float64
    total = torch.zeros((), dtype=torch.float64)
    for h in range(0, SHAPE[2], 128):  # 128 rows: ~130 MB per float64 temporary
        p = f0[1:, :, h:h + 128].double()
        q = f1[1:, :, h:h + 128].double()
        m0 = p / (p.square().sum(1, keepdim=True) + EPS).sqrt()
        m1 = q / (q.square().sum(1, keepdim=True) + EPS).sqrt()
        total += (1 - (m0 * m1).sum(1)).sum() if kind == "cosine" else \
            ((m0 - m1).square() * weight.double().view(1, -1, 1, 1)).sum()
    torch.testing.assert_close(values[1].double(), total / (SHAPE[2] * SHAPE[3]), rtol=1e-4, atol=0)


def test_gram_and_style_loss():
    x = filled(N).view(SHAPE)
    c, hw = SHAPE[1], SHAPE[2] * SHAPE[3]
    f = x[1].view(c, hw)
    g_ref = torch.zeros(c, c, dtype=torch.float64)
    for i in range(0, hw, 2**22):
        chunk = f[:, i:i + 2**22].double()
        g_ref += chunk @ chunk.T
    g_ref /= c * hw
    g = gram(x)
    torch.testing.assert_close(g[1].double(), g_ref, rtol=2e-2, atol=1e-6)  # bf16 output
    target = torch.zeros(2, c, c, dtype=DTYPE)
    values, grad = style_loss_values(x, target, compute_grad=True)
    torch.testing.assert_close(values[1].double(), g_ref.square().sum(), rtol=1e-3, atol=0)
    b, ch, rows = plane_rows_around(PAST)
    # d/dF of ||F F^T / N||^2 = 4 G F / N, at the plane rows around 2**31
    fs = x[b, :, rows].double().reshape(c, -1)
    g_rows = (4.0 / (c * hw)) * (g_ref @ fs)
    torch.testing.assert_close(grad[b, :, rows].double().reshape(c, -1), g_rows, rtol=2e-2, atol=1e-9)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_tv_loss(kind):
    x = filled(N).view(SHAPE)
    values, grad = tv_loss_op(x, kind, True)
    c, h, w = SHAPE[1:]
    term = (lambda d: d.abs()) if kind == "l1" else (lambda d: d.square())
    dh_total = torch.zeros((), dtype=torch.float64)
    dw_total = torch.zeros((), dtype=torch.float64)
    for ch in range(c):
        for r in range(0, h, 1024):
            p = x[1, ch, r:r + 1025].double()
            dh_total += term(p[1:] - p[:-1]).sum()
            dw_total += term(p[:1024, 1:] - p[:1024, :-1]).sum()
    expected = dh_total / (c * (h - 1) * w) + dw_total / (c * h * (w - 1))
    torch.testing.assert_close(values[1].double(), expected, rtol=1e-4, atol=0)
    b, ch, rows = plane_rows_around(PAST)
    lo = max(rows.start - 1, 0)
    xs = x[b:b + 1, :, lo:rows.stop + 1].double().requires_grad_()
    dh = xs[:, :, 1:] - xs[:, :, :-1]
    dw = xs[:, :, :, 1:] - xs[:, :, :, :-1]
    (term(dh).sum() / (c * (h - 1) * w) + term(dw).sum() / (c * h * (w - 1))).backward()
    inner = slice(rows.start - lo, rows.start - lo + (rows.stop - rows.start))  # rows with both neighbours
    torch.testing.assert_close(grad[b, :, rows].double(), xs.grad[0, :, inner], rtol=2e-2, atol=1e-15)
