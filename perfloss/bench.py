"""``perfloss bench``: time and memory of a perceptual loss's forward+backward, per engine.

For each loss configuration and engine it reports the median forward+backward time, the memory
the autograd graph holds for backward (unique storages reachable from the loss), and the peak of
one step: the allocator's peak above what was allocated before the step, the same quantity on both
devices (CUDA: ``max_memory_allocated``; CPU: the running total of the allocator's events, see
``perfloss.engine.memory.peak_bytes``), measured in a run of its own. Weights are random: speed and
memory do not depend on their values.
"""
import argparse
import csv
import json
import os
import platform
import statistics
import time
import warnings
from datetime import datetime, timezone
from typing import Dict, List, Optional

import torch

import perfloss
from perfloss import plots
from perfloss.engine.memory import graph_saved_bytes, peak_bytes

LOSSES = ("content", "style", "johnson", "l1", "lpips")
ENGINES = ("eager", "lean", "checkpoint", "compile")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_loss(kind: str, backbone: str, layers: Optional[List[str]], engine: str, chunk_size: Optional[int] = None):
    """The loss module for one configuration; ``compile`` is torch.compile over the eager loss;
    ``chunk_size``: the lean engine's (None: from its memory budget)."""
    module_engine = "eager" if engine == "compile" else engine
    common = dict(weights=None, engine=module_engine, chunk_size=chunk_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights warn; timing does not depend on them
        if kind == "content":
            loss = perfloss.PerceptualLoss(backbone, layers or ("relu2_2",), **common)
        elif kind == "l1":
            loss = perfloss.PerceptualLoss(backbone, layers or ("relu2_2",), distance="l1", **common)
        elif kind == "style":
            loss = perfloss.StyleLoss(backbone, **({"layers": layers} if layers else {}), **common)
        elif kind == "johnson":
            loss = perfloss.JohnsonLoss(backbone=backbone, **common)
        else:
            loss = perfloss.LPIPS(net="vgg", normalize=True, **common)
    return loss


def _loss_inputs(kind, batch, size, device, dtype, loss):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=gen).to(device, dtype).requires_grad_(True)
    target = torch.rand(batch, 3, size, size, generator=gen).to(device, dtype)
    if kind in ("style", "johnson"):
        loss.set_target(torch.rand(1, 3, size, size, generator=gen).to(device, dtype))
        return (x,) if kind == "style" else (x, target)
    return x, target


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loss_fn, args, resident, device, repeat: int, warmup: int, walk_graph: bool = True) -> Dict[str, float]:
    """Median fwd+bwd time, memory held for backward (excluding the ``resident`` tensors: inputs,
    weights) and peak memory of one step.

    ``walk_graph=False`` skips the held-memory walk: under torch.utils.checkpoint, reading a saved
    tensor runs the recomputation, so the walk would measure the recomputed activations.
    """

    def step():
        loss_fn(*args).backward()
        args[0].grad = None

    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)

    held = None
    if walk_graph:
        value = loss_fn(*args)
        held = graph_saved_bytes(value, exclude=resident)
        value.backward()
        args[0].grad = None
        del value

    peak = peak_bytes(step, device=device)[1]
    return {"median_ms": 1e3 * statistics.median(times),
            "held_for_backward_mb": None if held is None else held / 2**20, "peak_mb": peak / 2**20}


def under_autocast(fn, device_type: str, dtype: torch.dtype):
    """``fn`` called under torch.autocast (the mixed-precision training setting)."""
    def call(*args):
        with torch.autocast(device_type, dtype=dtype):
            return fn(*args)
    return call


def run(args) -> List[Dict]:
    from tqdm import tqdm

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or (256 if device.type == "cuda" else 128)
    batch = args.batch or (16 if device.type == "cuda" else 4)
    dtype = DTYPES[args.dtype]
    layers = args.layers.split(",") if args.layers else None
    jobs = [(kind, engine) for kind in args.loss for engine in args.engine]
    rows = []
    for kind, engine in tqdm(jobs, desc="perfloss bench", unit="run"):
        loss = build_loss(kind, args.backbone, layers, engine, args.chunk_size).to(device, dtype)
        loss_fn = torch.compile(loss) if engine == "compile" else loss
        if args.autocast:
            loss_fn = under_autocast(loss_fn, device.type, DTYPES[args.autocast])
        loss_args = _loss_inputs(kind, batch, size, device, dtype, loss)
        resident = [*loss_args, *loss.parameters(), *loss.buffers()]
        result = measure(loss_fn, loss_args, resident, device, args.repeat, args.warmup,
                         walk_graph=engine != "checkpoint")
        rows.append({"loss": kind, "backbone": args.backbone, "engine": engine, "batch": batch, "size": size,
                     "dtype": args.dtype, "autocast": args.autocast or "", "device": device.type,
                     "chunk_size": args.chunk_size or "auto", **result})
    return rows


