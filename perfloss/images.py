"""Image files as tensors, through Pillow: read, write, list a folder, a cropping Dataset, and the
photographs scikit-image ships.

Images are float32 (3, H, W) tensors in [0, 1]. Reading:
- 8-bit images are divided by 255; 16-bit grayscale (PNG, TIFF) by 65535, keeping all 16 bits.
  Pillow has no 16-bit colour mode: it decodes 16-bit RGB files at 8 bits per channel;
- grayscale is replicated to RGB, palette images are expanded to their colours;
- an alpha channel (RGBA, gray + alpha, a palette with transparency) is composited onto white, as an
  image viewer shows it (rgb * alpha + (1 - alpha)): a transparent background becomes white;
- the EXIF orientation is applied (photographs come out upright, as a viewer shows them);
- multi-frame files (TIFF pages) give their first frame.
"""
import os
import pathlib
import warnings
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# what Pillow's decoders raise on a file that is not an image, is truncated or is corrupt
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# scikit-image's photographs (skimage.data functions), in the order sample_photographs returns them
SAMPLE_PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon",
                      "hubble_deep_field", "grass", "gravel", "brick")


def _pixels(img: Image.Image) -> torch.Tensor:
    """The float32 (C, H, W) pixel values of a Pillow image, unscaled."""
    hwc = torch.from_numpy(np.asarray(img, dtype=np.float32))
    return (hwc[None] if hwc.dim() == 2 else hwc.permute(2, 0, 1)).contiguous()


def _to_tensor(img: Image.Image) -> torch.Tensor:
    """float32 (3, H, W) in [0, 1] from a decoded Pillow image of any mode (see the module docstring)."""
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grayscale
        return (_pixels(img) / 65535.0).clamp(0, 1).expand(3, -1, -1).contiguous()
    if img.mode == "F":  # 32-bit float TIFF: values taken as they are, clamped to [0, 1]
        return _pixels(img).clamp(0, 1).expand(3, -1, -1).contiguous()
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = _pixels(img.convert("RGBA")) / 255.0
        rgb, alpha = rgba[:3], rgba[3:]
        return rgb * alpha + (1.0 - alpha)
    if img.mode in ("1", "L"):
        return (_pixels(img.convert("L")) / 255.0).expand(3, -1, -1).contiguous()
    return _pixels(img.convert("RGB")) / 255.0


