"""A whole training step of a real generator with a perceptual loss, per engine: peak memory, median
time, and the largest batch whose step fits a memory budget.

    python benchmarks/train_step.py [--device cpu] [--threads 2] [--budget-mib 1024]

Workloads (random weights: memory and time do not depend on them; images in [0, 1]):
  style  TransformNet + JohnsonLoss (content relu2_2; style Grams at relu1_2, relu2_2, relu3_3,
         relu4_3 of VGG-16, target set once from one style image; TV) on --size x --size images
  sr     SuperResolutionNet(factor=4) from --size/4 to --size with the VGG-19 relu1_1..relu5_1 L1
         loss against the high-resolution images (inputs: those images average-pooled by 4)
Step = generator forward, loss, backward, Adam step (lr 1e-3), zero_grad. Variants: the loss on each
engine (eager, lean with default chunking, checkpoint), and "generator alone": the same step with
out.mean() as the loss, so the loss's share of a step is its peak minus that row's.

Each variant has its own generator (same seed) and optimiser. Steps are warmed up, timed in
--repeat rounds that interleave the variants, and their peak (perfloss.engine.memory.peak_bytes:
exact allocator peak above what was allocated before the step; Adam's state exists by then) is
measured in a run of its own. Largest batch within --budget-mib: a search over measured peaks,
extrapolating lines through them (peak grows linearly with the batch; see largest_batch_within);
keep the budget below the device's memory. Writes <out>.md, .json and .csv.
"""
import argparse
import functools
import math
import sys
import warnings
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

import perfloss
from perfloss.models import SuperResolutionNet, TransformNet

import _timing  # benchmarks/_timing.py and peak_batch_sweep.py, next to this script
from peak_batch_sweep import build_loss

ENGINES = ("eager", "lean", "checkpoint")
GENERATOR_ALONE = "generator alone"
SR_FACTOR = 4
QUICK = dict(size=32, batch=2, repeat=1, budget_mib=32.0)
MAX_PEAK_MEASUREMENTS = 6  # per budget search: batches 2 and 4, then at most four predictions


class Workload(NamedTuple):
    label: str
    make_generator: Callable[[], nn.Module]
    make_loss: Callable[[str, int, torch.device], nn.Module]  # (engine, image side, device)
    make_batch: Callable[[int, int, torch.device], Tuple[torch.Tensor, torch.Tensor]]  # -> (generator input, target)


def johnson_loss(engine: str, size: int, device: torch.device) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn: not perceptually meaningful, same cost
        loss = perfloss.JohnsonLoss(weights=None, engine=engine).to(device)
    loss.set_target(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device))
    return loss


def vgg19_l1_loss(engine: str, size: int, device: torch.device) -> nn.Module:
    """The sweep's VGG-19 relu1_1..relu5_1 L1 loss."""
    return build_loss("l1", engine, size, device)


