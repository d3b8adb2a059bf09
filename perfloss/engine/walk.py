"""The plan walker: every pass of the lean engine is one walk over a plan's steps, and one back.

:func:`walk` runs each step's rule (:mod:`perfloss.engine.rules`), hands the features at tapped
nodes to a callback and drops each value after its last reader. Its three users: the target pass
(:func:`prepared_targets`: no_grad, nothing kept), the input pass (:func:`forward`: the heads'
values and, for backward, a :class:`StepRecord` per step and a tap record per tapped node, their
tensors in one flat ``saved`` list) and the memory estimate (``lean_expected_bytes``: the input pass
on meta tensors, :func:`on_meta`). :func:`backward` walks the plan in reverse from those records.
"""
from typing import Any, Callable, Container, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from perfloss.engine.plan import Plan
from perfloss.engine.rules import CONST
from perfloss.engine.taps import TapRecord, prepare_targets, tap_forward
from perfloss.heads import TapHead

DOUBLE_BACKWARD_ERROR = (
    "perfloss lean engine: double backward (create_graph=True) through the lean path is not supported; "
    "it keeps bit masks, not activations. Use engine='eager' for higher-order gradients."
)

# On CPU the target images run through the plan as a pass of their own (no_grad, nothing kept, the
# heads' prepared targets collected at the taps) before the input's pass, instead of in one batch with
# the input: oneDNN's CPU convolutions are measurably slower per image at the doubled batch (relu1_2's
# 64->64 conv at 128x128: 45.7 ms for batch 4 vs 37.7 ms for two batches of 2, 1 thread), and the
# results are those of eager PyTorch's separate no_grad target pass. GPUs keep the single batch.
SPLIT_TARGET_PASS_DEVICES = ("cpu",)


class Call:
    """One lean_loss call besides its tensors: the plan, the heads and the heads at each tapped node."""

    def __init__(self, plan: Plan, heads: Sequence[TapHead], tap_grad_dtype: Optional[torch.dtype]):
        self.plan = plan
        self.heads = list(heads)
        self.tap_grad_dtype = tap_grad_dtype
        self.heads_at: Dict[str, List[int]] = {}  # node name -> head indices
        for i, h in enumerate(self.heads):
            if h.tap not in plan.taps:
                raise ValueError(f"head {i} taps {h.tap!r}, not a tap of this plan ({', '.join(plan.taps)})")
            self.heads_at.setdefault(plan.taps[h.tap], []).append(i)


