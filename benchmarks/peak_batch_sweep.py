"""Peak memory and time of one loss forward+backward step against batch size, per engine.

    python benchmarks/peak_batch_sweep.py [--device cpu] [--threads 2] [--autocast bfloat16]
                                          [--target-pass split|ride] [--channels-last]

Losses (random weights: memory and time do not depend on them; images in [0, 1]):
  content  VGG-16 relu2_2 MSE            PerceptualLoss("vgg16", ["relu2_2"])
  l1       VGG-19 relu1_1..relu5_1 L1    PerceptualLoss("vgg19", [5 taps], distance="l1")
  style    Johnson et al.'s style loss   StyleLoss("vgg16"), set_target of one style image
  lpips    LPIPS-VGG                     LPIPS(net="vgg", normalize=True)
Engines: eager, lean (default chunking: chunk from its memory budget), lean:N (lean in chunks of N
samples, to tune the budget), checkpoint (torch.utils.checkpoint of the backbone), compile
(torch.compile of the eager loss). A lean engine may end in +onelevel, then in +graphs
(lean+onelevel, lean:1+graphs, lean+onelevel+graphs). +onelevel runs every step in the first level's
chunks, with no deeper levels (perfloss.engine.walk.levels_for), to weigh what the levels cost in
peak against what they save in time. +graphs (CUDA only) records each chunk's walk as a CUDA graph
and replays it (perfloss.engine.walk.ChunkRecording); its peak adds the recordings' memory pools,
which it holds between steps.

--target-pass, to compare the lean walk's two ways with target images on one device: ``split`` (their
own no_grad pass, chunk by chunk, and the deeper levels of perfloss.engine.walk.levels_for: CPUs'
default) or ``ride`` (in each chunk's batch with its input images, one level: GPUs' default). On a CPU,
``ride`` with lean:N gives the peak of the CUDA schedule in chunks of N (the allocators differ, and
cuDNN's workspaces are not modelled).

--channels-last puts the images and the network's weights in channels_last, as a user whose generator
works in that layout has them; every engine then runs in it.

For each loss and batch, every engine's step is warmed up (compile compiles there), then timed
once as a guard: a step over --max-seconds-per-step is skipped, and so are that loss and engine at
larger batches (noted in the table). The median time comes from --repeat rounds that interleave
the engines (in reverse order every other round); a lean engine's time against eager's is the median
of the rounds' ratios, with their interquartile range from 4 rounds on. The peak
(perfloss.engine.memory.peak_bytes: exact allocator peak above what was allocated before the step)
comes from a run of its own. On CUDA the table also gives each engine's host
ms: the median time until the step's Python call returned, before the GPU synchronised (a lean
engine in small chunks whose host time is about its whole time is bound by issuing kernels). Under
each table: every engine's median page faults per step (fresh pages from the system: on CPU, time
spent because glibc's malloc gives large buffers back; _timing.Timing). To time without that, keep
malloc's memory: MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 python ...
(the results' environment records the setting).
Writes <out>.md, .json, .csv and .png (peak MiB against batch, one line per engine, one panel per
loss).
"""
import argparse
import contextlib
import sys
from typing import Dict, List, Optional, Tuple

import torch

from perfloss import bench, cuda_graphs, plots
from perfloss.engine import memory, plan_for, walk
from perfloss.kernels.common import memory_format_of

import _timing  # benchmarks/_timing.py, next to this script

VGG19_FIVE_TAPS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
LOSSES = {
    "content": "VGG-16 relu2_2 MSE",
    "l1": "VGG-19 relu1_1..relu5_1 L1",
    "style": "Johnson style (VGG-16 Grams)",
    "lpips": "LPIPS-VGG",
}
ENGINES = ("eager", "lean", "checkpoint", "compile")
BATCHES = (1, 2, 4, 8, 16, 32)
QUICK = dict(size=32, batches=(1, 2), repeat=1)
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
TARGET_PASSES = ("split", "ride")
TARGET_PASS_WORDS = {"split": "a no_grad pass of their own per chunk, deeper levels in larger chunks",
                     "ride": "in each chunk's batch with its input images, one level"}


