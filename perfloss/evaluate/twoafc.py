"""Protocol ``2afc``: how often a loss agrees with people about which of two distortions is closer to a
reference (Zhang et al. 2018's BAPPS two-alternative forced choice).

Per triplet, d0 = loss(ref, p0) and d1 = loss(ref, p1); with ``judge`` the fraction of people who chose
p1, the triplet scores (d0 < d1) (1 - judge) + (d1 < d0) judge + (d0 == d1) / 2, the lpips repository's
``score_2afc_dataset``. The 2AFC score is the mean over triplets: 1 agrees with every person, and a
loss that agrees with the majority on every triplet reaches the people's own agreement (about 0.74 on
BAPPS's validation sets), not 1.
"""
from typing import Dict, NamedTuple, Sequence

import numpy as np
import torch
from tqdm import tqdm

from perfloss.evaluate.folders import as_float, bapps_triplets, read_all

NAME = "2afc"
METRICS = {"2afc": "2AFC score"}  # the metrics a result holds, and their labels; higher is better
DEFAULT_SIZE = 64  # BAPPS's patches are 64x64, the size the lpips repository loads them at


class Data(NamedTuple):
    ref: torch.Tensor  # uint8 (N, 3, size, size)
    p0: torch.Tensor
    p1: torch.Tensor
    judge: torch.Tensor  # float64 (N,)


def load(settings) -> Data:
    triplets = bapps_triplets(settings.test)
    return Data(*(read_all([getattr(t, part) for t in triplets], settings.size) for part in ("ref", "p0", "p1")),
                torch.tensor([t.judge for t in triplets], dtype=torch.float64))


def score_2afc(d0: Sequence[float], d1: Sequence[float], judge: Sequence[float]) -> float:
    """The mean 2AFC score of triplets with distances d0 (ref to p0), d1 (ref to p1) and ``judge``."""
    d0, d1, judge = (np.asarray(v, dtype=np.float64) for v in (d0, d1, judge))
    return float(np.mean((d0 < d1) * (1 - judge) + (d1 < d0) * judge + (d0 == d1) * 0.5))


def run(config, data: Data, settings, progress: bool = True) -> Dict[str, float]:
    device = torch.device(settings.device)
    loss_fn = config.loss(settings.loss_weights(config.network), reduction="none").to(device)
    d0, d1 = [], []
    starts = range(0, len(data.judge), settings.batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=f"2afc {config.key}", unit="batch", leave=False, disable=not progress):
            batch = slice(start, start + settings.batch_size)
            ref, p0, p1 = (as_float(images[batch]).to(device) for images in (data.ref, data.p0, data.p1))
            d0 += loss_fn(p0, ref).double().cpu().tolist()
            d1 += loss_fn(p1, ref).double().cpu().tolist()
    return {"2afc": score_2afc(d0, d1, data.judge.tolist()), "triplets": len(d0)}
