"""Plans: a frozen network as an ordered list of ops with named taps, built by torch.fx tracing.

``compile_plan(module, taps)`` traces ``module`` (one tensor input) with ``torch.fx.symbolic_trace``
and keeps the nodes needed to compute the taps. A tap is named by, in this order:

1. a key of the dict the module returns (perfloss backbones return ``{tap: features}``);
2. an fx node name (``print(torch.fx.symbolic_trace(m).graph)`` shows them: ``layer1_0_relu``);
3. a module path (``"features.3"``): the output of the one call of that submodule.

Each kept node becomes a :class:`Step` with the rule of its op kind
(:mod:`perfloss.engine.rules`, where the kinds are listed), or a ``const`` step when it does not
depend on the input. ``plan.report()`` lists the steps and what each keeps for backward.
"""
import copy
import itertools
import operator
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
import weakref

import torch
import torch.fx
import torch.nn as nn

from perfloss.engine.rules import CONST, FALLBACK, Rule, classify


@dataclass(eq=False)
class Step:
    node: torch.fx.Node
    rule: Rule
    dynamic_inputs: List[str]          # names of input nodes that depend on the network input
    params: Dict[str, Any] = field(default_factory=dict)
    reason: str = ""                   # why a step is a fallback
    # its one dynamic input is a fresh buffer (conv / bn output) that nothing reads after this step
    may_overwrite: bool = False
    # a ReLU read by one max pool and nothing else (no tap): the pool keeps its output's sign, 1 bit per
    # pool output, instead of the ReLU's mask, 1 bit per input (see rules.MaxPool); set on both steps
    sign_at_pool: bool = False

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def kind(self) -> str:
        return self.rule.kind

    @property
    def lean(self) -> bool:
        return self.rule is not FALLBACK


# One re-entrant lock over tracing and the plan caches, for threads sharing a loss (servers,
# nn.DataParallel): torch.fx's symbolic tracing patches nn.Module.__call__ process-wide while it runs,
# so two threads tracing at once see each other's modules ("module is not installed as a submodule");
# and without it two threads racing in plan_for each trace a plan, the later replaces the earlier in
# _PLANS, and the earlier, held only by its thread's forward, is collected before that thread's
# backward looks up its key.
_LOCK = threading.RLock()
_KEYS = itertools.count()
_BY_KEY: "weakref.WeakValueDictionary[int, Plan]" = weakref.WeakValueDictionary()


def plan_by_key(key: int) -> "Plan":
    plan = _BY_KEY.get(key)
    if plan is None:
        raise RuntimeError(f"perfloss: plan {key} no longer exists")
    return plan


