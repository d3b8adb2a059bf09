"""Generator step with ProxyTargetLoss vs the true VGG-19 teacher (issue 5, GPU "Measured" item).

One generator step = generator forward, loss, backward into the generator, Adam step. Variants:
- ``teacher_eager`` / ``teacher_lean``: the paper's VGG-19 (relu1_1..relu5_1, avg pool, L1) teacher,
  perfloss's eager and lean engines;
- ``pgn``: ProxyTargetLoss over the folded inference copy (fp32, fused ops);
- ``pgn_bf16``: the same with a bf16 body; ``pgn_graph``: with CUDA graphs (CUDA only).
Reports the median step time and, on CUDA, the peak memory of one step above what was resident before
it (``max_memory_allocated`` after ``reset_peak_memory_stats``), as ratios against teacher_eager.
Weights are random (speed and memory do not depend on them).

    python benchmarks/pgn_gpu.py                      # CUDA, 256x256, batch 16 (the issue's setting)
    python benchmarks/pgn_gpu.py --device cpu --size 64 --batch 2 --iters 3   # smoke run on CPU

Writes benchmarks/results/pgn_gpu_<device>.json and .csv.
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

import torch

from perfloss.pgn import AutoencoderGenerator, PerceptualGradientNetwork, ProxyTargetLoss, fold
from perfloss.pgn.teacher import paper_teacher, per_sample_sum

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class TeacherLoss(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, y_hat, y):
        return per_sample_sum(self.teacher, y_hat, y)


def build(variant, arch, device):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if variant.startswith("teacher_"):
            return TeacherLoss(paper_teacher(engine=variant[len("teacher_"):]).to(device))
    pgn = PerceptualGradientNetwork(arch).to(device).eval()
    opts = {"pgn": {}, "pgn_bf16": {"dtype": torch.bfloat16}, "pgn_graph": {"cuda_graph": True}}[variant]
    return ProxyTargetLoss(fold(pgn, **opts))


def measure(variant, loss_fn, args, device):
    torch.manual_seed(0)
    gen = AutoencoderGenerator(2, 32).to(device)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-4)
    z = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.rand(args.batch, 3, args.size, args.size, device=device)
    cuda = device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(gen(z), y).backward()
        opt.step()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    peak = None
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return {"variant": variant, "median_ms": 1e3 * statistics.median(times), "peak_bytes": peak}


VARIANTS = ("teacher_eager", "teacher_lean", "pgn", "pgn_bf16", "pgn_graph")


def variant_list(text):
    variants = [v for v in text.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variants {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return variants


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--arch", default="resnet4")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", type=variant_list, default=list(VARIANTS), help="comma-separated")
    ap.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (CPU runs)")
    ap.add_argument("--out", default=RESULTS)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [v for v in args.variants if not (v == "pgn_graph" and device.type != "cuda")]
    rows = []
    for v in variants:
        try:
            row = measure(v, build(v, args.arch, device), args, device)
        except Exception as exc:  # report, keep measuring the others
            row = {"variant": v, "error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        print(row, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = next((r for r in rows if r["variant"] == "teacher_eager" and "median_ms" in r), None)
    for r in rows:
        if ref and "median_ms" in r:
            r["speedup_vs_eager"] = ref["median_ms"] / r["median_ms"]
            if r.get("peak_bytes") and ref.get("peak_bytes"):
                r["memory_ratio_vs_eager"] = ref["peak_bytes"] / r["peak_bytes"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    info = {"device": name, "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": vars(args), "results": rows,
            "targets": {"speedup_vs_eager": 4.0, "memory_ratio_vs_eager": 5.0}}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"pgn_gpu_{device.type}")
    with open(stem + ".json", "w") as f:
        json.dump(info, f, indent=2)
    keys = ["variant", "median_ms", "peak_bytes", "speedup_vs_eager", "memory_ratio_vs_eager", "error"]
    with open(stem + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return info


if __name__ == "__main__":
    main()
