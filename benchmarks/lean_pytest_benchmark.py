"""pytest-benchmark: lean vs eager forward+backward on CPU, in one run (a benchmark, not a test).

    nice python -m pytest benchmarks/lean_pytest_benchmark.py --benchmark-only \
        --benchmark-group-by=param:loss --benchmark-json=benchmarks/results/lean_pytest_benchmark_cpu.json

Random-init VGG-16, batch 2 at 128x128, target images batched in (lean) or run under no_grad (eager).
"""
import warnings

import pytest
import torch

from perfloss.engine import lean_loss, plan_for
from perfloss.heads import TapHead

LOSSES = {
    "vgg16_relu2_2_mse": [("relu2_2", "mse")],
    "vgg16_relu2_2_l1": [("relu2_2", "l1")],
    "johnson_style_4_gram": [("relu1_2", "gram"), ("relu2_2", "gram"), ("relu3_3", "gram"), ("relu4_3", "gram")],
}


@pytest.mark.parametrize("engine", ["eager", "lean"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_forward_backward(benchmark, loss, engine):
    from perfloss.backbones import get_backbone

    spec = LOSSES[loss]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_backbone("vgg16", [t for t, _ in spec])
    heads = [TapHead(t, k) for t, k in spec]
    plan = plan_for(net)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 128, requires_grad=True)
    t = torch.randn(2, 3, 128, 128)

    def eager():
        feats = net(x)
        with torch.no_grad():
            tf = net(t)
        sum(h.values(feats[h.tap], h.prepare_target(tf[h.tap])) for h in heads).mean().backward()

    def lean():
        lean_loss(plan, x, heads, target_x=t).mean().backward()

    benchmark.pedantic(eager if engine == "eager" else lean, rounds=7, warmup_rounds=1)
