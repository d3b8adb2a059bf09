"""PGN forward cost: the training module in eval mode vs its folded inference copy (fp32, channels_last,
fused ops) vs the copy with a bf16 body. Median wall time of ``(proxy, grad) = pgn(y_hat, y)``.

    nice -n 10 python benchmarks/pgn_inference.py --device cpu --size 64 --batch 8 --threads 1

Writes benchmarks/results/pgn_inference_<device>.json.
"""
import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from perfloss.pgn import PerceptualGradientNetwork, fold

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def bench(fn, args, iters, warmup, cuda):
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(*args)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--archs", default="resnet4,resnet8,unet")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    y_hat = torch.rand(args.batch, 3, args.size, args.size, device=device)
    y = torch.rand(args.batch, 3, args.size, args.size, device=device)
    rows = []
    for arch in args.archs.split(","):
        net = PerceptualGradientNetwork(arch).to(device).eval()
        variants = {"module_eval": net, "folded_fp32": fold(net), "folded_bf16": fold(net, dtype=torch.bfloat16)}
        if cuda:
            variants["folded_fp32_graph"] = fold(net, cuda_graph=True)
        with torch.no_grad():
            for name, fn in variants.items():
                ms = bench(fn, (y_hat, y), args.iters, args.warmup, cuda)
                rows.append({"arch": arch, "variant": name, "median_ms": ms})
                print(rows[-1], flush=True)
    info = {"device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or "cpu"),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": vars(args), "results": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"pgn_inference_{device.type}.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info


if __name__ == "__main__":
    main()
