"""Which network and layer make the best perceptual loss for your task: run (network, layer, distance)
loss configurations through the protocols of Pihlgren et al. (2023) on your own data.

    >>> from perfloss.evaluate import Settings, evaluate, loss_configs
    >>> configs = loss_configs(["vgg16", "resnet18"], "study", ["mse"])
    >>> results = evaluate(configs, Settings("2afc", test="bapps/2afc/val/traditional"), "runs/eval")

Protocols (one file each): ``2afc`` (:mod:`.twoafc`, agreement with people's judgements on a
BAPPS-format folder), ``sr`` (:mod:`.sr`, train a super-resolution network with the loss, PSNR / SSIM),
``autoencoder`` (:mod:`.autoencoder`, train an autoencoder with the loss, linear-probe accuracy on its
codes). :func:`evaluate` keeps one result file per configuration (:mod:`.run`); :mod:`.report` writes
the table and heat-maps; ``perfloss evaluate`` (:mod:`.cli`) does all of it from the command line.
"""
from perfloss.evaluate.configs import LossConfig, loss_configs
from perfloss.evaluate.report import write_heatmaps, write_table
from perfloss.evaluate.run import PROTOCOLS, Settings, evaluate

__all__ = ["LossConfig", "PROTOCOLS", "Settings", "evaluate", "loss_configs", "write_heatmaps",
           "write_table"]
