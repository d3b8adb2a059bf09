"""A function of tensors recorded once as a CUDA graph and replayed: what the PGN's inference copy
and the lean walk's chunks (:mod:`perfloss.engine.walk`) use to issue many small kernels with one
launch.

:class:`Recording` runs ``fn`` on static copies of its first inputs: twice on a side stream (cuDNN
picks its algorithms, Triton compiles and tunes its kernels: none of that may happen inside a
capture), then once under capture. Each call copies new inputs into the static ones, replays the
graph and returns the static outputs, which the next replay overwrites: callers copy out what they
keep. Whatever Python decided while ``fn`` was captured (shapes, which kernels, the Python values
``fn`` returned beside its tensors) is baked into the graph, so a recording serves only inputs of
the shapes, dtypes and strides it was recorded with, and the tensors ``fn`` reads from outside its
inputs (a network's weights) must stay where they were.

A recording runs without autograd (a graph replays kernels, not an autograd graph), and with
autocast's cast cache off: a cast cached during the capture would be graph memory that outlives it.
"""
from typing import Any, Callable, List, Sequence, Tuple

import torch

Recorded = Callable[..., Tuple[Sequence[torch.Tensor], Any]]  # fn(*inputs) -> (output tensors, Python values)


def _uncached_autocast(device_type: str):
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)


Capture = Tuple[Callable[[], None], Sequence[torch.Tensor], Any, int]


def capture_cuda(fn: Recorded, inputs: Sequence[torch.Tensor], pool) -> Capture:
    """Warm ``fn`` up on a side stream, then capture it into a CUDA graph using memory ``pool``; returns
    (replay, the static outputs, fn's Python values, the bytes the pool grew by)."""
    with _uncached_autocast("cuda"):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA calls (a data loader's, DDP's) do not break this capture
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            reserved = torch.cuda.memory_reserved()  # here: entering the capture empties the allocator's cache
            outputs, values = fn(*inputs)
        grown = torch.cuda.memory_reserved() - reserved
    return graph.replay, outputs, values, grown


# How a recording is made, by device type. Only CUDA graphs here; tests add a stand-in for CPU tensors.
CAPTURE = {"cuda": capture_cuda}


def can_record(device: torch.device) -> bool:
    """Whether a recording can be made on ``device`` now: a capture method exists for it and no capture
    is under way (a graph cannot be captured inside another's capture, e.g. torch.compile's
    ``mode="reduce-overhead"``)."""
    if device.type not in CAPTURE:
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def new_pool(device: torch.device):
    """A memory pool that several recordings may share (they replay one after another, never at once)."""
    return torch.cuda.graph_pool_handle() if device.type == "cuda" else None


class Recording:
    """``fn`` recorded on static copies of ``inputs`` (see the module doc); ``values``: the Python
    values ``fn`` returned beside its tensors when it was recorded; ``pool_bytes``: the device memory its
    capture added to the pool, held while the recording lives (a replay allocates nothing, so the
    allocator's peak during a replay does not show it)."""

    @torch.no_grad()
    def __init__(self, fn: Recorded, inputs: Sequence[torch.Tensor], pool=None):
        device = inputs[0].device
        # empty_like keeps each input's strides (channels_last stays channels_last)
        self.inputs: List[torch.Tensor] = [torch.empty_like(t).copy_(t) for t in inputs]
        self._replay, self.outputs, self.values, self.pool_bytes = CAPTURE[device.type](fn, self.inputs, pool)

    @torch.no_grad()
    def __call__(self, inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """Replay on ``inputs`` (their shapes, dtypes and strides those recorded); returns the static
        outputs, valid until the next replay."""
        torch._foreach_copy_(self.inputs, list(inputs))
        self._replay()
        return self.outputs
