"""The lean engine: exact backward through a frozen network, keeping bits instead of activations.

    from perfloss.engine import plan_for, lean_loss, compile_plan
    plan = plan_for(backbone)                 # cached per backbone: compile_plan(backbone, backbone.taps)
    plan.is_lean, print(plan.report())        # which ops are lean, what each keeps for backward
    values = lean_loss(plan, x, heads, target_x=y)          # (B,), differentiable in x (once)
    values = lean_loss(plan, x, heads, targets=cached)      # cached = target_features(plan, style, heads)

Modules, each importing only those below it:

- :mod:`perfloss.engine.rules`: one rule per op kind (conv, relu, maxpool, ...): how it is recognised
  in an fx graph, what its forward keeps, its backward.
- :mod:`perfloss.engine.plan`: ``compile_plan(module, taps)`` traces a frozen module with torch.fx;
  taps are returned dict keys, fx node names or module paths. ``plan_for(backbone)`` caches it.
- :mod:`perfloss.engine.taps`: the heads at a tap and the gradient kept there (2-bit signs for a lone
  L1 head).
- :mod:`perfloss.engine.walk`: the one plan walker (target pass, input pass, memory estimate) and
  the backward walk, both chunk by chunk over the batch (``chunk_size_for``: the chunk a memory
  budget allows; ``ChunkRecording``: each chunk's walk recorded once as a CUDA graph and replayed,
  where ``CHUNK_RECORDING_DEVICES`` says).
- :mod:`perfloss.engine.lean_op`: the ``perfloss::lean_forward`` / ``perfloss::lean_backward`` custom
  ops (used for fully lean plans), so ``torch.compile(fullgraph=True)`` traces through them.
- :mod:`perfloss.engine.lean`: ``lean_loss`` / ``target_features`` / ``LeanLossFunction``.
- :mod:`perfloss.engine.memory`: memory held for backward (graph walk, saved-tensor hooks, and the
  lean figure from the walker on meta tensors) and the exact peak of a step (``peak_bytes``).
"""
from perfloss.engine.lean import LeanLossFunction, lean_loss, target_features
from perfloss.engine.plan import Plan, Step, compile_plan, plan_for
from perfloss.engine.rules import LEAN_KINDS
from perfloss.engine.walk import DOUBLE_BACKWARD_ERROR, MEMORY_BUDGETS, check_chunk_size, chunk_size_for

__all__ = ["Plan", "Step", "compile_plan", "plan_for", "lean_loss", "target_features", "LEAN_KINDS",
           "LeanLossFunction", "DOUBLE_BACKWARD_ERROR", "MEMORY_BUDGETS", "check_chunk_size", "chunk_size_for"]
