"""What benchmarks/peak_batch_sweep.py and benchmarks/train_step.py share: the device, a step's peak
memory and interleaved median time, the environment, and the results files.

Memory is always the allocator's exact peak during one step above what was allocated before it
(``perfloss.engine.memory.peak_bytes``: CUDA ``max_memory_allocated``, CPU the profiler's allocator
events), never RSS. The CPU figure needs a profiled run, so time is measured in other runs.
"""
import csv
import json
import os
import resource
import shlex
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from perfloss.bench import environment as perfloss_environment
from perfloss.engine.memory import MiB, peak_bytes

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

Step = Callable[[], None]


def pick_device(name: Optional[str]) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def add_machine_arguments(p, out_default: str) -> None:
    """The options every sweep script shares: --device, --threads, --out (``out_default`` in its help)."""
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", help=f"results path without extension (default {out_default})")


def machine(args) -> torch.device:
    """The device of ``--device``, with ``--threads`` applied."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(step: Step, device: torch.device) -> float:
    """Run ``step`` once untimed (compilation, lazily built state, optimiser state happen there), then
    once timed; return that second run's seconds."""
    step()
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


class Timing(NamedTuple):
    """Median milliseconds of a step: until its work is done (``ms``), and until its Python call
    returned (``host_ms``, before the device synchronised). On CUDA a step whose host time is close to
    its whole time is bound by the host's issuing of kernels, not by the GPU; on CPU the two agree.
    ``page_faults``: the median minor page faults of the process per step. On CPU each one is a fresh
    page the C allocator took from the system: with its default settings glibc's malloc maps large
    buffers afresh and unmaps them when freed (a 16 MiB tensor allocated and freed in a loop faults in
    all 4096 of its pages every time, measured), so a step whose buffers are large touches new zeroed
    pages each time, which can cost as much time as its arithmetic. ``round_ms``: each round's ms, in
    round order, to pair with another step's rounds (:func:`paired_ratio`)."""

    ms: float
    host_ms: float
    page_faults: float
    round_ms: Tuple[float, ...]


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved_medians(steps: Dict[str, Step], repeat: int, device: torch.device) -> Dict[str, Timing]:
    """Median times of each (warmed-up) step over ``repeat`` rounds; each round runs every step once,
    so drifts of a shared machine's load hit all of them alike, and every other round runs them in
    reverse order, so that no step always follows the same one (whose freed memory, cache contents and
    clock state it would inherit)."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    host: Dict[str, List[float]] = {name: [] for name in steps}
    faults: Dict[str, List[int]] = {name: [] for name in steps}
    order = list(steps.items())
    for round_index in range(repeat):
        for name, step in (order if round_index % 2 == 0 else order[::-1]):
            sync(device)
            faults_before = _minor_faults()
            start = time.perf_counter()
            step()
            host[name].append(time.perf_counter() - start)
            sync(device)
            times[name].append(time.perf_counter() - start)
            faults[name].append(_minor_faults() - faults_before)
    return {name: Timing(1e3 * statistics.median(times[name]), 1e3 * statistics.median(host[name]),
                         statistics.median(faults[name]), tuple(1e3 * t for t in times[name])) for name in steps}


def paired_ratio(numerator_ms: Optional[Sequence[float]], denominator_ms: Optional[Sequence[float]]) -> str:
    """The median of the rounds' ratios of two steps timed together (``Timing.round_ms``), with their
    interquartile range when there are 4 rounds or more: "1.02 (0.98-1.05)". A pair of steps drifts
    together with the machine's load, so the spread of their ratio says how far the median can be
    trusted, which the ratio of two medians does not."""
    if not numerator_ms or not denominator_ms:
        return "-"
    ratios = [a / b for a, b in zip(numerator_ms, denominator_ms)]
    text = f"{statistics.median(ratios):.2f}"
    if len(ratios) >= 4:
        low, _, high = statistics.quantiles(ratios, n=4)
        text += f" ({low:.2f}-{high:.2f})"
    return text


def peak_mib(step: Step, device: torch.device) -> float:
    """The exact allocator peak of one (warmed-up) run of ``step``, MiB above what was allocated before."""
    return peak_bytes(step, device=device)[1] / MiB


def environment(device: torch.device, script: str, argv: Sequence[str]) -> Dict[str, str]:
    """Date, versions, threads, device and the exact command that reproduces the run."""
    env = perfloss_environment(device.type)
    env["device"] = device.type
    env["command"] = shlex.join(["python", os.path.join("benchmarks", os.path.basename(script)), *argv])
    return env


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    return f"{numerator / denominator:.2f}" if numerator and denominator else "-"


def number(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_results(out: str, env: Dict[str, str], rows: List[Dict], markdown: str) -> List[str]:
    """``out``.json (environment and rows), ``out``.csv (rows with the environment on each) and
    ``out``.md (the markdown, under a header naming the command and environment); prints the
    markdown and their paths, returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump({"environment": env, "results": rows}, f, indent=2)
    fields = list(dict.fromkeys(key for row in rows for key in row)) + list(env)
    with open(out + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            cells = {**row, **env}
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in cells.items()})
    with open(out + ".md", "w") as f:
        f.write(f"`{env['command']}`\n\n" + ", ".join(f"{k} {v}" for k, v in env.items() if k != "command")
                + "\n\n" + markdown + "\n")
    paths = [out + ext for ext in (".json", ".csv", ".md")]
    print(markdown)
    print("wrote", ", ".join(paths))
    return paths
