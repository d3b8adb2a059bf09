"""Plans: a frozen network as an ordered list of ops with named taps, built by torch.fx tracing.

``compile_plan(module, taps)`` traces ``module`` (one tensor input) with ``torch.fx.symbolic_trace``
and keeps the nodes needed to compute the taps. A tap is named by, in this order:

1. a key of the dict the module returns (perfloss backbones return ``{tap: features}``);
2. an fx node name (``print(torch.fx.symbolic_trace(m).graph)`` shows them: ``layer1_0_relu``);
3. a module path (``"features.3"``): the output of the one call of that submodule.

Each kept node becomes a :class:`Step` whose ``kind`` says what the lean backward keeps:

=================== ================================== =========================================
kind                ops                                 kept for backward
=================== ================================== =========================================
``conv``            nn.Conv2d (zeros padding)           nothing (the frozen weight, grad-input only)
``relu``            nn.ReLU, nn.LeakyReLU, F.relu, ...   1-bit packed sign mask
``maxpool``         nn.MaxPool2d                        2/4/8-bit window argmax code per output
``avgpool``         nn.AvgPool2d                        nothing
``adaptive_avgpool`` nn.AdaptiveAvgPool2d                nothing
``bn``              eval nn.BatchNorm2d                 nothing (scale = weight / sqrt(var + eps))
``identity``        eval Dropout, Identity, contiguous  nothing
``add``             ``a + b``, ``a - b`` (+ constants)    nothing
``scale``           ``x * c``, ``x / c`` (c a number or   nothing (a constant tensor c is a buffer,
                    a constant tensor, e.g. a buffer)     resident anyway)
``cat``             torch.cat                           nothing (the split sizes)
``reshape``         flatten, view, reshape, nn.Flatten   nothing (the input shape)
``fallback``        anything else                       what eager autograd keeps for that op
=================== ================================== =========================================

Nodes that do not depend on the input (buffers, constants) are ``const`` steps, recomputed in
forward. Parameters get no gradient: the network is frozen.
"""
import itertools
import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
import weakref

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from perfloss.ops.maxpool_codes import code_bits

LEAN_KINDS = ("conv", "relu", "maxpool", "avgpool", "adaptive_avgpool", "bn", "identity", "add", "scale",
              "cat", "reshape")


@dataclass(eq=False)
class Step:
    node: torch.fx.Node
    kind: str
    dynamic_inputs: List[str]          # names of input nodes that depend on the network input
    params: Dict[str, Any] = field(default_factory=dict)
    reason: str = ""                   # why a step is a fallback

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def lean(self) -> bool:
        return self.kind != "fallback"


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(e) for e in v)


