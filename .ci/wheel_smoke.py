"""Smoke test of an installed perfloss wheel (run by .ci/wheel_smoke.sh in a fresh venv): the extension
loads, backend_info() reports it, and one lean loss forward and backward equals the eager one."""
import os
import sys

import torch

import perfloss

assert "site-packages" in perfloss.__file__, f"perfloss imported from {perfloss.__file__}, not the installed wheel"
info = perfloss.backend_info()
print("perfloss", perfloss.__version__, "from", os.path.dirname(perfloss.__file__), "on Python", sys.version.split()[0])
print("extension:", info["_extension"])
assert info["_extension"]["perfloss._C"] == "loaded", info["_extension"]
assert info["relu_mask"]["cpu"] == "cpp" and info["feature_distance"]["cpu"] == "cpp", info

torch.manual_seed(0)
x = torch.rand(2, 3, 48, 48, requires_grad=True)
y = torch.rand(2, 3, 48, 48)
values, grads = [], []
for engine in ("eager", "lean"):
    loss = perfloss.PerceptualLoss("vgg16", ["relu1_2", "relu2_2"], weights=None, engine=engine)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value, x)
    values.append(value.detach())
    grads.append(grad)
    print(f"{engine}: loss {value.item():.6g}, |grad| {grad.norm().item():.6g}")
torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-7)
torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-8)
print("wheel smoke test passed")
