"""CPU benchmarks of the fused loss-head ops against the eager PyTorch formulas (forward + backward).

    nice python -m pytest benchmarks/bench_heads.py -q -s -p no:randomly --benchmark-group-by=group

(PERFLOSS_BENCH_THREADS=1 for single-thread numbers; the default is min(2, cores).)

Every case runs the fused op (whatever ``perfloss.backend_info()`` picks on CPU, or PERFLOSS_IMPL)
and the eager formula on the same inputs; the ratios eager/fused of the medians are printed and
written to benchmarks/results/heads_cpu.{json,csv} with the device, versions and date.
A benchmark, not a test: it asserts nothing about speed.
"""
import csv
import datetime
import json
import os
import platform

import pytest
import torch

import perfloss
from perfloss.ops import dispatch
from perfloss.ops.feature_distance import feature_distance
from perfloss.ops.gram import gram
from perfloss.ops.style_loss import style_loss
from perfloss.ops.tv_loss import tv_loss

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
EPS = 1e-10
_MEDIANS = {}


# ---- the eager formulas, as a user of torch.nn would write them ----------------------------------
def eager_gram(x):
    b, c, h, w = x.shape
    f = x.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def eager_style(x, target):
    return (eager_gram(x) - target).square().sum(dim=(1, 2)).mean()


def eager_distance(x, y, kind, weight=None):
    if kind == "mse":
        return (x - y).square().mean()
    if kind == "l1":
        return (x - y).abs().mean()
    nx = x * torch.rsqrt(x.square().sum(1, keepdim=True) + EPS)
    ny = y * torch.rsqrt(y.square().sum(1, keepdim=True) + EPS)
    if kind == "cosine":
        return (1 - (nx * ny).sum(1)).mean()
    return ((nx - ny).square() * weight.view(1, -1, 1, 1)).sum(1).mean()


def eager_tv(x, kind):
    dh = x[:, :, 1:] - x[:, :, :-1]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    f = torch.abs if kind == "l1" else torch.square
    return f(dh).mean() + f(dw).mean()


# ---- cases ---------------------------------------------------------------------------------------
FEATURE_SHAPES = [(4, 64, 64, 64), (2, 256, 32, 32)]
IMAGE_SHAPES = [(4, 3, 128, 128)]


def _cases():
    out = []
    for shape in FEATURE_SHAPES:
        out += [("gram", shape, None), ("style_loss", shape, None)]
        out += [("feature_distance", shape, k) for k in ("mse", "l1", "cosine", "lpips")]
    for shape in IMAGE_SHAPES:
        out += [("tv_loss", shape, k) for k in ("l1", "l2")]
    return out


def _name(case):
    op, shape, kind = case
    return f"{op}{'-' + kind if kind else ''}-{'x'.join(map(str, shape))}"


def _runner(case, which):
    op, shape, kind = case
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_(True)
    y = torch.randn(shape, generator=g)
    c = shape[1]
    weight = torch.rand(c, generator=g)
    target = eager_gram(y).detach()[:1]
    fused = {
        "gram": lambda: gram(x).sum(),
        "style_loss": lambda: style_loss(x, target),
        "feature_distance": lambda: feature_distance(x, y, kind, weight if kind == "lpips" else None),
        "tv_loss": lambda: tv_loss(x, kind),
    }[op]
    eager = {
        "gram": lambda: eager_gram(x).sum(),
        "style_loss": lambda: eager_style(x, target),
        "feature_distance": lambda: eager_distance(x, y, kind, weight),
        "tv_loss": lambda: eager_tv(x, kind),
    }[op]
    fn = fused if which == "fused" else eager

    def step():
        x.grad = None
        fn().backward()

    return step


@pytest.mark.parametrize("which", ("eager", "fused"))
@pytest.mark.parametrize("case", _cases(), ids=_name)
def test_heads_cpu(benchmark, case, which):
    benchmark.group = _name(case)
    benchmark.extra_info["impl"] = dispatch.choose(case[0], "cpu")[0] if which == "fused" else "eager"
    torch.set_num_threads(int(os.environ.get("PERFLOSS_BENCH_THREADS", max(1, min(2, os.cpu_count() or 1)))))
    step = _runner(case, which)
    benchmark.pedantic(step, rounds=25, iterations=1, warmup_rounds=3)
    _MEDIANS[(_name(case), which)] = (benchmark.stats.stats.median, benchmark.stats.stats.min)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    rows = []
    for name in sorted({k[0] for k in _MEDIANS}):
        e, f = _MEDIANS.get((name, "eager")), _MEDIANS.get((name, "fused"))
        if e is None or f is None:
            continue
        op = name.split("-")[0]
        rows.append({"case": name, "impl": dispatch.choose(op, "cpu")[0],
                     "eager_median_ms": round(e[0] * 1e3, 4), "fused_median_ms": round(f[0] * 1e3, 4),
                     "speedup_median": round(e[0] / f[0], 3),
                     "eager_min_ms": round(e[1] * 1e3, 4), "fused_min_ms": round(f[1] * 1e3, 4),
                     "speedup_min": round(e[1] / f[1], 3)})
    if not rows:
        return
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "perfloss_backends": perfloss.backend_info() if hasattr(perfloss, "backend_info") else dispatch.backend_info(),
            "note": ("forward + backward, 25 rounds; speedup = eager / fused, by median and by min (the min is "
                     "the steadier one on a shared, CPU-quota-throttled machine)")}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "heads_cpu.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1, default=str)
    with open(os.path.join(RESULTS, "heads_cpu.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print("\ncase                                 impl  eager med ms  fused med ms  ratio | eager min  fused min  ratio")
    for r in rows:
        print(f"{r['case']:<36} {r['impl']:<5} {r['eager_median_ms']:>12.3f} {r['fused_median_ms']:>13.3f} "
              f"{r['speedup_median']:>6.2f} | {r['eager_min_ms']:>9.3f} {r['fused_min_ms']:>10.3f} {r['speedup_min']:>6.2f}")
