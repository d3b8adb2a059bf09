"""The lean engine against eager autograd: plans, forward values, exact gradients, errors."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from perfloss.engine import DOUBLE_BACKWARD_ERROR, compile_plan, lean_loss, plan_for, target_features
from perfloss.engine.memory import lean_expected_bytes
from perfloss.heads import TapHead


class Toy(nn.Module):
    """Every lean op kind: strided/dilated/grouped conv, ReLU/LeakyReLU, 3x3 s2 ceil and 2x2 pools,
    eval BN, residual add, concat, dropout, average pools; three taps."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.p1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.r2 = nn.LeakyReLU(0.2)
        self.drop = nn.Dropout(0.5)
        self.c3 = nn.Conv2d(16, 12, 3, stride=2, padding=1)
        self.r3 = nn.ReLU(inplace=True)
        self.p2 = nn.MaxPool2d(2, 2)
        self.ap = nn.AvgPool2d(2, 1, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d((2, 3))

    def forward(self, x):
        a = self.r1(self.c1(x))
        p = self.p1(a)
        b = self.drop(self.r2(self.bn(self.c2(p)))) + p
        c = self.r3(self.c3(torch.cat([b, p], 1)))
        d = self.ap(self.p2(c)) * 0.5
        return {"a": a, "b": b, "c": c, "d": self.gap(d)}


def frozen(m, dtype=torch.float32):
    m = m.eval().to(dtype)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def eager_values(net, heads, x, target_x=None, targets=None):
    """The reference: the network and heads through plain autograd."""
    f = net(x)
    if target_x is not None:
        with torch.no_grad():
            ft = net(target_x)
        targets = [h.prepare_target(ft[h.tap]) for h in heads]
    total = 0
    for h, t in zip(heads, targets):
        if h.kind != "gram" and t.shape[0] == 1 and x.shape[0] > 1:
            t = t.expand_as(f[h.tap])
        total = total + h.values(f[h.tap], t)
    return total


def toy_heads(c_lin=12):
    return [TapHead("a", "mse", 0.5), TapHead("b", "l1", 1.5), TapHead("c", "gram", 2.0),
            TapHead("c", "lpips", 1.0, torch.rand(c_lin)), TapHead("d", "cosine"), TapHead("b", "mse", 0.25)]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def test_toy_plan_is_lean_and_reported():
    plan = compile_plan(frozen(Toy()))
    assert plan.is_lean, plan.report()
    kinds = {s.kind for s in plan.steps}
    assert {"conv", "relu", "maxpool", "bn", "identity", "add", "cat", "avgpool", "adaptive_avgpool",
            "scale"} <= kinds
    report = plan.report()
    assert "fully lean" in report and "1-bit mask" in report and "(4 bits)" in report and "(2 bits)" in report
    assert set(plan.taps) == {"a", "b", "c", "d"}


def test_gradcheck_float64():
    net = frozen(Toy(), torch.float64)
    plan = compile_plan(net)
    heads = toy_heads()
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: lean_loss(plan, x, heads, target_x=t), (x,), eps=1e-6, atol=1e-6,
                                    fast_mode=True)
    v = lean_loss(plan, x, heads, target_x=t)
    ve = eager_values(net, heads, x, target_x=t)
    torch.testing.assert_close(v, ve, rtol=1e-12, atol=1e-14)
    gv = torch.randn(2, dtype=torch.float64)
    (g1,) = torch.autograd.grad(v, x, gv)
    (g2,) = torch.autograd.grad(ve, x, gv)
    assert rel_err(g1, g2) < 1e-12


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("batch,hw", [(1, (13, 11)), (3, (16, 16)), (2, (17, 15))])
def test_fp32_matches_eager(reduction, batch, hw):
    net = frozen(Toy())
    plan = compile_plan(net)
    heads = toy_heads()
    x = torch.randn(batch, 3, *hw, requires_grad=True)
    t = torch.randn(batch, 3, *hw)
    reduce = {"none": lambda v: v, "mean": torch.mean, "sum": torch.sum}[reduction]
    v = reduce(lean_loss(plan, x, heads, target_x=t))
    ve = reduce(eager_values(net, heads, x, target_x=t))
    torch.testing.assert_close(v, ve, rtol=1e-6, atol=1e-7)
    gv = torch.randn(v.shape)
    (g1,) = torch.autograd.grad(v, x, gv)
    (g2,) = torch.autograd.grad(ve, x, gv)
    assert rel_err(g1, g2) <= 1e-5


