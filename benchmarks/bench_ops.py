"""CPU time of every perfloss op, per implementation, next to what eager PyTorch does instead.

    nice python -m pytest benchmarks/bench_ops.py -q -s [-k gram]

(PERFLOSS_BENCH_THREADS=1 for single-thread numbers; the default is min(2, cores).)

A case is named after its op (``gram-4x64x64x64``, ``relu_mask-2x64x128x128``), so ``-k <op>``
picks one op. Each case times, in one run, every implementation the op has on CPU (``cpp`` where perfloss._C is
built, and the plain-PyTorch ``reference``, through ``perfloss.ops.library.use``) and the eager
equivalent a user writes today:

- loss ops (gram, style_loss, feature_distance, tv_loss): forward + backward of the loss, against
  the eager formula and its autograd;
- lean-engine ops (relu_mask, relu_mask_, relu_mask_backward, maxpool_codes, maxpool_unroute,
  sign_pack, sign_unpack): one call, against eager's relu / max_pool2d with indices / their backward.

The medians, the ratios eager / implementation and the environment go to
benchmarks/results/ops_cpu.{json,csv}. A benchmark, not a test: it asserts nothing about speed.
"""
import contextlib
import csv
import datetime
import json
import os
import platform

import pytest
import torch
import torch.nn.functional as F

import perfloss
from perfloss.ops import library
from perfloss.ops.feature_distance import feature_distance
from perfloss.ops.gram import gram
from perfloss.ops.maxpool_codes import maxpool_codes, maxpool_unroute
from perfloss.ops.relu_mask import relu_mask, relu_mask_, relu_mask_backward
from perfloss.ops.sign_pack import sign_pack, sign_unpack
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


def eager_distance(x, y, kind, weight):
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
    f = torch.abs if kind == "l1" else torch.square
    return f(x[:, :, 1:] - x[:, :, :-1]).mean() + f(x[:, :, :, 1:] - x[:, :, :, :-1]).mean()


# ---- cases: (op, shape, kind) -> {"op": step, "eager": step} ---------------------------------------
FEATURES = [(4, 64, 64, 64), (2, 256, 32, 32)]
IMAGES = (4, 3, 128, 128)
ACTIVATION = (2, 64, 128, 128)  # relu1_2 of VGG at 128x128, batch 2

LOSS_OPS = ("gram", "style_loss", "feature_distance", "tv_loss")
CASES = ([(op, s, None) for s in FEATURES for op in ("gram", "style_loss")]
         + [("feature_distance", s, k) for s in FEATURES for k in ("mse", "l1", "cosine", "lpips")]
         + [("tv_loss", IMAGES, k) for k in ("l1", "l2")]
         + [(op, ACTIVATION, None) for op in ("relu_mask", "relu_mask_", "relu_mask_backward", "maxpool_codes",
                                              "maxpool_unroute", "sign_pack", "sign_unpack")])


def case_name(case):
    op, shape, kind = case
    return f"{op}{'-' + kind if kind else ''}-{'x'.join(map(str, shape))}"


