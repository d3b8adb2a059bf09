"""Lean op kinds: one rule per kind, the only place a kind is defined.

A rule says how its kind is recognised in a torch.fx graph (``match_module`` for a submodule call,
``match_call`` for a function or method call), what its forward keeps for backward, and its backward
(the gradient to each input that depends on the network input). What it keeps is also the bytes it
holds: :func:`perfloss.engine.memory.lean_expected_bytes` runs the same forward on meta tensors and
counts them. Adding a kind is adding a class here and its instance to ``RULES``.

==================== =================================== =========================================
kind                 ops                                  kept for backward
==================== =================================== =========================================
``conv``             nn.Conv2d (zeros padding)            nothing (the frozen weight, grad-input only)
``relu``             nn.ReLU, nn.LeakyReLU, F.relu, ...    1-bit packed sign mask (none before a max pool,
                                                          its only reader: see ``maxpool``)
``maxpool``          nn.MaxPool2d                         2/4/8-bit window argmax code per output
                                                          (after such a ReLU: and 1 bit, output > 0)
``avgpool``          nn.AvgPool2d                         nothing
``l2pool``           DISTS's L2 pooling (vgg.l2_pool2d)   its input (the output is recomputed in backward)
``adaptive_avgpool`` nn.AdaptiveAvgPool2d                 nothing
``bn``               eval nn.BatchNorm2d                  nothing (scale = weight / sqrt(var + eps))
``identity``         eval Dropout, Identity, contiguous   nothing
``add``              ``a + b``, ``a - b`` (+ constants)     nothing
``scale``            ``x * c``, ``x / c`` (c a number or    the factor when it is computed in forward
                     a constant tensor, e.g. a buffer)      (a buffer's statistic: a few bytes)
``cat``              torch.cat                            nothing (the split sizes)
``reshape``          flatten, view, reshape, nn.Flatten    nothing (the input shape)
``fallback``         anything else                        what eager autograd keeps for that op
==================== =================================== =========================================

Nodes that do not depend on the input (buffers, constants, ``x.shape``) are ``const`` steps,
recomputed in forward. Parameters get no gradient: the network is frozen.

Every step's record (:class:`perfloss.engine.walk.StepRecord`) carries its dynamic inputs' shapes and
dtypes and its output dtype; ``kept`` is what the rule's forward returned besides its output. Tensors a
rule keeps go into the pass's flat ``saved`` list (``run.save``), the record holds their index: that
list is what crosses the ``perfloss::lean_forward`` custom op boundary.
"""
import operator
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from perfloss.backbones.vgg import L2_POOL_PADDING, L2_POOL_STRIDE, l2_pool2d, l2_pool_weight
from perfloss.kernels.common import acc_dtype, code_bits, memory_format_of, pair, work_channels_last
from perfloss.ops.maxpool_codes import maxpool_codes, maxpool_unroute
from perfloss.ops.relu_mask import relu_mask, relu_mask_, relu_mask_backward

# What a match returns: the step's params, a reason why this kind's op is a fallback here, or None
# when the node is not of this kind.
Match = Union[Dict[str, Any], str, None]


