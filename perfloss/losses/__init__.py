from perfloss.losses.dists import DISTS
from perfloss.losses.johnson import JohnsonLoss
from perfloss.losses.lpips import LPIPS
from perfloss.losses.multiscale import MultiScaleLoss
from perfloss.losses.perceptual import PerceptualLoss
from perfloss.losses.style import StyleLoss
from perfloss.losses.tv import TVLoss

__all__ = ["DISTS", "JohnsonLoss", "LPIPS", "MultiScaleLoss", "PerceptualLoss", "StyleLoss", "TVLoss"]
