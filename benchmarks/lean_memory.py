"""Memory held for backward, eager vs the lean engine (issue 3's table), per image, fp32.

    nice python benchmarks/lean_memory.py [--size 256] [--batch 1] [--out benchmarks/results/lean_memory_cpu]

For each configuration the loss is built once per engine on a batch of ``--batch`` images with a
target image batch, and the autograd graph is walked from the loss (perfloss.engine.memory:
unique storages of saved tensors and of tensors held on custom Function contexts; the frozen
weights and the input image are excluded, they are resident anyway). Eager is also measured with
saved-tensor hooks. The lean figure is compared with the expected masks + pool codes + tap
gradients (lean_expected_bytes: the lean input pass run on meta tensors). Weights are random
(seeded): memory does not depend on them.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import warnings

import torch

from perfloss.backbones import get_backbone
from perfloss.engine import lean_loss, plan_for
from perfloss.engine.memory import MiB, graph_saved_bytes, hook_saved_bytes, lean_expected_bytes
from perfloss.heads import TapHead

CONFIGS = [
    ("VGG-16 relu2_2 MSE", "vgg16", [("relu2_2", "mse")], 69.7, 10.0),
    ("VGG-16 relu2_2 L1", "vgg16", [("relu2_2", "l1")], None, 2.5),
    ("Johnson style (Gram relu1_2, relu2_2, relu3_3, relu4_3)", "vgg16",
     [("relu1_2", "gram"), ("relu2_2", "gram"), ("relu3_3", "gram"), ("relu4_3", "gram")], 118.0, 33.0),
    ("VGG-19 L1 relu1_1..relu5_1", "vgg19",
     [("relu1_1", "l1"), ("relu2_1", "l1"), ("relu3_1", "l1"), ("relu4_1", "l1"), ("relu5_1", "l1")], 176.0, 5.0),
]


def eager_loss(net, heads, x, target_x):
    feats = net(x)
    with torch.no_grad():
        tf = net(target_x)
    return sum(h.values(feats[h.tap], h.prepare_target(tf[h.tap])) for h in heads)


def measure(name, backbone, spec, size, batch, tap_grad_dtype=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_backbone(backbone, [t for t, _ in spec])
    heads = [TapHead(t, k) for t, k in spec]
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, requires_grad=True)
    t = torch.randn(batch, 3, size, size)
    exclude = list(net.parameters()) + list(net.buffers()) + [x, t]
    loss, hooked = hook_saved_bytes(eager_loss, net, heads, x, t, exclude=exclude)
    eager = graph_saved_bytes(loss, exclude=exclude)
    del loss
    plan = plan_for(net)
    lean_v = lean_loss(plan, x, heads, target_x=t, tap_grad_dtype=tap_grad_dtype)
    lean = graph_saved_bytes(lean_v, exclude=exclude)
    expected = lean_expected_bytes(plan, x.shape, heads, tap_grad_dtype=tap_grad_dtype)
    del lean_v
    per = float(batch) * MiB
    return dict(config=name + (f" (tap grads {str(tap_grad_dtype).split('.')[-1]})" if tap_grad_dtype else ""),
                backbone=backbone, taps=[t for t, _ in spec], kinds=[k for _, k in spec],
                eager_mib=eager / per, eager_hooks_mib=hooked / per, lean_mib=lean / per,
                lean_expected_mib=expected["total"] / per, expected_masks_mib=expected["masks"] / per,
                expected_codes_mib=expected["codes"] / per, expected_taps_mib=expected["taps"] / per,
                ratio=eager / lean, lean_vs_expected=lean / expected["total"], plan_is_lean=plan.is_lean)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/lean_memory_cpu")
    ap.add_argument("--only", type=int, nargs="*", help="indices into the configuration list")
    args = ap.parse_args(argv)
    rows = []
    for i, (name, backbone, spec, issue_eager, issue_lean) in enumerate(CONFIGS):
        if args.only and i not in args.only:
            continue
        for dt in (None, torch.bfloat16) if any(k != "l1" for _, k in spec) else (None,):
            row = measure(name, backbone, spec, args.size, args.batch, dt)
            row.update(issue_eager_mib=issue_eager, issue_lean_target_mib=issue_lean if dt is None else None)
            rows.append(row)
            print(f"{row['config']:<70} eager {row['eager_mib']:7.2f} MiB (hooks {row['eager_hooks_mib']:7.2f})  "
                  f"lean {row['lean_mib']:6.2f} MiB  expected {row['lean_expected_mib']:6.2f}  "
                  f"x{row['ratio']:.1f}", flush=True)
    meta = dict(device=platform.processor() or platform.machine(), device_type="cpu",
                torch=torch.__version__, triton=_triton_version(), python=sys.version.split()[0],
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                size=args.size, batch=args.batch, dtype="float32", unit="MiB per image",
                command="python benchmarks/lean_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(f"# Memory held for backward, per image, {args.size}x{args.size} fp32 (CPU)\n\n")
        f.write(f"torch {meta['torch']}, triton {meta['triton']}, {meta['date']}; `{meta['command']}`\n\n")
        f.write("| configuration | eager MiB (graph walk) | eager MiB (hooks) | lean MiB | lean expected MiB "
                "(masks + codes + taps) | eager/lean | lean/expected | issue target lean MiB |\n")
        f.write("|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['config']} | {r['eager_mib']:.1f} | {r['eager_hooks_mib']:.1f} | {r['lean_mib']:.2f} | "
                    f"{r['lean_expected_mib']:.2f} ({r['expected_masks_mib']:.2f} + {r['expected_codes_mib']:.2f} + "
                    f"{r['expected_taps_mib']:.2f}) | {r['ratio']:.1f}x | {r['lean_vs_expected']:.3f} | "
                    f"{r['issue_lean_target_mib'] if r['issue_lean_target_mib'] is not None else '-'} |\n")
    return rows


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