def autocast_context(device: torch.device, dtype_name: Optional[str]):
    """A factory of the context a step's forward runs in: torch.autocast to ``dtype_name``, or nothing."""
    if dtype_name is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=AUTOCAST_DTYPES[dtype_name])


def precision_label(autocast: Optional[str]) -> str:
    return f"autocast {autocast}" if autocast else "fp32"


def setting_label(args) -> str:
    """The precision, and the layout when it is channels_last: for titles."""
    return precision_label(args.autocast) + (", channels_last" if args.channels_last else "")


# A lean engine's suffixes, in this order: all its steps in the first level's chunks; its chunks'
# walks recorded as CUDA graphs and replayed.
ONE_LEVEL = "+onelevel"
RECORDED = "+graphs"


def base_engine(engine: str) -> str:
    """The engine without its suffixes: lean:1+onelevel+graphs -> lean:1."""
    return engine.removesuffix(RECORDED).removesuffix(ONE_LEVEL)


def engine_name(text: str) -> str:
    """An --engines entry: one of ENGINES, or lean:N (the lean engine in chunks of N samples); lean
    engines may end in +onelevel, then in +graphs (CUDA only)."""
    base = base_engine(text)
    kind, colon, chunk = base.partition(":")
    if text in ENGINES or base == "lean" or (kind == "lean" and colon and chunk.isdigit() and int(chunk) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(ENGINES)} or lean:N with N >= 1 (a lean engine "
                                     f"may end in {ONE_LEVEL}, then in {RECORDED}), got {text!r}")


def is_lean(engine: str) -> bool:
    return base_engine(engine).partition(":")[0] == "lean"


@contextlib.contextmanager
def _walk_setting(name: str, value):
    """Inside, the walk's module setting ``name`` is ``value`` (None: as it was); it comes back after."""
    default = getattr(walk, name)
    if value is not None:
        setattr(walk, name, value)
    try:
        yield
    finally:
        setattr(walk, name, default)


def _device_listed(switch: str, device: torch.device, on: Optional[bool]):
    """Inside, ``device``'s type is in the walk's device tuple ``switch`` (``on``), or not (None: as it
    was)."""
    others = tuple(d for d in getattr(walk, switch) if d != device.type)
    return _walk_setting(switch, None if on is None else others + ((device.type,) if on else ()))


def chunk_recording(device: torch.device, on: bool):
    """Inside, the lean walk records and replays its chunks on ``device`` (CUDA graphs), or does not."""
    return _device_listed("CHUNK_RECORDING_DEVICES", device, on)


def one_level(on: bool):
    """Inside (when ``on``), the lean walk forms no deeper levels: the values waiting at their cuts may
    take no bytes (``walk.CUT_VALUES_ACTIVATIONS``), so every step runs in the first level's chunks."""
    return _walk_setting("CUT_VALUES_ACTIVATIONS", 0.0 if on else None)


@contextlib.contextmanager
def target_pass(device: torch.device, way: Optional[str]):
    """Inside, the lean walk on ``device`` runs target images as ``way`` says (None: its default way);
    yields the way it runs them."""
    with _device_listed("SPLIT_TARGET_PASS_DEVICES", device, None if way is None else way == "split"):
        yield "split" if device.type in walk.SPLIT_TARGET_PASS_DEVICES else "ride"


def build_loss(name: str, engine: str, size: int, device: torch.device, channels_last: bool = False) -> torch.nn.Module:
    """The loss ``name`` on ``engine`` (``perfloss bench``'s own losses); ``compile`` is torch.compile
    over the eager loss, ``lean:N`` the lean engine in chunks of N samples; its network's weights in
    channels_last when asked."""
    vgg19 = name == "l1"
    kind, _, chunk = base_engine(engine).partition(":")
    loss = bench.build_loss(name, "vgg19" if vgg19 else "vgg16", VGG19_FIVE_TAPS if vgg19 else None, kind,
                            int(chunk) if chunk else None)
    loss = loss.to(device, memory_format=memory_format_of(channels_last))
    if name == "style":
        style_image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        loss.set_target(style_image.contiguous(memory_format=memory_format_of(channels_last)))
    return torch.compile(loss) if engine == "compile" else loss


