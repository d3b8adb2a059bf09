"""GPU benchmark of the loss ops gram, style_loss, feature_distance and tv_loss (run on the device).

    PERFLOSS_TEST_GPU=1 python benchmarks/loss_ops_gpu.py [--quick] [--no-compile] [--out benchmarks/results]

(--quick: Gram at 64x64 only, C in {64, 256, 512}; batch 4 for the style and LPIPS cases; smaller
elementwise tensors. An earlier --quick with 16 Gram cases had done 11 after 60 s on an H200, most of
it torch.compile compiling each case: --no-compile leaves that column out.)

Side by side in one run, every time the median of triton.testing.do_bench (L2 flushed between
runs): the fused op on each of its CUDA implementations (``triton``: kernels/, ``cpp``: the C++ CUDA
kernels of csrc/cuda/, selected with perfloss.ops.library.use), the eager PyTorch formula, the same
formula under torch.compile, and for Gram also torch.bmm alone; ``faster`` names the implementation
the op should default to on this device. Cases follow issue 4:
- gram, C in {64, 128, 256, 512}, H*W from 32^2 to 256^2, batch 16, bf16 and fp32 (forward), with
  the bandwidth reached (features read once) next to a measured device copy of the same bytes;
- style loss forward + backward over the four Johnson taps (VGG-16 relu1_2 .. relu4_3, 256 px);
- the LPIPS head over five VGG-16 taps forward + backward, with the memory the forward keeps for
  backward (torch.cuda.memory_allocated after forward minus before);
- mse / l1 heads forward + backward against a plain elementwise op moving the same bytes
  (read f0 and f1, write one tensor), and tv_loss on images.
Writes loss_ops_gpu_<device>.json and .csv (device name, torch / triton / CUDA versions, date, TF32).
Columns: <impl>_ms; x/<impl> = how many times faster <impl> is than x.
"""
import argparse
import csv
import datetime
import json
import os
import sys

import torch

try:
    import triton
    import triton.testing
except ImportError:  # the script must still import where triton is missing
    triton = None

EPS = 1e-10
VGG16_TAPS = {"relu1_2": (64, 1), "relu2_2": (128, 2), "relu3_3": (256, 4), "relu4_3": (512, 8), "relu5_3": (512, 16)}


# ---- eager formulas -------------------------------------------------------------------------------
def eager_gram(x):
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w).float()
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def bmm_only(x):
    f = x.reshape(x.shape[0], x.shape[1], -1)
    return torch.bmm(f, f.transpose(1, 2))


def eager_style(feats, targets):
    return sum((eager_gram(f) - t).square().sum(dim=(1, 2)).mean() for f, t in zip(feats, targets))


def eager_lpips(f0s, f1s, weights):
    total = 0
    for a, b, w in zip(f0s, f1s, weights):
        a, b = a.float(), b.float()
        na = a * torch.rsqrt(a.square().sum(1, keepdim=True) + EPS)
        nb = b * torch.rsqrt(b.square().sum(1, keepdim=True) + EPS)
        total = total + ((na - nb).square() * w.view(1, -1, 1, 1)).sum(1).mean()
    return total


def eager_distance(a, b, kind):
    d = a.float() - b.float()
    return d.square().mean() if kind == "mse" else d.abs().mean()


def eager_tv(x, kind):
    x = x.float()
    dh = x[:, :, 1:] - x[:, :, :-1]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    f = torch.abs if kind == "l1" else torch.square
    return f(dh).mean() + f(dw).mean()


# ---- timing helpers -----------------------------------------------------------------------------
IMPLS = ("triton", "cpp")  # the fused ops' CUDA implementations


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def per_impl(op, measure):
    """{impl: measure()} for each CUDA implementation of perfloss op ``op`` that this build has."""
    from perfloss.ops import library

    out = {}
    for impl in IMPLS:
        with library.use(impl):
            if library.backend_info()[op]["cuda"] == impl:
                out[impl] = measure()
    return out