_RELU_FUNCS = {F.relu, torch.relu}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_SUB_FUNCS = {operator.sub, operator.isub, torch.sub}
_MUL_FUNCS = {operator.mul, operator.imul, torch.mul}
_DIV_FUNCS = {operator.truediv, operator.itruediv, torch.div}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def _classify_module(mod: nn.Module) -> Tuple[str, Dict[str, Any], str]:
    if type(mod) is nn.Conv2d:
        if mod.padding_mode != "zeros":
            return "fallback", {}, f"Conv2d padding_mode={mod.padding_mode!r}"
        pad = mod.padding
        if pad == "valid":
            pad = (0, 0)
        elif pad == "same":
            total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
            if any(t % 2 for t in total):
                return "fallback", {}, "Conv2d padding='same' with asymmetric padding"
            pad = tuple(t // 2 for t in total)
        return "conv", dict(module=mod, stride=_pair(mod.stride), padding=_pair(pad),
                            dilation=_pair(mod.dilation), groups=mod.groups), ""
    if type(mod) is nn.ReLU:
        return "relu", dict(slope=0.0), ""
    if type(mod) is nn.LeakyReLU:
        return "relu", dict(slope=float(mod.negative_slope)), ""
    if type(mod) is nn.MaxPool2d:
        if mod.return_indices:
            return "fallback", {}, "MaxPool2d(return_indices=True)"
        k = _pair(mod.kernel_size)
        s = _pair(mod.stride) if mod.stride is not None else k
        if k[0] * k[1] > 256:
            return "fallback", {}, "MaxPool2d window over 256 positions"
        return "maxpool", dict(kernel=k, stride=s, padding=_pair(mod.padding), dilation=_pair(mod.dilation),
                               ceil_mode=bool(mod.ceil_mode)), ""
    if type(mod) is nn.AvgPool2d:
        k = _pair(mod.kernel_size)
        s = _pair(mod.stride) if mod.stride is not None else k
        return "avgpool", dict(kernel=k, stride=s, padding=_pair(mod.padding), ceil_mode=bool(mod.ceil_mode),
                               count_include_pad=bool(mod.count_include_pad),
                               divisor_override=mod.divisor_override), ""
    if type(mod) is nn.AdaptiveAvgPool2d:
        return "adaptive_avgpool", {}, ""
    if type(mod) is nn.BatchNorm2d:
        if mod.training or mod.running_var is None:
            return "fallback", {}, "BatchNorm2d in training mode (or without running stats)"
        return "bn", dict(module=mod), ""
    if isinstance(mod, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        if isinstance(mod, (nn.Dropout, nn.Dropout2d)) and mod.training:
            return "fallback", {}, "Dropout in training mode"
        return "identity", {}, ""
    if type(mod) is nn.Flatten:
        return "reshape", {}, ""
    return "fallback", {}, f"{type(mod).__name__} has no lean rule"


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _classify(node: torch.fx.Node, gm: torch.fx.GraphModule, dynamic: set) -> Tuple[str, Dict[str, Any], str]:
    n_dyn = sum(1 for a in node.all_input_nodes if a.name in dynamic)
    if node.op == "call_module":
        if len(node.args) != 1 or node.kwargs or n_dyn != 1:
            return "fallback", {}, "module called with several arguments"
        return _classify_module(gm.get_submodule(node.target))
    target = node.target
    if node.op == "call_function":
        if target in _RELU_FUNCS or target is F.leaky_relu:
            slope = 0.0
            if target is F.leaky_relu:
                slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            if n_dyn == 1 and isinstance(node.args[0], torch.fx.Node) and _is_number(slope):
                return "relu", dict(slope=float(slope)), ""
        if target in _ADD_FUNCS | _SUB_FUNCS and len(node.args) == 2 and not node.kwargs:
            return "add", dict(signs=(1, -1) if target in _SUB_FUNCS else (1, 1)), ""
        if target in _MUL_FUNCS | _DIV_FUNCS and len(node.args) == 2 and not node.kwargs and n_dyn == 1:
            div = target in _DIV_FUNCS
            a, b = node.args
            dyn_first = isinstance(a, torch.fx.Node) and a.name in dynamic
            other = b if dyn_first else a
            if div and not dyn_first:
                return "fallback", {}, "division by a tensor that depends on the input"
            if _is_number(other):
                return "scale", dict(factor=other, divide=div), ""
            if isinstance(other, torch.fx.Node):  # a constant tensor (buffer): it is resident anyway
                return "scale", dict(factor_node=other.name, divide=div), ""
        if target is torch.cat:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if isinstance(node.args[0], (list, tuple)) and all(isinstance(a, torch.fx.Node) for a in node.args[0]):
                return "cat", dict(dim=int(dim)), ""
        if target is torch.flatten and n_dyn == 1:
            return "reshape", {}, ""
    if node.op == "call_method":
        if target == "relu" and len(node.args) == 1:
            return "relu", dict(slope=0.0), ""
        if target in _FLATTEN_METHODS and n_dyn == 1:
            return "reshape", {}, ""
        if target == "contiguous" and n_dyn == 1:
            return "identity", {}, ""
        if target in ("add", "sub") and len(node.args) == 2 and not node.kwargs:
            return "add", dict(signs=(1, -1) if target == "sub" else (1, 1)), ""
    return "fallback", {}, f"{node.op} {getattr(target, '__name__', target)} has no lean rule"


_KEYS = itertools.count()
_BY_KEY: "weakref.WeakValueDictionary[int, Plan]" = weakref.WeakValueDictionary()


def plan_by_key(key: int) -> "Plan":
    plan = _BY_KEY.get(key)
    if plan is None:
        raise RuntimeError(f"perfloss: plan {key} no longer exists")
    return plan


class Plan:
    """A traced frozen network: ``steps`` in execution order, ``taps`` -> node names."""

    def __init__(self, module: nn.Module, gm: torch.fx.GraphModule, steps: List[Step], taps: Dict[str, str],
                 input_name: str):
        self.module_name = type(module).__name__
        self.gm = gm
        self.steps = steps
        self.taps = taps                      # tap name -> node name
        self.input_name = input_name
        self.requested_taps: Optional[List[str]] = None
        self.key = next(_KEYS)  # names the plan inside the perfloss::lean_forward custom op
        _BY_KEY[self.key] = self
        self.tap_of_node: Dict[str, List[str]] = {}
        for tap, node in taps.items():
            self.tap_of_node.setdefault(node, []).append(tap)
        order = {s.name: i for i, s in enumerate(steps)}
        self.last_use: Dict[str, int] = {}
        for i, s in enumerate(steps):
            for a in s.node.all_input_nodes:
                self.last_use[a.name] = i
        for node in taps.values():
            self.last_use[node] = max(self.last_use.get(node, -1), order.get(node, -1))

    @property
    def is_lean(self) -> bool:
        return all(s.lean for s in self.steps if s.kind != "const")

    @property
    def fallbacks(self) -> List[Step]:
        return [s for s in self.steps if s.kind == "fallback"]

    def report(self) -> str:
        lines = [f"plan for {self.module_name}: {len(self.steps)} steps, taps "
                 f"{', '.join(f'{t}={n}' for t, n in self.taps.items())}; "
                 f"{'fully lean' if self.is_lean else f'{len(self.fallbacks)} fallback step(s)'}"]
        keeps = {"relu": "1-bit mask", "maxpool": "window codes"}
        for s in self.steps:
            if s.kind == "const":
                continue
            extra = ""
            if s.kind == "maxpool":
                extra = f" ({code_bits(s.params['kernel'][0] * s.params['kernel'][1])} bits)"
            keep = keeps.get(s.kind, "nothing") + extra
            if s.kind == "fallback":
                keep = f"what eager keeps (FALLBACK: {s.reason})"
            taps = self.tap_of_node.get(s.name)
            tap = f"  <- tap {', '.join(taps)}" if taps else ""
            lines.append(f"  {s.name:<28} {s.kind:<17} keeps {keep}{tap}")
        return "\n".join(lines)

    def __repr__(self):
        return f"Plan({self.module_name}, taps={list(self.taps)}, lean={self.is_lean})"


def _resolve_taps(gm: torch.fx.GraphModule, taps: Optional[Sequence[str]]) -> Dict[str, str]:
    nodes = {n.name: n for n in gm.graph.nodes}
    out = next(n for n in gm.graph.nodes if n.op == "output")
    result = out.args[0]
    returned = {}
    if isinstance(result, dict):
        returned = {k: v for k, v in result.items() if isinstance(v, torch.fx.Node)}
    if taps is None:
        if returned:
            return {k: v.name for k, v in returned.items()}
        if isinstance(result, torch.fx.Node):
            return {"output": result.name}
        raise ValueError("taps=None needs a module returning a tensor or a dict of tensors")
    by_module: Dict[str, List[str]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            by_module.setdefault(str(n.target), []).append(n.name)
    resolved = {}
    for tap in taps:
        if tap in returned:
            resolved[tap] = returned[tap].name
        elif tap in nodes and nodes[tap].op not in ("output", "placeholder"):
            resolved[tap] = tap
        elif tap in by_module:
            if len(by_module[tap]) != 1:
                raise ValueError(f"tap {tap!r}: module is called {len(by_module[tap])} times; name an fx node "
                                 f"instead ({', '.join(by_module[tap])})")
            resolved[tap] = by_module[tap][0]
        else:
            raise ValueError(f"tap {tap!r} is neither a returned key, an fx node name nor a module path")
    return resolved


def _is_shape_node(n: torch.fx.Node, shape_nodes: set) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()`` and indexing into them: metadata, not differentiable values."""
    if n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in ("shape", "ndim"):
        return True
    if n.op == "call_method" and n.target in ("size", "dim"):
        return True
    if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], torch.fx.Node):
        return n.args[0].name in shape_nodes
    return False


def compile_plan(module: nn.Module, taps: Optional[Sequence[str]] = None) -> Plan:
    """Trace a frozen ``module`` with torch.fx and build the :class:`Plan` computing ``taps``."""
    gm = module if isinstance(module, torch.fx.GraphModule) else torch.fx.symbolic_trace(module)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"the lean engine needs a module with exactly one input, got {len(placeholders)}")
    tap_nodes = _resolve_taps(gm, taps)
    nodes = {n.name: n for n in gm.graph.nodes}
    needed = set()
    stack = [nodes[v] for v in tap_nodes.values()]
    while stack:
        n = stack.pop()
        if n.name in needed:
            continue
        needed.add(n.name)
        stack.extend(n.all_input_nodes)
    dynamic = {placeholders[0].name}
    shape_nodes: set = set()
    steps = []
    for n in gm.graph.nodes:
        if n.name not in needed or n.op in ("placeholder", "output"):
            continue
        if not any(a.name in dynamic for a in n.all_input_nodes) or _is_shape_node(n, shape_nodes):
            if _is_shape_node(n, shape_nodes):
                shape_nodes.add(n.name)
            steps.append(Step(n, "const", []))
            continue
        dynamic.add(n.name)
        kind, params, reason = _classify(n, gm, dynamic)
        dyn_inputs = [a.name for a in n.all_input_nodes if a.name in dynamic]
        steps.append(Step(n, kind, dyn_inputs, params, reason))
    for tap, node in tap_nodes.items():
        if node not in dynamic:
            raise ValueError(f"tap {tap!r} does not depend on the input")
    return Plan(module, gm, steps, tap_nodes, placeholders[0].name)


_PLANS: "weakref.WeakKeyDictionary[nn.Module, Plan]" = weakref.WeakKeyDictionary()


def plan_for(backbone: nn.Module) -> Plan:
    """The cached plan of a perfloss backbone: ``compile_plan(backbone, taps=backbone.taps)``."""
    taps = list(getattr(backbone, "taps", None) or []) or None
    plan = _PLANS.get(backbone)
    if plan is None or plan.requested_taps != taps:
        plan = compile_plan(backbone, taps=taps)
        plan.requested_taps = taps
        _PLANS[backbone] = plan
    return plan
