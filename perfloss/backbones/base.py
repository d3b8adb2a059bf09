"""The frozen feature extractor shared by every perfloss backbone.

An architecture file (vgg.py, alexnet.py, ...) describes a network as two things:

* ``children``: its top-level modules under torchvision's attribute names (``features`` for VGG,
  ``conv1``/``bn1``/``layer1``... for ResNet), so ``state_dict()`` keys equal torchvision's;
* ``stages``: the modules to call one after another, as ``(path, tap)`` pairs in network order, where
  ``path`` is the module's dotted name (``"features.3"``, ``"layer2"``) and ``tap`` the name under which
  its output is exposed, or ``None``.

:class:`Backbone` runs the stages in that fixed order (a plain Python loop, so ``torch.fx`` unrolls it
into a flat plan of ops), returns the requested taps, and deletes every stage after the deepest
requested tap so no compute or parameters are wasted.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

Stage = Tuple[str, Optional[str]]

# Input side used to read the tap channel counts off a meta-device run: every network here accepts it.
_CHANNEL_PROBE_SIZE = 224
# Upper bound for the min_input_size search; no network here needs anywhere near this much.
_MAX_PROBE_SIZE = 1 << 14


def tap_names(stages: Sequence[Stage]) -> List[str]:
    """Every tap of a stage table, in network order."""
    return [tap for _, tap in stages if tap is not None]


def resolve_taps(name: str, stages: Sequence[Stage], taps: Union[None, str, Iterable[str]]) -> Tuple[str, ...]:
    """Validate the requested taps and return them deduplicated, in network order.

    ``None`` means every tap; a single string is taken as one tap name (not as its characters).
    """
    valid = tap_names(stages)
    if taps is None:
        return tuple(valid)
    requested = [taps] if isinstance(taps, str) else list(taps)
    if not requested:
        raise ValueError(f"taps is empty: ask for at least one tap of {name}; valid taps: {', '.join(valid)}")
    valid_set = set(valid)
    for tap in requested:
        if tap not in valid_set:
            raise ValueError(f"unknown tap {tap!r} for {name}; valid taps: {', '.join(valid)}")
    wanted = set(requested)
    return tuple(t for t in valid if t in wanted)


class Backbone(nn.Module):
    """A frozen, truncated image network that returns the feature maps at its taps.

    Build it with :func:`perfloss.backbones.get_backbone`. ``forward(x)`` takes an ImageNet-normalised
    ``(B, 3, H, W)`` tensor and returns ``{tap: features}`` in network order.

    Attributes:
        name: the network's name (``"vgg16"``).
        taps: the requested taps, a tuple in network order.
        tap_channels: ``{tap: channels}`` in network order.
        pooling: ``"max"``, or ``"avg"`` for a VGG whose max-pools were replaced by average pools.
    """

    def __init__(
        self,
        name: str,
        children: Mapping[str, nn.Module],
        stages: Sequence[Stage],
        taps: Union[None, str, Iterable[str]] = None,
        *,
        load_weights: Optional[Callable[[nn.Module, frozenset], None]] = None,
        pooling: str = "max",
    ):
        """
        Args:
            name: network name, used in messages.
            children: the FULL network's top-level modules. Modules on the meta device are
                materialised on CPU here (parameters left for ``load_weights``); real modules keep
                their values unless ``load_weights`` overwrites them.
            stages: the full network's ``(path, tap)`` table.
            taps: requested taps (``None`` = all).
            load_weights: ``load_weights(module, droppable_keys)`` fills every parameter and buffer of
                the full, untruncated network; ``droppable_keys`` are the state-dict keys that
                truncation will delete (a state dict may lack them). ``None``: no loading (meta
                modules are zero-filled).
            pooling: recorded for messages and for ``repr``; the pools themselves come in ``children``.
        """
        super().__init__()
        self.name = name
        self.pooling = pooling
        self.taps = resolve_taps(name, stages, taps)
        for key, module in children.items():
            self.add_module(key, module)

        # Materialise children built on the meta device (get_backbone builds there so the layer
        # constructors' default init does not consume the global RNG). The loader then writes every
        # parameter (the random init covers all of them; a state dict must hold all kept ones);
        # buffers in the state dict are zeroed first because num_batches_tracked is optional there;
        # the others are constants their module writes itself (googlenet.TransformInput).
        on_meta = any(t.is_meta for t in list(self.parameters()) + list(self.buffers()))
        if on_meta:
            self.to_empty(device="cpu")
            with torch.no_grad():
                for t in self.state_dict(keep_vars=True).values():
                    if not isinstance(t, nn.Parameter):
                        t.zero_()
                if load_weights is None:  # nothing will fill them: no uninitialised memory
                    for p in self.parameters():
                        p.zero_()

        # Weights are loaded into the full network, before truncation, so a complete torchvision
        # state dict is checked key for key against the complete architecture.
        wanted = set(self.taps)
        deepest = max(i for i, (_, tap) in enumerate(stages) if tap in wanted)
        kept, dropped = list(stages[: deepest + 1]), list(stages[deepest + 1:])
        dropped_keys = frozenset(
            key for key in self.state_dict() if any(_under(key, path) for path, _ in dropped)
        )
        if load_weights is not None:
            load_weights(self, dropped_keys)

        # Truncate: delete every module after the deepest requested tap.
        for path, _ in dropped:
            parent_path, _, leaf = path.rpartition(".")
            parent = self.get_submodule(parent_path) if parent_path else self
            delattr(parent, leaf)
        self._stages: Tuple[Stage, ...] = tuple(kept)
        self._tap_set = frozenset(self.taps)

        # Frozen: no parameter ever needs a gradient; eval mode forever (see train()).
        self.requires_grad_(False)
        self.train(False)

        # A shape-only twin on the meta device for output_shapes / min_input_size. It is kept in
        # __dict__ (not registered as a child) so it is neither in state_dict() nor moved by .to().
        self.__dict__["_meta_net"] = _meta_copy(self)
        self.__dict__["_shape_cache"] = {}
        self.__dict__["_min_size"] = None
        shapes = self._probe(_CHANNEL_PROBE_SIZE, _CHANNEL_PROBE_SIZE)
        if shapes is None:  # only a network needing more than the probe size gets here
            shapes = self._probe(self.min_input_size(), self.min_input_size())
        self.tap_channels: Dict[str, int] = {tap: shapes[tap][0] for tap in self.taps}

    # ----------------------------------------------------------------------------------- running

    @property
    def stages(self) -> Tuple[Stage, ...]:
        """The kept ``(path, tap)`` stages in network order (``tap`` is ``None`` for untapped ones)."""
        return self._stages

    def named_stages(self):
        """Yield ``(path, module, tap)`` for each kept stage, in network order."""
        for path, tap in self._stages:
            yield path, self.get_submodule(path), tap

    def _run(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        # A fixed loop over a fixed table, no branching on tensor values: torch.fx unrolls it.
        out: Dict[str, torch.Tensor] = {}
        for path, tap in self._stages:
            x = self.get_submodule(path)(x)
            if tap is not None and tap in self._tap_set:
                out[tap] = x
        return out

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        try:
            return self._run(x)
        except RuntimeError:
            # Turn PyTorch's "kernel size can't be greater than actual input size" into a message
            # naming the tap and the size needed; any other error propagates unchanged.
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))
            raise

    def train(self, mode: bool = True) -> "Backbone":
        # Always eval: BatchNorm uses its running statistics and never updates them, so a user's
        # model.train() on a network containing the loss does not unfreeze it.
        return super().train(False)

    # ------------------------------------------------------------------------------ size checks

    def _probe(self, height: int, width: int) -> Optional[Dict[str, Tuple[int, int, int]]]:
        """Shapes of the taps for one input size, or None if the network cannot run on it (cached)."""
        key = (int(height), int(width))
        cache = self.__dict__["_shape_cache"]
        if key not in cache:
            result = None
            if key[0] >= 1 and key[1] >= 1:
                try:
                    feats = self.__dict__["_meta_net"]._run(torch.empty(1, 3, *key, device="meta"))
                    shapes = {tap: tuple(int(s) for s in f.shape[1:]) for tap, f in feats.items()}
                    if all(s > 0 for shape in shapes.values() for s in shape):
                        result = shapes
                except (RuntimeError, ValueError):
                    result = None
            cache[key] = result
        return cache[key]

    def min_input_size(self) -> int:
        """Smallest square input side on which every requested tap can be computed."""
        if self.__dict__["_min_size"] is None:
            # Every network here works on any input at least as large as one that works (it is
            # separable in height and width and monotone), so double, then bisect.
            hi = 1
            while self._probe(hi, hi) is None:
                hi *= 2
                if hi > _MAX_PROBE_SIZE:  # pragma: no cover - would be a broken architecture
                    raise RuntimeError(f"{self.name}: no input up to {_MAX_PROBE_SIZE}x{_MAX_PROBE_SIZE} works")
            lo = hi // 2  # fails (or 0)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._probe(mid, mid) is None:
                    lo = mid
                else:
                    hi = mid
            self.__dict__["_min_size"] = hi
        return self.__dict__["_min_size"]

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if a ``height x width`` input is too small for the deepest tap."""
        # Height and width are independent in every network here, so the square minimum decides:
        # plain integer comparisons, which torch.compile traces without running the meta probe.
        need = self.min_input_size()
        if height < need or width < need:
            raise ValueError(
                f"input is {height}x{width} but tap {self.taps[-1]!r} of {self.name} needs at least "
                f"{need}x{need}"
            )

    def output_shapes(self, height: int, width: int) -> Dict[str, Tuple[int, int, int]]:
        """``{tap: (C, H, W)}`` for a ``height x width`` input (per sample; no batch dimension)."""
        shapes = self._probe(height, width)
        if shapes is None:
            self.check_input_size(height, width)
        return dict(shapes)

    def extra_repr(self) -> str:
        pool = "" if self.pooling == "max" else f", pooling={self.pooling!r}"
        return f"name={self.name!r}, taps={self.taps}{pool}"


def _under(key: str, path: str) -> bool:
    """Whether state-dict ``key`` belongs to the module at ``path``."""
    return key == path or key.startswith(path + ".")


def _meta_copy(module: nn.Module) -> nn.Module:
    """Deep copy of ``module`` whose parameters and buffers are float32 meta tensors.

    The memo maps each real tensor to a meta stand-in, so no real memory is copied.
    """
    memo = {}
    for p in module.parameters():
        dtype = torch.float32 if p.is_floating_point() else p.dtype
        memo[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=dtype, device="meta"), requires_grad=False)
    for b in module.buffers():
        dtype = torch.float32 if b.is_floating_point() else b.dtype
        memo[id(b)] = torch.empty(b.shape, dtype=dtype, device="meta")
    return copy.deepcopy(module, memo)
