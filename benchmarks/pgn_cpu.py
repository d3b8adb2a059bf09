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

Writes benchmarks/results/pgn_cpu_{pgn_curve.csv, generators.csv, summary.json, curves.png, grid.png}
(figures with matplotlib: pip install perfloss[plot]). curves.png: left, held-out cosine(predicted,
true gradient) against PGN training minutes; right, the generators' teacher loss (log scale) against
generator step. ``--replot`` redraws curves.png from the CSV and JSON files without training.
"""
import argparse
import csv
import json
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from perfloss import plots
from perfloss.pgn import (AutoencoderGenerator, PerceptualGradientNetwork, PGNTrainer, ProxyTargetLoss,
                          fold, visualize)
from perfloss.pgn.data import procedural_images
from perfloss.pgn.teacher import per_sample_sum, teacher_gradient

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

GENERATOR_LABELS = {"pgn": "PGN gradient (ProxyTargetLoss)", "true": "true teacher gradient",
                    "pixel_l1": "pixel L1 (reference)"}


def plot(path, pgn_curve, gen_curves, summary):
    """Left: held-out cosine(predicted, true gradient) against PGN training minutes; right: the
    generators' teacher loss (log scale) against generator step. Returns the Figure."""
    minutes = [r["minutes"] for r in pgn_curve]
    cosine = {"fixed held-out pairs": (minutes, [r["cosine"] for r in pgn_curve]),
              "held-out images through the online generators": (minutes, [r["online_cosine"] for r in pgn_curve])}
    reference = "pixel-MSE gradient on the fixed pairs (reference)"
    pixel_cos = summary["pgn"].get("heldout_cosine_of_pixel_mse_gradient")
    if pixel_cos is not None:
        cosine[reference] = ([0, minutes[-1]], [pixel_cos, pixel_cos])
    losses = {GENERATOR_LABELS[k]: (c["step"], c["teacher_loss"]) for k, c in gen_curves.items()}
    config, pgn = summary["config"], summary["pgn"]
    return plots.plot_panels(path, [
        plots.Panel(cosine, f"PGN distillation ({pgn['arch']}, {pgn.get('output', pgn.get('head'))} output, "
                            f"{pgn['train_steps']} steps)",
                    "PGN training time (minutes of wall clock)", "cosine(predicted, true gradient), held out",
                    dashed=[reference]),
        plots.Panel(losses, f"Generators: {summary['generators']['steps']} Adam steps on each gradient",
                    "generator step", "teacher loss per held-out image (log scale)", logy=True,
                    dashed=[GENERATOR_LABELS["pixel_l1"]]),
    ], title=f"PGN on CPU: teacher {summary['teacher']}, {config['size']}x{config['size']} procedural images, "
             f"batch {config['batch_size']}")


def replot(out, prefix):
    """Redraw <prefix>_curves.png from the CSV and JSON files a run saved in ``out`` (no training)."""
    p = lambda name: os.path.join(out, f"{prefix}_{name}")  # noqa: E731
    with open(p("pgn_curve.csv"), newline="") as f:
        pgn_curve = [{k: float(v) if v else float("nan") for k, v in row.items()} for row in csv.DictReader(f)]
    gen_curves = {}
    with open(p("generators.csv"), newline="") as f:
        for row in csv.DictReader(f):
            c = gen_curves.setdefault(row["generator_gradient"], {"step": [], "teacher_loss": []})
            c["step"].append(int(row["step"]))
            c["teacher_loss"].append(float(row["teacher_loss"]))
    with open(p("summary.json")) as f:
        summary = json.load(f)
    fig = plot(p("curves.png"), pgn_curve, gen_curves, summary)
    print("wrote", p("curves.png"))
    return fig


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
    ap.add_argument("--replot", action="store_true",
                    help="only redraw <out>/<prefix>_curves.png from the CSV and JSON files of an earlier run")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(args.out, args.prefix)
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
    with torch.no_grad():
        pgn.eval()
        proxy, g_pred = pgn(trainer.eval_y_hat, trainer.eval_y)
    visualize(trainer.eval_y_hat, trainer.eval_y, proxy, g_pred, trainer.eval_g_true, p("grid.png"),
              title=f"PGN {args.arch} ({args.output} output) after {pgn_steps} steps: held-out pairs")
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
    plot(p("curves.png"), pgn_curve, gen_curves, summary)
    print(json.dumps(summary["pgn"], indent=1))
    print(json.dumps(summary["generators"], indent=1))
    return summary


if __name__ == "__main__":
    main()
