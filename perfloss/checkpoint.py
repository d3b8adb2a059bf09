"""Training state that survives a crash: atomic checkpoint files with everything a resumed run needs.

``save_training_state(path, objects, step, extra)`` writes, in one file, the ``state_dict()`` of every
named object (any ``nn.Module``, optimizer, LR scheduler, ``GradScaler``: whatever has
``state_dict`` / ``load_state_dict``), the step counter, a JSON-like ``extra`` dict, and the random
number generators' states (torch CPU, CUDA when initialised, numpy, Python's ``random``), so that a run
resumed with ``load_training_state`` continues exactly as the uninterrupted one would have.

Writes are atomic (:func:`atomic_write`): the file is written under a temporary name in the same
folder, flushed and fsynced, and renamed over ``path``, so ``path`` is always either the previous
complete file or the new complete one, whatever kills the process. The file it replaces is kept as
``<path>.prev``. A process killed mid-write can leave a ``.<name>.*.partial`` file behind; nothing
reads it.
Reading a damaged file is a ``ValueError`` naming it (and its ``.prev``, when there is one).

Layer: with ``perfloss.losses`` and ``perfloss.pgn`` (it reads files through
:func:`perfloss.backbones.weights.load_file`); examples and trainers use it.
"""
import os
import random
import shutil
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional

import numpy as np
import torch

from perfloss.backbones.weights import load_file, temporary_beside

FORMAT = "perfloss.checkpoint"
VERSION = 1


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], None], keep_previous: bool = True) -> str:
    """Run ``write(tmp_path)`` to produce the file, then make it ``path`` atomically.

    The temporary file sits in path's folder (so the rename cannot cross file systems), is fsynced
    before the rename, and is removed if ``write`` fails. With ``keep_previous`` the file being
    replaced stays available as ``<path>.prev`` (a hard link made before the rename, so ``path`` itself
    never goes missing). Returns ``path``.
    """
    path = os.fspath(path)
    fd, tmp = temporary_beside(path)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if keep_previous and os.path.isfile(path):
            prev_tmp = tmp + ".prev"
            try:
                os.link(path, prev_tmp)
            except OSError:  # a file system without hard links: a copy does the same, slower
                shutil.copyfile(path, prev_tmp)
            os.replace(prev_tmp, path + ".prev")
        os.replace(tmp, path)
    except BaseException:
        for leftover in (tmp, tmp + ".prev"):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return path


def atomic_save(obj: Any, path, keep_previous: bool = True) -> str:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), keep_previous)


# -- random number generators ---------------------------------------------------------------------
def rng_state() -> Dict[str, Any]:
    """The global RNGs' states, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- training state -------------------------------------------------------------------------------
class TrainingState(NamedTuple):
    step: int
    extra: Dict[str, Any]


def _check_objects(objects: Mapping[str, Any]) -> None:
    if not isinstance(objects, Mapping) or not objects:
        raise TypeError("objects must be a non-empty mapping of names to objects with state_dict()")
    for name, obj in objects.items():
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(f"objects[{name!r}] ({type(obj).__name__}) has no state_dict() / load_state_dict()")


def save_training_state(path, objects: Mapping[str, Any], step: int, extra: Optional[Mapping[str, Any]] = None,
                        keep_previous: bool = True) -> str:
    """Write ``objects``' state dicts, ``step``, ``extra`` and the RNG states to ``path`` atomically.

    ``objects``: e.g. ``{"model": model, "optimizer": opt, "scheduler": sched}``. ``extra`` holds what
    else the loop needs (counters, histories, configuration) as plain Python values and tensors.
    """
    _check_objects(objects)
    state = {"format": FORMAT, "version": VERSION, "step": int(step), "extra": dict(extra or {}),
             "rng": rng_state(), "objects": {name: obj.state_dict() for name, obj in objects.items()}}
    return atomic_save(state, path, keep_previous)


def read_training_state(path) -> Dict[str, Any]:
    """The raw contents of a file written by :func:`save_training_state` (checked), on the CPU."""
    path = os.fspath(path)
    prev = path + ".prev"
    hint = f"; the previous checkpoint {prev!r} may still be good" if os.path.isfile(prev) else ""
    try:
        state = load_file(path, "checkpoint")
    except ValueError as err:
        raise ValueError(f"{err}{hint}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a perfloss training state (written by "
                         f"perfloss.checkpoint.save_training_state){hint}")
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {path!r} has unsupported version {state.get('version')!r} (expected {VERSION})")
    return state


def restore_training_state(state: Mapping[str, Any], objects: Mapping[str, Any], restore_rng: bool = True,
                           source: str = "the checkpoint") -> TrainingState:
    """Load a :func:`read_training_state` result into ``objects`` (the names saved; modules strictly)
    and, unless ``restore_rng=False``, the global RNGs. Returns the saved ``(step, extra)``."""
    _check_objects(objects)
    saved = state["objects"]
    if set(saved) != set(objects):
        raise ValueError(f"{source} holds {sorted(saved)}, but {sorted(objects)} were given")
    for name, obj in objects.items():
        obj.load_state_dict(saved[name])
    if restore_rng:
        set_rng_state(state["rng"])
    return TrainingState(state["step"], state["extra"])


def load_training_state(path, objects: Mapping[str, Any], restore_rng: bool = True) -> TrainingState:
    """:func:`read_training_state` then :func:`restore_training_state`."""
    return restore_training_state(read_training_state(path), objects, restore_rng, f"checkpoint {os.fspath(path)!r}")
