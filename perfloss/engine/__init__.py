"""The lean engine: exact backward through a frozen network, keeping bits instead of activations.

    from perfloss.engine import plan_for, lean_loss, compile_plan
    plan = plan_for(backbone)                 # cached per backbone: compile_plan(backbone, backbone.taps)
    plan.is_lean, print(plan.report())        # which ops are lean, what each keeps for backward
    values = lean_loss(plan, x, heads, target_x=y)          # (B,), differentiable in x (once)
    values = lean_loss(plan, x, heads, targets=cached)      # cached = target_features(plan, style, heads)

- :mod:`perfloss.engine.plan`: ``compile_plan(module, taps)`` traces a frozen module with torch.fx;
  taps are returned dict keys, fx node names or module paths. ``plan_for(backbone)`` caches it.
- :mod:`perfloss.engine.lean`: ``lean_loss`` / ``target_features``; the forward keeps 1-bit ReLU masks,
  2/4/8-bit max-pool codes and one gradient per tapped node (2-bit signs for a lone L1 head).
- :mod:`perfloss.engine.lean_op`: the same as ``perfloss::lean_forward`` / ``perfloss::lean_backward``
  custom ops (used for fully lean plans), so ``torch.compile(fullgraph=True)`` traces through it.
- :mod:`perfloss.engine.memory`: memory held for backward (graph walk, saved-tensor hooks, analytic).
"""
from perfloss.engine.lean import DOUBLE_BACKWARD_ERROR, LeanLossFunction, lean_loss, target_features
from perfloss.engine.plan import LEAN_KINDS, Plan, Step, compile_plan, plan_for

__all__ = ["Plan", "Step", "compile_plan", "plan_for", "lean_loss", "target_features", "LEAN_KINDS",
           "LeanLossFunction", "DOUBLE_BACKWARD_ERROR"]
