"""The losses users call, on each device: the lean engine is as accurate as eager PyTorch against eager
in float64 on the same device, in fp32 (whole batch, chunks of one, channels_last) and under bf16
autocast, on every CUDA implementation of the ops; and the lean step's peak is below eager's. The CPU
cases run here and in CI; the CUDA cases (marked cuda) run the same code on the GPU machine
(benchmarks/gpu_check.sh)."""
import contextlib
import warnings

import pytest
import torch

import perfloss
from perfloss.engine.memory import peak_bytes
from perfloss.ops import library

VGG19_FIVE_TAPS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
LPIPS_VGG_CHANNELS = (64, 128, 256, 512, 512)
LOSSES = ["content", "l1", "style", "johnson", "lpips"]
# (device, the implementation every op runs: None is the device's default)
PLACES = [pytest.param("cpu", None, id="cpu"),
          pytest.param("cuda", None, id="cuda-default", marks=pytest.mark.cuda),
          pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.cuda),
          pytest.param("cuda", "cpp", id="cuda-cpp", marks=pytest.mark.cuda)]


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """fp32 convolutions and matmuls in IEEE fp32 on CUDA (TF32 would round eager and lean apart)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def build(kind: str, engine: str, chunk_size=None) -> torch.nn.Module:
    """One of the benchmarks' losses with seeded random weights (the same for every engine)."""
    torch.manual_seed(0)
    common = dict(weights=None, engine=engine, chunk_size=chunk_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn
        if kind == "content":
            return perfloss.PerceptualLoss("vgg16", ["relu2_2"], **common)
        if kind == "l1":
            return perfloss.PerceptualLoss("vgg19", VGG19_FIVE_TAPS, distance="l1", **common)
        if kind == "style":
            return perfloss.StyleLoss("vgg16", **common)
        if kind == "johnson":
            return perfloss.JohnsonLoss(backbone="vgg16", **common)
        lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_VGG_CHANNELS)}
        return perfloss.LPIPS(net="vgg", normalize=True, lin_weights=lins, **common)


def images(batch: int, size: int, device: str, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


def value_and_grad(loss, kind, x, t, autocast_dtype=None):
    x = x.detach().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        value = loss(x) if kind == "style" else loss(x, t)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def on_device(loss, kind, device, dtype=torch.float32, memory_format=torch.contiguous_format):
    """``loss`` moved to ``device`` / ``dtype``, style targets set from one image."""
    loss.to(device=device, dtype=dtype, memory_format=memory_format)
    if kind in ("style", "johnson"):
        loss.set_target(images(1, 64, device, seed=3).to(dtype))
    return loss


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def assert_lean_as_accurate_as_eager(kind, device, impl, *, chunk_size=None, channels_last=False,
                                     autocast_dtype=None, floor=1e-5, size=64):
    """Lean's value and input gradient are within 2x eager's error (+ ``floor``) of eager in float64 on
    the same device. Against float64, not eager fp32: oneDNN's batched fp32 convolutions are themselves
    1e-4 off (relative) where lean's one-image chunks are 1e-6 off, on these random VGGs."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    lean = on_device(build(kind, "lean", chunk_size), kind, device, memory_format=memory_format)
    eager = on_device(build(kind, "eager"), kind, device)
    exact = on_device(build(kind, "eager"), kind, device, torch.float64)
    x, t = images(3, size, device, seed=1), images(3, size, device, seed=2)
    v64, g64 = value_and_grad(exact, kind, x.double(), t.double())
    ve, ge = value_and_grad(eager, kind, x, t, autocast_dtype)
    if channels_last:
        x, t = x.contiguous(memory_format=torch.channels_last), t.contiguous(memory_format=torch.channels_last)
    with library.use(impl) if impl else contextlib.nullcontext():
        if impl and library.backend_info()["relu_mask"][device] != impl:
            pytest.skip(f"this build has no {impl} kernels for {device} tensors")
        v, g = value_and_grad(lean, kind, x, t, autocast_dtype)
    assert torch.isfinite(g).all()
    assert rel_err(v, v64) <= 2 * rel_err(ve, v64) + floor, (v, ve, v64)
    assert rel_err(g, g64) <= 2 * rel_err(ge, g64) + floor, (rel_err(g, g64), rel_err(ge, g64))


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("device,impl", PLACES)
@pytest.mark.parametrize("chunk_size", [None, 1], ids=["auto chunks", "chunks of 1"])
def test_lean_as_accurate_as_eager_fp32(kind, device, impl, chunk_size):
    assert_lean_as_accurate_as_eager(kind, device, impl, chunk_size=chunk_size)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("device,impl", PLACES)
def test_lean_as_accurate_as_eager_channels_last(kind, device, impl):
    assert_lean_as_accurate_as_eager(kind, device, impl, chunk_size=1, channels_last=True)


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("device,impl", PLACES)
def test_lean_as_accurate_as_eager_under_bf16_autocast(kind, device, impl):
    """Both sides compute in bf16 and round in different places (chunks, fused heads). 32x32 on CPU: without
    AVX512-BF16, oneDNN leaves bf16 convolutions to ATen's slow im2col path (60x fp32's time)."""
    assert_lean_as_accurate_as_eager(kind, device, impl, chunk_size=1, autocast_dtype=torch.bfloat16, floor=1e-3,
                                     size=32 if device == "cpu" else 64)


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
def test_lean_step_peaks_below_eager(device):
    """The five-tap VGG-19 L1 loss at batch 8, 128x128: the lean step's allocator peak (chunks of one)
    is well below eager's, whose graph keeps every activation of the batch (CPU: 33 against 317 MiB)."""
    lean = on_device(build("l1", "lean", chunk_size=1), "l1", device)
    eager = on_device(build("l1", "eager"), "l1", device)
    x, t = images(8, 128, device, seed=1), images(8, 128, device, seed=2)

    def step(loss):
        y = x.clone().requires_grad_(True)
        loss(y, t).backward()

    peaks = {name: peak_bytes(step, loss, device=device)[1]
             for name, loss in (("lean", lean), ("eager", eager))}
    assert peaks["lean"] < 0.5 * peaks["eager"], peaks
