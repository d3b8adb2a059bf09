"""BackboneLoss: what every loss built on a frozen network shares.

Input checks, the map from the caller's pixel range to the network's input, one backbone pass per
call, the heads, the reduction and the choice of engine:

- ``"eager"``: plain PyTorch autograd through the backbone, the reference path;
- ``"lean"``: perfloss.engine's exact backward that keeps bit masks, pool codes and tap gradients
  instead of activations, and runs the batch in chunks of ``chunk_size`` samples (None: from the
  engine's memory budget) so that only one chunk's activations exist at a time;
- ``"checkpoint"``: eager under torch.utils.checkpoint: keeps only the backbone's input and
  recomputes the forward in backward (the usual memory fix, for comparison).

``engine=None`` picks lean when the backbone's plan is fully lean, else eager.
"""
from typing import List, Optional, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

from perfloss import engine as lean_engine
from perfloss import inputs
from perfloss.backbones import Backbone, get_backbone
from perfloss.heads import TapHead
from perfloss.inputs import REDUCTIONS, reduce

ENGINES = ("lean", "eager", "checkpoint")


def build_backbone(backbone, taps: Sequence[str], weights, pooling: str = "max") -> Backbone:
    if isinstance(backbone, Backbone):
        missing = [t for t in taps if t not in backbone.taps]
        if missing:
            raise ValueError(f"backbone {backbone.name!r} was built without taps {missing}; it has {list(backbone.taps)}")
        return backbone
    if isinstance(backbone, str):
        return get_backbone(backbone, taps=taps, weights=weights, pooling=pooling)
    raise TypeError(f"backbone must be a backbone name or a perfloss.backbones.Backbone, got {type(backbone).__name__}")


def layer_weights_for(layers: Sequence[str], layer_weights) -> List[float]:
    if layer_weights is None:
        return [1.0] * len(layers)
    layer_weights = [float(w) for w in layer_weights]
    if len(layer_weights) != len(layers):
        raise ValueError(f"layer_weights must have one weight per layer ({len(layers)}), got {len(layer_weights)}")
    return layer_weights


def check_layers(layers) -> List[str]:
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers must name at least one tap")
    return layers


class BackboneLoss(nn.Module):
    def __init__(self, backbone: Backbone, heads: Sequence[TapHead], *, input_range, reduction: str,
                 engine: Optional[str], check_range: bool, tap_grad_dtype: Optional[torch.dtype] = None,
                 chunk_size: Optional[int] = None, affine=None):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES} or None (lean where the backbone allows), got {engine!r}")
        self.backbone = backbone
        backbone.min_input_size()  # probe once now, not inside a compiled forward
        self.heads = nn.ModuleList(heads)
        self.input_range = inputs.check_input_range(input_range)
        self.reduction = reduction
        self.check_range = check_range
        self.tap_grad_dtype = tap_grad_dtype
        lean_engine.check_chunk_size(chunk_size)
        self.chunk_size = chunk_size
        scale, shift = affine if affine is not None else inputs.pixel_affine(self.input_range)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.engine = self._resolve_engine(engine)
        if self.engine == "lean":
            # Trace now, not in the first forward: torch.fx's tracing patches nn.Module.__call__
            # process-wide while it runs, which would break modules other threads call meanwhile.
            lean_engine.plan_for(backbone).on_meta()

    def _resolve_engine(self, engine: Optional[str]) -> str:
        if engine is not None:
            return engine
        return "lean" if lean_engine.plan_for(self.backbone).is_lean else "eager"

    def extra_repr(self) -> str:
        return f"input_range={self.input_range}, reduction={self.reduction!r}, engine={self.engine!r}"

    # -- inputs ---------------------------------------------------------------------------------
    def checked_images(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Image batch ``x`` (argument ``name``), checked, in the weights' dtype. The map to network input
        (:meth:`to_network`) happens in the pass: on the lean engine chunk by chunk, so that no
        normalised copy of the whole batch is made."""
        inputs.check_image(name, x)
        weight_dtype = inputs.check_module_match(name, x, self.backbone, "loss")
        if self.check_range:
            inputs.check_values(name, x, self.input_range)
        self.backbone.check_input_size(x.shape[-2], x.shape[-1])
        if weight_dtype is not None and x.dtype != weight_dtype:
            # images in the autocast dtype: autocast casts every conv to that dtype anyway, but the
            # steps around the convs (and the lean engine's plan) expect the weights' dtype
            x = x.to(weight_dtype)
        return x

    def to_network(self, images: torch.Tensor) -> torch.Tensor:
        """Checked images mapped to the network's input (``input_range`` and ImageNet statistics)."""
        return inputs.to_network(images, self.scale, self.shift)

    def target_representations(self, target_x: torch.Tensor, heads: Optional[Sequence[TapHead]] = None
                               ) -> List[torch.Tensor]:
        """Each head's target (features, or Grams) from checked target images; ``heads``: default all."""
        heads = self.heads if heads is None else heads
        with torch.set_grad_enabled(torch.is_grad_enabled() and target_x.requires_grad):
            features = self.backbone(self.to_network(target_x))
            return [head.prepare_target(features[head.tap]) for head in heads]

    # -- the pass -------------------------------------------------------------------------------
    def per_sample(self, x: torch.Tensor, target_x: Optional[torch.Tensor] = None,
                   targets: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """Per-sample loss (B,) of checked images ``x`` against target images or ready targets.

        Exactly one of ``target_x`` (checked images shaped like x) and ``targets`` (one per head).
        """
        grad_to_input = torch.is_grad_enabled() and x.requires_grad
        grad_to_target = torch.is_grad_enabled() and (
            (target_x is not None and target_x.requires_grad) or any(t.requires_grad for t in targets or ()))
        if self.engine == "lean" and grad_to_input and not grad_to_target:
            return lean_engine.lean_loss(lean_engine.plan_for(self.backbone), x, list(self.heads), targets=targets,
                                         target_x=target_x, tap_grad_dtype=self.tap_grad_dtype,
                                         chunk_size=self.chunk_size, affine=(self.scale, self.shift))
        if targets is None and grad_to_input and not grad_to_target:
            # The target's activations must not join the input's graph: run it alone under no_grad.
            targets = self.target_representations(target_x)
        x = self.to_network(x)
        if targets is None:
            # No graph to keep apart: input and target share one batched pass.
            both = self.backbone(torch.cat([x, self.to_network(target_x)]))
            b = x.shape[0]
            features = {tap: f[:b] for tap, f in both.items()}
            targets = [head.prepare_target(both[head.tap][b:]) for head in self.heads]
        elif self.engine == "checkpoint" and grad_to_input:
            features = torch.utils.checkpoint.checkpoint(self.backbone, x, use_reentrant=False)
        else:
            features = self.backbone(x)
        return sum(head.values(features[head.tap], t) for head, t in zip(self.heads, targets))

    def reduce(self, values: torch.Tensor) -> torch.Tensor:
        return reduce(values, self.reduction)
