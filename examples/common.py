"""What the two examples share: their command-line options, the data, and the training loop with
its progress bar, checkpoints and resume, sample grids and loss curve.

An example builds a :class:`Task` (the generator, the loss, how a batch of photographs becomes the
generator's input and the loss's target, what its sample grids show and what it measures) and hands it
to :func:`train`. Everything a run writes goes to ``--out``:

- ``checkpoint.pt``: generator, optimizer, step, random number generators and the loss curve so far,
  written atomically by :mod:`perfloss.checkpoint` (the one before is kept as ``checkpoint.pt.prev``);
  ``--resume`` continues from it;
- ``losses.csv`` (step, loss, seconds) and ``history.json`` (the same, the held-out metrics, the run's
  settings and, with ``--measure-peak``, one step's peak memory), ``loss_curve.png``;
- ``samples/step_NNNNNN.png``: the held-out images through the generator, every ``--sample-every`` steps.

Batches are a function of (``--seed``, step) alone, so a resumed run sees the batches the uninterrupted
run would have seen and ends with the same parameters.
"""
import argparse
import csv
import json
import math
import os
import pathlib
import platform
import time
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm import tqdm

from perfloss import plots
from perfloss.backbones.weights import imagenet_path
from perfloss.checkpoint import atomic_write, load_training_state, save_training_state
from perfloss.engine.memory import peak_bytes
from perfloss.images import SAMPLE_PHOTOGRAPHS, ImageFolder, center_crop, random_crop, sample_photographs

CHECKPOINT = "checkpoint.pt"


def base_parser(description: str, *, size: int, steps: int, out: str) -> argparse.ArgumentParser:
    """The options every example has; an example adds its own."""
    parser = argparse.ArgumentParser(description=description)
    data = parser.add_argument_group("data")
    data.add_argument("--images", metavar="DIR", default=None,
                      help="folder of training images (JPEG, PNG, WebP, BMP, TIFF; sub-folders included); "
                           "default: the photographs scikit-image ships (" + ", ".join(SAMPLE_PHOTOGRAPHS) + ")")
    data.add_argument("--skip-unreadable", action="store_true",
                      help="skip files of --images that cannot be decoded, with a warning naming each "
                           "(default: stop with an error naming the file)")
    data.add_argument("--size", type=int, default=size,
                      help="side of the square random crops, in pixels (default %(default)s)")
    data.add_argument("--holdout", type=int, default=2,
                      help="number of images (the first ones, in file order) kept out of training for the "
                           "sample grids and metrics (default %(default)s)")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=steps,
                       help="total optimizer steps, a resumed run's included (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=4, help="images per step (default %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    train.add_argument("--seed", type=int, default=0,
                       help="seeds the generator's initialisation and the batches (default %(default)s)")
    train.add_argument("--engine", choices=("eager", "lean"), default="lean",
                       help="perfloss's backward through the loss network: lean (exact, less memory) or eager "
                            "(plain autograd, the reference); default %(default)s")
    train.add_argument("--weights", choices=("imagenet", "random"), default="imagenet",
                       help="loss network weights: torchvision's ImageNet file from the torch hub cache, or a "
                            "seeded random network (runs offline, but its features are not perceptual); "
                            "default %(default)s")
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                       help="torch device to train on, e.g. cpu, cuda, cuda:1 (default %(default)s)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", metavar="DIR", default=out,
                        help="folder for checkpoints, samples and the loss curve (default %(default)s)")
    output.add_argument("--resume", action="store_true", help=f"continue from DIR/{CHECKPOINT}")
    output.add_argument("--sample-every", type=int, default=100, metavar="N",
                        help="write a sample grid (and measure the held-out metrics) every N steps "
                             "(default %(default)s)")
    output.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                        help="write the checkpoint and the loss curve every N steps and at the end "
                             "(default %(default)s)")
    output.add_argument("--measure-peak", action="store_true",
                        help="record the peak memory of one training step (this run's second, or its first after "
                             "--resume: Adam's state already allocated) in history.json; on CPU that step runs "
                             "under the profiler and takes longer")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace, size_multiple: int = 1) -> None:
    """parser.error (exit status 2, the option named) for values the examples cannot run with."""
    positive = ("size", "steps", "batch_size", "holdout", "sample_every", "checkpoint_every")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.size % size_multiple:
        parser.error(f"--size must be a multiple of {size_multiple}, got {args.size}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.images is not None and not os.path.isdir(args.images):
        parser.error(f"--images {args.images!r} is not a folder")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device!r} cannot be used here: {err}")


