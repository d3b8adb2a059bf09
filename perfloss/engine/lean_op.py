"""The lean loss as custom ops, so that ``torch.compile(fullgraph=True)`` sees no graph break.

``perfloss::lean_forward(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype,
level_firsts, level_sizes, affine) -> (values, saved)`` runs the input pass
(:func:`perfloss.engine.walk.forward`, as the autograd.Function in :mod:`perfloss.engine.lean` does;
its levels as two lists) and returns the tensors kept for backward as
extra outputs; ``perfloss::lean_backward(plan_key, config, grad_values, saved)`` walks the plan in
reverse. The heads travel as plain values (tap, kind, weight, LPIPS weights) and the plan as its
integer key, so nothing but tensors, numbers and strings crosses the op boundary. The rest of what
the forward hands its backward (the :class:`~perfloss.engine.walk.Forward` record: step shapes,
dtypes, indices into ``saved``) is filed under the call's configuration and input signature, for the
backward to find; it depends only on those, so the fake implementation, which runs the pass once on
meta tensors with a meta copy of the network, files the same.

Only fully lean plans use this path (fallback steps keep autograd graphs, which cannot cross a custom
op boundary); the others use the autograd.Function, which graph-breaks under torch.compile.
"""
from typing import Dict, List, Optional, Tuple

import torch

from perfloss.engine.plan import plan_by_key
from perfloss.engine.walk import DOUBLE_BACKWARD_ERROR, Call, Forward, backward, forward, on_meta, to_meta
from perfloss.heads import TapHead
from perfloss.kernels.common import work_channels_last

_METAS: Dict[str, Forward] = {}
_MAX_METAS = 4096


def _config_key(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype, level_firsts, level_sizes,
                affine) -> str:
    tgt = None if target_x is None else (tuple(target_x.shape), str(target_x.dtype))
    amp = torch.is_autocast_enabled(x.device.type) and str(torch.get_autocast_dtype(x.device.type))
    return repr((plan_key, tuple(x.shape), str(x.dtype), work_channels_last(x), tgt,
                 tuple((tuple(t.shape), str(t.dtype)) for t in targets), heads_spec, tuple(weights),
                 tuple(lin is not None for lin in lins), str(tap_grad_dtype), tuple(level_firsts), tuple(level_sizes),
                 len(affine), amp))


def encode_heads(heads) -> str:
    """'tap:kind' pairs joined by ',' (the op schema has no string lists)."""
    for h in heads:
        if any(c in h.tap for c in ",:"):
            raise ValueError(f"tap names must not contain ',' or ':' for the lean op, got {h.tap!r}")
    return ",".join(h.tap + ":" + h.kind for h in heads)


def _call(plan_key, heads_spec, weights, lins, tap_grad_dtype) -> Call:
    pairs = [p.rsplit(":", 1) for p in heads_spec.split(",")]
    heads = [TapHead(t, k, w, lin) for (t, k), w, lin in zip(pairs, weights, lins)]
    return Call(plan_by_key(plan_key), heads, tap_grad_dtype)


def _file(key: str, fwd: Forward):
    _METAS.pop(key, None)  # re-filed at the end: the dict's order is least recently filed first
    if len(_METAS) >= _MAX_METAS:  # drop the oldest configuration only, not one a pending backward may need
        del _METAS[next(iter(_METAS))]
    _METAS[key] = fwd


@torch.library.custom_op("perfloss::lean_forward", mutates_args=())
def lean_forward_op(plan_key: int, x: torch.Tensor, target_x: Optional[torch.Tensor], targets: List[torch.Tensor],
                    heads_spec: str, weights: List[float], lins: List[Optional[torch.Tensor]],
                    tap_grad_dtype: Optional[torch.dtype], level_firsts: List[int], level_sizes: List[int],
                    affine: List[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    call = _call(plan_key, heads_spec, weights, lins, tap_grad_dtype)
    levels = tuple(zip(level_firsts, level_sizes))
    total, saved, fwd = forward(call, x, target_x, targets, True, levels, affine)
    _file(_config_key(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype, level_firsts,
                      level_sizes, affine), fwd)
    return total, saved


@lean_forward_op.register_fake
def _(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype, level_firsts, level_sizes, affine):
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    call = _call(plan_key, heads_spec, weights, lins, tap_grad_dtype)
    with unset_fake_temporarily():
        total, saved, fwd = forward(on_meta(call), to_meta(x), to_meta(target_x), [to_meta(t) for t in targets], True,
                                    tuple(zip(level_firsts, level_sizes)), [to_meta(a) for a in affine],
                                    x.device.type)
    _file(_config_key(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype, level_firsts,
                      level_sizes, affine), fwd)
    return (x.new_empty_strided(total.shape, total.stride(), dtype=total.dtype),
            [x.new_empty_strided(s.shape, s.stride(), dtype=s.dtype) for s in saved])


@torch.library.custom_op("perfloss::lean_backward", mutates_args=())
def lean_backward_op(plan_key: int, config: str, grad_values: torch.Tensor, saved: List[torch.Tensor]) -> torch.Tensor:
    fwd = _METAS.get(config)
    if fwd is None:
        raise RuntimeError("perfloss lean engine: forward metadata missing for this backward (was the forward run "
                           "in another process?)")
    return backward(plan_by_key(plan_key), fwd, saved, grad_values)


@lean_backward_op.register_fake
def _(plan_key, config, grad_values, saved):
    fwd = _METAS[config]
    return grad_values.new_empty(fwd.x_shape, dtype=fwd.x_dtype)


def _setup_context(ctx, inputs, output):
    plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype, level_firsts, level_sizes, affine = inputs
    ctx.plan_key = plan_key
    ctx.config = _config_key(plan_key, x, target_x, targets, heads_spec, weights, lins, tap_grad_dtype, level_firsts,
                             level_sizes, affine)
    ctx.n_targets = len(targets)
    # The autograd wrapper gives a list argument one gradient slot per element only when every
    # element is a tensor (all heads LPIPS); a list holding any None is a single slot.
    ctx.lin_grads = [None] * len(lins) if all(lin is not None for lin in lins) else None
    ctx.affine_grads = [None] * len(affine)
    ctx.save_for_backward(*output[1])
    # the saved outputs are not differentiable results: no zero-filled gradients for them in backward
    ctx.mark_non_differentiable(*output[1])
    ctx.set_materialize_grads(False)


def _backward_rule(ctx, grad_values, _grad_saved):
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)
    gx = None
    if grad_values is not None:  # grads are not materialised: None when nothing flows into the values
        gx = lean_backward_op(ctx.plan_key, ctx.config, grad_values, list(ctx.saved_tensors))
    return None, gx, None, [None] * ctx.n_targets, None, None, ctx.lin_grads, None, None, None, ctx.affine_grads


lean_forward_op.register_autograd(_backward_rule, setup_context=_setup_context)


def lean_values(plan, x, heads, tlist, target_x, tap_grad_dtype, levels, affine) -> torch.Tensor:
    heads_spec = encode_heads(heads)
    weights = [float(h.weight) for h in heads]
    lins = [h.lin for h in heads]
    return lean_forward_op(plan.key, x, target_x, list(tlist), heads_spec, weights, lins, tap_grad_dtype,
                           [first for first, _ in levels], [size for _, size in levels], list(affine))[0]
