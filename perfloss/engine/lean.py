"""The lean loss over a frozen network's :class:`~perfloss.engine.plan.Plan`: ``lean_loss``, ``target_features``.

:func:`lean_loss` runs the plan's input pass (:mod:`perfloss.engine.walk`; input and, when given,
target images in one batch; on CPU the target images go first in a no_grad pass of their own, see
``walk.SPLIT_TARGET_PASS_DEVICES``), calls every head's fused ``values_and_grad`` at its tap, and keeps
for backward only:

- a 1-bit packed sign mask per ReLU/LeakyReLU (input half of the batch only), except for a ReLU that
  only a max pool reads, whose pool keeps the sign of its own output instead (a quarter of the bits
  behind a 2x2 pool),
- a 2/4/8-bit argmax code per max-pool output,
- per tapped node, the sum of its heads' gradients (fp32 by default, ``tap_grad_dtype`` to keep it
  in e.g. bfloat16 -- then no longer bit-exact), or, when the only head there is an L1 head, the
  gradient's signs at 2 bits per element plus one scale (:mod:`perfloss.engine.taps`),
- for fallback steps (ops without a lean rule) what eager autograd keeps for that op.

A ReLU whose input is a fresh conv / bn output used by nothing else runs in place
(``perfloss::relu_mask_``): the activation and its mask in one pass, no second activation buffer.

Backward walks the plan in reverse, each op kind's rule (:mod:`perfloss.engine.rules`) giving its
inputs' gradients: conv gradient-to-input only, mask unpack fused with the multiply, pool un-routing
from the codes; the stored tap gradients are scaled by the incoming per-sample gradient and added
where they belong. Gradients match eager autograd (float64 gradcheck exact, fp32 within rounding).
Double backward (``create_graph=True``) is not supported and raises.

Fully lean plans run as the ``perfloss::lean_forward`` / ``lean_backward`` custom ops
(:mod:`perfloss.engine.lean_op`, traceable by ``torch.compile(fullgraph=True)``); plans with fallback
steps run as :class:`LeanLossFunction` (an autograd.Function; a graph break under torch.compile).
"""
from typing import List, Optional, Sequence, Union

import torch

from perfloss.engine.lean_op import lean_values
from perfloss.engine.plan import Plan
from perfloss.engine.walk import (DOUBLE_BACKWARD_ERROR, Call, backward, check_chunk_size, chunk_size_for, forward,
                                  levels_for, prepared_targets)
from perfloss.heads import TapHead


class LeanLossFunction(torch.autograd.Function):
    """The lean loss for plans with fallback steps, whose autograd graphs cannot cross a custom op."""

    @staticmethod
    def forward(ctx, x, target_x, call, levels, affine, *targets):
        total, saved, fwd = forward(call, x, target_x, targets, ctx.needs_input_grad[0], levels, affine)
        ctx.save_for_backward(*saved)
        ctx.plan = call.plan
        ctx.fwd = fwd
        ctx.n_targets = len(targets)
        # the fallback steps' autograd graphs, where perfloss.engine.memory's graph walk finds them
        ctx.fallbacks = [rec.kept for chunk in fwd.chunks
                         for step, rec in zip(call.plan.steps[chunk.first:], chunk.steps)
                         if not step.lean]
        return total

    @staticmethod
    def backward(ctx, grad_values):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD_ERROR)
        gx = backward(ctx.plan, ctx.fwd, ctx.saved_tensors, grad_values)
        return (gx, None, None, None, None) + (None,) * ctx.n_targets


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
              target_x: Optional[torch.Tensor] = None, tap_grad_dtype: Optional[torch.dtype] = None,
              chunk_size: Optional[int] = None, memory_budget: Optional[int] = None,
              affine: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
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

    The batch runs in chunks of ``chunk_size`` samples, forward and backward (its target images with
    it), so the peak is what is kept for the whole batch plus one chunk's activations and gradients.
    ``chunk_size=None`` picks the largest chunk whose transients fit ``memory_budget`` bytes
    (default: ``perfloss.engine.walk.MEMORY_BUDGETS`` for the device). Results equal the unchunked
    ones (float64 exactly; fp32 to rounding, as convolution algorithms may differ per batch size).
    Where the network has narrowed, deeper steps run in larger chunks, up to the whole batch, within
    the same memory (:func:`perfloss.engine.walk.levels_for`).

    ``affine``: None when ``x`` and ``target_x`` are normalised network input; or a loss's (scale,
    shift), each (1, 3, 1, 1), when they are images (B, 3 or 1, H, W) to be mapped by
    :func:`perfloss.inputs.to_network`: each chunk is mapped as it starts, so the normalised batch
    never exists whole (the eager engine's first two full-batch copies).
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
    affine = () if affine is None else tuple(affine)
    if affine and (len(affine) != 2 or any(not isinstance(a, torch.Tensor) or a.shape != (1, 3, 1, 1) for a in affine)):
        raise ValueError("affine must be None or a (scale, shift) pair of (1, 3, 1, 1) tensors")
    check_chunk_size(chunk_size)
    if chunk_size is None:
        chunk_size = chunk_size_for(plan, x, memory_budget, affine, target_x)
    levels = levels_for(plan, x, chunk_size, affine, target_x)
    for p in plan.gm.parameters():
        if p.requires_grad and grad_on:
            raise ValueError("lean_loss: the network must be frozen (requires_grad_(False)); the lean engine "
                             "computes no parameter gradients")
    # the custom-op form (no graph break under compile) for fully lean plans whose heads the op can describe
    # (tap, kind, weight, LPIPS weights); subclasses of TapHead carrying more go through the autograd.Function
    if grad_on and x.requires_grad and plan.is_lean and all(type(h) is TapHead for h in heads):
        return lean_values(plan, x, heads, tlist, target_x, tap_grad_dtype, levels, affine)
    call = Call(plan, heads, tap_grad_dtype)
    if grad_on and x.requires_grad:
        return LeanLossFunction.apply(x, target_x, call, levels, affine, *tlist)
    with torch.no_grad():
        return forward(call, x, target_x, tlist, False, levels, affine)[0]


def target_features(plan: Plan, target_x: torch.Tensor, heads: Sequence) -> List[torch.Tensor]:
    """Prepared targets for ``heads`` from target images (no graph): cache these for a fixed target."""
    return prepared_targets(Call(plan, heads, None), target_x)[0]