def loss_weights(choice: str, backbone: str) -> Optional[str]:
    """What to pass as the loss's ``weights``: the ImageNet file's path, or None for random weights.

    "imagenet" is resolved as perfloss does (the torch hub cache, downloaded when online); when that
    fails the run stops here, before any work, with perfloss's message and the offline alternative.
    """
    if choice == "random":
        return None
    try:
        return imagenet_path(backbone)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}\nTo run without it, pass --weights random: the loss network is then "
                         f"random, so the run exercises the training loop but learns nothing perceptual.")


def load_images(args: argparse.Namespace) -> Tuple[Sequence[torch.Tensor], torch.Tensor]:
    """(training images, held-out batch): the folder's or scikit-image's photographs, whole; the first
    ``--holdout`` of them are held out as centre crops of ``--size`` (on the CPU)."""
    if args.images is None:
        images = sample_photographs()
    else:
        images = ImageFolder(args.images, crop=None, on_error="warn" if args.skip_unreadable else "raise")
    if len(images) <= args.holdout:
        source = args.images or "scikit-image's photographs"
        raise SystemExit(f"error: {source} has {len(images)} images; --holdout {args.holdout} leaves none to train on")
    holdout = torch.stack([center_crop(images[i], args.size) for i in range(args.holdout)])
    return torch.utils.data.Subset(images, range(args.holdout, len(images))), holdout