def run_node(gm: torch.fx.GraphModule, node: torch.fx.Node, env: Dict[str, Any]):
    """Evaluate one fx node exactly as the traced module would."""
    args = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj
    raise NotImplementedError(f"fx node op {node.op!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sum_to(g: torch.Tensor, shape) -> torch.Tensor:
    """``g`` reduced over the dimensions an input of ``shape`` was broadcast along."""
    return g if tuple(g.shape) == tuple(shape) else g.sum_to_size(shape)


class Rule:
    """One op kind. Rules hold no per-call state: one instance serves every step of its kind."""

    kind = ""
    keeps = "nothing"       # what forward keeps for backward, as Plan.report() says it
    fresh_output = False    # the output is a new buffer, no view: a ReLU that is its last user may overwrite it

    def match_module(self, mod: nn.Module) -> Match:
        return None

    def match_call(self, node: torch.fx.Node, dynamic_inputs: List[str]) -> Match:
        """``dynamic_inputs``: the names of ``node``'s inputs that depend on the network input."""
        return None

    def describe(self, step) -> str:
        return self.keeps

    def forward(self, step, env: Dict[str, Any], run) -> Tuple[Any, Any]:
        """(output, what backward needs; None when ``run`` keeps nothing)."""
        return run_node(run.gm, step.node, env), None

    def backward(self, step, rec, g: torch.Tensor, saved: Sequence[torch.Tensor]) -> Sequence[Optional[torch.Tensor]]:
        """The gradients to ``step.dynamic_inputs``, in that order (None: none to that input)."""
        raise NotImplementedError(f"{self.kind} steps have no backward")


class Const(Rule):
    """A node that does not depend on the network input: recomputed in forward, no backward."""

    kind = "const"


class Conv(Rule):
    kind = "conv"
    fresh_output = True

    def match_module(self, mod):
        if type(mod) is not nn.Conv2d:
            return None
        if mod.padding_mode != "zeros":
            return f"Conv2d padding_mode={mod.padding_mode!r}"
        pad = mod.padding
        if pad == "valid":
            pad = 0
        elif pad == "same":
            total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
            if any(t % 2 for t in total):
                return "Conv2d padding='same' with asymmetric padding"
            pad = [t // 2 for t in total]
        return dict(module=mod, stride=pair(mod.stride), padding=pair(pad), dilation=pair(mod.dilation),
                    groups=mod.groups)

    def backward(self, step, rec, g, saved):
        # The gradient to the input is the transposed convolution of g (the weight is frozen): oneDNN
        # runs it faster than convolution_backward, which also wants an input-sized stand-in tensor.
        p = step.params
        weight = p["module"].weight
        k, s, pad, d = weight.shape[2:], p["stride"], p["padding"], p["dilation"]
        out_pad = [size - ((n - 1) * s[i] - 2 * pad[i] + d[i] * (k[i] - 1) + 1)
                   for i, (size, n) in enumerate(zip(rec.in_shapes[0][2:], g.shape[2:]))]
        dt = rec.out_dtype
        return (F.conv_transpose2d(g.to(dt), weight.to(dt), None, s, pad, out_pad, p["groups"], d),)


class Packed(NamedTuple):
    """A ReLU's kept sign mask or a max pool's window codes: its index in ``saved`` and the memory order
    it was packed in (that of the op's output), which the backward's gradient is put in."""

    slot: int
    channels_last: bool

    def layout(self, g: torch.Tensor) -> torch.Tensor:
        return g.contiguous(memory_format=memory_format_of(self.channels_last))


class Relu(Rule):
    kind = "relu"
    keeps = "1-bit mask"

    def match_module(self, mod):
        if type(mod) is nn.ReLU:
            return dict(slope=0.0)
        if type(mod) is nn.LeakyReLU:
            return dict(slope=float(mod.negative_slope))
        return None

    def match_call(self, node, dynamic_inputs):
        if node.op == "call_method":
            return dict(slope=0.0) if node.target == "relu" and len(node.args) == 1 else None
        if node.target is F.leaky_relu:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        elif node.target in (F.relu, torch.relu):
            slope = 0.0
        else:
            return None
        if len(dynamic_inputs) == 1 and isinstance(node.args[0], torch.fx.Node) and _is_number(slope):
            return dict(slope=float(slope))
        return None

    def describe(self, step):
        return "nothing (the max pool after it keeps its sign)" if step.sign_at_pool else self.keeps

    def forward(self, step, env, run):
        a = env[step.dynamic_inputs[0]]
        slope = step.params["slope"]
        cl = work_channels_last(a)
        keep = 0 if step.sign_at_pool else run.keep
        if step.may_overwrite and not a.requires_grad and a.is_contiguous(memory_format=memory_format_of(cl)):
            mask = relu_mask_(a, slope, keep)  # activation and mask in one pass, no second buffer
            y = a
        else:
            y, mask = relu_mask(a, slope, keep)
        if not run.keeping or step.sign_at_pool:
            return y, None
        return y, Packed(run.save(mask, "masks"), cl)

    def backward(self, step, rec, g, saved):
        if step.sign_at_pool:  # the pool's backward applied this ReLU's derivative
            return (g,)
        mask = rec.kept
        return (relu_mask_backward(mask.layout(g.to(rec.out_dtype)), saved[mask.slot], step.params["slope"]),)


class PoolKept(NamedTuple):
    """A max pool's packed window codes, and the packed sign of its output when a ReLU feeds it alone."""

    codes: Packed
    sign: Optional[Packed]


class MaxPool(Rule):
    """Kept: :class:`PoolKept`.

    After a ReLU that only it reads (``step.sign_at_pool``), the pool keeps 1 bit per output, y > 0,
    and the ReLU keeps nothing: the gradient reaches only each window's argmax, where the ReLU's
    derivative is 1 exactly when y > 0 (y = 0: the whole window was <= 0; NaN: 0, as the ReLU mask
    gives). A 2x2 pool's input has four times its outputs: 3 bits of every 4 saved."""

    kind = "maxpool"

    def match_module(self, mod):
        if type(mod) is not nn.MaxPool2d:
            return None
        if mod.return_indices:
            return "MaxPool2d(return_indices=True)"
        k = pair(mod.kernel_size)
        if k[0] * k[1] > 256:
            return "MaxPool2d window over 256 positions"
        return dict(kernel=k, stride=pair(mod.stride), padding=pair(mod.padding), dilation=pair(mod.dilation),
                    ceil_mode=bool(mod.ceil_mode))

    def describe(self, step):
        k = step.params["kernel"]
        return f"window codes ({code_bits(k[0] * k[1])} bits)" + (" and the sign of its output (1 bit)"
                                                                   if step.sign_at_pool else "")

    def forward(self, step, env, run):
        p = step.params
        x = env[step.dynamic_inputs[0]]
        y, codes = maxpool_codes(x, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], run.keep)
        if not run.keeping:
            return y, None
        cl = work_channels_last(x)
        sign = None
        if step.sign_at_pool:  # y >= 0 (or NaN): the in-place ReLU leaves its values as they are
            sign = Packed(run.save(relu_mask_(y, 0.0, run.keep), "masks"), cl)
        return y, PoolKept(Packed(run.save(codes, "codes"), cl), sign)

    def backward(self, step, rec, g, saved):
        p, kept = step.params, rec.kept
        g = kept.codes.layout(g.to(rec.out_dtype))
        if kept.sign is not None:
            g = relu_mask_backward(g, saved[kept.sign.slot], 0.0)
        return (maxpool_unroute(g, saved[kept.codes.slot], rec.in_shapes[0][2:], p["kernel"], p["stride"], p["padding"],
                                p["dilation"]),)


class AvgPool(Rule):
    kind = "avgpool"

    def match_module(self, mod):
        if type(mod) is not nn.AvgPool2d:
            return None
        return dict(kernel=pair(mod.kernel_size), stride=pair(mod.stride), padding=pair(mod.padding),
                    ceil_mode=bool(mod.ceil_mode), count_include_pad=bool(mod.count_include_pad),
                    divisor_override=mod.divisor_override)

    def backward(self, step, rec, g, saved):
        p = step.params
        return (torch.ops.aten.avg_pool2d_backward(
            g, g.new_empty(1).expand(rec.in_shapes[0]), p["kernel"], p["stride"], p["padding"], p["ceil_mode"],
            p["count_include_pad"], p["divisor_override"]),)


class AdaptiveAvgPool(Rule):
    kind = "adaptive_avgpool"

    def match_module(self, mod):
        return {} if type(mod) is nn.AdaptiveAvgPool2d else None

    def backward(self, step, rec, g, saved):
        return (torch.ops.aten._adaptive_avg_pool2d_backward(g, g.new_empty(1).expand(rec.in_shapes[0])),)


class BatchNorm(Rule):
    kind = "bn"
    fresh_output = True

    def match_module(self, mod):
        if type(mod) is not nn.BatchNorm2d:
            return None
        if mod.training or mod.running_var is None:
            return "BatchNorm2d in training mode (or without running stats)"
        return dict(module=mod)

    def backward(self, step, rec, g, saved):
        mod = step.params["module"]
        acc = acc_dtype(mod.running_var.dtype)
        scale = torch.rsqrt(mod.running_var.to(acc) + mod.eps)
        if mod.weight is not None:
            scale = mod.weight.to(acc) * scale
        return (g * scale.to(g.dtype).view(1, -1, 1, 1),)


class Identity(Rule):
    kind = "identity"

    def match_module(self, mod):
        if isinstance(mod, (nn.Dropout, nn.Dropout2d)):
            return "Dropout in training mode" if mod.training else {}
        return {} if isinstance(mod, nn.Identity) else None

    def match_call(self, node, dynamic_inputs):
        return {} if node.op == "call_method" and node.target == "contiguous" and len(dynamic_inputs) == 1 else None

    def backward(self, step, rec, g, saved):
        return (g,)


_ADD = {operator.add, operator.iadd, torch.add, "add"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub"}


class Add(Rule):
    """``a + b`` / ``a - b``, either side a dynamic node or a constant; params ``coefs``: the
    coefficient of each dynamic input (``x + x``: 2, ``x - x``: 0)."""

    kind = "add"

    def match_call(self, node, dynamic_inputs):
        if node.target not in _ADD | _SUB or len(node.args) != 2 or node.kwargs:
            return None
        coefs = dict.fromkeys(dynamic_inputs, 0)
        for a, sign in zip(node.args, (1, -1 if node.target in _SUB else 1)):
            if isinstance(a, torch.fx.Node) and a.name in coefs:
                coefs[a.name] += sign
        return dict(coefs=tuple(coefs.values()))

    def backward(self, step, rec, g, saved):
        return tuple(_sum_to(g if c == 1 else g * c, shape) for c, shape in zip(step.params["coefs"], rec.in_shapes))


_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}


class Factor(NamedTuple):
    """A scale step's factor computed in forward: a tensor's index in ``saved``, or a number (from
    shapes, e.g. ``x.shape[1] ** -0.5``)."""

    slot: Optional[int]
    value: Optional[float]


class Scale(Rule):
    """``x * c``, ``c * x``, ``x / c``; params: ``factor`` (a number in the graph) or ``factor_node``
    (a constant node: a buffer or a value computed from one); kept: its :class:`Factor`."""

    kind = "scale"

    def match_call(self, node, dynamic_inputs):
        if node.target not in _MUL | _DIV or len(node.args) != 2 or node.kwargs or len(dynamic_inputs) != 1:
            return None
        a, b = node.args
        dyn_first = isinstance(a, torch.fx.Node) and a.name in dynamic_inputs
        other = b if dyn_first else a
        divide = node.target in _DIV
        if divide and not dyn_first:
            return "division by a tensor that depends on the input"
        if _is_number(other):
            return dict(factor=other, factor_node=None, divide=divide)
        if isinstance(other, torch.fx.Node) and other.name not in dynamic_inputs:  # not x * x
            return dict(factor=None, factor_node=other.name, divide=divide)
        return None

    def forward(self, step, env, run):
        y = run_node(run.gm, step.node, env)
        if not run.keeping or step.params["factor_node"] is None:
            return y, None
        f = env[step.params["factor_node"]]
        return y, Factor(run.save(f), None) if isinstance(f, torch.Tensor) else Factor(None, f)

    def backward(self, step, rec, g, saved):
        p = step.params
        f = p["factor"]
        if rec.kept is not None:
            f = rec.kept.value if rec.kept.slot is None else saved[rec.kept.slot]
        return (_sum_to(g / f if p["divide"] else g * f, rec.in_shapes[0]),)


class Cat(Rule):
    """``torch.cat`` of nodes; params: ``dim`` and, per part, the index of its dynamic input (None for a
    constant part); kept: the parts' sizes along ``dim``."""

    kind = "cat"

    def match_call(self, node, dynamic_inputs):
        if node.target is not torch.cat or not isinstance(node.args[0], (list, tuple)):
            return None
        if not all(isinstance(a, torch.fx.Node) for a in node.args[0]):
            return None
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        owners = tuple(dynamic_inputs.index(a.name) if a.name in dynamic_inputs else None for a in node.args[0])
        return dict(dim=int(dim), owners=owners)

    def forward(self, step, env, run):
        y = run_node(run.gm, step.node, env)
        dim = step.params["dim"]
        return y, tuple(env[a.name].shape[dim] for a in step.node.args[0]) if run.keeping else None

    def backward(self, step, rec, g, saved):
        dim = step.params["dim"]
        grads: List[Optional[torch.Tensor]] = [None] * len(step.dynamic_inputs)
        start = 0
        for j, size in zip(step.params["owners"], rec.kept):
            if j is not None:
                part = g.narrow(dim, start, size)
                grads[j] = part if grads[j] is None else grads[j] + part
            start += size
        return grads


class Reshape(Rule):
    kind = "reshape"

    def match_module(self, mod):
        return {} if type(mod) is nn.Flatten else None

    def match_call(self, node, dynamic_inputs):
        method = node.op == "call_method" and node.target in ("flatten", "view", "reshape")
        ok = node.target is torch.flatten or method
        return {} if ok and len(dynamic_inputs) == 1 else None

    def backward(self, step, rec, g, saved):
        return (g.reshape(rec.in_shapes[0]),)


class L2Pool(Rule):
    """DISTS's L2 pooling y = sqrt(w * x^2 + eps) (depthwise, stride 2). Its exact gradient
    2 x (w^T * (g / (2 y))) needs x and y: forward keeps x (its index in ``saved``), backward
    recomputes y from it; eager autograd would keep x, x^2 and y."""

    kind = "l2pool"
    keeps = "its input (the output is recomputed in backward)"
    fresh_output = True

    def match_call(self, node, dynamic_inputs):
        return {} if node.op == "call_function" and node.target is l2_pool2d and len(dynamic_inputs) == 1 else None

    def forward(self, step, env, run):
        x = env[step.dynamic_inputs[0]]
        y = l2_pool2d(x)
        if not run.keeping:
            return y, None
        kept = x[:run.keep]
        # a slice would hold the whole batch's storage (target rows included): keep a copy then
        return y, run.save(kept if kept.shape[0] == x.shape[0] else kept.clone(), "inputs")

    def backward(self, step, rec, g, saved):
        x = saved[rec.kept]
        gz = g.to(x.dtype) / (2 * l2_pool2d(x))
        weight = l2_pool_weight(x.shape[1], x.dtype, x.device)
        g2 = torch.nn.grad.conv2d_input(x.shape, weight, gz, stride=L2_POOL_STRIDE,
                                         padding=L2_POOL_PADDING, groups=x.shape[1])
        return (2 * x * g2,)


class Graph(NamedTuple):
    """A fallback step's autograd graph: leaves standing for its dynamic inputs, and its output."""

    leaves: List[torch.Tensor]
    out: torch.Tensor


class Fallback(Rule):
    """An op without a lean rule: run under autograd from detached leaves, its graph kept (what eager
    keeps for it; full batch, target images included)."""

    kind = "fallback"

    def describe(self, step):
        return f"what eager keeps (FALLBACK: {step.reason})"

    def forward(self, step, env, run):
        if not run.keeping:
            return super().forward(step, env, run)
        with torch.enable_grad():
            leaves = [env[n].detach().requires_grad_() for n in step.dynamic_inputs]
            y = run_node(run.gm, step.node, {**env, **dict(zip(step.dynamic_inputs, leaves))})
        if not isinstance(y, torch.Tensor):
            raise NotImplementedError(f"lean engine: fallback step {step.name} returns {type(y).__name__}, "
                                      "not a tensor")
        return y.detach(), Graph(leaves, y)

    def backward(self, step, rec, g, saved):
        leaves, out = rec.kept
        b = g.shape[0]
        if out.shape[0] != b:  # the target images' rows get no gradient
            g = torch.cat([g, g.new_zeros((out.shape[0] - b,) + tuple(g.shape[1:]))])
        got = torch.autograd.grad(out, leaves, g.to(out.dtype), allow_unused=True, retain_graph=True)
        return [None if gi is None else gi[:b] for gi in got]


RULES: Tuple[Rule, ...] = (Conv(), Relu(), MaxPool(), AvgPool(), AdaptiveAvgPool(), BatchNorm(), Identity(), Add(),
                           Scale(), Cat(), Reshape(), L2Pool())
LEAN_KINDS = tuple(r.kind for r in RULES)
CONST = Const()
FALLBACK = Fallback()


def classify(node: torch.fx.Node, gm: torch.fx.GraphModule,
             dynamic_inputs: List[str]) -> Tuple[Rule, Dict[str, Any], str]:
    """(rule, params, why it is a fallback) for a node that depends on the network input."""
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs or len(dynamic_inputs) != 1:
            return FALLBACK, {}, "module called with several arguments"
        mod = gm.get_submodule(node.target)
        matches = (rule.match_module(mod) for rule in RULES)
        reason = f"{type(mod).__name__} has no lean rule"
    else:
        matches = (rule.match_call(node, dynamic_inputs) for rule in RULES)
        reason = f"{node.op} {getattr(node.target, '__name__', node.target)} has no lean rule"
    for rule, found in zip(RULES, matches):
        if isinstance(found, str):
            return FALLBACK, {}, found
        if found is not None:
            return rule, found, ""
    return FALLBACK, {}, reason
