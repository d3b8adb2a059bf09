"""CPU time: lean vs eager (and checkpoint) forward+backward of perceptual losses.

    nice python benchmarks/bench_lean.py [--size 128] [--batch 2] [--reps 7] [--out benchmarks/results/lean_time_cpu]

Losses (random-init VGG-16, target images in the batch): eager = backbone + heads through autograd;
lean = perfloss.engine.lean_loss; checkpoint = torch.utils.checkpoint around the eager backbone.
Median wall time of forward+backward over --reps runs after one warm-up, the variants interleaved
in one run. The lean engine's ops alone, per implementation: benchmarks/bench_ops.py.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch
from torch.utils.checkpoint import checkpoint

from perfloss.backbones import get_backbone
from perfloss.engine import lean_loss, plan_for
from perfloss.heads import TapHead

LOSSES = [
    ("VGG-16 relu2_2 MSE", [("relu2_2", "mse")]),
    ("VGG-16 relu2_2 L1", [("relu2_2", "l1")]),
    ("Johnson style (4 Gram taps)", [("relu1_2", "gram"), ("relu2_2", "gram"), ("relu3_3", "gram"),
                                     ("relu4_3", "gram")]),
]


def _eager(net, heads, x, t, use_checkpoint=False):
    feats = checkpoint(net, x, use_reentrant=False) if use_checkpoint else net(x)
    with torch.no_grad():
        tf = net(t)
    return sum(h.values(feats[h.tap], h.prepare_target(tf[h.tap])) for h in heads)


def _time(fn, reps):
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_losses(size, batch, reps):
    rows = []
    for name, spec in LOSSES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = get_backbone("vgg16", [t for t, _ in spec])
        heads = [TapHead(t, k) for t, k in spec]
        plan = plan_for(net)
        x = torch.randn(batch, 3, size, size, requires_grad=True)
        t = torch.randn(batch, 3, size, size)

        variants = {
            "eager": lambda: _eager(net, heads, x, t).mean().backward(),
            "lean": lambda: lean_loss(plan, x, heads, target_x=t).mean().backward(),
            "checkpoint": lambda: _eager(net, heads, x, t, True).mean().backward(),
        }
        times = {k: [] for k in variants}
        for k, fn in variants.items():
            fn()  # warm-up
        for _ in range(reps):  # interleaved
            for k, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = dict(loss=name, **{f"{k}_ms": 1e3 * v for k, v in med.items()},
                   lean_over_eager=med["lean"] / med["eager"], checkpoint_over_eager=med["checkpoint"] / med["eager"])
        rows.append(row)
        print(f"{name:<32} eager {row['eager_ms']:8.1f} ms  lean {row['lean_ms']:8.1f} ms "
              f"(x{row['lean_over_eager']:.2f})  checkpoint {row['checkpoint_ms']:8.1f} ms", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/lean_time_cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    losses = bench_losses(args.size, args.batch, args.reps)
    meta = dict(device=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, python=sys.version.split()[0], size=args.size, batch=args.batch,
                reps=args.reps, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command="python benchmarks/bench_lean.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(meta=meta, losses=losses), f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(f"# CPU time, forward+backward, batch {args.batch}, {args.size}x{args.size} fp32, "
                f"{meta['threads']} threads (median of {args.reps})\n\n`{meta['command']}`, torch {meta['torch']}, "
                f"{meta['date']}\n\n| loss | eager ms | lean ms | lean/eager | checkpoint ms |\n|---|---|---|---|---|\n")
        for r in losses:
            f.write(f"| {r['loss']} | {r['eager_ms']:.1f} | {r['lean_ms']:.1f} | {r['lean_over_eager']:.2f} | "
                    f"{r['checkpoint_ms']:.1f} |\n")


if __name__ == "__main__":
    main()