def read_image(path) -> torch.Tensor:
    """A float32 (3, H, W) image in [0, 1] from any file Pillow reads (see the module docstring).

    A file Pillow cannot decode (not an image, truncated, corrupt) raises ValueError naming it; a
    missing file raises FileNotFoundError.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist (or is not a file)")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            return _to_tensor(ImageOps.exif_transpose(img))
    except _DECODE_ERRORS as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from e


def write_image(path, image: torch.Tensor) -> None:
    """Write a float (3, H, W) or (1, H, W) image in [0, 1] (clamped, rounded to 8 bits) to ``path``;
    the format comes from the suffix (.png, .jpg, .webp, .bmp, .tif, ...)."""
    if (not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() != 3
            or image.shape[0] not in (1, 3)):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        dtype = f" {image.dtype}" if isinstance(image, torch.Tensor) else ""
        raise ValueError(f"image must be a float tensor of shape (3, H, W) or (1, H, W), got {shape}{dtype}")
    u8 = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    hwc = u8.permute(1, 2, 0).contiguous().numpy()
    img = Image.fromarray(hwc if image.shape[0] == 3 else hwc[..., 0])
    try:
        img.save(os.fspath(path))
    except ValueError as e:  # Pillow: unknown file extension
        raise ValueError(f"cannot write image {os.fspath(path)!r}: {e}") from e


def list_images(root, recursive: bool = True) -> List[pathlib.Path]:
    """The image files (extensions in IMAGE_EXTENSIONS, any case) in the folder ``root`` and, when
    ``recursive``, its sub-folders, sorted by path. No such files: ValueError naming the folder."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    candidates = root.rglob("*") if recursive else root.iterdir()
    paths = sorted(p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        where = " or its sub-folders" if recursive else ""
        raise ValueError(f"image folder {str(root)!r}{where} holds no {'/'.join(IMAGE_EXTENSIONS)} files")
    return paths


def _cover(image: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` scaled up (bilinear, aspect kept) so that both sides are at least ``size``."""
    h, w = image.shape[-2:]
    if h >= size and w >= size:
        return image
    scale = size / min(h, w)
    out = (max(size, round(h * scale)), max(size, round(w * scale)))
    batched = image if image.dim() == 4 else image[None]
    scaled = F.interpolate(batched, size=out, mode="bilinear", align_corners=False)
    return scaled if image.dim() == 4 else scaled[0]


def random_crop(image: torch.Tensor, size: Optional[int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random ``size`` x ``size`` crop of a (..., H, W) image (None: the image itself). An image
    smaller than ``size`` is first scaled up (bilinear, aspect kept) until it covers the crop."""
    if size is None:
        return image
    image = _cover(image, size)
    h, w = image.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return image[..., top:top + size, left:left + size]


def center_crop(image: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """The central ``size`` x ``size`` crop of a (..., H, W) image (None: the image itself); a smaller
    image is scaled up first, as in :func:`random_crop`."""
    if size is None:
        return image
    image = _cover(image, size)
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


class ImageFolder(torch.utils.data.Dataset):
    """The images of a folder (see :func:`list_images`) as float32 (3, crop, crop) tensors in [0, 1].

    Args:
        root: the folder.
        crop: the crop side; None returns whole images (they batch only if all have one size). An
            image smaller than ``crop`` is scaled up (bilinear, aspect kept) until it covers the crop.
        random_crop: a random crop (training) or the centre crop (evaluation).
        recursive: include sub-folders.
        on_error: ``"raise"``: an unreadable file raises ValueError naming it; ``"warn"``: it is skipped
            with a warning naming it (once per file) and the next readable file in order is returned.
        seed: seeds the random crops in the main process. In a DataLoader worker the crops are seeded
            from the worker's seed instead (``torch.utils.data.get_worker_info().seed``, which differs
            per worker and per epoch and follows ``torch.manual_seed``).
    """

    def __init__(self, root, crop: Optional[int] = None, random_crop: bool = True, recursive: bool = True,
                 on_error: str = "raise", seed: int = 0):
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        if crop is not None and (not isinstance(crop, int) or crop < 1):
            raise ValueError(f"crop must be None or a positive int, got {crop!r}")
        self.root = pathlib.Path(root)
        self.paths = list_images(root, recursive=recursive)
        self.crop = crop
        self.random_crop = random_crop
        self.on_error = on_error
        self.seed = seed
        self.unreadable: List[pathlib.Path] = []
        self._generator = torch.Generator().manual_seed(seed)
        self._worker_seed = None

    def __len__(self) -> int:
        return len(self.paths)

    def _crop_generator(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self._generator = torch.Generator().manual_seed(info.seed)
        return self._generator

    def _read(self, index: int) -> torch.Tensor:
        if self.on_error == "raise":
            return read_image(self.paths[index])
        for k in range(len(self.paths)):
            path = self.paths[(index + k) % len(self.paths)]
            if path in self.unreadable:
                continue
            try:
                return read_image(path)
            except ValueError as e:
                self.unreadable.append(path)
                warnings.warn(f"ImageFolder: skipping an unreadable file: {e}", stacklevel=3)
        raise ValueError(f"image folder {str(self.root)!r}: no file could be read "
                         f"({len(self.unreadable)} unreadable)")

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self._read(index)
        if self.random_crop:
            return random_crop(image, self.crop, self._crop_generator())
        return center_crop(image, self.crop)


def fit_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, H, W) image in [0, 1] scaled (antialiased bilinear) so its shorter side is ``size``, then
    centre-cropped to ``size`` x ``size``; an image already of that size is returned as it is."""
    h, w = image.shape[-2:]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    out = (max(size, round(h * scale)), max(size, round(w * scale)))
    scaled = F.interpolate(image[None], size=out, mode="bilinear", align_corners=False, antialias=True)[0]
    return center_crop(scaled.clamp(0, 1), size)


def sample_photographs(size: Optional[int] = None) -> List[torch.Tensor]:
    """The photographs scikit-image's wheel ships (SAMPLE_PHOTOGRAPHS, read from disk, no download) as
    float32 (3, H, W) tensors in [0, 1], grayscale ones replicated to RGB. ``size``: each is scaled
    (antialiased bilinear) so its shorter side is ``size``, then centre-cropped to ``size`` x ``size``."""
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("sample_photographs needs scikit-image: pip install scikit-image "
                          "(or pip install perfloss[examples])") from e
    photos = []
    for name in SAMPLE_PHOTOGRAPHS:
        hwc = torch.as_tensor(getattr(skimage.data, name)())
        chw = (hwc[None] if hwc.dim() == 2 else hwc.permute(2, 0, 1)).float() / 255.0
        chw = chw.expand(3, -1, -1).contiguous()
        if size is not None:
            chw = fit_square(chw, size)
        photos.append(chw)
    return photos