def content_batch(batch: int, size: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Style transfer: the content images are both the generator's input and the content target."""
    content = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return content, content


def super_resolution_batch(batch: int, size: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    high = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return F.avg_pool2d(high, SR_FACTOR), high


WORKLOADS = {
    "style": Workload("TransformNet + JohnsonLoss (VGG-16 content relu2_2, style at 4 taps, TV)",
                      TransformNet, johnson_loss, content_batch),
    "sr": Workload(f"SuperResolutionNet(factor={SR_FACTOR}) + VGG-19 relu1_1..relu5_1 L1",
                   lambda: SuperResolutionNet(SR_FACTOR), vgg19_l1_loss, super_resolution_batch),
}


def output_mean(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The dummy loss of the generator-alone variant."""
    return output.mean()


class Training(NamedTuple):
    generator: nn.Module
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer


def build_training(workload: Workload, variant: str, size: int, device: torch.device) -> Training:
    torch.manual_seed(0)  # every variant starts from the same generator
    generator = workload.make_generator().to(device)
    loss = output_mean if variant == GENERATOR_ALONE else workload.make_loss(variant, size, device)
    return Training(generator, loss, torch.optim.Adam(generator.parameters(), lr=1e-3))


def training_step(training: Training, inputs: torch.Tensor, target: torch.Tensor) -> _timing.Step:
    generator, loss, optimizer = training

    def step():
        loss(generator(inputs), target).backward()
        optimizer.step()
        # Dropped here rather than at the next step's start (same peak): no gradients are resident
        # between steps, so "above what was allocated before" has the same base on every measurement.
        optimizer.zero_grad(set_to_none=True)
    return step


def largest_batch_within(budget_mib: float, peak_at: Callable[[int], float]) -> Tuple[int, Dict[int, float]]:
    """The largest batch whose measured peak is within ``budget_mib`` (0 if batch 1 is not), and every
    peak measured on the way.

    Peak grows linearly with the batch. Batches 2 and 4 give the first line (not 1: on CPU a batch
    of one takes other convolution paths, without the transient weight copies of larger batches);
    each prediction is measured, and the next line runs through the largest batch that fitted and
    the nearest measured batch (the smallest over budget, else the next smaller fitting one), until
    the line predicts no larger batch, the next batch up was measured over budget, or
    MAX_PEAK_MEASUREMENTS are spent.
    """
    peaks = {2: peak_at(2)}
    if peaks[2] > budget_mib:
        peaks[1] = peak_at(1)
        return (1 if peaks[1] <= budget_mib else 0), peaks
    peaks[4] = peak_at(4)
    while len(peaks) < MAX_PEAK_MEASUREMENTS:
        fits = max(b for b, p in peaks.items() if p <= budget_mib)
        over = [b for b, p in peaks.items() if p > budget_mib]
        other = min(over) if over else max(b for b in peaks if b < fits)
        slope = (peaks[other] - peaks[fits]) / (other - fits)
        if slope <= 0:  # no growth measured: nothing to extrapolate
            break
        guess = fits + math.floor((budget_mib - peaks[fits]) / slope)
        if over:
            guess = min(guess, min(over) - 1)
        if guess <= fits:
            break
        peaks[guess] = peak_at(guess)
    return max(b for b, p in peaks.items() if p <= budget_mib), peaks


def measure_workload(name: str, args, device: torch.device, progress) -> List[Dict]:
    workload = WORKLOADS[name]
    variants = list(args.engines) + [GENERATOR_ALONE]
    trainings = {v: build_training(workload, v, args.size, device) for v in variants}

    def step_at(variant: str, batch: int) -> _timing.Step:
        return training_step(trainings[variant], *workload.make_batch(batch, args.size, device))

    steps = {v: step_at(v, args.batch) for v in variants}
    progress.set_postfix_str(f"{name}: warm-up and timing")
    for step in steps.values():
        _timing.warm_up(step, device)
    times = _timing.interleaved_medians(steps, args.repeat, device)
    peaks = {v: _timing.peak_mib(step, device) for v, step in steps.items()}
    del steps

    def peak_at(variant: str, batch: int) -> float:
        step = step_at(variant, batch)
        step()  # warm-up at the new shape
        return _timing.peak_mib(step, device)

    rows = []
    for v in variants:
        progress.set_postfix_str(f"{name}: {v}, largest batch within {args.budget_mib:g} MiB")
        largest, searched = largest_batch_within(args.budget_mib, functools.partial(peak_at, v))
        rows.append({"workload": name, "variant": v, "batch": args.batch, "size": args.size,
                     "peak_mib": peaks[v],
                     # host_ms and page_faults: see _timing.Timing
                     "median_ms": times[v].ms, "round_ms": list(times[v].round_ms),
                     "host_ms": times[v].host_ms, "page_faults": times[v].page_faults,
                     "budget_mib": args.budget_mib, "largest_batch_within_budget": largest,
                     "peak_mib_by_batch": {str(b): p for b, p in sorted(searched.items())}})
        progress.update()
    return rows


def markdown(rows: List[Dict], args) -> str:
    sections = [(f"# A training step (generator forward, loss, backward, Adam), batch {args.batch}, "
                 f"fp32, random weights (median of {args.repeat})")]
    header = ["variant", "step peak MiB", "peak above generator alone MiB", "median step ms", "page faults per step",
              "eager/this peak", "this/eager time (rounds' median, IQR)", f"largest batch within {args.budget_mib:g} MiB",
              "peaks measured (batch: MiB)"]
    for name in args.workloads:
        mine = {r["variant"]: r for r in rows if r["workload"] == name}
        alone, eager = mine[GENERATOR_ALONE], mine.get("eager", {})
        table = [[v, _timing.number(r["peak_mib"]),
                  "-" if v == GENERATOR_ALONE else _timing.number(r["peak_mib"] - alone["peak_mib"]),
                  _timing.number(r["median_ms"]), _timing.number(r["page_faults"], 0),
                  _timing.ratio(eager.get("peak_mib"), r["peak_mib"]),
                  _timing.paired_ratio(r["round_ms"], eager.get("round_ms")), r["largest_batch_within_budget"],
                  ", ".join(f"{b}: {p:.0f}" for b, p in r["peak_mib_by_batch"].items())]
                 for v, r in mine.items()]
        side = f"{args.size // SR_FACTOR} -> {args.size}" if name == "sr" else f"{args.size}"
        sections.append(f"## {WORKLOADS[name].label}, {side} px\n\n" + _timing.markdown_table(header, table))
    return "\n\n".join(sections)


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", choices=tuple(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--batch", type=int, help="batch of the timed step (default 4)")
    p.add_argument("--size", type=int, help=f"image side; the SR output's, its input is size/{SR_FACTOR} (default 256)")
    p.add_argument("--repeat", type=int, help="timed rounds (default 5)")
    p.add_argument("--budget-mib", type=float, help="memory budget of the largest-batch search (default 1024)")
    _timing.add_machine_arguments(p, "benchmarks/results/train_step_<device>")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: defaults size {QUICK['size']}, batch {QUICK['batch']}, repeat "
                        f"{QUICK['repeat']}, budget {QUICK['budget_mib']:g} MiB")
    args = p.parse_args(argv)
    if args.size is not None and args.size % SR_FACTOR:
        p.error(f"--size must be a multiple of {SR_FACTOR} (the SR workload's input is size/{SR_FACTOR})")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    from tqdm import tqdm

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = _timing.machine(args)
    defaults = QUICK if args.quick else dict(size=256, batch=4, repeat=5, budget_mib=1024.0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = args.out or f"{_timing.RESULTS}/train_step_{device.type}"

    env = _timing.environment(device, __file__, argv)
    progress = tqdm(total=len(args.workloads) * (len(args.engines) + 1), desc="train_step", unit="variant")
    rows = [row for name in args.workloads for row in measure_workload(name, args, device, progress)]
    progress.close()
    _timing.write_results(out, env, rows, markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