def fwd_bwd(loss_fn, leaves):
    def step():
        for t in leaves:
            t.grad = None
        loss_fn().backward()

    return step


def held_after_forward(loss_fn, leaves):
    """Bytes allocated by a forward pass and still held when it returns (what backward keeps)."""
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    loss = loss_fn()
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    loss.backward()
    return held


COMPILE = True  # --no-compile: leave out the torch.compile column (each case compiles: seconds apiece)


def compiled(fn):
    if not COMPILE:
        return None
    try:
        return torch.compile(fn)
    except Exception as exc:  # noqa: BLE001 - the report says why the column is missing
        print(f"torch.compile unavailable: {exc}", file=sys.stderr)
        return None


def copy_bandwidth(nbytes, device):
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * nbytes / (ms * 1e-3)  # bytes per second, read + write


# ---- cases --------------------------------------------------------------------------------------
def run_gram(rows, quick, dev):
    from perfloss.ops.gram import gram

    sides = (64,) if quick else (32, 64, 128, 256)
    for dtype in (torch.bfloat16, torch.float32):
        for c in ((64, 256, 512) if quick else (64, 128, 256, 512)):
            for side in sides:
                x = torch.randn(16, c, side, side, device=dev, dtype=dtype)
                comp = compiled(eager_gram)
                t = per_impl("gram", lambda: bench(lambda: gram(x)))
                t.update(eager=bench(lambda: eager_gram(x)), bmm=bench(lambda: bmm_only(x)))
                if comp is not None:
                    t["compile"] = bench(lambda: comp(x))
                nbytes = x.numel() * x.element_size()
                bandwidth = {f"{impl}_GBps": nbytes / (t[impl] * 1e-3) / 1e9 for impl in IMPLS if impl in t}
                rows.append(row("gram", f"16x{c}x{side}x{side}", dtype, t, **bandwidth,
                                copy_GBps=copy_bandwidth(nbytes, dev) / 1e9))


