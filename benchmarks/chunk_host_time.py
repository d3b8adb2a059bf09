"""The host time one chunk of the lean walk costs: Python steps and op calls, with the compute taken away.

    python benchmarks/chunk_host_time.py [--device cpu] [--threads 1] [--distance l1|mse] [--graphs]

The network is VGG-19's layers up to relu5_1 at 1/16 of their width (4 to 32 channels), tapped at
relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 with one --distance head each, on 16x16 images: its
convolutions cost next to nothing, so what chunking adds is the walk's own cost. Each --chunks size
runs batch --batch (default 16) with target images per sample, in both of the walk's ways
(``split``: a no_grad pass of their own; ``ride``: in each chunk's batch; see
perfloss.engine.walk.SPLIT_TARGET_PASS_DEVICES), timed in --repeat interleaved rounds. The table
gives the median step, its host part (until the Python call returned; on CUDA, before the GPU
synchronised) and, against the largest chunk size, the milliseconds each extra chunk adds.
On a GPU, compare that per-chunk cost with a chunk's GPU time in benchmarks/peak_batch_sweep.py to see
whether small chunks are launch-bound; --graphs adds both ways with each chunk's walk recorded as a
CUDA graph and replayed (split+graphs, ride+graphs), what one replay per chunk leaves of that cost.
Writes <out>.md, .json and .csv.
"""
import argparse
import sys
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from perfloss import cuda_graphs
from perfloss.engine import compile_plan, lean_loss
from perfloss.heads import TapHead

import _timing  # benchmarks/_timing.py and peak_batch_sweep.py, next to this script
from peak_batch_sweep import RECORDED, TARGET_PASSES, chunk_recording, target_pass

# VGG-19's convolutions up to relu5_1 ("M": a 2x2 max pool), 1/16 of their width
NARROW_VGG19 = (4, 4, "M", 8, 8, "M", 16, 16, 16, 16, "M", 32, 32, 32, 32, "M", 32)
TAPPED_RELUS = (0, 2, 4, 8, 12)  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 among its ReLUs
SIZE = 16


def narrow_vgg19() -> nn.Sequential:
    layers, channels = [], 3
    for width in NARROW_VGG19:
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers).eval().requires_grad_(False)


def measure(args, device: torch.device) -> List[Dict]:
    torch.manual_seed(0)
    net = narrow_vgg19().to(device)
    relus = [str(i) for i, m in enumerate(net) if isinstance(m, nn.ReLU)]
    taps = [relus[k] for k in TAPPED_RELUS]
    plan = compile_plan(net, taps)
    heads = [TapHead(t, args.distance) for t in taps]
    x = torch.rand(args.batch, 3, SIZE, SIZE, device=device, requires_grad=True)
    target = torch.rand(args.batch, 3, SIZE, SIZE, device=device)

    def step_of(chunk: int, way: str):
        def step():
            with target_pass(device, way.removesuffix(RECORDED)), chunk_recording(device, way.endswith(RECORDED)):
                lean_loss(plan, x, heads, target_x=target, chunk_size=chunk).sum().backward()
            x.grad = None
        return step

    ways = list(TARGET_PASSES) + ([w + RECORDED for w in TARGET_PASSES] if args.graphs else [])
    steps = {(way, chunk): step_of(chunk, way) for way in ways for chunk in args.chunks}
    for step in steps.values():
        _timing.warm_up(step, device)
    times = _timing.interleaved_medians({f"{w}:{c}": s for (w, c), s in steps.items()}, args.repeat, device)
    rows = []
    for way, chunk in steps:
        t = times[f"{way}:{chunk}"]
        rows.append({"target_pass": way, "chunk_size": chunk, "chunks": -(-args.batch // chunk), "batch": args.batch,
                     "size": SIZE, "distance": args.distance, "median_ms": t.ms, "host_ms": t.host_ms})
    return rows


def markdown(rows: List[Dict], args) -> str:
    largest = max(args.chunks)
    base = {r["target_pass"]: r for r in rows if r["chunk_size"] == largest}
    table = []
    for r in rows:
        extra = r["chunks"] - base[r["target_pass"]]["chunks"]
        per_chunk = (r["median_ms"] - base[r["target_pass"]]["median_ms"]) / extra if extra else None
        table.append([r["target_pass"], r["chunk_size"], r["chunks"], _timing.number(r["median_ms"], 2),
                      _timing.number(r["host_ms"], 2), _timing.number(per_chunk, 3)])
    header = ["target images", "chunk size", "chunks", "median ms", "host ms", f"ms per chunk beyond chunks of {largest}"]
    return (f"# Host time of the lean walk's chunks: VGG-19 to relu5_1 at 1/16 width, {SIZE}x{SIZE}, batch "
            f"{args.batch}, five {args.distance} taps (median of {args.repeat})\n\n"
            + _timing.markdown_table(header, table))


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--distance", choices=("l1", "mse"), default="l1")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--chunks", nargs="+", type=int, help="chunk sizes (default 1 2 4 and the batch)")
    p.add_argument("--repeat", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--graphs", action="store_true",
                   help=f"each way also with its chunks recorded as CUDA graphs and replayed ({RECORDED}; CUDA only)")
    _timing.add_machine_arguments(p, "benchmarks/results/chunk_host_time_<device>")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = _timing.machine(args)
    if args.graphs and device.type not in cuda_graphs.CAPTURE:
        raise SystemExit("chunk_host_time: --graphs records CUDA graphs: it needs --device cuda")
    args.chunks = sorted(set(args.chunks or [c for c in (1, 2, 4) if c < args.batch] + [args.batch]))
    out = args.out or f"{_timing.RESULTS}/chunk_host_time_{device.type}"
    env = _timing.environment(device, __file__, argv)
    rows = measure(args, device)
    _timing.write_results(out, env, rows, markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