def test_targets_by_index_by_tap_and_broadcast():
    net = frozen(Toy())
    plan = compile_plan(net)
    heads = [TapHead("a", "mse"), TapHead("c", "gram"), TapHead("b", "l1")]
    x = torch.randn(3, 3, 12, 12, requires_grad=True)
    style = torch.randn(1, 3, 12, 12)
    prepared = target_features(plan, style, heads)
    assert prepared[1].shape == (1, 12, 12)  # a Gram matrix
    ve = eager_values(net, heads, x, targets=prepared)
    (ge,) = torch.autograd.grad(ve.sum(), x)
    as_dict = {0: prepared[0], "c": prepared[1], 2: prepared[2]}
    for targets in (prepared, as_dict):
        v = lean_loss(plan, x, heads, targets=targets)
        torch.testing.assert_close(v, ve, rtol=1e-6, atol=1e-7)
        (g,) = torch.autograd.grad(v.sum(), x)
        assert rel_err(g, ge) <= 1e-5
    # one target image for the whole batch, through the batched forward
    v = lean_loss(plan, x, heads, target_x=style)
    torch.testing.assert_close(v, ve, rtol=1e-5, atol=1e-6)


class WithFallback(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3)
        self.act = nn.SiLU()
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.r = nn.ReLU()

    def forward(self, x):
        return self.r(self.c2(torch.sigmoid(self.act(self.c1(x)))))


def test_fallback_ops_are_reported_and_exact():
    net = frozen(WithFallback(), torch.float64)
    plan = compile_plan(net, taps=["r", "act"])
    assert not plan.is_lean
    assert [s.name for s in plan.fallbacks] == ["act", "sigmoid"]
    assert "FALLBACK" in plan.report() and "SiLU" in plan.report()
    heads = [TapHead("r", "mse"), TapHead("act", "l1", 0.3)]
    x = torch.randn(2, 3, 8, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 8, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: lean_loss(plan, x, heads, target_x=t), (x,), fast_mode=True)


@pytest.mark.parametrize("chunk_size", [None, 1], ids=["whole batch", "chunks of 1"])
def test_lean_steps_skip_autograd_dispatch_only_in_fully_lean_plans(monkeypatch, chunk_size):
    """A fully lean plan's ReLU steps call their ops below the autograd dispatch keys, forward and
    backward (the host time of small chunks); a plan with fallback steps keeps autograd for them."""
    from perfloss.engine import rules

    seen = []

    def recording(op):
        def call(*args):
            seen.append((op.__name__, torch._C._dispatch_tls_is_dispatch_key_excluded(
                torch._C.DispatchKey.ADInplaceOrView)))
            return op(*args)
        call.__name__ = op.__name__
        return call

    for name in ("relu_mask", "relu_mask_", "relu_mask_backward"):
        monkeypatch.setattr(rules, name, recording(getattr(rules, name)))
    x = torch.randn(2, 3, 8, 7, requires_grad=True)
    t = torch.randn(2, 3, 8, 7)
    lean_plan = compile_plan(frozen(Toy()))
    torch.autograd.grad(lean_loss(plan=lean_plan, x=x, heads=toy_heads(), target_x=t, chunk_size=chunk_size).sum(), x)
    assert {"relu_mask_", "relu_mask_backward"} <= {name for name, _ in seen}
    assert all(below for _, below in seen), seen
    seen.clear()
    fallback_plan = compile_plan(frozen(WithFallback()), taps=["r", "act"])
    torch.autograd.grad(lean_loss(fallback_plan, x, [TapHead("r", "mse")], target_x=t, chunk_size=chunk_size).sum(), x)
    assert seen and not any(below for _, below in seen), seen


class ReluPools(nn.Module):
    """ReLUs before max pools: read by the pool alone (a 2x2 ceil_mode pool; an overlapping, padded 3x3
    one), and the cases that keep their own mask: a LeakyReLU, a tapped ReLU, a ReLU read twice."""

    def __init__(self):
        super().__init__()
        self.c1, self.r1, self.p1 = nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.c2, self.r2, self.p2 = nn.Conv2d(5, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1)
        self.c3, self.r3, self.p3 = nn.Conv2d(6, 6, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2)
        self.c4, self.r4, self.p4 = nn.Conv2d(6, 6, 1), nn.ReLU(), nn.MaxPool2d(2)
        self.c5, self.r5, self.p5 = nn.Conv2d(6, 6, 1), nn.ReLU(), nn.MaxPool2d(2)

    def forward(self, x):
        a = self.p2(self.r2(self.c2(self.p1(self.r1(self.c1(x))))))
        b = self.p3(self.r3(self.c3(a)))
        r4 = self.r4(self.c4(b))
        r5 = self.r5(self.c5(b))
        return {"a": a, "r4": r4, "d": self.p4(r4), "e": self.p5(r5) + r5[:, :, :1, :1]}