def _cpu_model() -> str:
    """The CPU's model name where the system says it (Linux: /proc/cpuinfo), else the processor type."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def environment(device: str) -> Dict[str, str]:
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
           "threads": str(torch.get_num_threads())}
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
    else:  # CPU timings differ by CPU kind: oneDNN picks its kernels (and fp32 summation order) per ISA
        env["cpu"] = f"{_cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"
        # and by the C allocator: under glibc's defaults a large buffer is fresh pages on every allocation,
        # each faulted in and zeroed by the system; these settings, or another malloc, can keep them
        settings = [f"{k}={os.environ[k]}" for k in MALLOC_SETTINGS if os.environ.get(k)]
        env["malloc"] = " ".join(settings) or "default"
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def format_table(rows: List[Dict]) -> str:
    header = (f"{'loss':<8} {'engine':<11} {'median ms':>10} {'held MB':>9} {'peak MB':>9} {'time x eager':>13} "
              f"{'held / eager':>13} {'peak / eager':>13}")
    lines = [header, "-" * len(header)]
    eager = {r["loss"]: r for r in rows if r["engine"] == "eager"}
    for r in rows:
        base = eager.get(r["loss"])
        t_ratio = f"{r['median_ms'] / base['median_ms']:.2f}" if base else "-"
        held = r["held_for_backward_mb"]
        m_ratio = f"{held / base['held_for_backward_mb']:.3f}" if base and held is not None else "-"
        held = "-" if held is None else f"{held:.1f}"
        p_ratio = f"{r['peak_mb'] / base['peak_mb']:.3f}" if base else "-"
        lines.append(f"{r['loss']:<8} {r['engine']:<11} {r['median_ms']:>10.1f} {held:>9} "
                     f"{r['peak_mb']:>9.1f} {t_ratio:>13} {m_ratio:>13} {p_ratio:>13}")
    if any(r["engine"] == "checkpoint" for r in rows):
        lines.append("checkpoint: held memory not walked (reading its saved tensors would recompute them); see peak")
    return "\n".join(lines)


def plot(rows: List[Dict], env: Dict[str, str], path):
    """Grouped bars, one group per loss and one bar per engine: median time (left) and peak memory
    (right) of one forward+backward; written to ``path``, returned as a matplotlib Figure."""
    engines = list(dict.fromkeys(r["engine"] for r in rows))

    def per_engine(key):
        return {e: ([r["loss"] for r in rows if r["engine"] == e], [r[key] for r in rows if r["engine"] == e])
                for e in engines}
    first = rows[0]
    precision = first["dtype"] + (f", autocast {first['autocast']}" if first["autocast"] else "")
    device = env.get("device_name", env.get("cpu", env.get("machine", first["device"])))
    return plots.plot_panels(path, [
        plots.Panel(per_engine("median_ms"), "Median time of one forward+backward", "loss",
                    "time (ms)", kind="bar"),
        plots.Panel(per_engine("peak_mb"), "Peak memory of one forward+backward", "loss",
                    "peak memory above resident (MiB)", kind="bar"),
    ], title=(f"perfloss bench: {first['backbone']}, batch {first['batch']}, {first['size']}x{first['size']}, "
              f"{precision}, {first['device']} ({device}), torch {env.get('torch', torch.__version__)}"))


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time and memory of loss forward+backward per engine",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", nargs="+", choices=LOSSES, default=["content", "style"])
    p.add_argument("--engine", nargs="+", choices=ENGINES, default=["eager", "lean", "checkpoint", "compile"])
    p.add_argument("--backbone", default="vgg16", help="loss network (lpips always uses its vgg network)")
    p.add_argument("--layers", help="comma-separated taps (default: the loss's own)")
    p.add_argument("--size", type=int, help="image side (default 128 on CPU, 256 on GPU)")
    p.add_argument("--batch", type=int, help="batch size (default 4 on CPU, 16 on GPU)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype of the loss network and images")
    p.add_argument("--autocast", choices=("bfloat16", "float16"), help="run each step under torch.autocast")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--chunk-size", type=int, help="the lean engine's samples per chunk (default: from its memory budget)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="write the results and environment as JSON")
    p.add_argument("--csv", help="write the results as CSV")
    p.add_argument("--plot", metavar="FILE",
                   help="draw time and peak memory per engine as bar charts to FILE (.png, .pdf, .svg; "
                        "needs matplotlib: pip install perfloss[plot])")
    p.set_defaults(func=main)


def main(args) -> int:
    if args.plot:
        plots.require_matplotlib()  # fail before the measurements, not after
    rows = run(args)
    print(format_table(rows))
    env = environment(rows[0]["device"]) if rows else {}
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=2)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(env))
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, **env})
    if args.plot:
        plot(rows, env, args.plot)
        print(f"wrote {args.plot}")
    return 0
