"""perfloss.engine.memory: the graph walk, the hooks measure and the expected lean figure."""
import pytest
import torch

from perfloss.engine import compile_plan, lean_loss
from perfloss.engine.memory import graph_saved_bytes, hook_saved_bytes, lean_expected_bytes
from perfloss.heads import TapHead

from test_engine import Toy, WithFallback, eager_values, frozen


def test_walk_counts_saved_tensors_and_context_attributes():
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.relu(x)  # saves its result (4*5*4 bytes)
    assert graph_saved_bytes(y.sum()) == 80
    assert graph_saved_bytes(y.sum(), exclude=[y]) == 0

    class Holder(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.extra = [torch.zeros(10, dtype=torch.uint8)]
            ctx.save_for_backward(torch.zeros(3))
            return a.clone()

        @staticmethod
        def backward(ctx, g):
            return g

    z = Holder.apply(x)
    assert graph_saved_bytes(z.sum()) == 10 + 12


def test_lean_figure_is_the_expected_one_and_far_below_eager():
    net = frozen(Toy())
    plan = compile_plan(net)
    heads = [TapHead("a", "mse"), TapHead("b", "l1"), TapHead("c", "gram"), TapHead("c", "cosine")]
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    t = torch.randn(2, 3, 32, 32)
    exclude = list(net.parameters()) + list(net.buffers()) + [x, t]
    v = lean_loss(plan, x, heads, target_x=t)
    lean = graph_saved_bytes(v, exclude=exclude)
    expected = lean_expected_bytes(plan, x.shape, heads)
    assert abs(lean - expected["total"]) <= 0.1 * expected["total"]
    # two heads on tap c share one stored gradient; l1 on b is 2-bit
    a_numel = 2 * 8 * 32 * 32
    assert expected["taps"] < a_numel * 4 + 2 * 8 * 16 * 16 + 2 * 12 * 8 * 8 * 4 + 100
    ve, hooked = hook_saved_bytes(eager_values, net, heads, x, target_x=t, exclude=exclude)
    eager = graph_saved_bytes(ve, exclude=exclude)
    assert hooked > 0 and eager > 3 * lean  # hooks also see the unused tap "d" branch


def test_bf16_tap_grads_halve_the_tap_part():
    net = frozen(Toy())
    plan = compile_plan(net)
    heads = [TapHead("a", "mse")]
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    full = lean_expected_bytes(plan, x.shape, heads)
    half = lean_expected_bytes(plan, x.shape, heads, tap_grad_dtype=torch.bfloat16)
    assert half["taps"] * 2 == full["taps"]
    v = lean_loss(plan, x, heads, target_x=torch.randn(1, 3, 16, 16), tap_grad_dtype=torch.bfloat16)
    exclude = list(net.parameters()) + list(net.buffers())
    assert graph_saved_bytes(v, exclude=exclude) == half["total"]


def test_fallback_storage_is_counted():
    net = frozen(WithFallback())
    plan = compile_plan(net, taps=["r"])
    x = torch.randn(1, 3, 10, 10, requires_grad=True)
    v = lean_loss(plan, x, [TapHead("r", "mse")], target_x=torch.randn(1, 3, 10, 10))
    exclude = list(net.parameters()) + list(net.buffers())
    expected = lean_expected_bytes(plan, x.shape, [TapHead("r", "mse")])
    # SiLU and sigmoid keep their (full-batch) inputs/outputs as eager would
    assert graph_saved_bytes(v, exclude=exclude) > expected["total"] + 2 * 6 * 8 * 8 * 4


def test_expected_figure_names_a_dtype_that_is_not_the_weights():
    plan = compile_plan(frozen(Toy()))
    with pytest.raises(ValueError, match=r"dtype must be the network weights' dtype torch.float32"):
        lean_expected_bytes(plan, (2, 3, 32, 32), [TapHead("a", "mse")], dtype=torch.bfloat16)
    double = compile_plan(frozen(Toy()).double())
    assert lean_expected_bytes(double, (2, 3, 32, 32), [TapHead("a", "mse")], dtype=torch.float64)["total"] > 0


def test_a_tap_gradient_is_let_go_once_added_in(monkeypatch):
    """Backward lets each tap's gradient go once it has joined the gradient flowing down, so it is not
    alive through the wider steps below its tap (it was: 8 MiB per sample at 256x256 for VGG-16's
    relu2_2 during conv1_2's backward, the step's peak)."""
    import weakref

    from torch import nn
    from perfloss.engine import rules, taps

    net = frozen(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    plan = compile_plan(net, taps=["3"])
    made, alive_at_convs = [], []
    dense_grad, conv_backward = taps.DenseTap.grad, rules.Conv.backward

    def grad(self, saved, grad_values):
        g = dense_grad(self, saved, grad_values)
        made.append(weakref.ref(g))
        return g

    def backward(self, step, rec, g, saved):
        alive_at_convs.append([ref() is not None for ref in made])
        return conv_backward(self, step, rec, g, saved)
    monkeypatch.setattr(taps.DenseTap, "grad", grad)
    monkeypatch.setattr(rules.Conv, "backward", backward)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    lean_loss(plan, x, [TapHead("3", "mse")], target_x=torch.randn(2, 3, 8, 8), chunk_size=1).sum().backward()
    assert len(made) == 2 and alive_at_convs == [[False], [False], [False, False], [False, False]]


def test_a_chunk_gradient_to_the_input_is_let_go_once_written(monkeypatch):
    """Backward lets each chunk's gradient to the input go once it is written into the batch's, so it is
    not alive through the next chunk's backward (it was: one chunk's input gradient at every
    chunked step's peak, 1.24x the held bytes per added sample from batch 1 to 2 for VGG-16 relu2_2)."""
    import weakref

    from torch import nn
    from perfloss.engine import rules

    net = frozen(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    plan = compile_plan(net, taps=["3"])
    to_input, alive_at_convs = [], []
    conv_backward = rules.Conv.backward

    def backward(self, step, rec, g, saved):
        alive_at_convs.append([ref() is not None for ref in to_input])
        gi = conv_backward(self, step, rec, g, saved)
        if step.name == plan.steps[0].name:
            to_input.append(weakref.ref(gi[0]))
        return gi
    monkeypatch.setattr(rules.Conv, "backward", backward)
    x = torch.randn(3, 3, 8, 8, requires_grad=True)
    lean_loss(plan, x, [TapHead("3", "mse")], target_x=torch.randn(3, 3, 8, 8), chunk_size=1).sum().backward()
    assert len(to_input) == 3 and alive_at_convs == [[], [], [False], [False], [False, False], [False, False]]


@pytest.mark.parametrize("batch", [1, 2])
def test_a_target_is_let_go_once_its_tap_is_done(monkeypatch, batch):
    """With the batch in one chunk and one target image (a batch of one and its target, for one), the
    walk's target pass lets each tap's target go once the input has passed that tap, so it is not alive
    through the deeper steps. They were all held through the whole input pass: for VGG-19's five-tap
    L1 at batch 1, 128x128, 7.6 MiB, and a peak of 20.3 MiB above batch 2's 18.4 (now 18.4);
    LPIPS-VGG's batch-1 peak was 25.9 MiB, now 20.4."""
    import weakref

    from torch import nn
    from perfloss.engine import rules, walk

    net = frozen(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    plan = compile_plan(net, taps=["1", "3"])
    made, alive_at_convs = [], []
    prepare_targets, conv_forward = walk.prepare_targets, rules.Conv.forward

    def prepare(heads, features):
        targets = prepare_targets(heads, features)
        made.extend(weakref.ref(t) for t in targets)
        return targets

    def forward(self, step, env, run):
        alive_at_convs.append([ref() is not None for ref in made])
        return conv_forward(self, step, env, run)
    monkeypatch.setattr(walk, "prepare_targets", prepare)
    monkeypatch.setattr(rules.Conv, "forward", forward)
    x = torch.randn(batch, 3, 8, 8, requires_grad=True)
    heads = [TapHead("1", "l1"), TapHead("3", "mse")]
    lean_loss(plan, x, heads, target_x=torch.randn(1, 3, 8, 8), chunk_size=batch).sum().backward()
    # the target pass's two convolutions, then the input pass's: at its second, tap "1" is done
    assert alive_at_convs == [[], [True], [True, True], [False, True]]