def to_meta(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def on_meta(call: Call) -> Call:
    """``call`` over the plan's meta copy, LPIPS weights on meta too: a walk of shapes and dtypes only."""
    heads = [TapHead(h.tap, h.kind, h.weight, to_meta(h.lin)) for h in call.heads]
    return Call(call.plan.on_meta(), heads, call.tap_grad_dtype)


class Pass:
    """What one walk keeps: nothing (``keep is None``), or the masks and codes of the first ``keep``
    samples, every kept tensor in ``saved``, their bytes by kind in ``held``."""

    __slots__ = ("gm", "keep", "saved", "held")

    def __init__(self, gm: torch.fx.GraphModule, keep: Optional[int]):
        self.gm = gm
        self.keep = keep or 0
        self.saved: Optional[List[torch.Tensor]] = None if keep is None else []
        self.held = dict(masks=0, codes=0, taps=0)

    @property
    def keeping(self) -> bool:
        return self.saved is not None

    def save(self, t: torch.Tensor, holds: Optional[str] = None) -> int:
        """Keep ``t`` for backward; ``holds``: the kind of bytes it is (masks, codes, taps) or None."""
        self.saved.append(t)
        if holds is not None:
            self.held[holds] += t.nbytes
        return len(self.saved) - 1


class StepRecord(NamedTuple):
    """What backward needs of one step: its dynamic inputs' shapes (at the kept batch) and dtypes, its
    output dtype, and what its rule kept (see :mod:`perfloss.engine.rules`)."""

    in_shapes: Tuple[Tuple[int, ...], ...]
    in_dtypes: Tuple[torch.dtype, ...]
    out_dtype: torch.dtype
    kept: Any


class Forward(NamedTuple):
    """What an input pass hands its backward besides ``saved``. For fully lean plans it holds Python
    values only (the custom op files it by configuration); fallback steps keep autograd graphs."""

    steps: List[Optional[StepRecord]]  # per plan step, None for const steps
    taps: Dict[str, Optional[TapRecord]]  # per tapped node
    x_shape: Tuple[int, ...]
    x_dtype: torch.dtype
    held: Dict[str, int]  # bytes saved, by kind: masks, codes, taps


def walk(plan: Plan, inp: torch.Tensor, run: Pass, taps: Container[str],
         at_tap: Callable[[str, torch.Tensor], None]) -> List[Optional[StepRecord]]:
    """Run ``plan`` on ``inp``; call ``at_tap(node name, features)`` at the nodes in ``taps``. Returns a
    record per step when ``run`` keeps, else an empty list."""
    env: Dict[str, Any] = {plan.input_name: inp}
    records: List[Optional[StepRecord]] = []
    keeping = run.keeping
    for step, free in zip(plan.steps, plan.free_after):
        if keeping and step.rule is not CONST:
            ins = [env[n] for n in step.dynamic_inputs]  # read before the step: a ReLU may overwrite its input
            shapes = tuple((run.keep,) + tuple(a.shape[1:]) for a in ins)
            dtypes = tuple(a.dtype for a in ins)
            y, kept = step.rule.forward(step, env, run)
            records.append(StepRecord(shapes, dtypes, y.dtype, kept))
        else:
            y = step.rule.forward(step, env, run)[0]
            if keeping:
                records.append(None)
        name = step.node.name
        env[name] = y
        if name in taps:
            at_tap(name, y)
        for name in free:
            del env[name]
    return records


def prepared_targets(call: Call, target_x: torch.Tensor) -> List[torch.Tensor]:
    """``head.prepare_target(features at its tap)`` per head, from one no_grad pass of ``target_x``
    that keeps nothing."""
    out: List[Optional[torch.Tensor]] = [None] * len(call.heads)

    def at_tap(name, features):
        heads = call.heads_at[name]
        for i, t in zip(heads, prepare_targets([call.heads[i] for i in heads], features)):
            out[i] = t

    with torch.no_grad():
        walk(call.plan, target_x, Pass(call.plan.gm, None), call.heads_at, at_tap)
    return out


def forward(call: Call, x: torch.Tensor, target_x: Optional[torch.Tensor], targets: Sequence[torch.Tensor],
            need_grad: bool) -> Tuple[torch.Tensor, List[torch.Tensor], Forward]:
    """The input pass: (values (B,), saved tensors, :class:`Forward`); exactly one of ``target_x``
    (images) and ``targets`` (prepared, one per head)."""
    plan = call.plan
    if target_x is not None and x.device.type in SPLIT_TARGET_PASS_DEVICES:
        targets = prepared_targets(call, target_x.detach().to(x.dtype))
        target_x = None
    b = x.shape[0]
    run = Pass(plan.gm, b if need_grad else None)
    values: List[torch.Tensor] = []
    tap_records: Dict[str, Optional[TapRecord]] = {}

    def at_tap(name, features):
        heads = [call.heads[i] for i in call.heads_at[name]]
        if target_x is None:
            tgts = [targets[i] for i in call.heads_at[name]]
        else:
            tgts = prepare_targets(heads, features[b:])
        v, tap_records[name] = tap_forward(heads, features[:b], tgts, run, call.tap_grad_dtype)
        values.append(v)

    # (detached: under autocast a leaf that requires grad gets its cast copy cached, and a copy made
    # here, below autograd, would have no grad_fn and break an eager pass on x later in the region)
    inp = x.detach() if target_x is None else torch.cat([x, target_x.to(x.dtype)])
    with torch.no_grad():
        records = walk(plan, inp, run, call.heads_at, at_tap)
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total, run.saved, Forward(records, tap_records, tuple(x.shape), x.dtype, run.held)


def backward(plan: Plan, fwd: Forward, saved: Sequence[torch.Tensor], grad_values: torch.Tensor):
    """The gradient to the input of the forward that made ``fwd`` and ``saved``, for ``grad_values`` (B,)."""
    grads: Dict[str, torch.Tensor] = {}
    with torch.autocast(grad_values.device.type, enabled=False):
        for step, rec in zip(reversed(plan.steps), reversed(fwd.steps)):
            g = grads.pop(step.name, None)
            tap = fwd.taps.get(step.name)
            if tap is not None:
                tg = tap.grad(saved, grad_values)
                g = tg if g is None else g + tg.to(g.dtype)
            if g is None or rec is None:
                continue
            for name, gi, dtype in zip(step.dynamic_inputs, step.rule.backward(step, rec, g, saved), rec.in_dtypes):
                if gi is None:
                    continue
                if gi.dtype != dtype:
                    gi = gi.to(dtype)
                grads[name] = gi if name not in grads else grads[name] + gi
    gx = grads.pop(plan.input_name, None)
    return None if gx is None else gx.to(fwd.x_dtype)
