"""``perfloss pgn-train``: distil a perceptual loss into a perceptual gradient network."""
import argparse
import json
import os

import torch

from .networks import ARCHS
from .outputs import OUTPUTS


def build_teacher(spec: str, weights, input_range=(0.0, 1.0), engine=None):
    """``"vgg19"``: the paper's teacher; ``"BACKBONE:TAP,TAP,..."``: mean L1 over those taps of that
    backbone with average pooling (e.g. ``vgg11:relu1_1,relu2_1``). ``engine``: None (the loss chooses),
    ``"lean"`` or ``"eager"``."""
    from .teacher import paper_teacher
    if spec == "vgg19":
        return paper_teacher(weights=weights, input_range=input_range, engine=engine)
    if ":" not in spec:
        raise ValueError(f"--teacher must be 'vgg19' or 'BACKBONE:TAP,TAP,...', got {spec!r}")
    from perfloss import PerceptualLoss
    from perfloss.backbones import get_backbone
    name, taps = spec.split(":", 1)
    taps = tuple(t for t in taps.split(",") if t)
    backbone = get_backbone(name, taps=taps, weights=weights, pooling="avg")
    kwargs = {} if engine is None else {"engine": engine}
    return PerceptualLoss(backbone=backbone, layers=taps, distance="l1", reduction="sum", input_range=input_range,
                          **kwargs)


