"""The peer packages (lpips, piq, DISTS_pytorch, BasicSR, torchmetrics) imported for tests.

torchvision does not import on these machines, and every peer imports it. The stand-in below is a
``torchvision`` module whose ``models.vgg16(...)``, ``alexnet``, ``squeezenet1_1`` (and friends)
return perfloss's torchvision-layout networks (``features`` with torchvision's indices) filled with
the state dict a test chooses, so the peer and perfloss run the same weights. It is put into
``sys.modules`` with pytest's ``monkeypatch`` only for the duration of a test (a peer imported then
keeps its reference to the stand-in, whose weights the next test sets again).

BasicSR's package ``__init__`` imports cv2 and its whole training stack; only the two files the
loss needs (``basicsr/archs/vgg_arch.py``, ``basicsr/losses/basic_loss.py`` and its
``loss_util.py``) are loaded, by file path, with ``basicsr.utils.registry`` stubbed.
"""
import importlib
import importlib.util
import os
import sys
import types
import warnings
from typing import Dict

import pytest
import torch
from torch import nn

from perfloss.backbones import alexnet, get_backbone, squeezenet, vgg

NETWORKS = {**{n: vgg for n in vgg.NAMES}, "alexnet": alexnet, "squeezenet1_1": squeezenet}
WEIGHT_ENUMS = {"VGG16_Weights": "vgg16", "VGG19_Weights": "vgg19", "AlexNet_Weights": "alexnet",
                "SqueezeNet1_1_Weights": "squeezenet1_1"}


def random_state(name: str) -> Dict[str, torch.Tensor]:
    """The whole network's seeded random weights (perfloss's weights=None), torchvision keys."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: v.clone() for k, v in get_backbone(name, taps=None, weights=None).state_dict().items()}


class TorchvisionNet(nn.Module):
    """What torchvision.models.<name>() returns, as far as the peers use it: ``.features``."""

    def __init__(self, name: str, state: Dict[str, torch.Tensor]):
        super().__init__()
        with torch.device("meta"):  # no init work: every tensor comes from ``state``
            children, _ = NETWORKS[name].build(name)
        for key, module in children.items():
            self.add_module(key, module)
        self.load_state_dict({k: v.clone() for k, v in state.items()}, assign=True)


class WeightsEnum:
    """``torchvision.models.VGG16_Weights`` and the like: only ``DEFAULT`` / ``IMAGENET1K_V1``."""

    DEFAULT = IMAGENET1K_V1 = "IMAGENET1K_V1"


class Lenient(types.ModuleType):
    """A module answering any other name: piq's FID code subclasses torchvision's Inception blocks at
    import time (never run here); a lower-case name is a submodule, a capitalised one a class."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = Lenient(f"{self.__name__}.{name}") if name[0].islower() else type(name, (nn.Module,), {})
        setattr(self, name, value)
        return value


class StandIn:
    """The stand-in ``torchvision`` package and the weights its networks get (``states[name]``)."""

    def __init__(self):
        self.states: Dict[str, Dict[str, torch.Tensor]] = {}
        self.root = Lenient("torchvision")
        self.models = Lenient("torchvision.models")
        self.root.models = self.models
        for name in NETWORKS:
            setattr(self.models, name, self._constructor(name))
        for enum in WEIGHT_ENUMS:
            setattr(self.models, enum, WeightsEnum)
        self.models.vgg = self.models  # BasicSR: `from torchvision.models import vgg as vgg`

    def _constructor(self, name):
        def build(pretrained=False, weights=None, progress=True, **kwargs):
            if kwargs:
                raise TypeError(f"stand-in torchvision.models.{name}: unexpected {sorted(kwargs)}")
            if name not in self.states:
                raise KeyError(f"stand-in torchvision: the test set no weights for {name}")
            return TorchvisionNet(name, self.states[name])
        return build

    def install(self, monkeypatch):
        for key, module in {"torchvision": self.root, "torchvision.models": self.models,
                            "torchvision.models.vgg": self.models,
                            "torchvision.transforms": self.root.transforms}.items():
            monkeypatch.setitem(sys.modules, key, module)


STAND_IN = StandIn()


@pytest.fixture
def torchvision_standin(monkeypatch):
    """The stand-in torchvision in sys.modules for this test; set ``.states[name]`` to choose weights."""
    STAND_IN.states.clear()
    STAND_IN.install(monkeypatch)
    yield STAND_IN
    STAND_IN.states.clear()


def import_peer(name: str):
    """Import a peer package (with the stand-in installed), or skip the test when it is not installed."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (see .ci/run for the pinned --no-deps install)")
    return importlib.import_module(name)


def _load_file(name: str, path: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def basicsr_loss_module(monkeypatch):
    """``basicsr.losses.basic_loss`` of the installed basicsr (1.4.2 pinned), loaded by file path."""
    spec = importlib.util.find_spec("basicsr")
    if spec is None:
        pytest.skip("basicsr is not installed (see .ci/run for the pinned --no-deps install)")
    root = list(spec.submodule_search_locations)[0]

    class Registry:
        def register(self, obj=None):
            return (lambda o: o) if obj is None else obj

    registry = types.ModuleType("basicsr.utils.registry")
    registry.ARCH_REGISTRY = registry.LOSS_REGISTRY = Registry()
    for package in ("basicsr", "basicsr.archs", "basicsr.losses", "basicsr.utils"):
        module = types.ModuleType(package)
        module.__path__ = [os.path.join(root, *package.split(".")[1:])]
        monkeypatch.setitem(sys.modules, package, module)
    monkeypatch.setitem(sys.modules, "basicsr.utils.registry", registry)
    _load_file("basicsr.archs.vgg_arch", os.path.join(root, "archs", "vgg_arch.py"), monkeypatch)
    _load_file("basicsr.losses.loss_util", os.path.join(root, "losses", "loss_util.py"), monkeypatch)
    return _load_file("basicsr.losses.basic_loss", os.path.join(root, "losses", "basic_loss.py"), monkeypatch)
