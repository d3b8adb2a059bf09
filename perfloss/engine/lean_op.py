"""The lean loss as custom ops, so that ``torch.compile(fullgraph=True)`` sees no graph break.

``perfloss::lean_forward(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype)
-> (values, saved)`` runs the plan (the same Python code as the autograd.Function in
:mod:`perfloss.engine.lean`) and returns the tensors kept for backward as extra outputs;
``perfloss::lean_backward(...)`` walks the plan in reverse. The heads travel as plain values (tap,
kind, weight, LPIPS weights) and the plan as its integer key, so nothing but tensors, numbers and
strings crosses the op boundary. The Python-side metadata of a forward (step shapes, dtypes, indices
into ``saved``) is filed under the call's configuration and input signature, for the backward to find;
it depends only on those, so the fake (meta) implementation, which runs the plan once on meta tensors
with a meta copy of the network, files the same.

Only fully lean plans use this path (fallback steps keep autograd graphs, which cannot cross a custom
op boundary); the others use the autograd.Function, which graph-breaks under torch.compile.
"""
import copy
from typing import Dict, List, Optional, Tuple

import torch

from perfloss.engine.lean import DOUBLE_BACKWARD_ERROR, _backward, _Call, _forward
from perfloss.engine.plan import compile_plan, plan_by_key
from perfloss.heads import TapHead
from perfloss.ops.bitpack import is_channels_last

_METAS: Dict[str, object] = {}
_META_PLANS: Dict[int, object] = {}
_MAX_METAS = 4096


def _config_key(plan_key, x_shape, x_dtype, x_cl, target_x, targets, heads_spec, weights, lins, tap_grad_dtype,
                amp) -> str:
    tgt = None if target_x is None else (tuple(target_x.shape), str(target_x.dtype))
    return repr((plan_key, tuple(x_shape), str(x_dtype), x_cl, tgt, tuple((tuple(t.shape), str(t.dtype)) for t in targets),
                 heads_spec, tuple(weights), tuple(lin is not None for lin in lins), str(tap_grad_dtype),
                 amp))


def _amp(device_type):
    return torch.is_autocast_enabled(device_type) and str(torch.get_autocast_dtype(device_type))


def encode_heads(heads) -> str:
    """'tap:kind' pairs joined by ',' (the op schema has no string lists)."""
    for h in heads:
        if any(c in h.tap for c in ",:"):
            raise ValueError(f"tap names must not contain ',' or ':' for the lean op, got {h.tap!r}")
    return ",".join(h.tap + ":" + h.kind for h in heads)


def _call(plan, heads_spec, weights, lins, has_targets, tap_grad_dtype) -> _Call:
    pairs = [p.rsplit(":", 1) for p in heads_spec.split(",")]
    heads = [TapHead(t, k, w, lin) for (t, k), w, lin in zip(pairs, weights, lins)]
    return _Call(plan, heads, has_targets, tap_grad_dtype)


def _meta_plan(plan):
    mp = _META_PLANS.get(plan.key)
    if mp is None:
        mp = compile_plan(copy.deepcopy(plan.gm).to("meta"), taps=list(plan.taps))
        _META_PLANS[plan.key] = mp
    return mp


def _to_meta(t):
    if t is None:
        return None
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def _file(key, meta):
    if len(_METAS) >= _MAX_METAS:
        _METAS.clear()
    _METAS[key] = meta