def _loss_steps(op, shape, kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_(True)
    y = torch.randn(shape, generator=g)
    weight = torch.rand(shape[1], generator=g)
    target = eager_gram(y).detach()[:1]
    fused, eager = {
        "gram": (lambda: gram(x).sum(), lambda: eager_gram(x).sum()),
        "style_loss": (lambda: style_loss(x, target),
                       lambda: (eager_gram(x) - target).square().sum(dim=(1, 2)).mean()),
        "feature_distance": (lambda: feature_distance(x, y, kind, weight if kind == "lpips" else None),
                             lambda: eager_distance(x, y, kind, weight)),
        "tv_loss": (lambda: tv_loss(x, kind), lambda: eager_tv(x, kind)),
    }[op]

    def backward_of(fn):
        def step():
            x.grad = None
            fn().backward()
        return step

    return {"op": backward_of(fused), "eager": backward_of(eager)}


def _lean_op_steps(op, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    grad = torch.randn(shape, generator=g)
    pooled_grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=g)
    signs = torch.sign(grad) * 0.01
    x_in_place = x.clone()  # relu_mask_ overwrites it with relu(x): later calls see the same signs
    _, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    mask, codes, sign_codes = relu_mask(x)[1], maxpool_codes(x, 2, 2)[1], sign_pack(signs)  # same bits everywhere
    return {
        "relu_mask": {"op": lambda: relu_mask(x), "eager": lambda: torch.relu(x)},
        "relu_mask_": {"op": lambda: relu_mask_(x_in_place), "eager": lambda: torch.relu_(x_in_place)},
        "relu_mask_backward": {"op": lambda: relu_mask_backward(grad, mask),
                               "eager": lambda: torch.ops.aten.threshold_backward(grad, x, 0.0)},
        "maxpool_codes": {"op": lambda: maxpool_codes(x, 2, 2),
                          "eager": lambda: F.max_pool2d(x, 2, 2, return_indices=True)},
        "maxpool_unroute": {"op": lambda: maxpool_unroute(pooled_grad, codes, shape[2:], 2, 2),
                            "eager": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                                pooled_grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)},
        "sign_pack": {"op": lambda: sign_pack(signs), "eager": lambda: signs.clone()},
        "sign_unpack": {"op": lambda: sign_unpack(sign_codes, torch.tensor(0.01), torch.ones(shape[0]), shape),
                        "eager": lambda: signs * torch.ones(shape[0]).view(-1, 1, 1, 1)},
    }[op]


def _variants():
    """(case, variant) pairs: every implementation the case's op has on CPU, and eager."""
    out = []
    for case in CASES:
        impls = ["cpp", "reference"] if library.backend_info()[case[0]]["cpu"] == "cpp" else ["reference"]
        out += [(case, v) for v in impls + ["eager"]]
    return out


@pytest.mark.parametrize("case,variant", _variants(), ids=lambda v: case_name(v) if isinstance(v, tuple) else v)
def test_op_cpu(benchmark, case, variant):
    op, shape, kind = case
    torch.set_num_threads(int(os.environ.get("PERFLOSS_BENCH_THREADS", max(1, min(2, os.cpu_count() or 1)))))
    steps = _loss_steps(op, shape, kind) if op in LOSS_OPS else _lean_op_steps(op, shape)
    benchmark.group = case_name(case)
    with library.use(variant) if variant != "eager" else contextlib.nullcontext():
        benchmark.pedantic(steps["eager" if variant == "eager" else "op"], rounds=25, iterations=1, warmup_rounds=3)
    _MEDIANS[(case_name(case), variant)] = benchmark.stats.stats.median


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    rows = []
    for name in dict.fromkeys(k[0] for k in _MEDIANS):
        eager = _MEDIANS.get((name, "eager"))
        for variant in ("cpp", "reference"):
            t = _MEDIANS.get((name, variant))
            if t is not None and eager is not None:
                rows.append({"case": name, "implementation": variant, "median_ms": round(t * 1e3, 4),
                             "eager_median_ms": round(eager * 1e3, 4), "eager_over_implementation": round(eager / t, 3)})
    if not rows:
        return
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "backends": perfloss.backend_info(),
            "note": "median of 25 rounds after 3 warm-up rounds; loss ops forward + backward, lean-engine ops one call"}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "ops_cpu.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    with open(os.path.join(RESULTS, "ops_cpu.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{'case':<38} {'implementation':<14} {'median ms':>10} {'eager ms':>10} {'eager / it':>10}")
    for r in rows:
        print(f"{r['case']:<38} {r['implementation']:<14} {r['median_ms']:>10.3f} {r['eager_median_ms']:>10.3f} "
              f"{r['eager_over_implementation']:>10.2f}")
