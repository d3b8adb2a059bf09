"""``perfloss evaluate``: compare loss networks and layers on your data (Pihlgren et al. 2023's protocols).

    perfloss evaluate 2afc --test bapps/2afc/val/traditional --networks vgg16 resnet18 --out runs/eval
    perfloss evaluate sr --train DIR --test DIR --steps 2000 --distances mse l1
    perfloss evaluate autoencoder --train DIR --test DIR --layers relu2_2 layer1

Writes, under --out: results/<protocol>-<network>-<layer>-<distance>.json (one per configuration,
reused by the next run with the same settings), <protocol>.csv and <protocol>.md (the table) and
<protocol>_<metric>_<distance>.png (heat-maps: networks x extraction points).
"""
import argparse

import torch

from perfloss import plots
from perfloss.backbones import list_backbones
from perfloss.evaluate.configs import loss_configs
from perfloss.evaluate.report import write_heatmaps, write_table
from perfloss.evaluate.run import PROTOCOLS, WEIGHTS, Settings, evaluate
from perfloss.losses.perceptual import DISTANCES


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an argparse subparsers object; its ``func(args)`` returns an exit code."""
    p = subparsers.add_parser("evaluate", help="compare loss networks and layers on your data (2AFC, "
                              "super-resolution, autoencoder)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=tuple(PROTOCOLS),
                   help="2afc: agreement with people on a BAPPS-format folder; sr: train a super-resolution net "
                        "with each loss, PSNR and SSIM; autoencoder: train an autoencoder with each loss, "
                        "linear-probe accuracy on its codes")
    data = p.add_argument_group("data")
    data.add_argument("--test", metavar="DIR", required=True,
                      help="what is measured: 2afc, a BAPPS-format folder (ref/, p0/, p1/, judge/); sr, a folder "
                           "of images; autoencoder, a folder with one sub-folder of images per class")
    data.add_argument("--train", metavar="DIR",
                      help="training data (sr: a folder of images; autoencoder: one sub-folder per class, the "
                           "test folder's classes among them); 2afc trains nothing")
    data.add_argument("--size", type=int,
                      help="image side: 2afc and autoencoder images are scaled and centre-cropped to it, sr trains "
                           "on random crops of it (default: " +
                           ", ".join(f"{name} {m.DEFAULT_SIZE}" for name, m in PROTOCOLS.items()) + ")")
    losses = p.add_argument_group("loss configurations (every combination is evaluated)")
    losses.add_argument("--networks", nargs="+", default=["vgg16"], metavar="NAME",
                        help="loss networks (default vgg16); known: " + ", ".join(list_backbones()))
    losses.add_argument("--layers", nargs="+", default=["study"], metavar="LAYER",
                        help="'study' (Pihlgren et al.'s four extraction points per network; default), 'all' "
                             "(every tap), or tap names: each network takes the ones it has")
    losses.add_argument("--distances", nargs="+", default=["mse"], choices=DISTANCES, metavar="DISTANCE",
                        help=f"feature distances, of {', '.join(DISTANCES)} (default mse)")
    losses.add_argument("--weights", choices=WEIGHTS, default="imagenet",
                        help="loss network weights: torchvision's ImageNet files (from the torch hub cache, "
                             "downloaded when online) or none (seeded random networks: runs offline, measures "
                             "nothing about the ImageNet networks); default %(default)s")
    train = p.add_argument_group("training (sr, autoencoder)")
    train.add_argument("--steps", type=int, default=500, help="Adam steps per configuration (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=8,
                       help="images per step, and per batch when measuring (default %(default)s)")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    train.add_argument("--factor", type=int, default=4, help="sr upscaling factor, 2, 4 or 8 (default %(default)s)")
    train.add_argument("--code-size", type=int, default=128,
                       help="autoencoder code length (default %(default)s)")
    train.add_argument("--seed", type=int, default=0,
                       help="seeds each network's initialisation and the batches: every configuration trains "
                            "from the same start on the same batches (default %(default)s)")
    run = p.add_argument_group("running")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="torch device, e.g. cpu, cuda, cuda:1 (default %(default)s)")
    run.add_argument("--out", metavar="DIR", default="runs/evaluate",
                     help="folder for the result files, table and heat-maps (default %(default)s)")
    run.add_argument("--overwrite", action="store_true",
                     help="recompute configurations whose result file exists (default: reuse them)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main, parser=p)
    return p


def main(args) -> int:
    parser = args.parser
    if args.protocol == "2afc" and args.train is not None:
        parser.error("2afc trains nothing: --train is not used (the BAPPS-format folder is --test)")
    if args.protocol != "2afc" and args.train is None:
        parser.error(f"{args.protocol} trains a network with each loss: give --train DIR")
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device!r} cannot be used here: {err}")
    layers = args.layers[0] if args.layers in (["study"], ["all"]) else args.layers
    try:
        configs = loss_configs(args.networks, layers, args.distances)
        settings = Settings(args.protocol, test=args.test, train=args.train, weights=args.weights,
                            steps=args.steps, batch_size=args.batch_size, size=args.size, lr=args.lr,
                            factor=args.factor, code_size=args.code_size, seed=args.seed, device=args.device)
    except ValueError as err:
        parser.error(str(err))
    plots.require_matplotlib()  # the heat-maps need it: fail before the work, not after
    try:
        results = evaluate(configs, settings, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:  # a folder's layout, a result file, missing weights
        raise SystemExit(f"perfloss evaluate: error: {err}") from err
    written = write_table(args.out, args.protocol, results)
    written += write_heatmaps(args.out, args.protocol, PROTOCOLS[args.protocol].METRICS, results)
    print(written[1].read_text(), end="")
    print(f"perfloss evaluate: {len(results)} configurations; wrote " + ", ".join(str(p) for p in written))
    return 0