def johnson_taps(batch, size, dtype, dev):
    return [torch.randn(batch, c, size // s, size // s, device=dev, dtype=dtype)
            for name, (c, s) in VGG16_TAPS.items() if name != "relu5_3"]


def run_style(rows, quick, dev):
    from perfloss.ops.gram import gram
    from perfloss.ops.style_loss import style_loss

    for dtype in (torch.bfloat16, torch.float32):
        for batch in ((4,) if quick else (4, 16)):
            feats = [f.requires_grad_(True) for f in johnson_taps(batch, 256, dtype, dev)]
            targets = [gram(torch.randn_like(f[:1])).float().detach() for f in feats]
            fused = fwd_bwd(lambda: sum(style_loss(f, t) for f, t in zip(feats, targets)), feats)
            eager_fn = lambda: eager_style(feats, targets)  # noqa: E731
            t = per_impl("style_loss", lambda: bench(fused))
            t["eager"] = bench(fwd_bwd(eager_fn, feats))
            comp = compiled(eager_style)
            if comp is not None:
                t["compile"] = bench(fwd_bwd(lambda: comp(feats, targets), feats))
            rows.append(row("style_loss_johnson_fwd_bwd", f"B{batch} 256px 4 taps", dtype, t))


def run_lpips(rows, quick, dev):
    from perfloss.ops.feature_distance import feature_distance

    for dtype in (torch.bfloat16, torch.float32):
        for batch in ((4,) if quick else (4, 16)):
            f0s = [torch.randn(batch, c, 256 // s, 256 // s, device=dev, dtype=dtype).requires_grad_(True)
                   for c, s in VGG16_TAPS.values()]
            f1s = [torch.randn_like(f).detach() for f in f0s]
            ws = [torch.rand(f.shape[1], device=dev) for f in f0s]
            fused_fn = lambda: sum(feature_distance(a, b, "lpips", w) for a, b, w in zip(f0s, f1s, ws))  # noqa: E731
            eager_fn = lambda: eager_lpips(f0s, f1s, ws)  # noqa: E731
            t = per_impl("feature_distance", lambda: bench(fwd_bwd(fused_fn, f0s)))
            t["eager"] = bench(fwd_bwd(eager_fn, f0s))
            comp = compiled(eager_lpips)
            if comp is not None:
                t["compile"] = bench(fwd_bwd(lambda: comp(f0s, f1s, ws), f0s))
            held = {f"{impl}_held_MB": mb for impl, mb in
                    per_impl("feature_distance", lambda: held_after_forward(fused_fn, f0s) / 2**20).items()}
            rows.append(row("lpips_vgg_fwd_bwd", f"B{batch} 256px 5 taps", dtype, t, **held,
                            eager_held_MB=held_after_forward(eager_fn, f0s) / 2**20))


def run_elementwise(rows, quick, dev):
    from perfloss.ops.feature_distance import feature_distance
    from perfloss.ops.tv_loss import tv_loss

    for dtype in (torch.bfloat16, torch.float32):
        shape = (16, 64, 128, 128) if not quick else (8, 64, 64, 64)
        a = torch.randn(shape, device=dev, dtype=dtype).requires_grad_(True)
        b = torch.randn(shape, device=dev, dtype=dtype)
        out = torch.empty_like(b)
        same_bytes = bench(lambda: torch.add(a.detach(), b, out=out))  # read 2, write 1, like the fused op
        for kind in ("mse", "l1"):
            t = per_impl("feature_distance", lambda: bench(fwd_bwd(lambda: feature_distance(a, b, kind), [a])))
            t.update(eager=bench(fwd_bwd(lambda: eager_distance(a, b, kind), [a])), copy_same_bytes=same_bytes)
            comp = compiled(eager_distance)
            if comp is not None:
                t["compile"] = bench(fwd_bwd(lambda: comp(a, b, kind), [a]))
            rows.append(row(f"{kind}_fwd_bwd", "x".join(map(str, shape)), dtype, t))
        img = torch.randn(16, 3, 512, 512, device=dev, dtype=dtype).requires_grad_(True)
        for kind in ("l1", "l2"):
            t = per_impl("tv_loss", lambda: bench(fwd_bwd(lambda: tv_loss(img, kind), [img])))
            t["eager"] = bench(fwd_bwd(lambda: eager_tv(img, kind), [img]))
            rows.append(row(f"tv_{kind}_fwd_bwd", "16x3x512x512", dtype, t))


def row(case, shape, dtype, times, **extra):
    r = {"case": case, "shape": shape, "dtype": str(dtype).replace("torch.", "")}
    for k, v in times.items():
        r[f"{k}_ms"] = round(v, 5)
    impls = [i for i in IMPLS if i in times]
    for impl in impls:
        for k in ("eager", "compile", "bmm", "copy_same_bytes") + IMPLS:
            if k in times and k != impl:
                r[f"{k}/{impl}"] = round(times[k] / times[impl], 3)
    if impls:
        r["faster"] = min(impls, key=times.get)
    for k, v in extra.items():
        r[k] = round(v, 3)
    print(r, flush=True)
    return r


RUNNERS = {"gram": run_gram, "style": run_style, "lpips": run_lpips, "elementwise": run_elementwise}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--only", nargs="*", choices=tuple(RUNNERS), default=list(RUNNERS))
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile column")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    global COMPILE
    COMPILE = not args.no_compile
    if triton is None or not torch.cuda.is_available():
        print("loss_ops_gpu.py needs a CUDA device and triton; nothing to do here.", file=sys.stderr)
        return 2
    import perfloss

    dev = torch.device("cuda")
    rows = []
    for name in args.only:
        RUNNERS[name](rows, args.quick, dev)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "backends": perfloss.backend_info(),
        "timing": "triton.testing.do_bench median (L2 flushed), ms; x/impl = speedup of implementation impl over x",
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "loss_ops_gpu_" + meta["device"].replace(" ", "_").replace("/", "_"))
    with open(stem + ".json", "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1, default=str)
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("case", "shape", "dtype"), k))
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {stem}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
