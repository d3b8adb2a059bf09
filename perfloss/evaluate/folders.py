"""The folder layouts the protocols read, checked before any work: a wrong layout is a ValueError
naming the folder and what was expected.

- BAPPS 2AFC (Zhang et al. 2018's layout, e.g. ``2afc/val/traditional``): sub-folders ``ref/``, ``p0/``,
  ``p1/`` of images and ``judge/`` of ``.npy`` files, each holding the fraction of people who judged
  ``p1`` closer to ``ref``; the four files of a triplet share a file stem (``000012.png``,
  ``000012.npy``).
- Class per folder (ImageNet / STL-10 style): one sub-folder of images per class, at least two classes;
  the folder names are the class names.
- Image folder: images in the folder and its sub-folders (:func:`perfloss.images.list_images`).
"""
import pathlib
from typing import Dict, List, NamedTuple

import numpy as np
import torch

from perfloss.images import fit_square, list_images, read_image

BAPPS_FOLDERS = ("ref", "p0", "p1", "judge")
_SHOWN = 5  # how many unmatched stems an error lists


def existing_folder(root, what: str) -> pathlib.Path:
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist (or is not a folder)")
    return root


def _by_stem(paths: List[pathlib.Path], folder: pathlib.Path) -> Dict[str, pathlib.Path]:
    found = {}
    for path in paths:
        if path.stem in found:
            raise ValueError(f"{str(folder)!r} holds two files with the stem {path.stem!r} ({found[path.stem].name}, "
                             f"{path.name}): a triplet's files are matched by stem")
        found[path.stem] = path
    return found


class Triplet(NamedTuple):
    stem: str
    ref: pathlib.Path
    p0: pathlib.Path
    p1: pathlib.Path
    judge: float


def bapps_triplets(root) -> List[Triplet]:
    """The triplets of a BAPPS-format 2AFC folder, sorted by stem."""
    root = existing_folder(root, "2AFC")
    missing = [name for name in BAPPS_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise ValueError(f"2AFC folder {str(root)!r} has no {', '.join(n + '/' for n in missing)} sub-folder: a "
                         f"BAPPS-format folder holds ref/, p0/, p1/ (images) and judge/ (.npy files)")
    files = {name: _by_stem(list_images(root / name, recursive=False), root / name) for name in BAPPS_FOLDERS[:3]}
    judges = sorted(p for p in (root / "judge").iterdir() if p.suffix.lower() == ".npy" and p.is_file())
    if not judges:
        raise ValueError(f"2AFC folder {str(root / 'judge')!r} holds no .npy files (one per triplet: the fraction "
                         f"of people who judged p1 closer to ref)")
    files["judge"] = _by_stem(judges, root / "judge")
    stems = sorted(set().union(*files.values()))
    for name, found in files.items():
        lacking = [stem for stem in stems if stem not in found]
        if lacking:
            shown = ", ".join(lacking[:_SHOWN]) + (f", ... ({len(lacking)} in all)" if len(lacking) > _SHOWN else "")
            raise ValueError(f"2AFC folder {str(root)!r}: {name}/ has no file for the stems {shown}, which other "
                             f"sub-folders have; each triplet needs ref/, p0/, p1/ and judge/ files of one stem")
    return [Triplet(stem, files["ref"][stem], files["p0"][stem], files["p1"][stem], _judge(files["judge"][stem]))
            for stem in stems]


def _judge(path: pathlib.Path) -> float:
    try:
        value = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read judgement {str(path)!r}: {e}") from e
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or not 0 <= float(value.flat[0]) <= 1:
        raise ValueError(f"judgement {str(path)!r} must hold one number in [0, 1] (the fraction of people who "
                         f"judged p1 closer), got {value!r}")
    return float(value.flat[0])


class LabelledImages(NamedTuple):
    paths: List[pathlib.Path]
    labels: List[int]
    classes: List[str]


def class_folders(root) -> LabelledImages:
    """The images of a class-per-folder set: paths, class indices (sorted class names) and the names."""
    root = existing_folder(root, "class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise ValueError(f"class folder {str(root)!r} must hold one sub-folder of images per class, at least two "
                         f"classes; found {found}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        try:
            images = list_images(root / name)
        except ValueError as e:
            raise ValueError(f"class {name!r} of {str(root)!r} has no images: {e}") from e
        paths += images
        labels += [label] * len(images)
    return LabelledImages(paths, labels, classes)


def read_all(paths, size: int) -> torch.Tensor:
    """Images as one uint8 (N, 3, size, size) tensor (a quarter of float32's memory; see :func:`as_float`),
    each scaled and centre-cropped to ``size`` (:func:`perfloss.images.fit_square`)."""
    return torch.stack([(fit_square(read_image(p), size) * 255).round().to(torch.uint8) for p in paths])


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images from :func:`read_all` as float32 in [0, 1]."""
    return images.float() / 255
