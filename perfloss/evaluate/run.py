"""Run loss configurations through a protocol, one result file per configuration, reused when present.

``out/results/<protocol>-<network>-<layer>-<distance>.json`` holds a configuration's metrics and the
settings it was measured with; it is written atomically once the configuration is done, so a run that
is stopped keeps what it finished and a second run continues where it stopped. A file measured with
other settings is never reused silently: the run stops and names it (``overwrite=True`` recomputes).
"""
import dataclasses
import json
import os
import pathlib
import platform
import time
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from perfloss.backbones.weights import imagenet_path
from perfloss.checkpoint import atomic_write
from perfloss.evaluate import autoencoder, sr, twoafc
from perfloss.evaluate.configs import LossConfig, check_image_size
from perfloss.models.sr_net import FACTORS

PROTOCOLS = {module.NAME: module for module in (twoafc, sr, autoencoder)}
WEIGHTS = ("imagenet", "none")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a protocol runs with. ``test``: the folder measured on (2afc: the BAPPS-format folder);
    ``train``: the training folder (sr: images; autoencoder: class per folder; 2afc: unused).
    ``size``: 2afc and autoencoder images are scaled and centre-cropped to it, sr trains on crops of it
    (None: the protocol's DEFAULT_SIZE). ``factor``: sr's upscaling; ``code_size``: the autoencoder's."""
    protocol: str
    test: str
    train: Optional[str] = None
    weights: str = "imagenet"
    steps: int = 500
    batch_size: int = 8
    size: Optional[int] = None
    lr: float = 1e-3
    factor: int = 4
    code_size: int = 128
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {self.protocol!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {self.weights!r}")
        if self.size is None:
            object.__setattr__(self, "size", PROTOCOLS[self.protocol].DEFAULT_SIZE)
        for name in ("steps", "batch_size", "size", "code_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.factor not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {self.factor!r}")
        if self.protocol == "sr" and self.size % self.factor:
            raise ValueError(f"size must be a multiple of factor {self.factor} for sr, got {self.size}")
        if self.protocol != "2afc" and self.train is None:
            raise ValueError(f"the {self.protocol} protocol trains: give the training folder (train)")
        for folder in ("test", "train"):  # absolute, so a result file says which data it measured
            if getattr(self, folder) is not None:
                object.__setattr__(self, folder, os.path.abspath(os.fspath(getattr(self, folder))))

    def loss_weights(self, network: str) -> Optional[str]:
        """What the loss of ``network`` is built with: the ImageNet file's path, or None (random)."""
        return imagenet_path(network) if self.weights == "imagenet" else None

    def identity(self) -> Dict:
        """The settings a result depends on (the device is not one of them)."""
        settings = dataclasses.asdict(self)
        del settings["device"]
        if self.protocol == "2afc":  # it trains nothing, and its batches change no more than rounding
            for name in ("train", "steps", "batch_size", "lr", "factor", "code_size", "seed"):
                del settings[name]
        elif self.protocol == "sr":
            del settings["code_size"]
        else:
            del settings["factor"]
        return settings


def result_path(out, config: LossConfig, protocol: str) -> pathlib.Path:
    return pathlib.Path(out) / "results" / f"{protocol}-{config.key}.json"


def read_result(path: pathlib.Path, settings: Settings) -> Dict:
    """A result file, checked to have been measured with ``settings``."""
    try:
        result = json.loads(path.read_text())
        saved = result["settings"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"result file {str(path)!r} is not a perfloss evaluate result ({e}); remove it or pass "
                         f"overwrite=True (--overwrite)") from e
    differ = {k: (saved.get(k), v) for k, v in settings.identity().items() if saved.get(k) != v}
    if differ:
        shown = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differ.items())
        raise ValueError(f"result file {str(path)!r} was measured with other settings ({shown}): pass "
                         f"overwrite=True (--overwrite) to recompute it, or write to another out folder")
    return result


def evaluate(configs: Sequence[LossConfig], settings: Settings, out, *, overwrite: bool = False,
             progress: bool = True) -> List[Dict]:
    """Run every configuration through ``settings.protocol``; return one result dict per configuration
    (``network``, ``layer``, ``distance``, ``metrics``, ``settings``, ``seconds``, ...) in the order given.

    Configurations whose result file exists under ``out`` are read, not run (unless ``overwrite``).
    Data folders are read and checked, image sizes checked against every layer and the ImageNet weights
    found before the first configuration runs.
    """
    if not configs:
        raise ValueError("configs is empty: nothing to evaluate")
    protocol = PROTOCOLS[settings.protocol]
    paths = [result_path(out, config, settings.protocol) for config in configs]
    results: List[Optional[Dict]] = [None] * len(configs)
    if not overwrite:
        for k, path in enumerate(paths):
            if path.is_file():
                results[k] = read_result(path, settings)
    todo = [k for k, result in enumerate(results) if result is None]
    if todo:
        check_image_size([configs[k] for k in todo], settings.size, f"{settings.protocol} images")
        for network in dict.fromkeys(configs[k].network for k in todo):
            settings.loss_weights(network)  # a missing ImageNet file stops the run now, not midway
        if settings.weights == "none":
            warnings.warn("perfloss evaluate: the loss networks have random weights (weights='none'): the results "
                          "say nothing about the ImageNet networks", stacklevel=2)
        data = protocol.load(settings)
        paths[0].parent.mkdir(parents=True, exist_ok=True)
    for k in tqdm(todo, desc=f"perfloss evaluate {settings.protocol}", unit="config", disable=not progress):
        config = configs[k]
        started = time.perf_counter()
        metrics = protocol.run(config, data, settings, progress=progress)
        results[k] = {"protocol": settings.protocol, **config._asdict(), "metrics": metrics,
                      "settings": settings.identity(), "seconds": round(time.perf_counter() - started, 3),
                      "device": settings.device, "machine": platform.processor() or platform.machine(),
                      "torch": str(torch.__version__)}
        write_json(paths[k], results[k])
    return results


def write_json(path: pathlib.Path, obj) -> None:
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text), keep_previous=False)
