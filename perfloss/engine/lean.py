"""The lean forward/backward through a frozen network's :class:`~perfloss.engine.plan.Plan`.

:func:`lean_loss` runs the plan once (input and, when given, target images in one batch; on CPU the
target images go first in a no_grad pass of their own, see ``SPLIT_TARGET_PASS_DEVICES``), calls
every head's fused ``values_and_grad`` at its tap, and keeps for backward only:

- a 1-bit packed sign mask per ReLU/LeakyReLU (input half of the batch only),
- a 2/4/8-bit argmax code per max-pool output,
- per tapped node, the sum of its heads' gradients (fp32 by default, ``tap_grad_dtype`` to keep it
  in e.g. bfloat16 -- then no longer bit-exact), or, when the only head there is an L1 head, the
  gradient's signs at 2 bits per element plus one scale,
- for fallback steps (ops without a lean rule) what eager autograd keeps for that op.

A ReLU whose input is a fresh conv / bn output used by nothing else runs in place
(``perfloss::relu_mask_``): the activation and its mask in one pass, no second activation buffer.

Backward walks the plan in reverse: conv gradient-to-input only, mask unpack fused with the
multiply, pool un-routing from the codes, the stored tap gradients scaled by the incoming per-sample
gradient and added where they belong. Gradients match eager autograd (float64 gradcheck exact, fp32
within rounding). Double backward (``create_graph=True``) is not supported and raises.

Fully lean plans run as the ``perfloss::lean_forward`` / ``lean_backward`` custom ops
(:mod:`perfloss.engine.lean_op`, traceable by ``torch.compile(fullgraph=True)``); plans with fallback
steps run as :class:`LeanLossFunction` (an autograd.Function; a graph break under torch.compile).
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.fx

from perfloss.engine.plan import Plan
from perfloss.ops.bitpack import is_channels_last, memory_format_of
from perfloss.ops.maxpool_codes import maxpool_codes, maxpool_unroute
from perfloss.ops.relu_mask import relu_mask, relu_mask_, relu_mask_backward
from perfloss.ops.sign_pack import sign_pack, sign_unpack

DOUBLE_BACKWARD_ERROR = (
    "perfloss lean engine: double backward (create_graph=True) through the lean path is not supported; "
    "it keeps bit masks, not activations. Use engine='eager' for higher-order gradients."
)


def _run_node(gm: torch.fx.GraphModule, node: torch.fx.Node, env: Dict[str, torch.Tensor]):
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


def _with_batch(shape, b):
    return (b,) + tuple(shape[1:])


def _relu_in_place(plan: Plan) -> frozenset:
    """Indices of ReLU steps that may overwrite their input: a fresh conv / bn output (not the network
    input, not a tap, not a view of anything) whose last user is this ReLU. Cached on the plan."""
    cached = getattr(plan, "_relu_in_place", None)
    if cached is None:
        producer = {s.name: s for s in plan.steps}
        taps = set(plan.taps.values())

        def ok(i, step):
            if step.kind != "relu" or len(step.dynamic_inputs) != 1:
                return False
            a = step.dynamic_inputs[0]
            src = producer.get(a)
            return (src is not None and src.kind in ("conv", "bn") and a != plan.input_name and a not in taps
                    and plan.last_use.get(a) == i and len(src.node.users) == 1)  # no alias of it lives on

        cached = frozenset(i for i, step in enumerate(plan.steps) if ok(i, step))
        plan._relu_in_place = cached
    return cached


class _Call:
    """Everything about one lean_loss call that is not a tensor."""

    def __init__(self, plan: Plan, heads, has_targets: bool, tap_grad_dtype):
        self.plan = plan
        self.heads = list(heads)
        self.has_targets = has_targets
        self.tap_grad_dtype = tap_grad_dtype
        self.heads_at: Dict[str, List[int]] = {}
        for i, h in enumerate(self.heads):
            if h.tap not in plan.taps:
                raise ValueError(f"head {i} taps {h.tap!r}, not a tap of this plan ({', '.join(plan.taps)})")
            self.heads_at.setdefault(plan.taps[h.tap], []).append(i)
        self.relu_in_place = _relu_in_place(plan)


class _Meta:
    """What backward needs besides the saved tensors (Python values only, plus fallback graphs)."""

    def __init__(self, recs, tap_recs, fallbacks, batch, x_dtype):
        self.recs, self.tap_recs, self.fallbacks, self.batch, self.x_dtype = recs, tap_recs, fallbacks, batch, x_dtype


# On CPU the target images run through the plan as a pass of their own (no_grad, nothing kept, the
# heads' prepared targets collected at the taps) before the input's pass, instead of in one batch with
# the input: oneDNN's CPU convolutions are measurably slower per image at the doubled batch (relu1_2's
# 64->64 conv at 128x128: 45.7 ms for batch 4 vs 37.7 ms for two batches of 2, 1 thread), and the
# results are those of eager PyTorch's separate no_grad target pass. GPUs keep the single batch.
SPLIT_TARGET_PASS_DEVICES = ("cpu",)


def _prepared_targets(call: _Call, target_x: torch.Tensor) -> List[torch.Tensor]:
    """``head.prepare_target(features at its tap)`` per head, from one no_grad pass of ``target_x``
    through the plan with the lean kernels (no masks or codes kept)."""
    plan = call.plan
    env = {plan.input_name: target_x}
    out: List[Optional[torch.Tensor]] = [None] * len(call.heads)
    with torch.no_grad():
        for i, step in enumerate(plan.steps):
            node = step.node
            kind = step.kind
            if kind == "relu":
                a = env[step.dynamic_inputs[0]]
                if i in call.relu_in_place and not a.requires_grad and (a.is_contiguous() or is_channels_last(a)):
                    relu_mask_(a, step.params["slope"], 0)
                    y = a
                else:
                    y = relu_mask(a, step.params["slope"], 0)[0]
            elif kind == "maxpool":
                p = step.params
                y = maxpool_codes(env[step.dynamic_inputs[0]], p["kernel"], p["stride"], p["padding"], p["dilation"],
                                  p["ceil_mode"], 0)[0]
            else:
                y = _run_node(plan.gm, node, env)
            env[node.name] = y
            prepared = {}
            for hi in call.heads_at.get(node.name, []):
                head = call.heads[hi]
                key = head.kind == "gram"
                if key not in prepared:
                    prepared[key] = head.prepare_target(y)
                out[hi] = prepared[key]
            for a in node.all_input_nodes:
                if plan.last_use.get(a.name) == i and a.name != plan.input_name:
                    env.pop(a.name, None)
            if plan.last_use.get(node.name, -1) <= i:
                env.pop(node.name, None)
    return out


def _forward(call: _Call, x, target_x, targets, need_grad: bool):
    """Run the plan and the heads; returns (values (B,), saved tensors, _Meta)."""
    plan = call.plan
    if target_x is not None and x.device.type in SPLIT_TARGET_PASS_DEVICES:
        targets = _prepared_targets(call, target_x.detach().to(x.dtype))
        target_x = None
    b = x.shape[0]
    keep = b if need_grad else 0
    # (detached: under autocast a leaf that requires grad gets its cast copy cached, and a copy made
    # here, below autograd, would have no grad_fn and break an eager pass on x later in the region)
    inp = x.detach() if target_x is None else torch.cat([x, target_x.to(x.dtype)])
    env = {plan.input_name: inp}
    saved: List[torch.Tensor] = []
    recs: Dict[str, dict] = {}
    tap_recs: Dict[str, dict] = {}
    fallbacks: Dict[str, tuple] = {}
    total = None
    for i, step in enumerate(plan.steps):
        node = step.node
        kind = step.kind
        rec = {}
        if kind != "const" and need_grad:
            rec["in"] = {n: (_with_batch(env[n].shape, b), env[n].dtype) for n in step.dynamic_inputs}
        if kind == "relu":
            a = env[step.dynamic_inputs[0]]
            if i in call.relu_in_place and not a.requires_grad and (a.is_contiguous() or is_channels_last(a)):
                mask = relu_mask_(a, step.params["slope"], keep)  # no second activation-sized buffer
                y = a
            else:
                y, mask = relu_mask(a, step.params["slope"], keep)
            if need_grad:
                rec.update(mask=len(saved), cl=is_channels_last(a))
                saved.append(mask)
        elif kind == "maxpool":
            a = env[step.dynamic_inputs[0]]
            p = step.params
            y, codes = maxpool_codes(a, p["kernel"], p["stride"], p["padding"], p["dilation"], p["ceil_mode"], keep)
            if need_grad:
                rec["codes"] = len(saved)
                saved.append(codes)
        elif kind == "fallback" and need_grad:
            with torch.enable_grad():
                leaves = {n: env[n].detach().requires_grad_() for n in step.dynamic_inputs}
                y = _run_node(plan.gm, node, {**env, **leaves})
            if not isinstance(y, torch.Tensor):
                raise NotImplementedError(f"lean engine: fallback step {node.name} returns "
                                          f"{type(y).__name__}, not a tensor")
            fallbacks[node.name] = (list(leaves.values()), y)
            y = y.detach()
        else:
            y = _run_node(plan.gm, node, env)
        if kind != "const" and need_grad:
            rec["out_dtype"] = y.dtype
            if kind == "scale" and "factor_node" in step.params:
                rec["factor"] = env[step.params["factor_node"]]
            if kind == "cat":
                rec["sizes"] = [env[a.name].shape[step.params["dim"]] for a in node.args[0]]
        recs[node.name] = rec
        env[node.name] = y
        if node.name in call.heads_at:
            v, trec, tsaved = _heads_at(call, node.name, y, b, target_x is not None, targets, need_grad)
            total = v if total is None else total + v
            if need_grad:
                trec = {k: (len(saved) + j if isinstance(j, int) and k in ("grad", "codes", "scale") else j)
                        for k, j in trec.items()}
                saved.extend(tsaved)
                tap_recs[node.name] = trec
        for a in node.all_input_nodes:
            if plan.last_use.get(a.name) == i and a.name != plan.input_name:
                env.pop(a.name, None)
        if plan.last_use.get(node.name, -1) <= i:
            env.pop(node.name, None)
    return total, saved, _Meta(recs, tap_recs, fallbacks, b, x.dtype)


def _heads_at(call: _Call, node_name, features, b, batched, targets, need_grad):
    fx = features[:b]
    ft = features[b:] if batched else None
    prepared = {}
    total = None
    grads = []
    for hi in call.heads_at[node_name]:
        head = call.heads[hi]
        if batched:
            key = head.kind == "gram"
            if key not in prepared:
                with torch.no_grad():
                    prepared[key] = head.prepare_target(ft)
            tgt = prepared[key]
        else:
            tgt = targets[hi]
        if head.kind != "gram" and tgt.shape[0] == 1 and b > 1:
            tgt = tgt.expand_as(fx)
        v, g = head.values_and_grad(fx, tgt)
        total = v if total is None else total + v
        if need_grad:
            grads.append((head, g))
    if not need_grad:
        return total, {}, []
    if len(grads) == 1 and grads[0][0].grad_is_sign:
        g = grads[0][1]
        scale = g.abs().amax()
        return total, dict(codes=0, scale=1, sizes=tuple(g.shape), cl=is_channels_last(g)), [sign_pack(g), scale]
    g = grads[0][1]
    for _, gi in grads[1:]:
        g = g + gi
    if call.tap_grad_dtype is not None:
        g = g.to(call.tap_grad_dtype)
    return total, dict(grad=0, dtype=features.dtype), [g]


def _tap_grad(rec, saved, gv):
    if "codes" in rec:
        return sign_unpack(saved[rec["codes"]], saved[rec["scale"]], gv, rec["sizes"], rec["cl"])
    g = saved[rec["grad"]]
    view = (-1,) + (1,) * (g.dim() - 1)
    if g.dtype != rec["dtype"]:
        return (gv.view(view) * g.float()).to(rec["dtype"])
    return gv.to(g.dtype).view(view) * g


def _shape_only(g, shape, dtype):
    """An uninitialised tensor standing in for a forward input whose values backward does not read.

    (An expanded 1-element tensor would do for the shape, but oneDNN copies it to a dense one first.)
    """
    return torch.empty(shape, dtype=dtype, device=g.device, memory_format=memory_format_of(is_channels_last(g)))


def _accumulate(grads, name, g):
    grads[name] = g if name not in grads else grads[name] + g


def _step_backward(step, rec, g, saved, grads, fallbacks, b):
    kind = step.kind
    node = step.node
    ins = rec["in"]
    p = step.params

    def give(name, gi):
        shape, dtype = ins[name]
        if gi.dtype != dtype:
            gi = gi.to(dtype)
        _accumulate(grads, name, gi)

    if kind == "conv":
        (name,) = step.dynamic_inputs
        mod = p["module"]
        dt = rec["out_dtype"]
        gi = torch.ops.aten.convolution_backward(
            g.to(dt), _shape_only(g, ins[name][0], dt), mod.weight.to(dt), None, list(p["stride"]),
            list(p["padding"]), list(p["dilation"]), False, [0, 0], p["groups"], (True, False, False))[0]
        give(name, gi)
    elif kind == "relu":
        (name,) = step.dynamic_inputs
        g = g.to(rec["out_dtype"]).contiguous(memory_format=memory_format_of(rec["cl"]))
        give(name, relu_mask_backward(g, saved[rec["mask"]], p["slope"]))
    elif kind == "maxpool":
        (name,) = step.dynamic_inputs
        shape = ins[name][0]
        give(name, maxpool_unroute(g.to(rec["out_dtype"]), saved[rec["codes"]], shape[2:], p["kernel"],
                                   p["stride"], p["padding"], p["dilation"]))
    elif kind == "avgpool":
        (name,) = step.dynamic_inputs
        gi = torch.ops.aten.avg_pool2d_backward(
            g, g.new_empty(1).expand(ins[name][0]), list(p["kernel"]), list(p["stride"]), list(p["padding"]),
            p["ceil_mode"], p["count_include_pad"], p["divisor_override"])
        give(name, gi)
    elif kind == "adaptive_avgpool":
        (name,) = step.dynamic_inputs
        give(name, torch.ops.aten._adaptive_avg_pool2d_backward(g, g.new_empty(1).expand(ins[name][0])))
    elif kind == "bn":
        (name,) = step.dynamic_inputs
        mod = p["module"]
        acc = torch.promote_types(mod.running_var.dtype, torch.float32)
        scale = torch.rsqrt(mod.running_var.to(acc) + mod.eps)
        if mod.weight is not None:
            scale = mod.weight.to(acc) * scale
        give(name, g * scale.to(g.dtype).view(1, -1, 1, 1))
    elif kind == "identity":
        give(step.dynamic_inputs[0], g)
    elif kind == "reshape":
        (name,) = step.dynamic_inputs
        give(name, g.reshape(ins[name][0]))
    elif kind == "scale":
        (name,) = step.dynamic_inputs
        factor = rec["factor"] if "factor_node" in p else p["factor"]
        gi = g / factor if p["divide"] else g * factor
        shape = ins[name][0]
        give(name, gi if tuple(gi.shape) == tuple(shape) else gi.sum_to_size(shape))
    elif kind == "add":
        for a, sign in zip(node.args, p["signs"]):
            if isinstance(a, torch.fx.Node) and a.name in ins:
                shape = ins[a.name][0]
                ga = g if sign > 0 else -g
                give(a.name, ga if tuple(ga.shape) == tuple(shape) else ga.sum_to_size(shape))
    elif kind == "cat":
        dim = p["dim"]
        start = 0
        for a, size in zip(node.args[0], rec["sizes"]):
            if a.name in ins:
                give(a.name, g.narrow(dim, start, size))
            start += size
    elif kind == "fallback":
        leaves, out = fallbacks[step.name]
        if out.shape[0] != g.shape[0]:
            g = torch.cat([g, g.new_zeros((out.shape[0] - g.shape[0],) + tuple(g.shape[1:]))])
        got = torch.autograd.grad(out, leaves, g.to(out.dtype), allow_unused=True, retain_graph=True)
        for name, gi in zip(step.dynamic_inputs, got):
            if gi is not None:
                give(name, gi[:b])
    else:
        raise AssertionError(f"unknown step kind {kind}")


def _backward(call: _Call, meta: _Meta, saved, gv):
    plan = call.plan
    b = meta.batch
    grads: Dict[str, torch.Tensor] = {}
    device_type = gv.device.type
    with torch.autocast(device_type, enabled=False):
        for step in reversed(plan.steps):
            name = step.name
            g = grads.pop(name, None)
            trec = meta.tap_recs.get(name)
            if trec is not None:
                tg = _tap_grad(trec, saved, gv)
                g = tg if g is None else g + tg.to(g.dtype)
            if g is None or step.kind == "const":
                continue
            _step_backward(step, meta.recs[name], g, saved, grads, meta.fallbacks, b)
    gx = grads.pop(plan.input_name, None)
    return gx.to(meta.x_dtype) if gx is not None else None


class LeanLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target_x, call, *targets):
        total, saved, meta = _forward(call, x, target_x, targets, ctx.needs_input_grad[0])
        ctx.save_for_backward(*saved)
        ctx.call = call
        ctx.meta = meta
        ctx.fallbacks = meta.fallbacks  # fallback graphs, visible to perfloss.engine.memory
        return total

    @staticmethod
    def backward(ctx, grad_values):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_ERROR)
        gx = _backward(ctx.call, ctx.meta, ctx.saved_tensors, grad_values)
        return (gx, None, None) + (None,) * (len(ctx.call.heads) if ctx.call.has_targets else 0)


def _targets_list(heads, targets) -> List[torch.Tensor]:
    if isinstance(targets, (list, tuple)):
        if len(targets) != len(heads):
            raise ValueError(f"targets: a sequence needs one entry per head ({len(heads)}), got {len(targets)}")
        return list(targets)
    if isinstance(targets, dict):
        out = []
        for i, h in enumerate(heads):
            if i in targets:
                out.append(targets[i])
            elif h.tap in targets:
                out.append(targets[h.tap])
            else:
                raise ValueError(f"targets has no entry for head {i} (key {i} or tap {h.tap!r})")
        return out
    raise TypeError(f"targets must be a sequence aligned with heads or a dict, got {type(targets).__name__}")


def lean_loss(plan: Plan, x: torch.Tensor, heads: Sequence, targets: Optional[Union[Sequence, dict]] = None,
              target_x: Optional[torch.Tensor] = None, tap_grad_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Per-sample total loss (B,) = sum over ``heads`` of ``head.values``, with the lean backward.

    x: (B, 3, H, W) normalised input. heads: :class:`perfloss.heads.TapHead` list (several may share a
    tap). Give exactly one of
      - ``targets``: prepared targets (``head.prepare_target(features)``: features, or a Gram matrix for
        ``gram`` heads), batch B or 1; either a sequence aligned with ``heads`` or a dict keyed by head
        index (int) or, shared by all heads on it, tap name (str). Use :func:`target_features` to
        compute and cache them for a fixed target (a style image).
      - ``target_x``: normalised target images (B or 1, 3, H, W), run through the network in the same
        forward pass as ``x`` (one batch); masks are kept for ``x``'s half only.
    Targets receive no gradient (they must not require grad). ``tap_grad_dtype`` (e.g.
    torch.bfloat16) stores the full-tensor tap gradients in that dtype: half the memory, gradients
    no longer bit-exact. Differentiable once in ``x`` (no create_graph).
    """
    if (targets is None) == (target_x is None):
        raise ValueError("lean_loss needs exactly one of targets and target_x")
    if not heads:
        raise ValueError("lean_loss needs at least one head")
    tlist = [] if targets is None else _targets_list(heads, targets)
    grad_on = torch.is_grad_enabled()
    for t in tlist + ([target_x] if target_x is not None else []):
        if grad_on and t.requires_grad:
            raise ValueError("lean_loss: targets get no gradient through the lean engine; detach them "
                             "(or use engine='eager' to differentiate through the target)")
    if target_x is not None:
        if target_x.shape[0] not in (1, x.shape[0]) or target_x.shape[1:] != x.shape[1:]:
            raise ValueError(f"target_x must be (B or 1, {', '.join(map(str, x.shape[1:]))}), got {tuple(target_x.shape)}")
        # a single target image stays batch 1: the batch is B + 1 and its features broadcast in the heads
    for p in plan.gm.parameters():
        if p.requires_grad and grad_on:
            raise ValueError("lean_loss: the network must be frozen (requires_grad_(False)); the lean engine "
                             "computes no parameter gradients")
    if grad_on and x.requires_grad and plan.is_lean:
        from perfloss.engine.lean_op import lean_values  # the custom-op form: no graph break under compile
        return lean_values(plan, x, heads, tlist, target_x, tap_grad_dtype)
    call = _Call(plan, heads, targets is not None, tap_grad_dtype)
    if grad_on and x.requires_grad:
        return LeanLossFunction.apply(x, target_x, call, *tlist)
    with torch.no_grad():
        return _forward(call, x, target_x, tlist, False)[0]


@torch.no_grad()
def target_features(plan: Plan, target_x: torch.Tensor, heads: Sequence) -> List[torch.Tensor]:
    """Prepared targets for ``heads`` from target images (no graph): cache these for a fixed target."""
    call = _Call(plan, heads, True, None)
    env = {plan.input_name: target_x}
    out: List[Optional[torch.Tensor]] = [None] * len(call.heads)
    for i, step in enumerate(plan.steps):
        env[step.name] = _run_node(plan.gm, step.node, env)
        for hi in call.heads_at.get(step.name, []):
            out[hi] = call.heads[hi].prepare_target(env[step.name])
        for a in step.node.all_input_nodes:
            if plan.last_use.get(a.name) == i and a.name != plan.input_name:
                env.pop(a.name, None)
    return out