def loss_inputs(name: str, batch: int, size: int, device: torch.device,
                channels_last: bool = False) -> Tuple[torch.Tensor, ...]:
    """(input,) for the style loss (its target is set), (input, target) for the others; channels_last
    images when asked."""
    gen = torch.Generator().manual_seed(0)

    def images():
        return torch.rand(batch, 3, size, size, generator=gen).to(device).contiguous(
            memory_format=memory_format_of(channels_last))

    x = images().requires_grad_(True)
    return (x,) if name == "style" else (x, images())


def loss_step(loss: torch.nn.Module, inputs: Tuple[torch.Tensor, ...], autocast, recorded: bool = False,
              single_level: bool = False) -> _timing.Step:
    """One forward (under ``autocast()``) and backward; the input's gradient is dropped after. With
    ``recorded``, the lean walk's chunks are recorded and replayed; with ``single_level``, it forms no
    deeper levels."""
    def step():
        with chunk_recording(inputs[0].device, recorded), one_level(single_level):
            with autocast():
                value = loss(*inputs)
            value.backward()
        inputs[0].grad = None
    return step


def engine_step(engine: str, loss: torch.nn.Module, inputs: Tuple[torch.Tensor, ...], autocast) -> _timing.Step:
    """:func:`loss_step` as ``engine``'s suffixes say: +graphs records the chunks, +onelevel forms no
    deeper levels."""
    return loss_step(loss, inputs, autocast, engine.endswith(RECORDED),
                     engine.removesuffix(RECORDED).endswith(ONE_LEVEL))


def default_size(device: torch.device) -> int:
    """The image side the loss benchmarks run at unless told: 256 on CUDA, 128 on CPU."""
    return 256 if device.type == "cuda" else 128


def check_engines_run_on(device: torch.device, engines: List[str], script: str) -> None:
    """Exit with a message when an engine of ``engines`` cannot run on ``device``."""
    if device.type not in cuda_graphs.CAPTURE and any(e.endswith(RECORDED) for e in engines):
        raise SystemExit(f"{script}: {RECORDED} engines record CUDA graphs: they need --device cuda")


def step_peak_mib(engine: str, step: _timing.Step, device: torch.device) -> float:
    """The step's exact allocator peak; for a +graphs engine, plus the memory pools of the recordings
    its step replays (made afresh, so only its own count): device memory they hold between steps,
    which a replay, allocating nothing, does not show in the peak."""
    if not engine.endswith(RECORDED):
        return _timing.peak_mib(step, device)
    walk.clear_chunk_recordings()
    step()
    return _timing.peak_mib(step, device) + walk.recorded_pool_bytes() / memory.MiB


def sweep(args, device: torch.device) -> List[Dict]:
    from tqdm import tqdm

    autocast = autocast_context(device, args.autocast)
    rows = []
    progress = tqdm(total=len(args.losses) * len(args.batches) * len(args.engines), desc="peak_batch_sweep",
                    unit="run")
    for name in args.losses:
        losses = {engine: build_loss(name, engine, args.size, device, args.channels_last) for engine in args.engines}
        leans = [e for e in args.engines if is_lean(e)]
        held = held_per_sample_mib(losses[leans[0]], args.size) if leans else None
        too_slow: Dict[str, str] = {}  # engine -> why its larger batches are skipped
        for batch in args.batches:
            inputs = loss_inputs(name, batch, args.size, device, args.channels_last)
            steps, notes = {}, {}
            for engine in args.engines:
                progress.set_postfix_str(f"{name} {engine} batch {batch}")
                if engine in too_slow:
                    notes[engine] = too_slow[engine]
                    continue
                step = engine_step(engine, losses[engine], inputs, autocast)
                seconds = _timing.warm_up(step, device)
                if seconds > args.max_seconds_per_step:
                    notes[engine] = f"skipped: {seconds:.1f} s per step at batch {batch} > --max-seconds-per-step"
                    too_slow[engine] = notes[engine]
                    continue
                steps[engine] = step
            times = _timing.interleaved_medians(steps, args.repeat, device)
            for engine in args.engines:
                measured = engine in steps
                rows.append({"loss": name, "engine": engine, "batch": batch, "size": args.size,
                             "precision": precision_label(args.autocast), "channels_last": args.channels_last,
                             "target_pass": args.target_pass,
                             "peak_mib": step_peak_mib(engine, steps[engine], device) if measured else None,
                             "median_ms": times[engine].ms if measured else None,
                             "round_ms": list(times[engine].round_ms) if measured else None,
                             "host_ms": times[engine].host_ms if measured else None,
                             "page_faults": times[engine].page_faults if measured else None,
                             "note": notes.get(engine, ""),
                             "held_per_sample_mib": held if is_lean(engine) else None})
                progress.update()
            del inputs, steps
    progress.close()
    return rows


