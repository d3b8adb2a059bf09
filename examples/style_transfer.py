"""Fast neural style transfer (Johnson, Alahi, Fei-Fei 2016) with perfloss.JohnsonLoss as the loss.

A TransformNet learns to restyle any photograph in one forward pass: content loss at VGG-16 relu2_2
against the photograph itself, style loss (Gram matrices at relu1_2, relu2_2, relu3_3, relu4_3)
against one style image, and total variation. For example:

    python examples/style_transfer.py --style my_painting.jpg --images ~/data/coco/train2014 --out runs/style
    python examples/style_transfer.py --weights random --steps 20 --size 64   # offline smoke run

See examples/common.py for what a run writes to --out and how --resume works.
"""
import sys
from typing import List, Optional

import torch
import torch.nn.functional as F

import common
import perfloss
from perfloss.images import SAMPLE_PHOTOGRAPHS, center_crop, read_image, sample_photographs
from perfloss.models import TransformNet

DEFAULT_STYLE = "coffee"


def build_parser():
    parser = common.base_parser(__doc__.split("\n\n")[0], size=256, steps=2000, out="runs/style_transfer")
    style = parser.add_argument_group("style transfer")
    style.add_argument("--style", metavar="IMAGE", default=None,
                       help=f"the style image (default: scikit-image's {DEFAULT_STYLE!r} photograph)")
    style.add_argument("--style-size", type=int, default=None,
                       help="the style image is scaled so its shorter side is this many pixels (default: --size)")
    style.add_argument("--content-weight", type=float, default=1.0,
                       help="weight of the relu2_2 content term (default %(default)s)")
    style.add_argument("--style-weight", type=float, default=5.0,
                       help="weight of the Gram (style) terms (default %(default)s)")
    style.add_argument("--tv-weight", type=float, default=1e-6,
                       help="weight of the total-variation term (default %(default)s)")
    style.add_argument("--norm", choices=("instance", "batch"), default="instance",
                       help="TransformNet's normalisation: instance (the later standard) or batch (the paper's); "
                            "default %(default)s")
    return parser


def style_image(path: Optional[str], side: int) -> torch.Tensor:
    """The (3, h, w) style image, scaled (antialiased) so its shorter side is ``side``."""
    image = read_image(path) if path else sample_photographs()[SAMPLE_PHOTOGRAPHS.index(DEFAULT_STYLE)]
    scale = side / min(image.shape[-2:])
    size = [max(1, round(n * scale)) for n in image.shape[-2:]]
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.check_args(parser, args)
    if args.style_size is not None and args.style_size < 1:
        parser.error(f"--style-size must be at least 1, got {args.style_size}")
    try:
        style = style_image(args.style, args.style_size or args.size)
    except (FileNotFoundError, ValueError) as err:
        parser.error(f"--style: {err}")
    weights = common.loss_weights(args.weights, "vgg16")
    images, holdout = common.load_images(args)

    torch.manual_seed(args.seed)
    generator = TransformNet(norm=args.norm)
    loss_fn = perfloss.JohnsonLoss(content_weight=args.content_weight, style_weight=args.style_weight,
                                   tv_weight=args.tv_weight, weights=weights, engine=args.engine)
    loss_fn.set_target(style[None])  # the style Grams, computed once (moved with the loss to the device)
    style_column = center_crop(style, args.size)[None].expand(len(holdout), -1, -1, -1)

    def columns(net, content):
        return {"content (input)": content, "stylised (output)": net(content), "style (target)": style_column}

    task = common.Task("style transfer", generator, loss_fn, "JohnsonLoss (VGG-16 content + style + TV)",
                       pair=lambda batch: (batch, batch), columns=columns)
    common.train(args, task, images, holdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
