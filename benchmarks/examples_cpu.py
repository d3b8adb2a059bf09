"""What a user of the two examples sees: a short run of each with the eager and the lean engine.

    python benchmarks/examples_cpu.py [--steps 200] [--size 128] [--batch-size 4] [--threads 2]

Runs ``examples/style_transfer.py`` and ``examples/super_resolution.py`` (through their ``main``) for
``--steps`` steps per engine, same seed, random loss-network weights unless ``--weights imagenet``
(no ImageNet file on this project's machines), one step's allocator peak measured (``--measure-peak``).
Writes to ``benchmarks/results/``:

- ``examples_<device>.{md,json}``: per example and engine, the median step time, the measured peak,
  the final loss, and the largest difference between the two engines' loss curves (over the first
  steps and over all);
- ``examples_<device>_<example>_curves.png``: both engines' loss curves on one plot;
- ``examples_<device>_<example>_samples.png``: the lean run's last sample grid (held-out images).

The runs' own folders (checkpoints and all) go to ``--work`` (default: a temporary folder).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from typing import Dict, List, Optional

import torch

from perfloss import plots

import _timing  # benchmarks/_timing.py, next to this script

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import style_transfer  # noqa: E402
import super_resolution  # noqa: E402

EXAMPLES = {"style_transfer": style_transfer, "super_resolution": super_resolution}
ENGINES = ("eager", "lean")
# The curves agree to rounding at first; over many Adam steps fp32 rounding differences between the
# engines' summation orders can grow until the trajectories part: both gaps are reported.
EARLY_STEPS = 20


def run(example: str, engine: str, args, work: str) -> Dict:
    out = os.path.join(work, f"{example}_{engine}")
    argv = ["--steps", str(args.steps), "--size", str(args.size), "--batch-size", str(args.batch_size),
            "--engine", engine, "--weights", args.weights, "--device", args.device, "--measure-peak",
            "--sample-every", str(args.steps), "--checkpoint-every", str(args.steps), "--no-progress", "--out", out]
    if EXAMPLES[example].main(argv) != 0:
        raise SystemExit(f"{example} ({engine}) failed")
    with open(os.path.join(out, "history.json")) as f:
        history = json.load(f)
    history["out"] = out
    return history


def summarise(example: str, runs: Dict[str, Dict]) -> List[Dict]:
    curves = {e: [r["loss"] for r in h["losses"]] for e, h in runs.items()}
    gaps = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(curves["lean"], curves["eager"])]
    rows = []
    for engine, h in runs.items():
        seconds = [r["seconds"] for r in h["losses"][1:]]  # the first step warms the allocator and oneDNN
        rows.append({"example": example, "engine": engine, "settings": h["settings"], "steps": len(h["losses"]),
                     "median_s_per_step": statistics.median(seconds), "peak_mib": h["peak_memory"]["MiB"],
                     "final_loss": curves[engine][-1], "max_relative_curve_gap": max(gaps),
                     "max_relative_curve_gap_first_20_steps": max(gaps[:EARLY_STEPS]),
                     "evaluations": h["evaluations"][-1:] if h["evaluations"] else []})
    return rows


def markdown(rows: List[Dict]) -> str:
    header = ["example", "engine", "settings", "steps", "median s / step", "step peak MiB", "final loss",
              f"lean vs eager loss, max relative gap: first {EARLY_STEPS} steps / all", "held-out metrics (last)"]
    table = []
    for r in rows:
        metrics = ", ".join(f"{k} {v:.4g}" for e in r["evaluations"] for k, v in e.items() if k != "step")
        table.append([r["example"], r["engine"], r["settings"], str(r["steps"]), f"{r['median_s_per_step']:.3f}",
                      f"{r['peak_mib']:.1f}", f"{r['final_loss']:.5g}",
                      f"{r['max_relative_curve_gap_first_20_steps']:.1e} / {r['max_relative_curve_gap']:.1e}",
                      metrics or "-"])
    return _timing.markdown_table(header, table)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", nargs="+", choices=tuple(EXAMPLES), default=list(EXAMPLES))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--weights", choices=("imagenet", "random"), default="random")
    p.add_argument("--work", help="folder for the runs' outputs (default: a temporary folder, removed after)")
    _timing.add_machine_arguments(p, "benchmarks/results/examples_<device>")
    args = p.parse_args(argv)
    device = _timing.machine(args)
    args.device = device.type
    out = args.out or f"{_timing.RESULTS}/examples_{device.type}"
    work = args.work or tempfile.mkdtemp(prefix="perfloss_examples_")
    rows = []
    try:
        for example in args.examples:
            runs = {engine: run(example, engine, args, work) for engine in ENGINES}
            rows += summarise(example, runs)
            curves = {f"{engine} engine": ([r["step"] for r in h["losses"]], [r["loss"] for r in h["losses"]])
                      for engine, h in runs.items()}
            plots.plot_curves(f"{out}_{example}_curves.png", curves, logy=True,
                              title=f"{example.replace('_', ' ')}: eager vs lean, same seed\n"
                                    f"({runs['lean']['settings']})",
                              xlabel="step", ylabel="training loss (batch mean)")
            samples = sorted(os.listdir(os.path.join(runs["lean"]["out"], "samples")))
            shutil.copyfile(os.path.join(runs["lean"]["out"], "samples", samples[-1]), f"{out}_{example}_samples.png")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    env = _timing.environment(device, __file__, argv)
    _timing.write_results(out, env, rows, markdown(rows))
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