def test_relu_read_by_a_max_pool_alone_keeps_no_mask():
    """Such a ReLU's mask is replaced by its pool's 1-bit output sign (a quarter of the bits behind a
    2x2 pool); values and float64 gradients stay eager's, windows with no positive value included."""
    net = frozen(ReluPools(), torch.float64)
    with torch.no_grad():  # some channels negative almost everywhere: windows whose maximum is 0
        net.c1.bias[:2] = -3.0
        net.c2.bias[:3] = -2.0
    plan = compile_plan(net)
    assert [s.name for s in plan.steps if s.sign_at_pool] == ["r1", "p1", "r2", "p2"], plan.report()
    assert "nothing (the max pool after it keeps its sign)" in plan.report()
    heads = [TapHead("a", "mse"), TapHead("r4", "l1"), TapHead("d", "mse"), TapHead("e", "cosine")]
    x = torch.randn(2, 3, 17, 14, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 17, 14, dtype=torch.float64)
    y1 = net.r1(net.c1(x))
    assert (F.max_pool2d(y1, 2, 2, ceil_mode=True) == 0).any()  # the y == 0 case is met
    # mask bits of the two samples: r3, r4 and r5 at their own sizes, p1's and p2's outputs
    bits = (2 * 6 * 5 * 4, 2 * 6 * 2 * 2, 2 * 6 * 2 * 2, 2 * 5 * 9 * 7, 2 * 6 * 5 * 4)
    assert lean_expected_bytes(plan, x.shape, heads, torch.float64)["masks"] == sum(-(-n // 8) for n in bits)
    for chunk_size in (None, 1):
        v = lean_loss(plan, x, heads, target_x=t, chunk_size=chunk_size)
        ve = eager_values(net, heads, x, target_x=t)
        (g1,) = torch.autograd.grad(v.sum(), x)
        (g2,) = torch.autograd.grad(ve.sum(), x)
        assert rel_err(v, ve) < 1e-12 and rel_err(g1, g2) < 1e-12
    assert torch.autograd.gradcheck(lambda x: lean_loss(plan, x, heads, target_x=t), (x,), fast_mode=True)


class SameInputTwice(nn.Module):
    """One node on both sides of an op: ``a + a``, ``cat([a, a])``, and ``a * a`` (not a constant
    scale: a fallback)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        a = self.c(x)
        b = torch.cat([a + a, a], 1) - torch.cat([a, a], 1) * 0.5
        return {"b": b, "s": a * a}


def test_same_input_twice_is_exact():
    net = frozen(SameInputTwice(), torch.float64)
    plan = compile_plan(net)
    assert [s.name for s in plan.fallbacks] == ["mul_1"], plan.report()
    heads = [TapHead("b", "mse"), TapHead("s", "l1")]
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    v = lean_loss(plan, x, heads, target_x=t)
    ve = eager_values(net, heads, x, target_x=t)
    (g1,) = torch.autograd.grad(v.sum(), x)
    (g2,) = torch.autograd.grad(ve.sum(), x)
    assert rel_err(g1, g2) < 1e-12


def test_taps_by_module_path_and_node_name():
    net = frozen(WithFallback())
    gm = torch.fx.symbolic_trace(net)
    names = [n.name for n in gm.graph.nodes]
    plan = compile_plan(net, taps=["c2", "sigmoid"])
    assert plan.taps == {"c2": "c2", "sigmoid": "sigmoid"} and "sigmoid" in names
    # truncated after the deepest tap: the final ReLU is not part of the plan
    assert "r" not in [s.name for s in plan.steps]
    with pytest.raises(ValueError, match="neither"):
        compile_plan(net, taps=["nope"])


def test_double_backward_raises():
    net = frozen(Toy())
    plan = compile_plan(net)
    x = torch.randn(1, 3, 12, 12, requires_grad=True)
    v = lean_loss(plan, x, [TapHead("b", "mse")], target_x=torch.randn(1, 3, 12, 12))
    (g,) = torch.autograd.grad(v.sum(), x, create_graph=False)
    v = lean_loss(plan, x, [TapHead("b", "mse")], target_x=torch.randn(1, 3, 12, 12))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(v.sum(), x, create_graph=True)
    assert "engine='eager'" in DOUBLE_BACKWARD_ERROR


def test_no_grad_and_errors():
    net = frozen(Toy())
    plan = compile_plan(net)
    heads = [TapHead("a", "mse"), TapHead("d", "l1")]
    x = torch.randn(2, 3, 12, 12)
    t = torch.randn(2, 3, 12, 12)
    v = lean_loss(plan, x, heads, target_x=t)
    assert v.grad_fn is None
    torch.testing.assert_close(v, eager_values(net, heads, x, target_x=t))
    with pytest.raises(ValueError, match="exactly one"):
        lean_loss(plan, x, heads)
    with pytest.raises(ValueError, match="not a tap"):
        lean_loss(plan, x, [TapHead("zz", "mse")], target_x=t)
    with pytest.raises(ValueError, match="no gradient"):
        lean_loss(plan, x.requires_grad_(), heads, target_x=t.requires_grad_())
    net.c1.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        lean_loss(plan, x, heads, target_x=t.detach())


def test_tap_grad_dtype_bfloat16_is_close_and_smaller():
    net = frozen(Toy())
    plan = compile_plan(net)
    heads = [TapHead("a", "mse"), TapHead("c", "gram")]
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    t = torch.randn(2, 3, 16, 16)
    (g1,) = torch.autograd.grad(lean_loss(plan, x, heads, target_x=t).sum(), x)
    v = lean_loss(plan, x, heads, target_x=t, tap_grad_dtype=torch.bfloat16)
    assert any(s.dtype == torch.bfloat16 for s in v.grad_fn.saved_tensors)
    (g2,) = torch.autograd.grad(v.sum(), x)
    assert rel_err(g2, g1) < 2e-2


BACKBONES = [
    ("vgg16", ["relu1_2", "relu2_2", "relu3_3"], 32),
    ("vgg19", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"], 35),  # four ReLUs whose pools keep the sign
    ("vgg11_bn", None, 32),
    ("alexnet", None, None),
    ("squeezenet1_1", None, None),
    ("resnet18", None, None),
    ("resnet50", ["layer1", "layer2"], 33),
]


@pytest.mark.parametrize("name,taps,size", BACKBONES)
def test_backbones_are_lean_and_exact(name, taps, size):
    backbones = pytest.importorskip("perfloss.backbones")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = backbones.get_backbone(name, taps)
    plan = plan_for(net)
    assert plan is plan_for(net)
    assert plan.is_lean, plan.report()
    size = size or net.min_input_size() + 3  # odd sizes exercise ceil_mode and dropped rows
    kinds = ["mse", "l1", "gram", "cosine"]
    heads = [TapHead(tap, kinds[i % 4], 1.0 + i) for i, tap in enumerate(net.taps)]
    x = torch.randn(2, 3, size, size + 2, requires_grad=True)
    t = torch.randn(2, 3, size, size + 2)
    v = lean_loss(plan, x, heads, target_x=t)
    ve = eager_values(net, heads, x, target_x=t)
    torch.testing.assert_close(v, ve, rtol=1e-5, atol=1e-6)
    gv = torch.rand(2)
    (g1,) = torch.autograd.grad(v, x, gv)
    (g2,) = torch.autograd.grad(ve, x, gv)
    assert rel_err(g1, g2) <= 1e-5


class Functional(nn.Module):
    """A user module in functional style: buffers, F.relu / leaky_relu, methods, sub/mul/div, flatten."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc_scale = 0.5

    def forward(self, x):
        x = (x - self.mean) / self.std
        a = torch.nn.functional.relu(self.conv(x))
        b = torch.nn.functional.leaky_relu(self.conv2(a) * self.std.mean(), 0.1).relu() + 1.0
        c = self.pool(b).flatten(1) * self.fc_scale
        return {"a": a, "b": b, "c": torch.relu(c.view(c.shape[0], 6, 2, 2) - 0.1)}


def test_user_module_functional_style_is_lean_and_exact():
    net = frozen(Functional(), torch.float64)
    plan = compile_plan(net)
    assert plan.is_lean, plan.report()
    heads = [TapHead("a", "mse"), TapHead("b", "l1"), TapHead("c", "mse", 3.0)]
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    v = lean_loss(plan, x, heads, target_x=t)
    ve = eager_values(net, heads, x, target_x=t)
    torch.testing.assert_close(v, ve, rtol=1e-12, atol=1e-14)
    (g1,) = torch.autograd.grad(v.sum(), x)
    (g2,) = torch.autograd.grad(ve.sum(), x)
    assert rel_err(g1, g2) < 1e-12


@pytest.mark.parametrize("name,taps,size", BACKBONES)
def test_backbones_float64_gradcheck(name, taps, size):
    backbones = pytest.importorskip("perfloss.backbones")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = backbones.get_backbone(name, taps).double()
    plan = compile_plan(net, taps=list(net.taps))
    size = size or net.min_input_size()
    heads = [TapHead(tap, ("l1", "mse", "gram", "cosine")[i % 4], 1.0 + i) for i, tap in enumerate(net.taps)]
    x = torch.randn(1, 3, size, size + 1, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 3, size, size + 1, dtype=torch.float64)
    v = lean_loss(plan, x, heads, target_x=t)
    ve = eager_values(net, heads, x, target_x=t)
    (g1,) = torch.autograd.grad(v.sum(), x)
    (g2,) = torch.autograd.grad(ve.sum(), x)
    assert rel_err(g1, g2) < 1e-10
    assert torch.autograd.gradcheck(lambda x: lean_loss(plan, x, heads, target_x=t), (x,), fast_mode=True,
                                    eps=1e-6, atol=1e-5, rtol=1e-4)