def random_batch(images: Sequence[torch.Tensor], step: int, batch_size: int, size: int, seed: int) -> torch.Tensor:
    """Step ``step``'s batch: images drawn with replacement, one random ``size`` crop of each, all from
    a generator seeded by (seed, step), so any step's batch can be made again on resume."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    picks = torch.randint(len(images), (batch_size,), generator=generator).tolist()
    return torch.stack([random_crop(images[i], size, generator) for i in picks])


class Task(NamedTuple):
    """One example's parts for :func:`train`.

    ``pair(batch)`` -> (generator input, loss target) for a batch of photographs on the device;
    ``columns(generator, holdout)`` -> the sample grid's labelled columns;
    ``evaluate(generator, holdout)`` -> held-out metrics (name -> number), or None when it measures none.
    ``columns`` and ``evaluate`` run with the generator in eval mode under ``torch.no_grad``;
    ``loss_label`` says what the loss is on the loss curve's axis.
    """
    name: str
    generator: nn.Module
    loss_fn: nn.Module
    loss_label: str
    pair: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
    columns: Callable[[nn.Module, torch.Tensor], Dict[str, torch.Tensor]]
    evaluate: Optional[Callable[[nn.Module, torch.Tensor], Dict[str, float]]] = None


def write_history(out: pathlib.Path, history: dict) -> None:
    """losses.csv and history.json (each written whole, then renamed into place), and loss_curve.png."""
    def write_csv(path):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "loss", "seconds"])
            writer.writeheader()
            writer.writerows(history["losses"])

    atomic_write(out / "losses.csv", write_csv, keep_previous=False)
    atomic_write(out / "history.json", lambda path: pathlib.Path(path).write_text(json.dumps(history, indent=1)),
                 keep_previous=False)
    curve = ([r["step"] for r in history["losses"]], [r["loss"] for r in history["losses"]])
    plots.plot_curves(out / "loss_curve.png", {f"{history['engine']} engine": curve},
                      title=f"{history['example']}: training loss ({history['settings']})",
                      xlabel="step", ylabel=f"{history['loss']} (batch mean)", logy=True)


def in_eval_mode(generator: nn.Module, fn: Callable, *args):
    """fn(generator, *args) with the generator in eval mode (batch norm's running statistics) and no
    autograd; training mode is restored after."""
    generator.eval()
    try:
        with torch.no_grad():
            return fn(generator, *args)
    finally:
        generator.train()


def train(args: argparse.Namespace, task: Task, images: Sequence[torch.Tensor], holdout: torch.Tensor) -> dict:
    """Train ``task.generator`` with Adam on ``task.loss_fn`` for ``args.steps`` steps; return the history."""
    device = torch.device(args.device)
    out = pathlib.Path(args.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    generator = task.generator.to(device).train()
    loss_fn = task.loss_fn.to(device)
    holdout = holdout.to(device)
    optimizer = torch.optim.Adam(generator.parameters(), lr=args.lr)

    trained = {"generator": generator, "optimizer": optimizer}
    if args.resume:
        if not (out / CHECKPOINT).is_file():
            raise SystemExit(f"error: --resume: no {CHECKPOINT} in {str(out)!r}")
        history = load_training_state(out / CHECKPOINT, trained).extra["history"]
    elif (out / CHECKPOINT).is_file():
        raise SystemExit(f"error: {str(out)!r} already holds a checkpoint: pass --resume to continue it, "
                         f"or name another --out")
    else:
        history = {"example": task.name, "loss": task.loss_label, "engine": args.engine,
                   "settings": f"{args.size}x{args.size}, batch {args.batch_size}, {device.type}",
                   "args": dict(vars(args)), "torch": str(torch.__version__),
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                   "losses": [], "evaluations": []}
    start = history["losses"][-1]["step"] if history["losses"] else 0
    history["engine"] = args.engine  # a run may be resumed with the other engine

    def training_step(input, target):
        loss = loss_fn(generator(input), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    measure_at = min(args.steps, max(start + 1, 2)) if args.measure_peak else None
    bar = tqdm(range(start + 1, args.steps + 1), initial=start, total=args.steps, desc=task.name,
               unit="step", disable=args.no_progress)
    for step in bar:
        batch = random_batch(images, step, args.batch_size, args.size, args.seed).to(device)
        input, target = task.pair(batch)
        started = time.perf_counter()
        if step == measure_at:
            loss, peak = peak_bytes(training_step, input, target, device=device)
            history["peak_memory"] = {"step": step, "bytes": peak, "MiB": round(peak / 2 ** 20, 2),
                                      "measured": "perfloss.engine.memory.peak_bytes: allocator peak above "
                                                  "what was allocated before the step"}
        else:
            loss = training_step(input, target)
        value = loss.item()  # waits for the device, so the time below is the step's
        seconds = time.perf_counter() - started
        if not math.isfinite(value):
            raise SystemExit(f"error: the loss is {value} at step {step}; lower --lr")
        history["losses"].append({"step": step, "loss": value, "seconds": seconds})
        bar.set_postfix(loss=f"{value:.4g}", s_per_step=f"{seconds:.2f}")
        last = step == args.steps
        if step % args.sample_every == 0 or last:
            columns = in_eval_mode(generator, task.columns, holdout)
            plots.image_grid(out / "samples" / f"step_{step:06d}.png", columns,
                             title=f"{task.name}, step {step} (held-out images)")
        if task.evaluate is not None and (step % args.sample_every == 0 or last):
            metrics = in_eval_mode(generator, task.evaluate, holdout)
            history["evaluations"].append({"step": step, **metrics})
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if step % args.checkpoint_every == 0 or last:
            save_training_state(out / CHECKPOINT, trained, step, extra={"history": history})
            write_history(out, history)
    bar.close()
    ran = history["losses"][start:]
    if ran:
        median = sorted(r["seconds"] for r in ran)[len(ran) // 2]
        print(f"{task.name}: steps {start + 1}-{args.steps} done, median {median:.3f} s per step "
              f"({args.engine} engine); results in {str(out)!r}")
    else:
        print(f"{task.name}: the checkpoint is at step {start}, --steps {args.steps}: nothing to do")
    return history
