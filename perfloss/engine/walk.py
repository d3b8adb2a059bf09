"""The plan walker: every pass of the lean engine is one walk over a plan's steps, and one back.

:func:`walk` runs each step's rule (:mod:`perfloss.engine.rules`), hands the features at tapped
nodes to a callback and drops each value after its last reader. Its three users: the target pass
(:func:`prepared_targets`: no_grad, nothing kept), the input pass (:func:`forward`: the heads'
values and, for backward, a :class:`StepRecord` per step and a tap record per tapped node, their
tensors in one flat ``saved`` list) and the memory estimate (``lean_expected_bytes``: the input pass
on meta tensors, :func:`on_meta`). :func:`backward` walks the plan in reverse from those records.

The input pass runs the batch in chunks of ``chunk_size`` samples (:func:`chunk_size_for` picks it
from a memory budget), each chunk's target images with it, and backward goes chunk by chunk: the
peak is what is kept for the whole batch (masks, codes, tap gradients: per sample) plus one chunk's
activations and gradient buffers, not the whole batch's. The deep, narrow steps after a cut run in
larger chunks, up to the whole batch, made of the first chunks' values at the cut, where that costs
no more than a first chunk (:func:`levels_for`). Given the loss's ``affine`` (its map from pixels to
network input), each chunk's images are mapped as the chunk starts, so no normalised copy of the
whole batch exists either.

On the devices in ``CHUNK_RECORDING_DEVICES`` a fully lean plan's chunk walks, forward and back, are
recorded once per level, rows and input signature and replayed (:class:`ChunkRecording`, CUDA
graphs): a chunk then costs the host one launch instead of a Python step per op.
"""
import collections
import contextlib
import copy
from typing import Any, Callable, Container, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from perfloss.cuda_graphs import Recording, can_record, new_pool
from perfloss.engine.plan import Plan
from perfloss.engine.rules import CONST
from perfloss.engine.taps import TapRecord, prepare_targets, tap_forward
from perfloss.heads import TapHead
from perfloss.inputs import to_network
from perfloss.kernels.common import memory_format_of, work_channels_last
from perfloss.ops import library

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

# The bytes one chunk's activations and gradient buffers may take, by default, per device type. On CPU
# one-image chunks of VGG at 128x128 are no slower than whole batches (measured: VGG-16 relu2_2 lean,
# batch 8, 2 threads: 417 ms in chunks of 1, 561 ms as one batch; oneDNN's scratch grows with the
# batch); on GPUs a larger budget keeps each chunk's convolutions big enough to fill the device
# (to be tuned on one).
MEMORY_BUDGETS = {"cpu": 16 << 20, "cuda": 256 << 20}
# A chunk's transients are about three activations of the widest step per sample: that step's input
# and output in forward; the incoming gradient, the gradient to the input and the convolution
# backward's buffer in backward.
TRANSIENT_ACTIVATIONS = 3
# Four when each sample's target image rides in the chunk (devices outside SPLIT_TARGET_PASS_DEVICES):
# the two images' inputs and outputs of that step in forward.
RIDING_TARGET_ACTIVATIONS = 4
# Devices where each chunk's walk, forward and backward, is recorded once as a CUDA graph and replayed
# (:class:`ChunkRecording`): a chunk issues some hundred small kernels, and a GPU may run them faster
# than Python issues them. Off until a GPU has measured it: ("cuda",) turns it on. Recordings are replayed
# from one thread on one stream (their static buffers and memory pools are shared, not per thread).
CHUNK_RECORDING_DEVICES: Tuple[str, ...] = ()
# What the values at the cuts that the deeper levels of the walk wait on (:func:`levels_for`) may take
# together, in widest activations per first-level sample. Half of one is what VGG's input and target
# values after its second pooling take for two samples, so VGG's levels wait on all they ever will by
# batch 2 and the peak grows by the held bytes alone from there (VGG-19 relu1_1..relu5_1 L1, 128x128:
# 1.00x those bytes per added sample from batch 2 to 16). At 1.5 (the rule before 2026-12-01) deeper
# levels ran in fours and eights, 1-4% faster at batches 8 to 16, but that peak grew by 2.1x and 1.5x
# the held bytes per added sample from batch 2 to 4 and from 4 to 8.
CUT_VALUES_ACTIVATIONS = 0.5


