"""The lean engine runs the batch in chunks: results equal the whole batch's, and the peak falls."""
import gc
import warnings

import pytest
import torch

from test_engine import Toy, WithFallback, eager_values, frozen, rel_err, toy_heads
from perfloss import PerceptualLoss
from perfloss.backbones import get_backbone
from perfloss.engine import chunk_size_for, compile_plan, lean_loss, plan_for, target_features
from perfloss.engine import lean as lean_module, walk
from perfloss.engine.memory import lean_expected_bytes, peak_bytes
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


def test_plan_cuts_are_where_one_value_lives_on():
    """Written from Toy's forward: after the concat only c's chain is live; before it b and p both are."""
    plan = compile_plan(frozen(Toy()))
    cut_names = [plan.steps[i].name for i in plan.cuts]
    assert {"cat", "c3", "r3", "p2", "ap"} <= set(cut_names)
    assert not {"c2", "bn", "r2", "drop", "add"} & set(cut_names)  # p is still live there


class NarrowingWithFallback(torch.nn.Module):
    """Wide, then narrow after a pool, with a step the engine keeps as eager does (SiLU) in the narrow part."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.pool = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)
        self.c2, self.act, self.c3 = torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.c3(self.act(self.c2(self.pool(self.r1(self.c1(x))))))


@pytest.mark.parametrize("net_kind", ["toy", "fallback"])
@pytest.mark.parametrize("target", ["images", "one image", "cached"])
def test_levels_equal_the_whole_batch_float64(net_kind, target):
    """Small chunks up to a cut, larger ones after it (the levels ``levels_for`` picks): values and
    gradients equal the unchunked pass's, and gradcheck holds."""
    if net_kind == "toy":
        net, heads, shape = frozen(Toy(), torch.float64), toy_heads(), (5, 3, 16, 16)
        plan = compile_plan(net)
    else:
        net = frozen(NarrowingWithFallback(), torch.float64)
        plan, heads = compile_plan(net, taps=["r1", "act"]), [TapHead("r1", "mse"), TapHead("act", "l1", 0.3)]
        shape = (5, 3, 16, 14)
    x = torch.randn(*shape, dtype=torch.float64)
    images = torch.randn(shape[0] if target == "images" else 1, *shape[1:], dtype=torch.float64)
    kw = dict(targets=target_features(plan, images, heads)) if target == "cached" else dict(target_x=images)
    chunk = 2 if net_kind == "toy" else 4
    assert len(walk.levels_for(plan, x, chunk)) > 1
    assert walk.levels_for(plan, x, shape[0]) == ((0, shape[0]),)  # one chunk: nothing to split
    whole = _value_and_grad(plan, heads, x, chunk_size=shape[0], **kw)
    levels = _value_and_grad(plan, heads, x, chunk_size=chunk, **kw)
    torch.testing.assert_close(levels[0], whole[0], rtol=1e-12, atol=1e-14)
    assert rel_err(levels[1], whole[1]) < 1e-12
    assert torch.autograd.gradcheck(lambda x: lean_loss(plan, x, heads, chunk_size=chunk, **kw),
                                    (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("levels", [((0, 1), (3, 2), (10, 4)), ((0, 1), (9, 3)), ((0, 2), (3, 4), (9, 4), (12, 7)),
                                    ((0, 1), (2, 2), (3, 4), (9, 8), (11, 8))],
                         ids=["nested, ragged last", "odd", "a level of the same size", "five levels"])
@pytest.mark.parametrize("target", ["images", "cached"])
def test_any_levels_equal_the_whole_batch_float64(monkeypatch, levels, target):
    """Levels other than the rule's (more of them, ragged, odd sizes, on Toy's cuts after c1, r1 (its
    pool next), p1, cat, c3, p2): the same values and gradients as one walk of the whole batch."""
    plan = compile_plan(frozen(Toy(), torch.float64))
    heads = toy_heads()
    assert {first - 1 for first, _ in levels[1:]} <= set(plan.cuts)
    x = torch.randn(7, 3, 16, 16, dtype=torch.float64)
    images = torch.randn(7, 3, 16, 16, dtype=torch.float64)
    kw = dict(targets=target_features(plan, images, heads)) if target == "cached" else dict(target_x=images)
    whole = _value_and_grad(plan, heads, x, chunk_size=7, **kw)
    monkeypatch.setattr(lean_module, "levels_for", lambda *args: levels)
    v, g = _value_and_grad(plan, heads, x, chunk_size=levels[0][1], **kw)
    torch.testing.assert_close(v, whole[0], rtol=1e-12, atol=1e-14)
    assert rel_err(g, whole[1]) < 1e-12


VGG19_FIVE_TAPS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def _vgg19_five_taps_plan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return plan_for(get_backbone("vgg19", VGG19_FIVE_TAPS))


@pytest.mark.parametrize("batch", [2, 3, 8, 16, 32])
def test_levels_fit_a_first_chunks_memory(batch):
    """On VGG-19 at 128x128 in one-sample chunks (the CPU default): each deeper level's chunk doubles
    the one above it (or is the batch), starts after a cut that no pooling step right after it would
    shrink, and its transients (input and target values at the cut, three activations of the widest
    step on) fit one first chunk's; the cut values the levels wait on take at most half a widest
    activation, and they are batch 2's at every batch (so the peak grows by the held bytes alone)."""
    plan = _vgg19_five_taps_plan()
    per_step = plan.activation_bytes((3, 128, 128), torch.float32)
    budget = 1 * walk.TRANSIENT_ACTIVATIONS * max(per_step)

    def waiting_of(levels):
        return sum(size * 2 * per_step[first - 1] for first, size in levels[1:])

    levels = walk.levels_for(plan, torch.empty(batch, 3, 128, 128, device="meta"), 1)
    assert levels[0] == (0, 1) and len(levels) >= 2  # VGG narrows: a deeper level from batch 2 on
    for (_, above), (first, size) in zip(levels, levels[1:]):
        k = first - 1
        assert k in plan.cuts and not (first in plan.cuts and per_step[first] < per_step[k])
        assert size == batch or (size > above and size % above == 0 and (size // above) & (size // above - 1) == 0)
        assert size * (2 * per_step[k] + walk.TRANSIENT_ACTIVATIONS * max(per_step[first:])) <= budget
    assert waiting_of(levels) <= walk.CUT_VALUES_ACTIVATIONS * max(per_step)
    assert waiting_of(levels) == waiting_of(walk.levels_for(plan, torch.empty(2, 3, 128, 128, device="meta"), 1))


def test_the_lean_peak_grows_by_the_held_bytes():
    """VGG-19 relu1_1..relu5_1 L1 at 128x128 (its sign-bit tap gradients hold under 1 MiB per sample,
    so any transient that grows with the batch shows): from batch 2 to 4 to 8 the exact peak of a
    lean forward and backward grows by at most 1.2x the bytes lean holds per sample."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = PerceptualLoss("vgg19", VGG19_FIVE_TAPS, distance="l1", weights=None, engine="lean")
    held = lean_expected_bytes(plan_for(loss.backbone), (1, 3, 128, 128), list(loss.heads))["total"]

    def step(x, t):
        loss(x, t).backward()

    peaks = {}
    for batch in (2, 4, 8):
        gen = torch.Generator().manual_seed(batch)
        x, t = torch.rand(batch, 3, 128, 128, generator=gen).requires_grad_(True), torch.rand(batch, 3, 128, 128)
        step(x, t)  # what a first call sets up is not the step's
        peaks[batch] = peak_bytes(step, x, t)[1]
    growth = [(peaks[b] - peaks[a]) / (b - a) / held for a, b in ((2, 4), (4, 8))]
    assert max(growth) <= 1.2, (growth, peaks, held)


def test_a_levelled_step_leaves_no_cycle_holding_tensors():
    """A lean step in levels frees its tensors as it goes: nothing of it waits in a reference cycle for
    the garbage collector (a recursive closure in the walk once kept 32 MiB of a Johnson step's
    forward values alive through its backward). torch's own pytree helpers leave tensor-free cycles."""
    plan = compile_plan(frozen(Toy()))
    heads = toy_heads()
    x = torch.randn(5, 3, 16, 16, requires_grad=True)
    t = torch.randn(5, 3, 16, 16)
    assert len(walk.levels_for(plan, x, 1)) > 1
    lean_loss(plan, x, heads, target_x=t, chunk_size=1).sum().backward()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        before = {id(o) for o in gc.get_objects()}  # earlier tests' objects that a cache may let go now
        lean_loss(plan, x, heads, target_x=t, chunk_size=1).sum().backward()
        gc.collect()
        kept = [o for o in gc.garbage if id(o) not in before and (isinstance(o, torch.Tensor) or (
            callable(o) and (getattr(o, "__module__", None) or "").startswith("perfloss")))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert kept == []


def _affine(dtype):
    """A per-channel (scale, shift) like a loss's pixel-to-network map, with uneven channels."""
    return (torch.tensor([1.5, -0.5, 2.0], dtype=dtype).view(1, 3, 1, 1),
            torch.tensor([0.1, -0.3, 0.2], dtype=dtype).view(1, 3, 1, 1))


@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "grayscale"])
@pytest.mark.parametrize("target", ["images", "one image"])
def test_chunks_map_their_own_images(channels, target):
    """With ``affine``, each chunk maps its images itself: the same values and input gradients as mapping
    the whole batch first (written here in plain PyTorch: x * scale + shift, grayscale replicated)."""
    plan = compile_plan(frozen(Toy(), torch.float64))
    heads = toy_heads()
    scale, shift = _affine(torch.float64)
    x = torch.randn(5, channels, 11, 9, dtype=torch.float64)
    images = torch.randn(5 if target == "images" else 1, channels, 11, 9, dtype=torch.float64)

    def mapped(t):
        return t.expand(-1, 3, -1, -1) * scale + shift

    x0 = x.clone().requires_grad_(True)
    v0 = lean_loss(plan, mapped(x0), heads, target_x=mapped(images), chunk_size=5)
    (g0,) = torch.autograd.grad(v0, x0, torch.linspace(0.5, 1.5, 5, dtype=x.dtype))
    for chunk in (1, 2, 5):
        v, g = _value_and_grad(plan, heads, x, target_x=images, chunk_size=chunk, affine=(scale, shift))
        assert g.shape == x.shape
        torch.testing.assert_close(v, v0.detach(), rtol=1e-12, atol=1e-14)
        assert rel_err(g, g0) < 1e-12
    xg = x[:3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: lean_loss(plan, x, heads, target_x=images[:3], chunk_size=2, affine=(scale, shift)), (xg,),
        eps=1e-6, atol=1e-6, fast_mode=True)


def test_affine_is_checked():
    plan = compile_plan(frozen(Toy()))
    x = torch.randn(2, 3, 11, 9, requires_grad=True)
    with pytest.raises(ValueError, match="affine"):
        lean_loss(plan, x, toy_heads(), target_x=x.detach(), affine=(torch.ones(3),))


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


def test_chunk_size_counts_target_images_that_ride_in_the_chunk(monkeypatch):
    """Where the target images run in the input's chunks (GPUs), forward holds four activations of the
    widest step per sample, not three; a single broadcast target, or a split target pass, adds none."""
    plan = compile_plan(frozen(Toy()))
    x = torch.randn(8, 3, 16, 16)
    budget = 4 * walk.TRANSIENT_ACTIVATIONS * plan.widest_activation_bytes((3, 16, 16), torch.float32)
    assert chunk_size_for(plan, x, budget, target_x=x) == 4  # CPU splits the target pass
    monkeypatch.setattr(walk, "SPLIT_TARGET_PASS_DEVICES", ())
    assert chunk_size_for(plan, x, budget, target_x=x) == 3  # 12 // 4 = 3 per chunk: 3 + 3 + 2
    assert chunk_size_for(plan, x, budget, target_x=x[:1]) == 4
    assert chunk_size_for(plan, x, budget) == 4


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


def test_automatic_chunks_for_bf16_images_under_autocast():
    """The memory estimate propagates shapes in the weights' dtype: bf16 images (as autocast makes them)
    into an fp32 network pick a chunk size instead of failing, and count 2 bytes per element."""
    plan = compile_plan(frozen(Toy()))
    x = torch.rand(4, 3, 16, 16, dtype=torch.bfloat16)
    fp32 = plan.activation_bytes((3, 16, 16), torch.float32)
    assert plan.activation_bytes((3, 16, 16), torch.bfloat16) == [b // 2 for b in fp32]
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = lean_loss(plan, x, [TapHead("c", "mse")], target_x=torch.rand(4, 3, 16, 16, dtype=torch.bfloat16))
    v.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()
