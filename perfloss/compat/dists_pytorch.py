"""``DISTS_pytorch.DISTS`` (dists-pytorch 0.1) backed by :class:`perfloss.DISTS`.

Differences: none in the values; perfloss's backbone is frozen, and the structure/texture weights
(``alpha``, ``beta``) are buffers, not parameters (the package registers them as parameters but
never trains them).
"""
import torch
from torch import nn

from perfloss.losses.dists import DISTS as PerflossDISTS


class DISTS(nn.Module):
    """``DISTS(load_weights=True)``; ``forward(x, y, require_grad=False, batch_average=False)``: inputs in
    [0, 1]; per-sample scores ``(B,)`` squeezed as the package does (a scalar for one image), their
    mean with ``batch_average=True``; no gradient unless ``require_grad=True``.

    perfloss keywords: ``weights`` (VGG-16's, default ``"imagenet"``), ``dists_weights`` (alpha/beta,
    default the wheel's ``weights.pt``), ``engine``, ``chunk_size``.
    """

    def __init__(self, load_weights=True, *, weights="imagenet", dists_weights=None, engine=None, chunk_size=None):
        super().__init__()
        if not load_weights:
            raise ValueError("load_weights=False (random alpha/beta) is not supported by perfloss.compat: "
                             "pass dists_weights=<a state dict with alpha and beta> instead")
        self.dists = PerflossDISTS(weights=weights, dists_weights=dists_weights, reduction="none", engine=engine,
                                   chunk_size=chunk_size)

    def forward(self, x: torch.Tensor, y: torch.Tensor, require_grad: bool = False,
                batch_average: bool = False) -> torch.Tensor:
        with torch.set_grad_enabled(require_grad and torch.is_grad_enabled()):
            score = self.dists(x, y).squeeze()
        return score.mean() if batch_average else score
