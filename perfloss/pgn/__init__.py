"""Perceptual gradient networks (Nikulin et al. 2021) and proxy-target training (Weber 2021).

- :func:`proxy_regression`, :func:`proxy_target`: regression onto x - step * grad (any gradient source);
- :class:`PerceptualGradientNetwork`: predicts a perceptual loss's gradient from (y_hat, y);
- :class:`ProxyTargetLoss`: drop-in loss module whose backward sends the PGN gradient into y_hat;
- :class:`PGNTrainer`: distils a teacher loss into a PGN;
- :func:`visualize`: a PNG grid of y_hat, y, proxy, predicted and true gradient;
- :func:`fold`: the fast eval-only copy :class:`InferencePGN` (folded BatchNorm, channels_last,
  optional bf16 and CUDA graphs, fused ops ``perfloss::pgn_input`` and ``perfloss::pgn_output``).

The ``perfloss pgn-train`` command is registered by :func:`perfloss.pgn.cli.add_parser`.
"""
from .proxy import proxy_regression, proxy_target
from .model import PerceptualGradientNetwork
from .inference import InferencePGN, fold
from .loss import ProxyTargetLoss
from .generators import AutoencoderGenerator
from .teacher import paper_teacher
from .trainer import PGNTrainer
from .data import procedural_images
from .visualize import visualize

__all__ = ["proxy_regression", "proxy_target", "PerceptualGradientNetwork", "InferencePGN", "fold",
           "ProxyTargetLoss", "AutoencoderGenerator", "paper_teacher", "PGNTrainer", "procedural_images",
           "visualize"]
