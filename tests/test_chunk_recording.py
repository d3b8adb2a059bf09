"""The lean walk's chunks recorded once and replayed (walk.ChunkRecording, perfloss.cuda_graphs).

On CPU a stand-in takes the CUDA graph's place: ``make_fx`` records the ops one chunk's walk runs
(every Python decision baked in, as a capture bakes it), and a replay runs that record on the static
inputs and writes the static outputs, as a graph replay does. So these tests catch what a recording
gets wrong whatever the device: inputs that are not copied in, kept tensors that the next replay
overwrites, records whose slots depend on the chunk, a recording reused for another configuration,
and host synchronisations (which a CUDA capture refuses). On a GPU the same tests run real CUDA graphs.
"""
import warnings

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from test_engine import Toy, eager_values, frozen, rel_err, toy_heads
from test_engine_chunks import _value_and_grad
from perfloss import cuda_graphs
from perfloss.backbones import get_backbone
from perfloss.engine import compile_plan, lean_loss, plan_for, target_features, walk
from perfloss.heads import TapHead

SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default, torch.ops.aten.is_nonzero.default}


class TracingCapture:
    """CPU stand-in for :func:`perfloss.cuda_graphs.capture_cuda`; counts its captures."""

    def __init__(self):
        self.captures = 0

    def __call__(self, fn, inputs, pool):
        self.captures += 1
        values = []

        def tensors_of(*args):
            outputs, python_values = fn(*args)
            values.append(python_values)
            return list(outputs)

        record = make_fx(tensors_of)(*inputs)
        synced = [n.target for n in record.graph.nodes if n.target in SYNCS]
        assert not synced, f"the recorded walk reads tensor values on the host: {synced}"
        outputs = record(*inputs)

        def replay():
            for static, new in zip(outputs, record(*inputs)):
                static.copy_(new)

        return replay, outputs, values[0], 0


@pytest.fixture
def recording(monkeypatch):
    """Chunk recordings on CPU tensors (target images riding in the chunk's batch: one level, the GPU's
    way); yields the stand-in capture."""
    capture = TracingCapture()
    monkeypatch.setitem(cuda_graphs.CAPTURE, "cpu", capture)
    monkeypatch.setattr(walk, "CHUNK_RECORDING_DEVICES", ("cpu",))
    monkeypatch.setattr(walk, "SPLIT_TARGET_PASS_DEVICES", ())
    monkeypatch.setattr(walk.ChunkRecording, "_CACHE", type(walk.ChunkRecording._CACHE)())
    monkeypatch.setattr(walk.ChunkRecording, "_POOLS", {})
    yield capture


def _not_recorded(monkeypatch, fn, *args, **kw):
    with monkeypatch.context() as m:
        m.setattr(walk, "CHUNK_RECORDING_DEVICES", ())
        return fn(*args, **kw)


