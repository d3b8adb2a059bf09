"""PGN benchmark on CPU (issue 5, "Measured"): distil a random-weight teacher into a PGN for a
wall-clock budget on 64x64 procedural images, logging held-out cosine(g_pred, g_true); then train
small autoencoder generators for the same number of steps on (a) the PGN's gradient through
ProxyTargetLoss, (b) the true teacher gradient, (c) plain pixel L1 (a reference point), and record
their teacher loss on held-out images.

    nice -n 10 python benchmarks/pgn_cpu.py --minutes 10 --batch-size 4 --gen-steps 200 --eval-every 25 \
        --threads 1 --grad-scale auto

(``--grad-scale auto`` calibrates s from the teacher on the first batch; without it the paper's fixed
s = 0.025, which is about 9x too small for this random-weight 64x64 teacher: see
benchmarks/results/pgn_cpu_NOTE.md.)

Writes benchmarks/results/pgn_cpu_{pgn_curve.csv, generators.csv, summary.json, curves.png, grid.png}.
The plot: left panel, held-out cosine (y from -1 to 1) against training minutes (blue: fixed held-out
pairs; green: held-out images through the current online generators); right panel,
generator teacher loss (log scale) against generator step: blue = PGN gradient, red = true gradient,
grey = pixel L1.
"""
import argparse
import csv
import json
import math
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perfloss.pgn import (AutoencoderGenerator, PerceptualGradientNetwork, PGNTrainer, ProxyTargetLoss,  # noqa: E402
                          fold, visualize)
from perfloss.pgn.data import procedural_images  # noqa: E402
from perfloss.pgn.png import write_png  # noqa: E402
from perfloss.pgn.teacher import per_sample_sum, teacher_gradient  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# -- a tiny plotting rasteriser (no matplotlib here) -------------------------------------------------
_FONT = {  # 3x5 bitmaps
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "e": "000111101110011", " ": "000000000000000",
}


def _text(img, x, y, s, color=(0, 0, 0), scale=2):
    for k, ch in enumerate(s):
        bits = _FONT.get(ch, _FONT[" "])
        for i, b in enumerate(bits):
            if b == "1":
                r, c = divmod(i, 3)
                y0, x0 = y + r * scale, x + (k * 4 + c) * scale
                img[y0:y0 + scale, x0:x0 + scale] = torch.tensor(color, dtype=torch.uint8)


