"""The lean engine runs the batch in chunks: results equal the whole batch's, and the peak falls."""
import warnings

import pytest
import torch

from test_engine import Toy, WithFallback, eager_values, frozen, rel_err, toy_heads
from perfloss import PerceptualLoss
from perfloss.backbones import get_backbone
from perfloss.engine import chunk_size_for, compile_plan, lean_loss, plan_for, target_features
from perfloss.engine import walk
from perfloss.engine.memory import peak_bytes
from perfloss.heads import TapHead


def _value_and_grad(plan, heads, x, **kw):
    x = x.detach().requires_grad_(True)
    v = lean_loss(plan, x, heads, **kw)
    (g,) = torch.autograd.grad(v, x, torch.linspace(0.5, 1.5, x.shape[0], dtype=x.dtype))
    return v.detach(), g


@pytest.mark.parametrize("batched_target", [False, True], ids=["split target pass", "batched target"])
@pytest.mark.parametrize("target", ["images", "one image", "cached"])
def test_chunks_equal_the_whole_batch_float64(monkeypatch, batched_target, target):
    if batched_target:  # the GPU's way (input and target images in one batch), here on CPU
        monkeypatch.setattr(walk, "SPLIT_TARGET_PASS_DEVICES", ())
    net = frozen(Toy(), torch.float64)
    plan = compile_plan(net)
    heads = toy_heads()
    x = torch.randn(5, 3, 11, 9, dtype=torch.float64)
    images = torch.randn(5 if target == "images" else 1, 3, 11, 9, dtype=torch.float64)
    kw = dict(targets=target_features(plan, images, heads)) if target == "cached" else dict(target_x=images)
    whole = _value_and_grad(plan, heads, x, chunk_size=5, **kw)
    ve = eager_values(net, heads, x, **kw)
    torch.testing.assert_close(whole[0], ve.detach(), rtol=1e-12, atol=1e-14)
    for chunk in (1, 2, 3):
        v, g = _value_and_grad(plan, heads, x, chunk_size=chunk, **kw)
        torch.testing.assert_close(v, whole[0], rtol=1e-12, atol=1e-14)
        assert rel_err(g, whole[1]) < 1e-12


def test_chunks_fp32_within_rounding_on_vgg():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_backbone("vgg16", ["relu1_2", "relu2_2", "relu3_3"])
    plan = plan_for(net)
    heads = [TapHead("relu1_2", "gram"), TapHead("relu2_2", "mse"), TapHead("relu3_3", "l1")]
    x, t = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)
    v6, g6 = _value_and_grad(plan, heads, x, target_x=t, chunk_size=6)
    v2, g2 = _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    assert rel_err(v2, v6) <= 1e-6 and rel_err(g2, g6) <= 1e-6


def test_chunked_fallback_plan_is_exact():
    net = frozen(WithFallback(), torch.float64)
    plan = compile_plan(net, taps=["r", "act"])
    heads = [TapHead("r", "mse"), TapHead("act", "l1", 0.3)]
    x = torch.randn(3, 3, 8, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 3, 8, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: lean_loss(plan, x, heads, target_x=t, chunk_size=2), (x,),
                                    fast_mode=True)
    whole = _value_and_grad(plan, heads, x, target_x=t, chunk_size=3)
    v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=1)
    torch.testing.assert_close(v, whole[0], rtol=1e-12, atol=1e-14)
    assert rel_err(g, whole[1]) < 1e-12


def test_gradcheck_float64_one_sample_chunks():
    plan = compile_plan(frozen(Toy(), torch.float64))
    heads = toy_heads()
    x = torch.randn(3, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 3, 11, 9, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: lean_loss(plan, x, heads, target_x=t, chunk_size=1), (x,), eps=1e-6,
                                    atol=1e-6, fast_mode=True)


def test_chunk_size_follows_the_memory_budget():
    plan = compile_plan(frozen(Toy()))
    x = torch.randn(8, 3, 16, 16)
    widest = plan.widest_activation_bytes((3, 16, 16), torch.float32)
    assert widest == 8 * 16 * 16 * 4  # c1's output: the largest step output per sample
    assert chunk_size_for(plan, x, memory_budget=1) == 1
    assert chunk_size_for(plan, x, memory_budget=4 * walk.TRANSIENT_ACTIVATIONS * widest) == 4
    assert chunk_size_for(plan, x, memory_budget=3 * walk.TRANSIENT_ACTIVATIONS * widest) == 3  # 3 + 3 + 2
    assert chunk_size_for(plan, x, memory_budget=5 * walk.TRANSIENT_ACTIVATIONS * widest) == 4  # 4 + 4, not 5 + 3
    assert chunk_size_for(plan, x, memory_budget=1 << 40) == 8


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_chunk_size(bad):
    plan = compile_plan(frozen(Toy()))
    x = torch.randn(2, 3, 11, 9, requires_grad=True)
    with pytest.raises(ValueError, match="chunk_size"):
        lean_loss(plan, x, toy_heads(), target_x=torch.randn(2, 3, 11, 9), chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        PerceptualLoss(weights=None, chunk_size=bad)


def test_peak_bytes_counts_what_a_step_allocates():
    resident = torch.empty(1 << 20)  # allocated before the step: not counted

    def step():
        a = torch.empty(1 << 18)  # 1 MiB
        b = torch.empty(1 << 19)  # 2 MiB: 3 MiB live
        del a
        c = torch.empty(1 << 18)  # 3 MiB live again
        return b, c

    _, peak = peak_bytes(step)
    assert (3 << 20) <= peak < (3 << 20) + 4096
    assert resident.numel() == 1 << 20


def test_chunks_lower_the_peak():
    """Lean with one-sample chunks peaks well below lean on the whole batch, which peaks below eager."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = [PerceptualLoss("vgg16", ["relu2_2"], weights=None, engine=engine, chunk_size=chunk)
                  for engine, chunk in (("eager", None), ("lean", 8), ("lean", 1))]
    x, t = torch.rand(8, 3, 64, 64), torch.rand(8, 3, 64, 64)

    def step(loss):
        y = x.clone().requires_grad_(True)
        loss(y, t).backward()

    peaks = [peak_bytes(step, loss)[1] for loss in losses]
    assert peaks[2] < 0.6 * peaks[1] and peaks[1] < peaks[0], peaks


def test_lean_engine_end_to_end_on_each_implementation(impl):
    """The whole lean path (masks, codes, signs, heads) on the reference, C++ and Triton (interpreter)
    kernels, in chunks, against eager autograd."""
    net = frozen(Toy())
    plan = compile_plan(net)
    heads = toy_heads()
    x, t = torch.randn(3, 3, 11, 9), torch.randn(3, 3, 11, 9)
    v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    ve, ge = _value_and_grad_eager(net, heads, x, t)
    torch.testing.assert_close(v, ve, rtol=1e-5, atol=1e-6)
    assert rel_err(g, ge) <= 1e-5


def _value_and_grad_eager(net, heads, x, t):
    x = x.detach().requires_grad_(True)
    v = eager_values(net, heads, x, target_x=t)
    (g,) = torch.autograd.grad(v, x, torch.linspace(0.5, 1.5, x.shape[0], dtype=x.dtype))
    return v.detach(), g
