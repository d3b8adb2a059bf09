"""Where one loss step's time goes, op by op, per engine: torch.profiler's self time of each op.

    python benchmarks/op_profile.py [--loss l1] [--batch 32] [--engines eager lean] [--repeat 3]
                                    [--channels-last] [--device cpu] [--threads 2]

The losses and engines are benchmarks/peak_batch_sweep.py's, at 128x128 on CPU and 256x256 on CUDA
(--size), in channels_last with --channels-last (images and weights). Each engine's step is warmed up,
then profiled --repeat times, the engines taking turns; the table gives each engine's --top ops by
median self time (CPU time on CPU, device time on CUDA), with their calls per step, and the step's
total. The profiler adds a cost to every op call, which falls more on the lean walk's many small calls
than on eager's few large ones: read it to compare ops, and peak_batch_sweep.py for the time of a step.
Writes <out>.md, .json and .csv.
"""
import argparse
import statistics
import sys
from typing import Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile

import _timing  # benchmarks/_timing.py and peak_batch_sweep.py, next to this script
from peak_batch_sweep import (LOSSES, autocast_context, build_loss, check_engines_run_on, default_size, engine_name,
                              engine_step, loss_inputs)


def self_ms_by_op(step: _timing.Step, device: torch.device) -> Dict[str, tuple]:
    """{op: (calls, self ms)} of one run of ``step`` under the profiler."""
    on_cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        step()
        _timing.sync(device)
    return {e.key: (e.count, (e.self_device_time_total if on_cuda else e.self_cpu_time_total) / 1e3)
            for e in prof.key_averages()}


def measure(args, device: torch.device) -> List[Dict]:
    steps = {}
    for engine in args.engines:
        loss = build_loss(args.loss, engine, args.size, device, args.channels_last)
        inputs = loss_inputs(args.loss, args.batch, args.size, device, args.channels_last)
        steps[engine] = engine_step(engine, loss, inputs, autocast_context(device, None))
        _timing.warm_up(steps[engine], device)
    profiles: Dict[str, List[Dict[str, tuple]]] = {engine: [] for engine in steps}
    for _ in range(args.repeat):
        for engine, step in steps.items():
            profiles[engine].append(self_ms_by_op(step, device))
    rows = []
    for engine, runs in profiles.items():
        ops = dict.fromkeys(op for run in runs for op in run)
        for op in ops:
            calls, self_ms = zip(*(run.get(op, (0, 0.0)) for run in runs))
            rows.append({"engine": engine, "op": op, "calls": statistics.median_low(calls),
                         "self_ms": statistics.median(self_ms),
                         "loss": args.loss, "batch": args.batch, "size": args.size,
                         "channels_last": args.channels_last})
    return rows


def markdown(rows: List[Dict], args, device: torch.device) -> str:
    time_kind = "device" if device.type == "cuda" else "CPU"
    layout = ", channels_last" if args.channels_last else ""
    parts = [f"# Self {time_kind} time per op of one {LOSSES[args.loss]} step, batch {args.batch}, "
             f"{args.size}x{args.size}, fp32{layout} (median of {args.repeat} profiles)"]
    for engine in args.engines:
        mine = sorted((r for r in rows if r["engine"] == engine), key=lambda r: -r["self_ms"])
        table = [(r["op"], r["calls"], f"{r['self_ms']:.1f}") for r in mine[:args.top]]
        table.append(("all ops", sum(r["calls"] for r in mine), f"{sum(r['self_ms'] for r in mine):.1f}"))
        parts += [f"## {engine}", _timing.markdown_table(("op", "calls", "self ms"), table)]
    return "\n\n".join(parts) + "\n"


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=tuple(LOSSES), default="l1")
    p.add_argument("--engines", nargs="+", type=engine_name, default=["eager", "lean"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, help="image side (default 128 on CPU, 256 on CUDA)")
    p.add_argument("--repeat", type=int, default=3, help="profiles per engine (default 3)")
    p.add_argument("--channels-last", action="store_true",
                   help="images and the network's weights in channels_last (default: contiguous NCHW)")
    p.add_argument("--top", type=int, default=8, help="ops listed per engine (default 8)")
    _timing.add_machine_arguments(p, "benchmarks/results/op_profile_<device>_<loss>_b<batch>[_channels_last]")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = _timing.machine(args)
    check_engines_run_on(device, args.engines, "op_profile")
    args.size = args.size or default_size(device)
    suffix = "_channels_last" if args.channels_last else ""
    out = args.out or f"{_timing.RESULTS}/op_profile_{device.type}_{args.loss}_b{args.batch}{suffix}"
    env = _timing.environment(device, __file__, argv)
    rows = measure(args, device)
    _timing.write_results(out, env, rows, markdown(rows, args, device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