def run(args) -> int:
    from .data import procedural_images
    from .model import PerceptualGradientNetwork
    from .trainer import PGNTrainer

    if (args.images is None) == (args.procedural is None):
        print("pgn-train: give exactly one of --images DIR and --procedural N")
        return 2
    torch.manual_seed(args.seed)  # the PGN's initial weights too: two runs with one seed are the same run
    images = args.images if args.images is not None else procedural_images(args.procedural, args.size, args.seed)
    weights = None if args.teacher_weights in (None, "none") else args.teacher_weights
    if weights is None:
        print("pgn-train: WARNING: the teacher has random weights (--teacher-weights not given); the PGN will "
              "imitate a loss that is not perceptually meaningful")
    grad_scale = args.grad_scale
    if grad_scale not in (None, "auto"):
        try:
            grad_scale = float(grad_scale)
        except ValueError:
            print(f"pgn-train: --grad-scale must be a number or 'auto', got {grad_scale!r}")
            return 2
    pgn = PerceptualGradientNetwork(args.arch, output=args.output, grad_scale=grad_scale)
    resume_state = False
    if args.resume:
        from perfloss import checkpoint
        from perfloss.backbones.weights import load_file
        saved = load_file(args.resume, "--resume file")
        resume_state = isinstance(saved, dict) and saved.get("format") == checkpoint.FORMAT
        if resume_state:  # a trainer_state.pt: the PGN as configured then; its weights come with resume()
            config = dict(saved["extra"]["pgn_config"], input_range=tuple(saved["extra"]["pgn_config"]["input_range"]))
            pgn = PerceptualGradientNetwork(**config)
        else:
            pgn = PerceptualGradientNetwork.load(args.resume)
    teacher = build_teacher(args.teacher, weights, pgn.input_range, args.teacher_engine)
    trainer = PGNTrainer(pgn, teacher, images, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
                         grad_coef=args.grad_coef, grad_loss=args.grad_loss, perceptual_coef=args.perceptual_coef,
                         l1_coef=args.l1_coef,
                         device=args.device, checkpoint_dir=args.checkpoint_dir,
                         checkpoint_every=args.checkpoint_every, progress=not args.no_progress, seed=args.seed)
    steps = args.steps
    if resume_state:
        trainer.resume(args.resume)
        steps = None if steps is None else max(0, steps - trainer.step_count)  # --steps counts the whole run
        print(f"pgn-train: resumed from {args.resume} at step {trainer.step_count}")
    trainer.train(steps=steps, minutes=args.minutes, eval_every=args.eval_every)
    final = trainer.eval_history[-1]
    print(f"pgn-train: {trainer.step_count} steps; held-out cosine {final['cosine']:.4f}, "
          f"relative error {final['rel_error']:.4f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        trainer.save_checkpoint(args.out)
        print(f"pgn-train: wrote {args.out}")
    if args.history:
        with open(args.history, "w") as f:
            json.dump({"train": trainer.history, "eval": trainer.eval_history}, f)
    if args.visualize:
        from .teacher import teacher_gradient
        from .visualize import visualize
        pgn.eval()
        with torch.no_grad():
            proxy, g_pred = pgn(trainer.eval_y_hat, trainer.eval_y)
        _, g_true = teacher_gradient(trainer.teacher, trainer.eval_y_hat, trainer.eval_y)
        visualize(trainer.eval_y_hat, trainer.eval_y, proxy, g_pred, g_true, args.visualize,
                  input_range=pgn.input_range)
        print(f"pgn-train: wrote {args.visualize}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pgn-train`` on an argparse subparsers object; its ``func(args)`` returns an exit code."""
    p = subparsers.add_parser("pgn-train", help="distil a perceptual loss into a perceptual gradient network",
                              description=__doc__)
    src = p.add_argument_group("images")
    src.add_argument("--images", help="folder of images (JPEG, PNG, WebP, BMP, TIFF; sub-folders included)")
    src.add_argument("--procedural", type=int, metavar="N", help="use N procedurally generated images instead")
    src.add_argument("--size", type=int, default=64, help="size of procedural images (default 64)")
    src.add_argument("--crop", type=int, default=None, help="random crop size (default: whole images)")
    net = p.add_argument_group("network")
    net.add_argument("--arch", choices=ARCHS, default="resnet4")
    net.add_argument("--output", choices=OUTPUTS, default="sigmoid",
                     help="how the network's output becomes the proxy image (default sigmoid, the paper's)")
    net.add_argument("--grad-scale", default=None,
                     help="s: a number, 'auto' (calibrated from the teacher on the first batch; recommended for any "
                          "teacher but the paper's ImageNet VGG-19 at 224x224), or unset (the paper's 0.025 ResNet, "
                          "0.048 UNet)")
    net.add_argument("--resume", help="continue from this checkpoint: a trainer_state.pt from --checkpoint-dir "
                                      "continues the run exactly (run the same command with --resume added; "
                                      "--steps counts from the run's start); a PGN file (pgn_last.pt, --out) "
                                      "starts a new run from its weights. The file's PGN config wins.")
    t = p.add_argument_group("teacher")
    t.add_argument("--teacher", default="vgg19", help="'vgg19' (the paper's) or 'BACKBONE:TAP,TAP,...'")
    t.add_argument("--teacher-engine", choices=("lean", "eager"), default=None,
                   help="the teacher loss's engine (default: the loss chooses, lean where possible)")
    t.add_argument("--teacher-weights", default=None,
                   help="path to torchvision-format weights, 'imagenet', or 'none' (random init; default)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=None)
    o.add_argument("--minutes", type=float, default=None)
    o.add_argument("--batch-size", type=int, default=8)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--grad-loss", choices=("mse", "relative"), default="mse",
                   help="gradient term: 'mse' (the paper's) or 'relative' (MSE / mean squared true gradient)")
    o.add_argument("--grad-coef", type=float, default=None, help="default 2^26 for mse, 1 for relative")
    o.add_argument("--perceptual-coef", type=float, default=0.2)
    o.add_argument("--l1-coef", type=float, default=0.5)
    o.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("output")
    r.add_argument("--checkpoint-dir", default=None)
    r.add_argument("--checkpoint-every", type=int, default=1000)
    r.add_argument("--eval-every", type=int, default=100)
    r.add_argument("--out", default=None, help="write the final PGN checkpoint here")
    r.add_argument("--history", default=None, help="write the training/eval history here (JSON)")
    r.add_argument("--visualize", default=None, help="write a PNG grid of held-out pairs here")
    r.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_func)
    return p


def _func(args) -> int:
    if args.steps is None and args.minutes is None:
        print("pgn-train: give --steps and/or --minutes")
        return 2
    return run(args)


def main(argv=None) -> int:
    """Standalone entry (``python -m perfloss.pgn.cli pgn-train ...``)."""
    parser = argparse.ArgumentParser(prog="perfloss")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