def held_per_sample_mib(loss: torch.nn.Module, size: int) -> float:
    """What the lean engine keeps for backward per sample (masks, codes, tap gradients; fp32 images)."""
    plan = plan_for(loss.backbone)
    return memory.lean_expected_bytes(plan, (1, 3, size, size), list(loss.heads))["total"] / 2 ** 20


def growth_line(rows: List[Dict], name: str, batches: List[int], engines: List[str]) -> str:
    """Each lean engine's peak growth per added sample between consecutive batches, against the held bytes."""
    by_key = _lookup(rows)
    held, growths = None, []
    for engine in engines:
        lean = [by_key[(name, engine, b)] for b in batches]
        held = lean[0]["held_per_sample_mib"]
        ratios = [f"{a['batch']}->{b['batch']}: {(b['peak_mib'] - a['peak_mib']) / (b['batch'] - a['batch']) / held:.2f}x"
                  for a, b in zip(lean, lean[1:]) if a["peak_mib"] is not None and b["peak_mib"] is not None]
        if ratios:
            growths.append(f"{engine} {', '.join(ratios)}")
    if not growths:
        return ""
    return (f"\n\nLean holds {held:.2f} MiB per sample for backward (masks, codes, tap gradients); its peak grows "
            f"per added sample by this many times that: {'; '.join(growths)}.")


def faults_line(rows: List[Dict], name: str, batches: List[int], engines: List[str]) -> str:
    """Each engine's median page faults per step against batch (see ``_timing.Timing.page_faults``)."""
    by_key = _lookup(rows)
    counts = [f"{e} " + ", ".join(_timing.number(by_key[(name, e, b)]["page_faults"], 0) for b in batches)
              for e in engines]
    return (f"\n\nPage faults per step (median; fresh pages from the system, batches {', '.join(map(str, batches))}): "
            + "; ".join(counts) + ".")


def _lookup(rows: List[Dict]) -> Dict[Tuple[str, str, int], Dict]:
    return {(r["loss"], r["engine"], r["batch"]): r for r in rows}


def markdown(rows: List[Dict], args, device: torch.device) -> str:
    """Per loss: peak MiB and median ms per engine against batch; with eager, each lean engine's peak and
    time against eager's (the rounds' paired ratios, ``_timing.paired_ratio``); on CUDA, each engine's
    host ms too (see ``_timing.Timing``)."""
    by_key = _lookup(rows)
    host = args.engines if device.type == "cuda" else []
    # each lean engine (lean, lean:N, either +graphs) against eager
    leans = [e for e in args.engines if is_lean(e)] if "eager" in args.engines else []
    sections = [(f"# Peak memory and median time of one loss forward+backward, {args.size}x{args.size}, "
                 f"{setting_label(args)}, random weights (median of {args.repeat})\n\n"
                 f"Time against eager: the median of the rounds' ratios (interquartile range).\n\n"
                 f"Lean's target images: {TARGET_PASS_WORDS[args.target_pass]}.")]
    for name in args.losses:
        header = (["batch"] + [f"{e} peak MiB" for e in args.engines] + [f"{e} ms" for e in args.engines]
                  + [f"{e} host ms" for e in host]
                  + [f"eager/{e} peak" for e in leans] + [f"{e}/eager time" for e in leans])
        table = []
        for batch in args.batches:
            cells = [by_key[(name, e, batch)] for e in args.engines]
            row = ([batch] + [_timing.number(c["peak_mib"]) for c in cells]
                   + [_timing.number(c["median_ms"]) for c in cells]
                   + [_timing.number(by_key[(name, e, batch)]["host_ms"]) for e in host])
            eager = by_key[(name, "eager", batch)] if leans else None
            row += [_timing.ratio(eager["peak_mib"], by_key[(name, e, batch)]["peak_mib"]) for e in leans]
            row += [_timing.paired_ratio(by_key[(name, e, batch)]["round_ms"], eager["round_ms"]) for e in leans]
            table.append(row)
        notes = sorted({f"{r['engine']}: {r['note']}" for r in rows if r["loss"] == name and r["note"]})
        growth = growth_line(rows, name, list(args.batches), [e for e in args.engines if is_lean(e)])
        sections.append(f"## {LOSSES[name]}\n\n" + _timing.markdown_table(header, table) + growth
                        + faults_line(rows, name, list(args.batches), args.engines)
                        + "".join(f"\n\n{n}" for n in notes))
    return "\n\n".join(sections)


