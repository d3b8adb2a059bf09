"""Image sources for PGN training: folders of images, tensors, iterables, procedural images."""
import math
import os
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F

from ..images import list_images, random_crop, read_image

__all__ = ["load_folder", "procedural_images", "image_pool", "batches_from_pool", "batches_from_iterable"]


def load_folder(path) -> List[torch.Tensor]:
    """Every image in the folder ``path`` and its sub-folders (the formats and order of
    :func:`perfloss.images.list_images`), read into memory as float (3, H, W) in [0, 1]."""
    return [read_image(p) for p in list_images(path, recursive=True)]


def _smooth_noise(n, size, cells, gen):
    base = torch.rand(n, 3, cells, cells, generator=gen)
    return F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)


def procedural_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` float (3, size, size) images in [0, 1]: colour gradients, smooth noise, stripes and
    checker textures, with random ellipses and rectangles on top; deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(n):
        kind = int(torch.randint(0, 4, (1,), generator=gen))
        c0, c1 = torch.rand(3, 1, 1, generator=gen), torch.rand(3, 1, 1, generator=gen)
        angle = float(torch.rand(1, generator=gen)) * 2 * math.pi
        t = (xx * math.cos(angle) + yy * math.sin(angle)).clamp(0, 1)
        if kind == 0:  # linear colour gradient
            img = c0 + (c1 - c0) * t
        elif kind == 1:  # smooth noise
            cells = int(torch.randint(3, 9, (1,), generator=gen))
            img = _smooth_noise(1, size, cells, gen)[0]
        elif kind == 2:  # stripes
            freq = float(torch.randint(2, 12, (1,), generator=gen))
            s = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * t)
            img = c0 + (c1 - c0) * s
        else:  # checker
            k = int(torch.randint(2, 9, (1,), generator=gen))
            s = ((xx * k).floor() + (yy * k).floor()) % 2
            img = c0 + (c1 - c0) * s
        img = img.expand(3, size, size).clone()
        for _ in range(int(torch.randint(0, 5, (1,), generator=gen))):
            colour = torch.rand(3, 1, 1, generator=gen)
            cx, cy, rx, ry = (torch.rand(4, generator=gen) * torch.tensor([1, 1, 0.3, 0.3]) + torch.tensor([0, 0, 0.05, 0.05])).tolist()
            if float(torch.rand(1, generator=gen)) < 0.5:
                mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            else:
                mask = ((xx - cx).abs() < rx) & ((yy - cy).abs() < ry)
            img = torch.where(mask, colour.expand_as(img), img)
        img = img + 0.02 * torch.randn(3, size, size, generator=gen)
        images.append(img.clamp(0, 1))
    return torch.stack(images)


def _check_image(t, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() not in (3, 4) or t.shape[-3] != 3:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{where} must yield float tensors of shape (3, H, W) or (N, 3, H, W), got {shape}")
    return t


def image_pool(images) -> Optional[List[torch.Tensor]]:
    """A list of (3, H, W) images for a folder path, a tensor or a list/tuple of tensors; else None."""
    if isinstance(images, (str, os.PathLike)):
        return load_folder(images)
    if isinstance(images, torch.Tensor):
        _check_image(images, "images")
        return list(images) if images.dim() == 4 else [images]
    if isinstance(images, (list, tuple)):
        pool = []
        for t in images:
            _check_image(t, "images")
            pool.extend(list(t) if t.dim() == 4 else [t])
        return pool
    return None


def batches_from_pool(pool: List[torch.Tensor], batch_size: int, crop: Optional[int], seed: int = 0) -> Iterator[torch.Tensor]:
    """Endless random batches of (random-cropped) images drawn from ``pool``."""
    gen = torch.Generator().manual_seed(seed)
    if crop is None and len({tuple(t.shape) for t in pool}) > 1:
        raise ValueError("images have different sizes: pass crop=<size>")
    while True:
        idx = torch.randint(0, len(pool), (batch_size,), generator=gen).tolist()
        yield torch.stack([random_crop(pool[i], crop, gen) for i in idx])


def batches_from_iterable(iterable, batch_size: int, crop: Optional[int], seed: int = 0) -> Iterator[torch.Tensor]:
    """Batches from any iterable of (3, H, W) images or (N, 3, H, W) batches (batches pass through)."""
    gen = torch.Generator().manual_seed(seed)
    pending: List[torch.Tensor] = []
    for item in iterable:
        _check_image(item, "the image iterable")
        if item.dim() == 4:
            yield torch.stack([random_crop(t, crop, gen) for t in item]) if crop else item
            continue
        pending.append(random_crop(item, crop, gen))
        if len(pending) == batch_size:
            yield torch.stack(pending)
            pending = []
    if pending:
        yield torch.stack(pending)
