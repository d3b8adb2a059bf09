"""Memory of a perceptual loss on each network of the loss-network study (Pihlgren et al. 2023), lean
engine vs eager autograd.

    python benchmarks/network_memory.py [--size 128] [--batch 4] [--threads 2] [--only NAME ...]

Per network: ``PerceptualLoss(network, [deepest study tap], distance="mse", weights=None)`` on each
engine, fp32, CPU, random weights (memory does not depend on them), images in [0, 1] of --size (or the
network's smallest input when that is larger). Two figures per engine:

* held: the bytes the loss's autograd graph keeps for backward after the forward
  (``perfloss.engine.memory.graph_saved_bytes``; frozen weights and the images excluded);
* peak: the allocator's exact peak during forward + backward above what was allocated before
  (``perfloss.engine.memory.peak_bytes``, the figure every benchmark here uses; never RSS).

EfficientNet's plans keep SiLU / sigmoid gate / gate product steps as fallbacks (what eager keeps);
the table gives each plan's fallback count. Writes <out>.md, .json and .csv.
"""
import argparse
import sys
import time
import warnings

import torch

import perfloss
from perfloss.backbones import study_taps
from perfloss.engine import plan_for
from perfloss.engine.memory import MiB, graph_saved_bytes

import _timing  # benchmarks/_timing.py, next to this script

NETWORKS = ["alexnet", "vgg11", "vgg16", "vgg16_bn", "vgg19", "resnet18", "resnet50", "resnext50_32x4d",
            "densenet121", "googlenet", "inception_v3", "squeezenet1_1", "efficientnet_b0", "efficientnet_b7"]
ENGINES = ("eager", "lean")


def measure(name: str, size: int, batch: int, device: torch.device) -> dict:
    tap = study_taps(name)[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn: not perceptually meaningful, same memory
        losses = {e: perfloss.PerceptualLoss(name, [tap], distance="mse", weights=None, engine=e).to(device)
                  for e in ENGINES}
    side = max(size, losses["lean"].backbone.min_input_size())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, side, side, generator=gen).to(device).requires_grad_(True)
    t = torch.rand(batch, 3, side, side, generator=gen).to(device)
    row = dict(network=name, tap=tap, size=side, batch=batch,
               fallbacks=len(plan_for(losses["lean"].backbone).fallbacks))
    for engine, loss in losses.items():
        exclude = list(loss.parameters()) + list(loss.buffers()) + [x, t]
        value = loss(x, t)
        row[f"{engine}_held_mib"] = graph_saved_bytes(value, exclude=exclude) / MiB
        del value

        def step():
            torch.autograd.grad(loss(x, t), x)

        step()  # warm-up: plans, caches
        row[f"{engine}_peak_mib"] = _timing.peak_mib(step, device)
    return row


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--only", nargs="*", choices=NETWORKS, help="networks to measure (default: all 14)")
    _timing.add_machine_arguments(p, "benchmarks/results/network_memory_<device>")
    args = p.parse_args(argv)
    device = _timing.machine(args)
    rows = []
    start = time.perf_counter()
    for name in args.only or NETWORKS:
        row = measure(name, args.size, args.batch, device)
        rows.append(row)
        print(f"{name:<16} {row['tap']:<14} held eager {row['eager_held_mib']:8.1f} lean {row['lean_held_mib']:7.1f} "
              f"MiB | peak eager {row['eager_peak_mib']:8.1f} lean {row['lean_peak_mib']:7.1f} MiB", flush=True)
    env = _timing.environment(device, __file__, argv)
    env["seconds"] = f"{time.perf_counter() - start:.0f}"
    table = _timing.markdown_table(
        ["network", "tap (deepest study tap)", "input", "held eager MiB", "held lean MiB", "held eager/lean",
         "peak eager MiB", "peak lean MiB", "peak eager/lean", "fallback steps"],
        [[r["network"], r["tap"], f"{r['batch']}x3x{r['size']}x{r['size']}", _timing.number(r["eager_held_mib"]),
          _timing.number(r["lean_held_mib"]), _timing.ratio(r["eager_held_mib"], r["lean_held_mib"]),
          _timing.number(r["eager_peak_mib"]), _timing.number(r["lean_peak_mib"]),
          _timing.ratio(r["eager_peak_mib"], r["lean_peak_mib"]), r["fallbacks"]] for r in rows])
    heading = (f"# Memory of an MSE perceptual loss at each study network's deepest study tap, fp32, "
               f"{device.type}\n\nheld: kept for backward after the forward; peak: allocator peak of forward + "
               f"backward above the start.\n\n")
    out = args.out or f"benchmarks/results/network_memory_{device.type}"
    _timing.write_results(out, env, rows, heading + table)
    return rows


if __name__ == "__main__":
    main()