def plot(rows: List[Dict], args, env: Dict[str, str], path: str):
    """PNG: peak MiB against batch (log axis), one line per engine, one panel per loss; returns the Figure."""
    by_key = _lookup(rows)
    panels = []
    for name in args.losses:
        curves = {}
        for engine in args.engines:
            points = [(b, by_key[(name, engine, b)]["peak_mib"]) for b in args.batches
                      if by_key[(name, engine, b)]["peak_mib"] is not None]
            if points:
                curves[engine] = tuple(zip(*points))
        panels.append(plots.Panel(curves, LOSSES[name], "batch size", "peak MiB of forward+backward",
                                  logx=True, xticks=list(args.batches)))
    return plots.plot_panels(path, panels, title=(
        f"Peak memory per engine, {args.size}x{args.size} {setting_label(args)}, "
        f"{env['device']} ({env.get('device_name', env.get('cpu', env['machine']))}), torch {env['torch']}"))


def parse_args(argv: Optional[List[str]]):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--losses", nargs="+", choices=tuple(LOSSES), default=list(LOSSES))
    p.add_argument("--engines", nargs="+", type=engine_name, default=list(ENGINES),
                   help=f"of {', '.join(ENGINES)}, lean:N (default all but lean:N)")
    p.add_argument("--batches", nargs="+", type=int, help=f"default {' '.join(map(str, BATCHES))}")
    p.add_argument("--size", type=int, help="image side (default 128 on CPU, 256 on CUDA)")
    p.add_argument("--repeat", type=int, help="timed rounds per configuration (default 5)")
    p.add_argument("--autocast", choices=tuple(AUTOCAST_DTYPES), help="run each forward under torch.autocast")
    p.add_argument("--channels-last", action="store_true",
                   help="images and the network's weights in channels_last (default: contiguous NCHW)")
    p.add_argument("--target-pass", choices=TARGET_PASSES,
                   help="how lean runs target images (default: the device's way; see above)")
    p.add_argument("--max-seconds-per-step", type=float, default=30.0,
                   help="skip a configuration (and its larger batches) whose step takes longer (default 30)")
    _timing.add_machine_arguments(p, "benchmarks/results/peak_batch_sweep_<device>[_autocast_<dtype>][_channels_last]")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: defaults size {QUICK['size']}, batches {QUICK['batches']}, "
                        f"repeat {QUICK['repeat']}")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = _timing.machine(args)
    check_engines_run_on(device, args.engines, "peak_batch_sweep")
    args.size = args.size or (QUICK["size"] if args.quick else default_size(device))
    args.batches = args.batches or list(QUICK["batches"] if args.quick else BATCHES)
    args.repeat = args.repeat or (QUICK["repeat"] if args.quick else 5)
    suffix = (f"_autocast_{args.autocast}" if args.autocast else "") + ("_channels_last" if args.channels_last else "")
    out = args.out or f"{_timing.RESULTS}/peak_batch_sweep_{device.type}{suffix}"

    env = _timing.environment(device, __file__, argv)
    with target_pass(device, args.target_pass) as args.target_pass:
        rows = sweep(args, device)
    _timing.write_results(out, env, rows, markdown(rows, args, device))
    plot(rows, args, env, out + ".png")
    print("wrote", out + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