def _line(img, x0, y0, x1, y1, color, width=2):
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    for t in torch.linspace(0, 1, n + 1).tolist():
        x, y = round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t)
        img[max(0, y - width // 2):y + (width + 1) // 2, max(0, x - width // 2):x + (width + 1) // 2] = \
            torch.tensor(color, dtype=torch.uint8)


def _panel(img, left, top, w, h, series, xmax, ymin, ymax, log_y=False, yticks=()):
    _line(img, left, top + h, left + w, top + h, (0, 0, 0), 1)
    _line(img, left, top, left, top + h, (0, 0, 0), 1)
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    lo, hi = f(ymin), f(ymax)

    def to_px(x, y):
        return left + w * x / xmax, top + h - h * (f(max(y, ymin)) - lo) / (hi - lo)
    for tick in yticks:
        _, py = to_px(0, tick)
        _line(img, left - 4, py, left, py, (0, 0, 0), 1)
        label = f"{tick:g}" if not log_y else f"{tick:.0e}".replace("+0", "").replace("+", "")
        _text(img, left - 46, int(py) - 5, label)
    _text(img, left + w - 40, top + h + 6, f"{xmax:g}"[:6])
    _text(img, left, top + h + 6, "0")
    for xs, ys, color in series:
        pts = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        for (a, b), (c, d) in zip(pts, pts[1:]):
            _line(img, a, b, c, d, color)


def plot(path, pgn_curve, gen_curves):
    img = torch.full((300, 820, 3), 255, dtype=torch.uint8)
    xs = [r["minutes"] for r in pgn_curve]
    _panel(img, 50, 20, 320, 250, [(xs, [r["cosine"] for r in pgn_curve], (0, 90, 200)),
                                   (xs, [r.get("online_cosine", float("nan")) for r in pgn_curve], (0, 160, 60))],
           max(xs[-1], 1e-3), -1.0, 1.0, yticks=(-1, -0.5, 0, 0.5, 1))
    colors = {"pgn": (0, 90, 200), "true": (210, 30, 30), "pixel_l1": (140, 140, 140)}
    allv = [v for c in gen_curves.values() for v in c["teacher_loss"]]
    series = [(c["step"], c["teacher_loss"], colors[k]) for k, c in gen_curves.items()]
    steps = max(max(c["step"]) for c in gen_curves.values())
    ymin, ymax = min(allv) * 0.9, max(allv) * 1.1
    ticks = [10 ** e for e in range(math.floor(math.log10(ymin)), math.ceil(math.log10(ymax)) + 1)
             if ymin <= 10 ** e <= ymax] or [ymin, ymax]
    _panel(img, 480, 20, 320, 250, series, steps, ymin, ymax, log_y=True, yticks=ticks)
    write_png(path, img)


# -- the benchmark --------------------------------------------------------------------------------
def train_generator(kind, teacher, pgn_loss, train_images, eval_images, steps, batch, lr, depth, seed, log_every):
    torch.manual_seed(seed)
    gen = AutoencoderGenerator(depth, 32)
    opt = torch.optim.Adam(gen.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    curve = {"step": [], "teacher_loss": [], "seconds": []}
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step % log_every == 0 or step == steps:
            with torch.no_grad():
                tl = float(per_sample_sum(teacher, gen(eval_images), eval_images)) / eval_images.shape[0]
            curve["step"].append(step)
            curve["teacher_loss"].append(tl)
            curve["seconds"].append(time.perf_counter() - t0)
        if step == steps:
            break
        y = train_images[torch.randint(0, train_images.shape[0], (batch,), generator=g)]
        y_hat = gen(y)
        opt.zero_grad(set_to_none=True)
        if kind == "pgn":
            pgn_loss(y_hat, y).backward()
        elif kind == "true":
            _, g_true = teacher_gradient(teacher, y_hat, y)
            y_hat.backward(g_true)
        else:
            F.l1_loss(y_hat, y).backward()
        opt.step()
    return curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="PGN training wall-clock budget")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--images", type=int, default=512, help="procedural training images")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--arch", default="resnet4")
    ap.add_argument("--output", default="sigmoid", help="the PGN's output parameterisation")
    ap.add_argument("--grad-scale", default=None,
                    help="s: a number, 'auto' (calibrated from the teacher on the first batch), or unset (the "
                         "paper's fixed 0.025 for ResNets)")
    ap.add_argument("--grad-loss", default="mse", choices=("mse", "relative"),
                    help="PGN gradient loss: 'mse' (paper, --grad-coef 2^26) or 'relative' (MSE / mean g_true^2)")
    ap.add_argument("--teacher", default="vgg19", help="'vgg19' (the paper's, random weights) or BACKBONE:TAPS")
    ap.add_argument("--teacher-engine", default="eager", choices=("eager", "lean"),
                    help="teacher engine (default eager: on CPU it was the faster one here)")
    ap.add_argument("--grad-coef", type=float, default=None, help="default: 2^26 (mse) or 1 (relative)")
    ap.add_argument("--lr", type=float, default=1e-3, help="PGN Adam learning rate (paper: 1e-3)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--gen-steps", type=int, default=None, help="generator steps (default: as many as PGN steps, max 300)")
    ap.add_argument("--gen-depth", type=int, default=1)
    ap.add_argument("--gen-lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--prefix", default="pgn_cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    from perfloss.pgn.cli import build_teacher
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teacher weights: intended here
        teacher = build_teacher(args.teacher, None, engine=args.teacher_engine)

    images = procedural_images(args.images + 16, args.size, seed=0)
    train_images, holdout = images[:args.images], images[args.images:]
    grad_scale = args.grad_scale if args.grad_scale in (None, "auto") else float(args.grad_scale)
    pgn = PerceptualGradientNetwork(args.arch, output=args.output, grad_scale=grad_scale)
    trainer = PGNTrainer(pgn, teacher, train_images, holdout=holdout, batch_size=args.batch_size,
                         grad_coef=args.grad_coef, grad_loss=args.grad_loss, lr=args.lr, progress=False, seed=0)
    if trainer.calibration is not None:
        print(f"[pgn] grad_scale='auto' calibrated on the first batch: {trainer.calibration}", flush=True)
    ev0 = trainer.evaluate()
    # reference point: how well the plain pixel-difference direction (the MSE gradient) already
    # aligns with the teacher's gradient on the same held-out pairs
    from perfloss.pgn.trainer import gradient_metrics
    pixel_cos = gradient_metrics(trainer.eval_y_hat - trainer.eval_y, trainer.eval_g_true)["cosine"]
    pgn_curve = [dict(ev0, step=0, minutes=0.0)]
    t0 = time.perf_counter()

    def log(record):
        if "eval" in record:
            ev = record["eval"]
            pgn_curve.append(dict(ev, minutes=ev["time_s"] / 60))
            recent = trainer.history[-args.eval_every:]
            ev["train_cosine"] = sum(r["cosine"] for r in recent) / len(recent)
            print(f"[pgn] {ev['time_s'] / 60:6.2f} min step {ev['step']:5d} held-out cosine {ev['cosine']:.4f} "
                  f"rel.err {ev['rel_error']:.3f} | online held-out cosine {ev['online_cosine']:.4f} "
                  f"rel.err {ev['online_rel_error']:.3f} | train cosine {ev['train_cosine']:.4f}", flush=True)
    trainer.train(minutes=args.minutes, eval_every=args.eval_every, callback=log)
    train_seconds = time.perf_counter() - t0
    final = trainer.eval_history[-1]
    if pgn_curve[-1]["step"] != final["step"]:
        pgn_curve.append(dict(final, minutes=final["time_s"] / 60))
    pgn_steps = trainer.step_count

    # generators: same init, same data order, same number of steps
    gen_steps = args.gen_steps or min(pgn_steps, 300)
    log_every = max(1, gen_steps // 20)
    pgn_loss = ProxyTargetLoss(fold(pgn), reduction="sum")
    gen_curves = {}
    eval_images = holdout[:8]
    for kind in ("pgn", "true", "pixel_l1"):
        t = time.perf_counter()
        gen_curves[kind] = train_generator(kind, teacher, pgn_loss, train_images, eval_images, gen_steps,
                                           args.batch_size, args.gen_lr, args.gen_depth, 1, log_every)
        print(f"[gen {kind}] {gen_steps} steps in {time.perf_counter() - t:.0f}s; final teacher loss "
              f"{gen_curves[kind]['teacher_loss'][-1]:.4f}", flush=True)

    def tail_mean(c):
        k = max(1, len(c["teacher_loss"]) // 5)
        return sum(c["teacher_loss"][-k:]) / k
    ratio = tail_mean(gen_curves["pgn"]) / tail_mean(gen_curves["true"])

    p = lambda name: os.path.join(args.out, f"{args.prefix}_{name}")  # noqa: E731
    with open(p("pgn_curve.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "minutes", "cosine", "rel_error", "online_cosine",
                                              "online_rel_error", "train_cosine", "grad_loss"], extrasaction="ignore")
        w.writeheader()
        w.writerows(pgn_curve)
    with open(p("generators.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["generator_gradient", "step", "teacher_loss", "seconds"])
        for kind, c in gen_curves.items():
            for s, v, sec in zip(c["step"], c["teacher_loss"], c["seconds"]):
                w.writerow([kind, s, f"{v:.6g}", f"{sec:.2f}"])
    plot(p("curves.png"), pgn_curve, gen_curves)
    with torch.no_grad():
        pgn.eval()
        proxy, g_pred = pgn(trainer.eval_y_hat, trainer.eval_y)
    visualize(trainer.eval_y_hat, trainer.eval_y, proxy, g_pred, trainer.eval_g_true, p("grid.png"))
    summary = {
        "command": "nice -n 10 python benchmarks/pgn_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} threads, shared machine",
        "torch": torch.__version__, "python": platform.python_version(),
        "config": vars(args), "teacher": args.teacher + " (random weights)",
        "pgn": {"arch": args.arch, "output": args.output, "grad_scale": pgn.grad_scale,
                "grad_scale_mode": pgn.grad_scale_mode, "calibration": trainer.calibration,
                "grad_loss": trainer.grad_loss, "grad_coef": trainer.grad_coef, "params": sum(q.numel() for q in pgn.parameters()),
                "train_steps": pgn_steps, "train_seconds": round(train_seconds, 1),
                "generator_resets": trainer.resets,
                "initial_heldout": ev0, "heldout_cosine_of_pixel_mse_gradient": pixel_cos,
                "final_heldout": {k: final[k] for k in ("cosine", "rel_error", "online_cosine",
                                                        "online_rel_error", "grad_loss")},
                "final_train_cosine_last_steps": sum(r["cosine"] for r in trainer.history[-args.eval_every:])
                / len(trainer.history[-args.eval_every:])},
        "generators": {"steps": gen_steps, "depth": args.gen_depth,
                       "final_teacher_loss": {k: c["teacher_loss"][-1] for k, c in gen_curves.items()},
                       "initial_teacher_loss": gen_curves["true"]["teacher_loss"][0],
                       "tail_mean_teacher_loss": {k: tail_mean(c) for k, c in gen_curves.items()},
                       "pgn_over_true_ratio": ratio, "target_ratio": 1.5, "target_met": ratio <= 1.5,
                       "seconds": {k: round(c["seconds"][-1], 1) for k, c in gen_curves.items()}},
    }
    with open(p("summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary["pgn"], indent=1))
    print(json.dumps(summary["generators"], indent=1))
    return summary


if __name__ == "__main__":
    main()