@torch.library.custom_op("perfloss::lean_forward", mutates_args=())
def lean_forward_op(plan_key: int, x: torch.Tensor, target_x: Optional[torch.Tensor], targets: List[torch.Tensor],
                    heads_spec: str, weights: List[float], lins: List[Optional[torch.Tensor]],
                    tap_grad_dtype: Optional[torch.dtype]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    plan = plan_by_key(plan_key)
    call = _call(plan, heads_spec, weights, lins, target_x is None, tap_grad_dtype)
    total, saved, meta = _forward(call, x, target_x, targets, True)
    meta.x_shape = tuple(x.shape)
    _file(_config_key(plan_key, x.shape, x.dtype, is_channels_last(x), target_x, targets, heads_spec, weights, lins,
                      tap_grad_dtype, _amp(x.device.type)), meta)
    return total, saved


@lean_forward_op.register_fake
def _(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype):
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    plan = plan_by_key(plan_key)
    with unset_fake_temporarily():
        call = _call(_meta_plan(plan), heads_spec, weights, [_to_meta(lin) for lin in lins], target_x is None,
                     tap_grad_dtype)
        total, saved, meta = _forward(call, _to_meta(x), _to_meta(target_x), [_to_meta(t) for t in targets], True)
    meta.x_shape = tuple(x.shape)
    _file(_config_key(plan_key, x.shape, x.dtype, is_channels_last(x), target_x, targets, heads_spec, weights, lins,
                      tap_grad_dtype, _amp(x.device.type)), meta)
    return (x.new_empty_strided(total.shape, total.stride(), dtype=total.dtype),
            [x.new_empty_strided(s.shape, s.stride(), dtype=s.dtype) for s in saved])


@torch.library.custom_op("perfloss::lean_backward", mutates_args=())
def lean_backward_op(plan_key: int, config: str, grad_values: torch.Tensor, saved: List[torch.Tensor],
                     heads_spec: str, weights: List[float], lins: List[Optional[torch.Tensor]],
                     has_targets: bool, tap_grad_dtype: Optional[torch.dtype]) -> torch.Tensor:
    plan = plan_by_key(plan_key)
    meta = _METAS.get(config)
    if meta is None:
        raise RuntimeError("perfloss lean engine: forward metadata missing for this backward (was the forward run "
                           "in another process?)")
    call = _call(plan, heads_spec, weights, lins, has_targets, tap_grad_dtype)
    return _backward(call, meta, saved, grad_values)


@lean_backward_op.register_fake
def _(plan_key, config, grad_values, saved, heads_spec, weights, lins, has_targets, tap_grad_dtype):
    meta = _METAS[config]
    return grad_values.new_empty(meta.x_shape, dtype=meta.x_dtype)


def _setup_context(ctx, inputs, output):
    plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype = inputs
    ctx.args = (plan_key, heads_spec, weights, target_x is None, tap_grad_dtype)
    ctx.config = _config_key(plan_key, x.shape, x.dtype, is_channels_last(x), target_x, targets, heads_spec, weights,
                             lins, tap_grad_dtype, _amp(x.device.type))
    ctx.n_lins = len(lins)
    ctx.n_targets = len(targets)
    ctx.save_for_backward(*output[1], *[lin for lin in lins if lin is not None])
    # the saved outputs are not differentiable results: no zero-filled gradients for them in backward
    ctx.mark_non_differentiable(*output[1])
    ctx.set_materialize_grads(False)
    ctx.lin_present = [lin is not None for lin in lins]
    ctx.n_saved = len(output[1])


def _backward_rule(ctx, grad_values, _grad_saved):
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)
    if grad_values is None:  # grads are not materialised: nothing flows into the values
        return None, None, None, [None] * ctx.n_targets, None, None, _no_lin_grads(ctx), None
    tensors = ctx.saved_tensors
    saved, rest = list(tensors[:ctx.n_saved]), list(tensors[ctx.n_saved:])
    lins = [rest.pop(0) if present else None for present in ctx.lin_present]
    plan_key, heads_spec, weights, has_targets, tap_grad_dtype = ctx.args
    gx = lean_backward_op(plan_key, ctx.config, grad_values, saved, heads_spec, weights, lins, has_targets,
                          tap_grad_dtype)
    return None, gx, None, [None] * ctx.n_targets, None, None, _no_lin_grads(ctx), None


def _no_lin_grads(ctx):
    # The autograd wrapper gives a list argument one gradient slot per element only when every
    # element is a tensor (all heads LPIPS); a list holding any None is a single slot.
    return [None] * ctx.n_lins if all(ctx.lin_present) else None


lean_forward_op.register_autograd(_backward_rule, setup_context=_setup_context)


def lean_values(plan, x, heads, tlist, target_x, tap_grad_dtype) -> torch.Tensor:
    heads_spec = encode_heads(heads)
    weights = [float(h.weight) for h in heads]
    lins = [h.lin for h in heads]
    return lean_forward_op(plan.key, x, target_x, list(tlist), heads_spec, weights, lins, tap_grad_dtype)[0]