@pytest.mark.parametrize("target", ["images", "one image", "cached"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_replayed_chunks_equal_the_walk_float64(recording, monkeypatch, target, channels_last):
    """Every lean op kind and head kind, batch 5 in chunks of 2: values and gradients equal the
    unrecorded walk's exactly and eager autograd's, and a second call replays without recording again."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = frozen(Toy(), torch.float64).to(memory_format=fmt)
    plan = compile_plan(net)
    heads = toy_heads()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 11, 9, dtype=torch.float64, generator=gen).contiguous(memory_format=fmt)
    images = torch.randn(5 if target == "images" else 1, 3, 11, 9, dtype=torch.float64, generator=gen)
    kw = dict(targets=target_features(plan, images, heads)) if target == "cached" else dict(target_x=images)
    expected = _not_recorded(monkeypatch, _value_and_grad, plan, heads, x, chunk_size=2, **kw)
    captures = []
    for _ in range(2):
        v, g = _value_and_grad(plan, heads, x, chunk_size=2, **kw)
        assert torch.equal(v, expected[0]) and torch.equal(g, expected[1])
        captures.append(recording.captures)
    # a forward and a backward per recording (with targets riding in the batch: the 2-row and the 1-row
    # chunk; cached targets walk levels too), all made in the first call
    assert captures[0] == captures[1] == 2 * len(walk.ChunkRecording._CACHE) >= 4
    torch.testing.assert_close(v, eager_values(net, heads, x, **kw).detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("chunk", [2, 4], ids=["chunks", "one chunk"])
def test_kept_tensors_outlive_the_next_replay(recording, monkeypatch, chunk):
    """Two forwards before one backward (gradient accumulation): the first forward's values and kept
    tensors are copies, not the recording's outputs that the second forward's replays overwrite."""
    net = frozen(Toy(), torch.float64)
    plan = compile_plan(net)
    heads = toy_heads()
    x1, x2, t = (torch.randn(4, 3, 11, 9, dtype=torch.float64, requires_grad=True) for _ in range(3))
    t = t.detach()
    v1 = lean_loss(plan, x1, heads, target_x=t, chunk_size=chunk)
    v2 = lean_loss(plan, x2, heads, target_x=t, chunk_size=chunk)
    g1, g2 = torch.autograd.grad(v1.sum() + v2.sum(), (x1, x2))

    def reference(x):
        v = lean_loss(plan, x, heads, target_x=t, chunk_size=chunk)
        return (v.detach(),) + torch.autograd.grad(v.sum(), x)
    for v, g, x in ((v1, g1, x1), (v2, g2, x2)):
        expected = _not_recorded(monkeypatch, reference, x)
        assert torch.equal(v.detach(), expected[0]) and torch.equal(g, expected[1])


def test_heads_weights_are_inputs_of_a_recording(recording, monkeypatch):
    """LPIPS heads with other weights replay the same recording with their own weights: a call's
    heads may be fresh copies, so the recording copies their buffers in rather than reading the first
    call's."""
    plan = compile_plan(frozen(Toy(), torch.float64))
    x, t = torch.randn(4, 3, 11, 9, dtype=torch.float64), torch.randn(4, 3, 11, 9, dtype=torch.float64)
    for seed in range(2):
        lin = torch.rand(12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        heads = [TapHead("c", "lpips", 1.0, lin), TapHead("b", "l1")]
        expected = _not_recorded(monkeypatch, _value_and_grad, plan, heads, x, target_x=t, chunk_size=2)
        v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
        assert torch.equal(v, expected[0]) and torch.equal(g, expected[1])
    assert recording.captures == 2


def test_a_recording_follows_the_weights(recording):
    """New values written into the weights are read by the next replay (a recording reads them where
    they are); weights moved to new tensors get a new recording, never a stale one."""
    net = frozen(Toy(), torch.float64)
    plan = compile_plan(net)
    heads = [TapHead("b", "mse"), TapHead("d", "l1")]
    x, t = torch.randn(4, 3, 11, 9, dtype=torch.float64), torch.randn(4, 3, 11, 9, dtype=torch.float64)
    _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    assert recording.captures == 2
    with torch.no_grad():
        net.c1.weight.mul_(-0.5)
    v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    assert recording.captures == 2
    torch.testing.assert_close(v, eager_values(net, heads, x, target_x=t).detach(), rtol=1e-12, atol=1e-14)
    net.c1.weight = torch.nn.Parameter(net.c1.weight.detach() * 2, requires_grad=False)
    plan = compile_plan(net)
    v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    assert recording.captures == 4
    torch.testing.assert_close(v, eager_values(net, heads, x, target_x=t).detach(), rtol=1e-12, atol=1e-14)


def test_vgg_losses_replayed_fp32(recording, monkeypatch):
    """The benchmark losses' shapes of plan (VGG-19 five-tap L1 with sign taps, a style head, LPIPS
    heads), fp32: the replayed walk gives the unrecorded walk's numbers bit for bit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_backbone("vgg19", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
    plan = plan_for(net)
    heads = [TapHead("relu1_1", "l1"), TapHead("relu2_1", "l1"), TapHead("relu3_1", "gram", 3.0),
             TapHead("relu4_1", "lpips", 1.0, torch.rand(512)), TapHead("relu5_1", "mse")]
    gen = torch.Generator().manual_seed(1)
    x, t = torch.rand(3, 3, 32, 32, generator=gen), torch.rand(3, 3, 32, 32, generator=gen)
    expected = _not_recorded(monkeypatch, _value_and_grad, plan, heads, x, target_x=t, chunk_size=1)
    v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=1)
    assert torch.equal(v, expected[0]) and torch.equal(g, expected[1])
    assert recording.captures == 2 and rel_err(g, expected[1]) == 0


@pytest.mark.parametrize("levels", [((0, 1), (3, 2)), ((0, 2), (3, 4), (9, 4))])
def test_levels_and_the_split_target_pass_replayed_float64(recording, monkeypatch, levels):
    """Levels (deeper steps in larger chunks, from the cut values the chunks above left) with the target
    images in a pass of their own: each level's chunks replay one recording, exactly, their target
    pass in it (walked once per recording, when it is made, not once per chunk)."""
    from perfloss.engine import lean as lean_module

    monkeypatch.setattr(walk, "SPLIT_TARGET_PASS_DEVICES", ("cpu",))
    monkeypatch.setattr(lean_module, "levels_for", lambda *a, **k: levels)
    net = frozen(Toy(), torch.float64)
    plan = compile_plan(net)
    heads = toy_heads()
    x, t = torch.randn(4, 3, 11, 9, dtype=torch.float64), torch.randn(4, 3, 11, 9, dtype=torch.float64)
    expected = _not_recorded(monkeypatch, _value_and_grad, plan, heads, x, target_x=t, chunk_size=levels[0][1])
    target_walks = []
    prepared_targets = walk.prepared_targets
    monkeypatch.setattr(walk, "prepared_targets", lambda *a, **k: target_walks.append(a[2:]) or prepared_targets(*a, **k))
    v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=levels[0][1])
    assert torch.equal(v, expected[0]) and torch.equal(g, expected[1])
    assert recording.captures == 2 * len(levels) == 2 * len(walk.ChunkRecording._CACHE)
    assert len(target_walks) == len(levels)


def test_walks_without_gradient_and_fallback_plans_are_not_recorded(recording):
    """A walk that keeps nothing gains little; fallback steps keep autograd graphs, which a replay
    cannot make."""
    from test_engine import WithFallback

    plan = compile_plan(frozen(Toy(), torch.float64))
    x, t = torch.randn(4, 3, 11, 9, dtype=torch.float64), torch.randn(4, 3, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        lean_loss(plan, x, toy_heads(), target_x=t, chunk_size=2)
    fallback = compile_plan(frozen(WithFallback(), torch.float64), taps=["r", "act"])
    _value_and_grad(fallback, [TapHead("r", "mse")], x[:, :, :8, :7], target_x=t[:, :, :8, :7], chunk_size=2)
    assert recording.captures == 0


def test_a_chunks_input_pass_makes_no_tensor_on_another_device():
    """The input pass of one chunk traced on meta tensors (every head kind, with target images riding):
    every value it makes is on the chunk's device. A tensor made on the host inside a chunk would be a
    host-to-device copy, which a CUDA capture refuses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_backbone("vgg19", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"])
    heads = [TapHead("relu1_1", "l1"), TapHead("relu2_1", "mse"), TapHead("relu3_1", "gram"),
             TapHead("relu4_1", "lpips", 1.0, torch.rand(512)), TapHead("relu5_1", "cosine")]
    call = walk.on_meta(walk.Call(plan_for(net), heads, None))

    def input_pass(x, target):
        run = walk.Pass(call.plan.gm, True)
        run.keep = x.shape[0]
        total, _, _, _ = walk._forward_chunk(call, x, target, [], run)
        return [total] + run.saved

    images = torch.empty(2, 3, 32, 32, device="meta")
    traced = make_fx(input_pass)(images, images)
    values = [n.meta["val"] for n in traced.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    assert len(values) > 50 and all(v.device.type == "meta" for v in values)


@pytest.mark.cuda
@pytest.mark.parametrize("target_pass", ["ride", "split"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_cuda_graph_chunks_equal_the_walk(monkeypatch, autocast, target_pass):
    """Real CUDA graphs: the VGG-19 five-tap L1 loss in chunks of one and of two (batch 5), the target
    images riding in the chunks' batch or in a pass of their own (recorded with the chunk, and deeper
    levels), against the unrecorded walk on the same GPU; the memory pools are counted."""
    monkeypatch.setattr(walk, "CHUNK_RECORDING_DEVICES", ("cuda",))
    monkeypatch.setattr(walk, "SPLIT_TARGET_PASS_DEVICES", ("cuda",) if target_pass == "split" else ())
    monkeypatch.setattr(walk.ChunkRecording, "_CACHE", type(walk.ChunkRecording._CACHE)())
    monkeypatch.setattr(walk.ChunkRecording, "_POOLS", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_backbone("vgg19", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]).cuda()
    plan = plan_for(net)
    heads = [TapHead(t, "l1") for t in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")]
    x, t = torch.rand(5, 3, 64, 64, device="cuda"), torch.rand(5, 3, 64, 64, device="cuda")
    context = (lambda: torch.autocast("cuda", torch.bfloat16)) if autocast else torch.enable_grad
    for chunk in (1, 2):
        with context():
            expected = _not_recorded(monkeypatch, _value_and_grad, plan, heads, x, target_x=t, chunk_size=chunk)
            for _ in range(2):
                v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=chunk)
        assert torch.equal(v, expected[0]) and torch.equal(g, expected[1])
    assert walk.recorded_pool_bytes() > 0


def test_losses_replayed_end_to_end(recording, monkeypatch):
    """The loss modules through their own calls: DISTS (heads of its own class, through the autograd
    Function rather than the custom op), LPIPS and the style loss with its cached target, in chunks of
    one; bit-equal to the unrecorded walk."""
    import perfloss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = [perfloss.DISTS(weights=None, chunk_size=1), perfloss.LPIPS(net="vgg", weights=None, chunk_size=1),
                  perfloss.StyleLoss(weights=None, chunk_size=1)]
    gen = torch.Generator().manual_seed(2)
    x, t = torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)
    losses[2].set_target(torch.rand(1, 3, 32, 32, generator=gen))

    def value_and_grad(loss):
        xg = x.clone().requires_grad_(True)
        v = loss(xg) if isinstance(loss, perfloss.StyleLoss) else loss(xg, t)
        return (v.detach(),) + torch.autograd.grad(v, xg)
    for loss in losses:
        assert loss.engine == "lean"
        expected = _not_recorded(monkeypatch, value_and_grad, loss)
        before = recording.captures
        v, g = value_and_grad(loss)
        assert recording.captures > before, type(loss).__name__
        assert torch.equal(v, expected[0]) and torch.equal(g, expected[1]), type(loss).__name__


def test_under_torch_compile_fullgraph(recording, monkeypatch):
    """A training step compiled with fullgraph=True: the lean custom op's real kernel replays the
    recordings at run time (its fake kernel walks meta tensors, unrecorded), twice, equal to the
    unrecorded compiled step."""
    torch._dynamo.reset()
    plan = compile_plan(frozen(Toy()))
    heads = [TapHead("b", "l1"), TapHead("c", "lpips", 0.5, torch.rand(12)), TapHead("d", "mse")]
    gen = torch.nn.Conv2d(3, 3, 3, padding=1)
    z, t = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    compiled = torch.compile(lambda z: lean_loss(plan, gen(z), heads, target_x=t, chunk_size=2).mean(),
                             fullgraph=True, backend="aot_eager")

    def step():
        gen.zero_grad()
        loss = compiled(z)
        loss.backward()
        return loss.detach(), gen.weight.grad.clone()
    expected = _not_recorded(monkeypatch, step)
    for _ in range(2):
        loss, grad = step()
        assert torch.equal(loss, expected[0]) and torch.equal(grad, expected[1])
    assert recording.captures == 2


def test_another_implementation_gets_its_own_recording(recording, monkeypatch):
    """A recording replays the kernels it recorded: inside ``library.use("reference")`` the walk records
    anew (the plain-PyTorch references), and outside it replays the first recording again."""
    from perfloss.ops import library

    plan = compile_plan(frozen(Toy(), torch.float64))
    heads = toy_heads()
    x, t = torch.randn(4, 3, 11, 9, dtype=torch.float64), torch.randn(4, 3, 11, 9, dtype=torch.float64)
    _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    with library.use("reference"):
        expected = _not_recorded(monkeypatch, _value_and_grad, plan, heads, x, target_x=t, chunk_size=2)
        v, g = _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    assert torch.equal(v, expected[0]) and torch.equal(g, expected[1])
    _value_and_grad(plan, heads, x, target_x=t, chunk_size=2)
    assert recording.captures == 4
