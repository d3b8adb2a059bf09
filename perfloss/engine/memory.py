"""Memory held for backward: what a loss's autograd graph keeps alive.

:func:`graph_saved_bytes` walks the autograd graph from a loss tensor and adds up the unique storages
it keeps: tensors saved by built-in nodes (``_saved_*``), by custom Functions (``saved_tensors``) and
tensors held as attributes on custom Function contexts (lists / tuples / dicts of them included), and,
recursively, the graphs of such tensors. Storages of ``exclude`` tensors (the frozen weights, the
input image: resident anyway) are left out.

:func:`hook_saved_bytes` is the other measure: unique storages packed through saved-tensor hooks
while a function runs (it cannot see tensors stored as context attributes).

:func:`lean_expected_bytes` is the analytic figure for the lean engine: packed masks + pool codes +
tap gradients for a plan, input shape and heads.
"""
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch

from perfloss.ops.bitpack import packed_bytes
from perfloss.ops.maxpool_codes import code_bits

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
    """Analytic lean figure for ``plan`` on inputs of ``x_shape``: {"masks", "codes", "taps", "total"} bytes.

    Shapes come from a shape-propagation pass over the plan's graph on a zero input of ``x_shape``.
    """
    from torch.fx.passes.shape_prop import ShapeProp

    gm = plan.gm
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(tuple(x_shape), dtype=dtype))
    nodes = {n.name: n for n in gm.graph.nodes}

    def numel(name):
        return nodes[name].meta["tensor_meta"].shape.numel()

    masks = codes = taps = 0
    for s in plan.steps:
        if s.kind == "relu":
            masks += packed_bytes(numel(s.dynamic_inputs[0]), 1)
        elif s.kind == "maxpool":
            k = s.params["kernel"]
            codes += packed_bytes(numel(s.name), code_bits(k[0] * k[1]))
    per_node: Dict[str, list] = {}
    for h in heads:
        per_node.setdefault(plan.taps[h.tap], []).append(h)
    for node, hs in per_node.items():
        n = numel(node)
        if len(hs) == 1 and hs[0].grad_is_sign:
            taps += packed_bytes(n, 2) + torch.empty((), dtype=dtype).element_size()
        else:
            taps += n * torch.empty((), dtype=tap_grad_dtype or dtype).element_size()
    return dict(masks=masks, codes=codes, taps=taps, total=masks + codes + taps)