class Plan:
    """A traced frozen network: ``steps`` in execution order, ``taps`` -> node names.

    ``free_after[i]`` names the values whose last reader is step ``i`` (a tap counts as reading its own
    node): a walk drops them from its environment after that step. The network input is never freed.
    ``cuts``: the steps after which only their own output lives on (every step of a VGG, the ends of
    a ResNet's blocks): a walk can be split there.
    """

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
        self._on_meta: Optional[Plan] = None
        self._activations: Dict[tuple, List[int]] = {}
        self.tap_of_node: Dict[str, List[str]] = {}
        for tap, node in taps.items():
            self.tap_of_node.setdefault(node, []).append(tap)
        last_use = {s.name: i for i, s in enumerate(steps) if s.name in self.tap_of_node}
        for i, s in enumerate(steps):
            for a in s.node.all_input_nodes:
                last_use[a.name] = i
        self.free_after: List[List[str]] = [[] for _ in steps]
        self.cuts = _cuts(steps, last_use, input_name)
        producer = {}
        for i, s in enumerate(steps):
            self.free_after[last_use.get(s.name, i)].append(s.name)
            producer[s.name] = s
            if len(s.dynamic_inputs) == 1:
                src = producer.get(s.dynamic_inputs[0])
                s.may_overwrite = (src is not None and src.rule.fresh_output and src.name not in self.tap_of_node
                                   and last_use[src.name] == i and len(src.node.users) == 1)  # no alias lives on
                if (s.kind == "maxpool" and src is not None and src.kind == "relu" and src.params["slope"] == 0.0
                        and src.name not in self.tap_of_node and len(src.node.users) == 1):
                    s.sign_at_pool = src.sign_at_pool = True

    @property
    def is_lean(self) -> bool:
        return all(s.lean for s in self.steps)

    @property
    def fallbacks(self) -> List[Step]:
        return [s for s in self.steps if not s.lean]

    def on_meta(self) -> "Plan":
        """This plan over a meta-device copy of the network (shapes and dtypes only), built once."""
        with _LOCK:
            if self._on_meta is None:
                self._on_meta = compile_plan(copy.deepcopy(self.gm).to("meta"), taps=list(self.taps))
        return self._on_meta

    def activation_bytes(self, sample_shape: Sequence[int], dtype: torch.dtype) -> List[int]:
        """Bytes per sample of each step's output for inputs of ``sample_shape`` (C, H, W) in ``dtype``; 0
        for a step whose output is not a tensor. Shapes are propagated in the weights' dtype (an input
        in another, e.g. bf16 under autocast, would not pass the convolutions of a meta network)."""
        key = (tuple(sample_shape), dtype)
        with _LOCK:  # (the propagation writes each node's meta: one shape at a time)
            if key not in self._activations:
                self._activations[key] = self._propagate(key[0], dtype)
        return self._activations[key]

    def _propagate(self, sample_shape: Tuple[int, ...], dtype: torch.dtype) -> List[int]:
        from torch.fx.passes.shape_prop import ShapeProp

        gm = self.on_meta().gm
        weight = next(iter(gm.parameters()), None)
        ShapeProp(gm).propagate(torch.empty((1,) + tuple(sample_shape), dtype=dtype if weight is None else weight.dtype,
                                            device="meta"))
        metas = {n.name: n.meta.get("tensor_meta") for n in gm.graph.nodes}
        return [m.shape.numel() * dtype.itemsize if hasattr(m, "shape") else 0
                for m in (metas.get(s.name) for s in self.steps)]

    def widest_activation_bytes(self, sample_shape: Sequence[int], dtype: torch.dtype) -> int:
        """Bytes per sample of the largest tensor a step produces for inputs of ``sample_shape`` (C, H, W)."""
        return max(self.activation_bytes(sample_shape, dtype), default=0)

    def report(self) -> str:
        lines = [f"plan for {self.module_name}: {len(self.steps)} steps, taps "
                 f"{', '.join(f'{t}={n}' for t, n in self.taps.items())}; "
                 f"{'fully lean' if self.is_lean else f'{len(self.fallbacks)} fallback step(s)'}"]
        for s in self.steps:
            if s.rule is CONST:
                continue
            taps = self.tap_of_node.get(s.name)
            tap = f"  <- tap {', '.join(taps)}" if taps else ""
            lines.append(f"  {s.name:<28} {s.kind:<17} keeps {s.rule.describe(s)}{tap}")
        return "\n".join(lines)

    def __repr__(self):
        return f"Plan({self.module_name}, taps={list(self.taps)}, lean={self.is_lean})"


def _cuts(steps: List[Step], last_use: Dict[str, int], input_name: str) -> List[int]:
    """The indices of the steps after which their own output is the only value a later step reads:
    where a walk can stop and another continue from that one tensor."""
    cuts = []
    live = {input_name} if input_name in last_use else set()
    for i, s in enumerate(steps):
        live.add(s.name)
        live = {n for n in live if last_use.get(n, -1) > i}
        if live == {s.name} and s.rule is not CONST and i + 1 < len(steps):
            cuts.append(i)
    return cuts


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
    with _LOCK:
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
            steps.append(Step(n, CONST, []))
            continue
        dyn_inputs = [a.name for a in n.all_input_nodes if a.name in dynamic]
        dynamic.add(n.name)
        rule, params, reason = classify(n, gm, dyn_inputs)
        steps.append(Step(n, rule, dyn_inputs, params, reason))
    for tap, node in tap_nodes.items():
        if node not in dynamic:
            raise ValueError(f"tap {tap!r} does not depend on the input")
    return Plan(module, gm, steps, tap_nodes, placeholders[0].name)


_PLANS: "weakref.WeakKeyDictionary[nn.Module, Plan]" = weakref.WeakKeyDictionary()


def plan_for(backbone: nn.Module) -> Plan:
    """The cached plan of a perfloss backbone: ``compile_plan(backbone, taps=backbone.taps)``."""
    taps = list(getattr(backbone, "taps", None) or []) or None
    with _LOCK:
        plan = _PLANS.get(backbone)
        if plan is None or plan.requested_taps != taps:
            plan = compile_plan(backbone, taps=taps)
            plan.requested_taps = taps
            _PLANS[backbone] = plan
    return plan