def below_autograd(plan: Plan):
    """Where a fully lean plan's steps run: below the autograd and ADInplaceOrView dispatch keys. Its
    walks record no graph, but each perfloss op call would still go through the Python autograd and
    ADInplaceOrView kernels that ``torch.library.custom_op`` registers: 14 us a call against 2 us
    straight to the kernel (``relu_mask_`` on a tiny CPU tensor). Plans with fallback steps keep
    autograd: those steps record graphs."""
    return torch._C._AutoDispatchBelowADInplaceOrView() if plan.is_lean else contextlib.nullcontext()


def check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and not (isinstance(chunk_size, int) and not isinstance(chunk_size, bool)
                                       and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int, or None to pick it from the memory budget, "
                         f"got {chunk_size!r}")


def chunk_size_for(plan: Plan, x: torch.Tensor, memory_budget: Optional[int] = None, affine: Sequence = (),
                   target_x: Optional[torch.Tensor] = None) -> int:
    """Samples per chunk so that one chunk's transients fit ``memory_budget`` bytes (default:
    ``MEMORY_BUDGETS`` of ``x``'s device type): at least 1, and the batch split evenly (16 samples
    with room for 5 go as 4 chunks of 4, not 5 + 5 + 5 + 1). ``affine`` and ``target_x`` (a target
    image per sample rides in the chunk on devices outside SPLIT_TARGET_PASS_DEVICES) as in
    :func:`forward`."""
    if memory_budget is None:
        memory_budget = MEMORY_BUDGETS.get(x.device.type, MEMORY_BUDGETS["cuda"])
    target_rides = _target_rides(target_x, x.device.type) and target_x.shape[0] == x.shape[0]
    activations = RIDING_TARGET_ACTIVATIONS if target_rides else TRANSIENT_ACTIVATIONS
    per_sample = activations * _widest_activation_bytes(plan, _network_sample_shape(x, affine), x.dtype)
    batch = x.shape[0]
    chunks = -(-batch // max(1, memory_budget // per_sample))
    return -(-batch // chunks)


def _target_rides(target_x: Optional[torch.Tensor], device_type: str) -> bool:
    """Whether target images go through the walk in the chunks' batch, not in a pass of their own."""
    return target_x is not None and device_type not in SPLIT_TARGET_PASS_DEVICES


def _network_sample_shape(x: torch.Tensor, affine: Sequence) -> Tuple[int, ...]:
    if affine and x.shape[1] == 1:  # to_network replicates grayscale to RGB
        return (3,) + tuple(x.shape[2:])
    return tuple(x.shape[1:])


@torch.compiler.assume_constant_result  # a shape computation: torch.compile runs it once, eagerly
def _widest_activation_bytes(plan: Plan, sample_shape: Tuple[int, ...], dtype: torch.dtype) -> int:
    return plan.widest_activation_bytes(sample_shape, dtype)


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
    # a copy of each head of its own class (DISTS heads too) whose tensors are meta stand-ins: the memo hands
    # deepcopy the replacements, so no tensor's data is read (under torch.compile they are fake tensors)
    heads = [copy.deepcopy(h, memo={id(t): to_meta(t) for t in h.buffers()}) for h in call.heads]
    return Call(call.plan.on_meta(), heads, call.tap_grad_dtype)


class Pass:
    """What walks keep: nothing, or (``keeping``) the masks and codes of the first ``keep`` samples of
    each walk's batch (the input chunk; target images follow it), every kept tensor of every walk in
    one ``saved`` list, their bytes by kind in ``held``. A walk's records index ``saved`` from ``base``,
    where the walk began: what a chunk keeps is a run of ``saved`` whose indices do not depend on the
    chunks before it, so one recorded walk serves every chunk (:class:`ChunkRecording`)."""

    __slots__ = ("gm", "keep", "base", "saved", "held")

    def __init__(self, gm: torch.fx.GraphModule, keeping: bool):
        self.gm = gm
        self.keep = 0
        self.base = 0
        self.saved: Optional[List[torch.Tensor]] = [] if keeping else None
        self.held = dict(masks=0, codes=0, taps=0, inputs=0)

    @property
    def keeping(self) -> bool:
        return self.saved is not None

    def save(self, t: torch.Tensor, holds: Optional[str] = None) -> int:
        """Keep ``t`` for backward; ``holds``: the kind of bytes it is (masks, codes, taps, or inputs: a step's
        input kept whole, where its exact gradient needs it) or None."""
        self.saved.append(t)
        if holds is not None:
            self.held[holds] += t.nbytes
        return len(self.saved) - 1 - self.base


class StepRecord(NamedTuple):
    """What backward needs of one step: its dynamic inputs' shapes (at the kept batch) and dtypes, its
    output dtype, and what its rule kept (see :mod:`perfloss.engine.rules`)."""

    in_shapes: Tuple[Tuple[int, ...], ...]
    in_dtypes: Tuple[torch.dtype, ...]
    out_dtype: torch.dtype
    kept: Any


class Chunk(NamedTuple):
    """One piece of the input pass: its rows of the batch, the plan steps it walked (from ``first``,
    one record each), what its walk kept (``saved[base:base + count]``; the records index that run)
    and the recording that walked it, if one did."""

    start: int
    stop: int
    first: int
    steps: List[Optional[StepRecord]]  # per walked step, None for const steps
    taps: Dict[str, Optional[TapRecord]]  # per tapped node
    base: int
    count: int
    recording: Optional["ChunkRecording"]

    def kept(self, saved: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        return saved[self.base:self.base + self.count]


class Forward(NamedTuple):
    """What an input pass hands its backward besides ``saved``. For fully lean plans it holds Python
    values only (the custom op files it by configuration); fallback steps keep autograd graphs."""

    chunks: List[Chunk]  # in the order walked: a deeper level's chunk after the chunks above it that fed it
    x_shape: Tuple[int, ...]
    x_dtype: torch.dtype
    held: Dict[str, int]  # bytes saved, by kind: masks, codes, taps, inputs
    input_scale: Optional[int]  # index in ``saved`` of the affine's scale, when the pass mapped the images


def entry_name(plan: Plan, first: int) -> str:
    """The value a walk starting at step ``first`` begins from: the network input, or a cut's output."""
    return plan.input_name if first == 0 else plan.steps[first - 1].name


def walk(plan: Plan, inp: torch.Tensor, run: Pass, taps: Container[str], at_tap: Callable[[str, torch.Tensor], None],
         first: int = 0, stop: Optional[int] = None) -> Tuple[List[Optional[StepRecord]], Optional[torch.Tensor]]:
    """Run ``plan.steps[first:stop]`` from ``inp`` (the network input, or the output of the cut step
    ``first - 1``); call ``at_tap(node name, features)`` at the nodes in ``taps``. Returns a record per
    step when ``run`` keeps (else an empty list), and the output of the last step when ``stop`` is a
    cut, for a walk of the rest to start from."""
    stop = len(plan.steps) if stop is None else stop
    env: Dict[str, Any] = {entry_name(plan, first): inp}
    records: List[Optional[StepRecord]] = []
    keeping = run.keeping
    for step, free in zip(plan.steps[first:stop], plan.free_after[first:stop]):
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
    return records, env.get(entry_name(plan, stop)) if stop < len(plan.steps) else None


def prepared_targets(call: Call, target_x: torch.Tensor, first: int = 0, stop: Optional[int] = None
                     ) -> Tuple[List[Optional[torch.Tensor]], Optional[torch.Tensor]]:
    """``head.prepare_target(features at its tap)`` for the heads met by a no_grad walk of
    ``plan.steps[first:stop]`` from ``target_x`` that keeps nothing (one entry per head, None for the
    heads not met), and the walk's output at ``stop`` (see :func:`walk`)."""
    out: List[Optional[torch.Tensor]] = [None] * len(call.heads)

    def at_tap(name, features):
        heads = call.heads_at[name]
        for i, t in zip(heads, prepare_targets([call.heads[i] for i in heads], features)):
            out[i] = t

    with torch.no_grad(), below_autograd(call.plan):
        cut = walk(call.plan, target_x, Pass(call.plan.gm, False), call.heads_at, at_tap, first, stop)[1]
    return out, cut


Levels = Tuple[Tuple[int, int], ...]  # (first step, samples per chunk) of each level of the walk


def levels_for(plan: Plan, x: torch.Tensor, chunk_size: int, affine: Sequence = (),
               target_x: Optional[torch.Tensor] = None) -> Levels:
    """How the input pass walks the batch: levels of steps, each run in chunks of its own size. The
    first level, from the input, runs ``chunk_size`` samples at a time. Deep layers are narrow and
    their weights large, and oneDNN reorders a convolution's weight into its blocked layout on every
    call (512->512 3x3: a 9 MiB buffer and about 0.4 ms of a 1.6 ms one-image call at 8x8, measured
    against a weight reordered once), which a larger batch shares. So past a cut a level may run
    chunks of twice, four times, ... the level above's (up to the whole batch), made of the level
    above's chunks' values at the cut, when its transients (those values, the input's and the
    target's, then three activations of the widest step on) fit one first-level chunk's, and the cut
    values that all levels wait on together fit half a widest activation per first-level sample
    (``CUT_VALUES_ACTIVATIONS``). One level when the batch is one chunk, or when target images ride
    in the chunks' batch (devices outside SPLIT_TARGET_PASS_DEVICES: the chunks' rows are not the
    input's alone)."""
    b = x.shape[0]
    if chunk_size >= b or _target_rides(target_x, x.device.type):
        return ((0, min(chunk_size, b)),)
    sample_shape = _network_sample_shape(x, affine)
    budget = chunk_size * TRANSIENT_ACTIVATIONS * _widest_activation_bytes(plan, sample_shape, x.dtype)
    return _levels(plan, sample_shape, x.dtype, b, chunk_size, budget)


@torch.compiler.assume_constant_result  # a shape computation: torch.compile runs it once, eagerly
def _levels(plan: Plan, sample_shape: Tuple[int, ...], dtype: torch.dtype, batch: int, chunk_size: int,
            budget: int) -> Levels:
    per_step = plan.activation_bytes(sample_shape, dtype)
    cuts = set(plan.cuts)
    levels = [(0, chunk_size)]
    waiting = 0  # bytes of the cut values the levels so far wait on
    cut_values_bound = CUT_VALUES_ACTIVATIONS * budget / TRANSIENT_ACTIVATIONS  # the budget is in activations
    for k in plan.cuts:
        first, size = levels[-1]
        if k < first or (k + 1 in cuts and per_step[k + 1] < per_step[k]):
            # the last level's own cut or one before it; or a cut where a pooling step comes next,
            # after which the values waiting there would be a quarter of the size
            continue
        per_sample = 2 * per_step[k] + TRANSIENT_ACTIVATIONS * max(per_step[k + 1:])
        grown = size
        while grown < batch:  # doubling, so that each chunk is whole chunks of the level above
            larger = min(2 * grown, batch)
            if larger * per_sample > budget or waiting + larger * 2 * per_step[k] > cut_values_bound:
                break
            grown = larger
        if grown == size:
            continue
        waiting += grown * 2 * per_step[k]
        levels.append((k + 1, grown))
        if grown == batch:
            break
    return tuple(levels)


def forward(call: Call, x: torch.Tensor, target_x: Optional[torch.Tensor], targets: Sequence[torch.Tensor],
            need_grad: bool, levels: Levels, affine: Sequence[torch.Tensor] = (),
            device_type: Optional[str] = None) -> Tuple[torch.Tensor, List[torch.Tensor], Forward]:
    """The input pass: (values (B,), saved tensors, :class:`Forward`); exactly one of ``target_x``
    (images, B or 1) and ``targets`` (prepared, one per head, B or 1). ``levels`` (from
    :func:`levels_for`): each level walks its steps over chunks of its size, a deeper level's chunk
    starting from the values at its first step that the level above's chunks of the same rows left
    (the targets' as well). ``affine``: () when ``x`` and ``target_x`` are network input, else the
    loss's (scale, shift) that maps each chunk's images to it (:func:`perfloss.inputs.to_network`).
    ``device_type``: the device the pass is for (default ``x``'s; the fake kernel walks meta tensors
    for a CPU pass)."""
    b = x.shape[0]
    split_target = target_x is not None and not _target_rides(target_x, device_type or x.device.type)
    if split_target:
        target_x = target_x.detach().to(x.dtype)
        if target_x.shape[0] == 1 and levels[0][1] < b:
            # one target image serves every chunk: prepare it once and hold it through the walk (with
            # one chunk, the chunk's own target pass lets each tap's target go once its tap is done)
            targets = prepared_targets(call, _network_input(target_x, affine))[0]
            target_x, split_target = None, False
    rides = target_x is not None and not split_target
    if rides and len(levels) > 1:
        raise ValueError("lean forward: target images that ride in the chunks' batch allow one level only")
    run = Pass(call.plan.gm, need_grad)
    # (a copy: the lean_forward custom op may not return one of its inputs; three numbers)
    input_scale = run.save(affine[0].clone()) if affine and need_grad else None
    walk_levels = _LevelWalk(call, x, target_x, targets, split_target, levels, affine, run)
    top = len(levels) - 1
    for start in range(0, b, levels[top][1]):
        walk_levels.rows(top, start, min(start + levels[top][1], b))
    return walk_levels.total, run.saved, Forward(walk_levels.chunks, tuple(x.shape), x.dtype, run.held, input_scale)


def _network_input(images: torch.Tensor, affine: Sequence[torch.Tensor]) -> torch.Tensor:
    return to_network(images, *affine) if affine else images


class _LevelWalk:
    """The input pass over its levels (see :func:`forward`): the chunks it walked, in order, and the
    values (B,) each level's chunks add to, row by row. (A class, not a recursive closure: a closure
    that calls itself is a reference cycle, which would keep the pass's tensors alive until the
    garbage collector ran.)"""

    def __init__(self, call: Call, x: torch.Tensor, target_x: Optional[torch.Tensor],
                 targets: Sequence[torch.Tensor], split_target: bool, levels: Levels,
                 affine: Sequence[torch.Tensor], run: Pass):
        self.call, self.x, self.target_x, self.targets = call, x, target_x, targets
        self.split_target, self.levels, self.affine, self.run = split_target, levels, affine, run
        self.chunks: List[Chunk] = []
        self.total: Optional[torch.Tensor] = None
        # the chunks' walks recorded and replayed: a fully lean plan's, for backward
        records = (run.keeping and call.plan.is_lean
                   and x.device.type in CHUNK_RECORDING_DEVICES and can_record(x.device))
        self.recording_key = _recording_key(call, x.device) if records else None

    def rows(self, level: int, start: int, stop: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Level ``level`` over rows [start, stop), after the level above over them: the values of the
        input and of the target images at the next level's first step (None at the last level)."""
        levels, target_x, b = self.levels, self.target_x, self.x.shape[0]
        first = levels[level][0]
        end = levels[level + 1][0] if level + 1 < len(levels) else None
        part = slice(start, stop)
        chunk_targets: List[Optional[torch.Tensor]] = (
            [] if target_x is not None else [t[part] if t.shape[0] > 1 else t for t in self.targets])
        inp = target_inp = target_cut = None
        if level == 0:
            inp = _network_input(self.x[part], self.affine)
            if target_x is not None:
                target_inp = _network_input(target_x[part] if target_x.shape[0] > 1 else target_x, self.affine)
        else:  # the level above, chunk by chunk, its values at this level's first step gathered
            above = levels[level - 1][1]
            for s in range(start, stop, above):
                rows = slice(s - start, min(s + above, stop) - start)
                cut, t_cut = self.rows(level - 1, s, min(s + above, stop))
                inp = write_rows(inp, rows, cut, stop - start)
                if t_cut is not None:
                    target_inp = write_rows(target_inp, rows, t_cut, stop - start)
                del cut, t_cut
        run = self.run
        run.keep = stop - start if run.keeping else 0
        run.base = len(run.saved) if run.keeping else 0
        # rows a level above walked add to their values; at the first level they start from none
        total = self.total[part] if level > 0 and self.total is not None else None
        recording = None
        if self.recording_key is not None:  # the split target pass is recorded with the chunk's walk
            chunk = ChunkInputs(first, end, inp, target_inp, chunk_targets, total, self.split_target)
            inputs = ChunkRecording.inputs(self.call, chunk)
            recording = ChunkRecording.get(self.call, self.recording_key, chunk, inputs, run.keep)
            part_total, steps, taps, cut, target_cut = recording.forward(run, inputs)
        else:
            if self.split_target:  # the target rows let go before the input's walk
                chunk_targets, target_cut = prepared_targets(self.call, target_inp, first, end)
                target_inp = None
            part_total, steps, taps, cut = _forward_chunk(self.call, inp, target_inp, chunk_targets, run, first, end,
                                                          total)
        self.chunks.append(Chunk(start, stop, first, steps, taps, run.base,
                                 len(run.saved) - run.base if run.keeping else 0, recording))
        if part_total is not None and stop - start == b:
            self.total = part_total
        elif part_total is not None:
            if self.total is None:  # the first values: rows not walked yet start from zero (0 + v is v exactly)
                self.total = part_total.new_zeros(b)
            self.total[part] = part_total
        return cut, target_cut


def _forward_chunk(call: Call, x: torch.Tensor, target_x: Optional[torch.Tensor], targets: List[torch.Tensor],
                   run: Pass, first: int = 0, stop: Optional[int] = None, total: Optional[torch.Tensor] = None):
    """One walk of ``plan.steps[first:stop]`` over input rows ``x`` (and ``target_x``'s, batched with
    them): (``total`` plus the heads' values met on the way, the step records, the tap records, the
    value at ``stop``)."""
    b = x.shape[0]
    tap_records: Dict[str, Optional[TapRecord]] = {}
    values: List[torch.Tensor] = [] if total is None else [total]

    def at_tap(name, features):
        heads = [call.heads[i] for i in call.heads_at[name]]
        if target_x is None:
            tgts = [targets[i] for i in call.heads_at[name]]
            for i in call.heads_at[name]:  # used: let it go before the deeper taps' work
                targets[i] = None
        else:
            tgts = prepare_targets(heads, features[b:])
        v, tap_records[name] = tap_forward(heads, features[:b], tgts, run, call.tap_grad_dtype)
        values.append(v)

    # (detached: under autocast a leaf that requires grad gets its cast copy cached, and a copy made
    # here, below autograd, would have no grad_fn and break an eager pass on x later in the region)
    inp = x.detach() if target_x is None else torch.cat([x.detach(), target_x.to(x.dtype)])
    with torch.no_grad(), below_autograd(call.plan):
        records, cut = walk(call.plan, inp, run, call.heads_at, at_tap, first, stop)
    total = values[0] if values else None  # None: no tap among these steps
    for v in values[1:]:
        total = total + v
    return total, records, tap_records, cut


def backward(plan: Plan, fwd: Forward, saved: Sequence[torch.Tensor], grad_values: torch.Tensor):
    """The gradient to the input of the forward that made ``fwd`` and ``saved``, for ``grad_values``
    (B,): the chunks in the reverse of the forward's order, so that each deeper level's chunk comes
    before the level above's chunks of its rows, which start from its gradient at its first step."""
    at_cut: Dict[int, Tuple[int, Optional[torch.Tensor]]] = {}  # by a level's first step: (row, its chunk's gradient)
    gx = None
    for chunk in reversed(fwd.chunks):
        at_cut.pop(chunk.first, None)  # the previous chunk of this level: its rows are done
        rows = slice(chunk.start, chunk.stop)
        seed = {}
        end = chunk.first + len(chunk.steps)
        if end in at_cut and at_cut[end][1] is not None:
            row, g_cut = at_cut[end]
            seed = {entry_name(plan, end): g_cut[chunk.start - row:chunk.stop - row]}
        if chunk.recording is not None:
            g = chunk.recording.backward(plan, chunk, chunk.kept(saved), grad_values[rows], seed)
        else:
            g = _backward_chunk(plan, chunk, chunk.kept(saved), grad_values[rows], seed).get(entry_name(plan, chunk.first))
        if chunk.first > 0:
            at_cut[chunk.first] = (chunk.start, g)
            continue
        if g is None:  # nothing reaches the input
            return None
        if fwd.input_scale is not None:  # back through to_network: the affine's scale, then the replication
            g = g * saved[fwd.input_scale].to(g.dtype)
            if fwd.x_shape[1] == 1:
                g = g.sum(1, keepdim=True)
        gx = write_rows(gx, rows, g, fwd.x_shape[0], fwd.x_dtype)
        del g  # written into gx: else it would live on through the next chunk's backward
    return gx


def write_rows(whole: Optional[torch.Tensor], rows: slice, part: torch.Tensor, batch: int,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``part`` written as ``rows`` of ``whole``, a tensor of ``batch`` rows made at the first chunk (in
    ``part``'s memory order, of ``dtype`` or ``part``'s): a whole batch's tensor put together chunk by
    chunk, with no list of the chunks' tensors and no concatenated copy of them."""
    if whole is None and part.shape[0] == batch:  # one chunk: the whole batch as it is
        return part if dtype is None else part.to(dtype)
    if whole is None:
        whole = torch.empty((batch,) + tuple(part.shape[1:]), dtype=dtype or part.dtype, device=part.device,
                            memory_format=memory_format_of(work_channels_last(part)))
    whole[rows] = part
    return whole


def _backward_chunk(plan: Plan, chunk: Chunk, saved: Sequence[torch.Tensor], grad_values: torch.Tensor,
                    grads: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Back through the chunk's steps from ``grads`` (gradients by value name); returns what is left in
    it: the gradient to the value the chunk's walk started from, if any reached it."""
    walked = plan.steps[chunk.first:chunk.first + len(chunk.steps)]
    with torch.autocast(grad_values.device.type, enabled=False), below_autograd(plan):
        for step, rec in zip(reversed(walked), reversed(chunk.steps)):
            g = grads.pop(step.name, None)
            tap = chunk.taps.get(step.name)
            if tap is not None:
                tg = tap.grad(saved, grad_values)
                g = tg if g is None else g + tg.to(g.dtype)
                del tg  # else it would live on until the next tap, through the wide steps below this one
            if g is None or rec is None:
                continue
            for name, gi, dtype in zip(step.dynamic_inputs, step.rule.backward(step, rec, g, saved), rec.in_dtypes):
                if gi is None:
                    continue
                if gi.dtype != dtype:
                    gi = gi.to(dtype)
                grads[name] = gi if name not in grads else grads[name] + gi
    return grads


def _recording_key(call: Call, device: torch.device) -> tuple:
    """What a chunk's recorded walk depends on besides its inputs' signatures: the plan, where its
    weights are (a recording reads them from there), the heads, autocast and the ops' implementation."""
    plan = call.plan
    tensors = [t for t in plan.gm.parameters()] + [t for t in plan.gm.buffers()]
    heads = tuple((type(h), h.tap, h.kind, h.weight) for h in call.heads)
    autocast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type)
    return (plan.key, device, tuple(t.data_ptr() for t in tensors), heads, call.tap_grad_dtype, autocast,
            library.selected())


class ChunkInputs(NamedTuple):
    """What one chunk's walk of ``plan.steps[first:stop]`` starts from (see :func:`_forward_chunk`):
    its rows of the network input (or of the value at ``first``), of the target images or prepared
    targets, the values the level above gave those rows (None at the first level), and whether the
    target rows go through a no_grad pass of their own first (:func:`prepared_targets`) rather than in
    the input's batch."""

    first: int
    stop: Optional[int]
    inp: torch.Tensor
    target_inp: Optional[torch.Tensor]
    targets: List[torch.Tensor]
    total: Optional[torch.Tensor]
    split_target: bool


def _head_buffers(call: Call) -> List[torch.Tensor]:
    return [b for h in call.heads for b in h.buffers()]


def _signature(tensors: Sequence[torch.Tensor]) -> tuple:
    return tuple((t.shape, t.stride(), t.dtype) for t in tensors)


class ChunkRecording:
    """One chunk's walk, recorded once and replayed for every chunk of the same level, rows and input
    signatures (:class:`perfloss.cuda_graphs.Recording`): the input pass (after the chunk's own target
    pass, where its target images have one) when first met, the backward at its first backward. A
    replay's kept tensors, values and cut values are copied out of the recording's static outputs at
    once, so all the recordings of one call's configuration share one memory pool (one chunk's
    transients, not one per level and row count): a replay may overwrite what another left in it.
    The heads' buffers (LPIPS weights) are inputs too, copied in at every replay: a call may hold
    fresh copies."""

    _CACHE: "collections.OrderedDict[tuple, ChunkRecording]" = collections.OrderedDict()
    _POOLS: Dict[tuple, Any] = {}  # by the call's key
    MAX_CACHED = 16

    @classmethod
    def get(cls, call: Call, key: tuple, chunk: ChunkInputs, inputs: List[torch.Tensor], keep: int
            ) -> "ChunkRecording":
        """The recording for ``chunk`` of ``keep`` rows, whose recording inputs are ``inputs``
        (:meth:`inputs`), in a call whose :func:`_recording_key` is ``key``."""
        chunk_key = key + (chunk.first, chunk.stop, keep, chunk.target_inp is not None, chunk.split_target,
                           chunk.total is not None, tuple(t is None for t in chunk.targets), _signature(inputs))
        recording = cls._CACHE.pop(chunk_key, None)
        if recording is None:
            if key not in cls._POOLS:
                cls._POOLS[key] = new_pool(chunk.inp.device)
            recording = ChunkRecording(call, chunk, inputs, keep, cls._POOLS[key])
            if len(cls._CACHE) >= cls.MAX_CACHED:
                cls._CACHE.popitem(last=False)
                calls = {k[:len(key)] for k in cls._CACHE} | {key}  # the pools some recording still uses
                cls._POOLS = {k: pool for k, pool in cls._POOLS.items() if k in calls}
        cls._CACHE[chunk_key] = recording  # most recently used last
        return recording

    @staticmethod
    def inputs(call: Call, chunk: ChunkInputs) -> List[torch.Tensor]:
        """The tensors a chunk's recording copies in: the chunk's, then the heads' buffers."""
        return [t for t in (chunk.inp, chunk.target_inp, *chunk.targets, chunk.total) if t is not None] + \
            _head_buffers(call)

    def __init__(self, call: Call, chunk: ChunkInputs, inputs: List[torch.Tensor], keep: int, pool):
        head_buffers = _head_buffers(call)
        first, stop, split = chunk.first, chunk.stop, chunk.split_target
        has_target, has_total = chunk.target_inp is not None, chunk.total is not None
        met = [t is not None for t in chunk.targets]  # a split target pass prepares the targets of its steps' heads

        def walk_chunk(*args):
            args = list(args)
            inp, target_inp = args.pop(0), args.pop(0) if has_target else None
            targets = [args.pop(0) if m else None for m in met]
            total = args.pop(0) if has_total else None
            heads = copy.deepcopy(call.heads, memo={id(b): a for b, a in zip(head_buffers, args)})
            chunk_call = Call(call.plan, heads, call.tap_grad_dtype)
            target_cut = None
            if split:
                targets, target_cut = prepared_targets(chunk_call, target_inp, first, stop)
                target_inp = None
            run = Pass(call.plan.gm, True)
            run.keep = keep
            total, steps, taps, cut = _forward_chunk(chunk_call, inp, target_inp, targets, run, first, stop, total)
            found = (total, cut, target_cut)
            return [t for t in found if t is not None] + run.saved, (steps, taps, run.held,
                                                                     tuple(t is not None for t in found))

        self.pool = pool
        self.forward_recording = Recording(walk_chunk, inputs, pool)
        self.backward_recordings: Dict[bool, Recording] = {}  # by whether a gradient comes in at the cut

    def forward(self, run: Pass, inputs: List[torch.Tensor]):
        """Replay the input pass on a chunk's ``inputs`` (:meth:`inputs`), after its split target pass if
        it has one: its kept tensors go to ``run``; returns what :func:`_forward_chunk` does (values, step
        records, tap records, the value at the cut) and the target rows' value at the cut (split pass)."""
        outputs = list(self.forward_recording(inputs))
        steps, taps, held, found = self.forward_recording.values
        total, cut, target_cut = (outputs.pop(0).clone() if f else None for f in found)
        run.saved.extend(t.clone() for t in outputs)
        for kind, nbytes in held.items():
            run.held[kind] += nbytes
        return total, steps, taps, cut, target_cut

    def backward(self, plan: Plan, chunk: Chunk, kept: Sequence[torch.Tensor], grad_values: torch.Tensor,
                 seed: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """Replay the backward walk of ``chunk`` (one this recording walked) from ``seed`` (the gradient
        at its cut, if any): the gradient to the value its walk started from, or None where none reaches it."""
        inputs = [grad_values, *seed.values(), *kept]
        recording = self.backward_recordings.get(bool(seed))
        if recording is None:
            seed_names, n_kept = list(seed), len(kept)

            def walk_back(grad_rows, *rest):
                grads = dict(zip(seed_names, rest[:len(seed_names)]))
                g = _backward_chunk(plan, chunk, rest[len(rest) - n_kept:], grad_rows, grads).get(
                    entry_name(plan, chunk.first))
                return ([] if g is None else [g]), None

            recording = self.backward_recordings[bool(seed)] = Recording(walk_back, inputs, self.pool)
        out = recording(inputs)
        return out[0].clone() if out else None

    @property
    def pool_bytes(self) -> int:
        return self.forward_recording.pool_bytes + sum(r.pool_bytes for r in self.backward_recordings.values())


def clear_chunk_recordings() -> None:
    """Drop the cached chunk recordings and, with them, their memory pools (a pending backward keeps
    its own recordings alive until it has run)."""
    ChunkRecording._CACHE.clear()
    ChunkRecording._POOLS.clear()


def recorded_pool_bytes() -> int:
    """The bytes the cached chunk recordings' memory pools reserve: device memory held between steps,
    which a step's allocator peak does not show (a replay allocates nothing)."""
    return sum(r.pool_bytes for r in ChunkRecording._CACHE.values())
