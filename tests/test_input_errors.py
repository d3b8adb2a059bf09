"""Images whose dtype or device does not match the module they go into: a clear error naming both and
the fixes, instead of the convolution's "Input type (double) and bias type (float)"; autocast and
converted modules keep working."""
import warnings

import pytest
import torch

import perfloss
from perfloss.pgn import PerceptualGradientNetwork


def perceptual(engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return perfloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, engine=engine)


def style():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return perfloss.StyleLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None)


def images(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 20, 20, generator=g).to(dtype)


@pytest.mark.parametrize("engine", ["eager", "lean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_mismatch_names_both_dtypes_and_the_fixes(engine, dtype):
    loss = perceptual(engine)
    with pytest.raises(TypeError) as err:
        loss(images(dtype).requires_grad_(), images(dtype, seed=1))
    msg = str(err.value)
    assert f"input is {dtype}" in msg and "torch.float32" in msg
    assert f"loss.to({dtype})" in msg and "torch.autocast" in msg


def test_style_loss_checks_a_fixed_style_image():
    loss = style()
    with pytest.raises(TypeError, match="style is torch.float64 but the loss module's weights are torch.float32"):
        loss.set_target(images(torch.float64))


def test_device_mismatch_names_both_devices():
    loss = perceptual("lean")
    x = torch.empty(2, 3, 20, 20, device="meta")
    with pytest.raises(ValueError) as err:
        loss(x, x)
    msg = str(err.value)
    assert "input is on meta" in msg and "on cpu" in msg and "loss.to('meta')" in msg


def test_converted_module_takes_its_dtype():
    loss = perceptual("eager")
    x, t = images(), images(seed=1)
    v32 = loss(x, t)
    v64 = loss.to(torch.float64)(x.double(), t.double())
    assert v64.dtype == torch.float64
    torch.testing.assert_close(v64.float(), v32, rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="input is torch.float32 but the loss module's weights are torch.float64"):
        loss(x, t)


@pytest.mark.parametrize("engine", ["eager", "lean"])
def test_float32_images_under_autocast_still_work(engine):
    loss = perceptual(engine)
    x, t = images(), images(seed=1)
    expected = loss(x, t)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = loss(x, t)
    (g,) = torch.autograd.grad(v, x)
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    torch.testing.assert_close(v.float(), expected, rtol=3e-2, atol=1e-4)  # bf16 convolutions


@pytest.mark.parametrize("engine", ["eager", "lean"])
def test_autocast_dtype_images_under_autocast_work(engine):
    """Under autocast an fp32 module may take images in the autocast dtype: each conv casts both sides."""
    loss = perceptual(engine)
    x, t = images(), images(seed=1)
    expected = loss(x, t)
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = loss(xb, t.bfloat16())
        with pytest.raises(TypeError, match="input is torch.float64"):  # autocast does not cast float64
            loss(x.double(), t.double())
    torch.testing.assert_close(v.float(), expected, rtol=3e-2, atol=1e-4)
    (g,) = torch.autograd.grad(v, xb)
    x32 = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(loss(x32, t), x32)
    assert g.dtype == torch.bfloat16
    assert (g.float() - g_ref).norm() < 5e-2 * g_ref.norm()  # bf16 convolutions


def test_pgn_checks_dtype_and_device():
    pgn = PerceptualGradientNetwork("resnet4")
    y_hat, y = images(), images(seed=1)
    with pytest.raises(TypeError) as err:
        pgn(y_hat.double(), y.double())
    assert "y_hat is torch.float64" in str(err.value) and "pgn.to(torch.float64)" in str(err.value)
    meta = torch.empty(2, 3, 20, 20, device="meta")
    with pytest.raises(ValueError, match="y_hat is on meta but the pgn module's weights are on cpu"):
        pgn(meta, meta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        proxy, grad = pgn(y_hat.bfloat16(), y.bfloat16())
    assert proxy.shape == y_hat.shape and torch.isfinite(grad.float()).all()
