"""Memory: what a loss's autograd graph keeps alive for backward, and the peak of a whole step.

:func:`graph_saved_bytes` walks the autograd graph from a loss tensor and adds up the unique storages
it keeps: tensors saved by built-in nodes (``_saved_*``), by custom Functions (``saved_tensors``) and
tensors held as attributes on custom Function contexts (lists / tuples / dicts of them included), and,
recursively, the graphs of such tensors. Storages of ``exclude`` tensors (the frozen weights, the
input image: resident anyway) are left out.

:func:`hook_saved_bytes` is the other measure: unique storages packed through saved-tensor hooks
while a function runs (it cannot see tensors stored as context attributes).

:func:`peak_bytes` is what users run out of: the allocator's peak while a function runs, above what
was allocated when it started, exact on both devices (CUDA: ``max_memory_allocated``; CPU: the
running total of the allocator's allocation and free events, read from the profiler).

:func:`lean_expected_bytes` is the lean engine's own figure: the bytes of packed masks, pool codes
and tap gradients that its input pass keeps, from that pass (the same walker and rules) run on meta
tensors for a plan, input shape and heads.
"""
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch

from perfloss.engine.walk import Call, forward, on_meta

MiB = float(1 << 20)


def _storage_key(t: torch.Tensor):
    st = t.untyped_storage()
    return (t.device.type, t.device.index, st.data_ptr()), st.nbytes()


def graph_saved_bytes(loss: torch.Tensor, exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the unique storages reachable from ``loss``'s autograd graph (see module doc)."""
    skip = {_storage_key(t)[0] for t in exclude}
    storages: Dict[tuple, int] = {}
    seen = set()
    stack = [loss.grad_fn]

    def add(obj, depth=0):
        if isinstance(obj, torch.Tensor):
            if obj.layout != torch.strided or obj.device.type == "meta":
                return
            key, nbytes = _storage_key(obj)
            if key not in skip and nbytes:
                storages[key] = max(storages.get(key, 0), nbytes)
            if obj.grad_fn is not None:
                stack.append(obj.grad_fn)
        elif depth < 4 and isinstance(obj, (list, tuple, set)):
            for o in obj:
                add(o, depth + 1)
        elif depth < 4 and isinstance(obj, dict):
            for o in obj.values():
                add(o, depth + 1)

    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for name in dir(fn):
            if name.startswith("_saved_"):
                try:
                    add(getattr(fn, name))
                except RuntimeError:  # already freed by a backward pass
                    pass
        if hasattr(fn, "saved_tensors"):  # custom autograd.Function / custom op with autograd
            try:
                add(fn.saved_tensors)
            except RuntimeError:
                pass
        if hasattr(fn, "__dict__"):
            add(vars(fn))
        for nxt, _ in fn.next_functions:
            if nxt is not None and type(nxt).__name__ != "AccumulateGrad":
                stack.append(nxt)
    return sum(storages.values())


def hook_saved_bytes(fn: Callable, *args, exclude: Iterable[torch.Tensor] = (), **kwargs) -> Tuple[object, int]:
    """Run ``fn(*args, **kwargs)``; return (its result, bytes of unique storages saved through hooks)."""
    skip = {_storage_key(t)[0] for t in exclude}
    storages: Dict[tuple, int] = {}

    def pack(t):
        if t.layout == torch.strided:
            key, nbytes = _storage_key(t)
            if key not in skip:
                storages[key] = max(storages.get(key, 0), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, sum(storages.values())


def lean_expected_bytes(plan, x_shape: Sequence[int], heads: Sequence, dtype: torch.dtype = torch.float32,
                        tap_grad_dtype: Optional[torch.dtype] = None) -> Dict[str, int]:
    """The lean figure for ``plan`` on inputs of ``x_shape``: {"masks", "codes", "taps", "inputs", "total"}
    bytes.

    The input pass (with target images) runs on meta tensors over a meta copy of the network and
    counts what it saves; fallback steps' autograd graphs are not included. ``dtype`` is the input's,
    which must be the weights' (autocast is not modelled).
    """
    weight = next(iter(plan.gm.parameters()), None)
    if weight is not None and weight.dtype != dtype:
        raise ValueError(f"lean_expected_bytes: dtype must be the network weights' dtype {weight.dtype} (autocast "
                         f"is not modelled), got {dtype}")
    call = on_meta(Call(plan, heads, tap_grad_dtype))
    x = torch.empty(tuple(x_shape), dtype=dtype, device="meta")
    held = forward(call, x, x, None, True, ((0, x.shape[0]),))[2].held
    return dict(held, total=sum(held.values()))


def peak_bytes(fn: Callable, *args, device: Optional[torch.device] = None, **kwargs) -> Tuple[object, int]:
    """Run ``fn(*args, **kwargs)``; return (its result, the peak bytes allocated during the call above
    what was allocated when it started) on ``device`` (default: the first tensor argument's, else CPU).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the profiler's
    allocation events carry the CPU allocator's running total (``total_allocated``, a count the
    profiler keeps across runs); the peak is its maximum during the call minus its value before the
    first allocation. The CPU figure costs a profiled run: measure time in another run.
    """
    if device is None:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak_bytes measures cpu and cuda devices, got {device}")
    from torch._C._profiler import _EventType  # the allocation events' type: no public name for it

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*args, **kwargs)
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        ev = stack.pop()
        if ev.tag == _EventType.Allocation and ev.extra_fields.device.type == "cpu":
            events.append((ev.start_time_ns, ev.extra_fields.alloc_size, ev.extra_fields.total_allocated))
        stack.extend(ev.children)
    if not events:
        return out, 0
    events.sort()
    _, first_size, first_total = events[0]
    return out, max(0, max(total for _, _, total in events) - (first_total - first_size))
