"""Loss configurations to compare: (network, extraction point, distance) triples, and the losses they name.

``layers`` chooses the extraction points of every network: ``"study"`` (Pihlgren et al. 2023's four per
network), ``"all"`` (every tap of the network) or a list of tap names, of which each network takes the
ones it has (``["relu2_2", "layer1"]`` gives vgg16 relu2_2 and resnet18 layer1).
:func:`perfloss.backbones.study_taps` names the study's points.
"""
import warnings
from typing import List, NamedTuple, Sequence, Union

from perfloss.backbones import get_backbone, list_backbones, list_taps, study_taps
from perfloss.losses.perceptual import DISTANCES, PerceptualLoss

LAYER_CHOICES = ("study", "all")


class LossConfig(NamedTuple):
    """One loss to evaluate: PerceptualLoss(network, layers=[layer], distance=distance)."""
    network: str
    layer: str
    distance: str

    @property
    def key(self) -> str:
        """A file-name-safe identifier: ``vgg16-relu2_2-mse``."""
        return f"{self.network}-{self.layer}-{self.distance}"

    def loss(self, weights, reduction: str = "mean") -> PerceptualLoss:
        """The loss, on the CPU; ``weights`` as PerceptualLoss takes it (None: random, without a warning
        here: :func:`perfloss.evaluate.evaluate` warns once per run)."""
        with warnings.catch_warnings():
            if weights is None:
                warnings.filterwarnings("ignore", message=".*random weights")
            return PerceptualLoss(self.network, layers=[self.layer], distance=self.distance, weights=weights,
                                  reduction=reduction)


def loss_configs(networks: Sequence[str], layers: Union[str, Sequence[str]] = "study",
                 distances: Sequence[str] = ("mse",)) -> List[LossConfig]:
    """Every (network, layer, distance) of the request, networks in the order given, layers in network
    order, distances in the order given. Bad names are a ValueError naming them and what is valid."""
    if not networks:
        raise ValueError("networks is empty: name at least one of " + ", ".join(list_backbones()))
    if not distances:
        raise ValueError(f"distances is empty: name at least one of {DISTANCES}")
    for distance in distances:
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if isinstance(layers, str) and layers not in LAYER_CHOICES:
        layers = [layers]
    if not isinstance(layers, str) and not layers:
        raise ValueError(f"layers is empty: give {' or '.join(map(repr, LAYER_CHOICES))} or tap names")
    per_network = {}
    for network in dict.fromkeys(networks):
        taps = list_taps(network)
        if layers == "study":
            chosen = study_taps(network)
        elif layers == "all":
            chosen = taps
        else:
            chosen = [tap for tap in taps if tap in set(layers)]
            if not chosen:
                raise ValueError(f"none of the layers {list(layers)} is a tap of {network}; its taps: "
                                 f"{', '.join(taps)}")
        per_network[network] = chosen
    if not isinstance(layers, str):
        known = {tap for chosen in per_network.values() for tap in chosen}
        unknown = [layer for layer in layers if layer not in known]
        if unknown:
            raise ValueError(f"layers {unknown} are taps of none of the networks {list(per_network)}")
    return [LossConfig(network, layer, distance)
            for network, chosen in per_network.items() for layer in chosen for distance in dict.fromkeys(distances)]


def check_image_size(configs: Sequence[LossConfig], size: int, what: str) -> None:
    """ValueError naming the network, its deepest layer asked for and the smallest size when images of
    ``size`` x ``size`` (``what`` says which) are too small for it."""
    layers = {}
    for config in configs:
        layers.setdefault(config.network, []).append(config.layer)
    for network, taps in layers.items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*random weights")
            backbone = get_backbone(network, taps, weights=None)  # the structure is all that is read
        need = backbone.min_input_size()
        if size < need:
            raise ValueError(f"{what} are {size}x{size}, too small for {network} {backbone.taps[-1]}: it needs "
                             f"at least {need}x{need}; raise the size or drop that layer")
