"""Single-image super-resolution, x4 by default (Johnson, Alahi, Fei-Fei 2016), with a perfloss feature loss.

A SuperResolutionNet learns to restore photographs from low-resolution copies made as in the paper:
Gaussian blur (sigma 1.0 by default) then bicubic downsampling (antialiased, as MATLAB's imresize).
Losses: ``--loss johnson`` (default), the paper's VGG-16 relu2_2 feature reconstruction (MSE);
``--loss basicsr``, VGG-19 relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with L1 distance, equal
weights (BasicSR's PerceptualLoss network and criterion). PSNR and SSIM (scikit-image's, on RGB in
[0, 1]) on the held-out images, next to plain bicubic upsampling's, are logged with each sample grid.
For example:

    python examples/super_resolution.py --images ~/data/DIV2K_train_HR --size 288 --out runs/sr
    python examples/super_resolution.py --weights random --steps 20 --size 64   # offline smoke run

See examples/common.py for what a run writes to --out and how --resume works.
"""
import sys
from typing import List, Optional

import torch

import common
import perfloss
from perfloss.evaluate.sr import bicubic_upsample, low_resolution, psnr_ssim
from perfloss.models import SuperResolutionNet

LOSSES = {
    "johnson": dict(backbone="vgg16", layers=("relu2_2",), distance="mse"),
    "basicsr": dict(backbone="vgg19", layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), distance="l1"),
}
LOSS_LABELS = {"johnson": "VGG-16 relu2_2 MSE", "basicsr": "VGG-19 relu1_1..relu5_1 L1"}


def build_parser():
    parser = common.base_parser(__doc__.split("\n\n")[0], size=288, steps=2000, out="runs/super_resolution")
    sr = parser.add_argument_group("super-resolution")
    sr.add_argument("--factor", type=int, choices=(2, 4, 8), default=4, help="upscaling factor (default %(default)s)")
    sr.add_argument("--loss", choices=tuple(LOSSES), default="johnson",
                    help="; ".join(f"{k}: {v}" for k, v in LOSS_LABELS.items()) + " (default %(default)s)")
    sr.add_argument("--blur-sigma", type=float, default=1.0,
                    help="standard deviation, in high-resolution pixels, of the Gaussian blur before downsampling "
                         "(default %(default)s)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.check_args(parser, args, size_multiple=args.factor)
    if args.blur_sigma < 0:
        parser.error(f"--blur-sigma must be non-negative, got {args.blur_sigma}")
    loss_config = dict(LOSSES[args.loss])
    weights = common.loss_weights(args.weights, loss_config["backbone"])
    images, holdout = common.load_images(args)

    torch.manual_seed(args.seed)
    generator = SuperResolutionNet(args.factor)
    loss_fn = perfloss.PerceptualLoss(loss_config.pop("backbone"), **loss_config, weights=weights, engine=args.engine)

    def degrade(batch):
        return low_resolution(batch, args.factor, args.blur_sigma)

    def columns(net, target):
        small = degrade(target)
        return {"low resolution (input)": small, f"bicubic x{args.factor}": bicubic_upsample(small, args.factor),
                "output": net(small), "target": target}

    def evaluate(net, target):
        small = degrade(target)
        ours, bicubic = psnr_ssim(net(small), target), psnr_ssim(bicubic_upsample(small, args.factor), target)
        return {**ours, **{f"bicubic_{k}": v for k, v in bicubic.items()}}

    task = common.Task(f"super-resolution x{args.factor}", generator, loss_fn, LOSS_LABELS[args.loss],
                       pair=lambda batch: (degrade(batch), batch), columns=columns, evaluate=evaluate)
    common.train(args, task, images, holdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
