"""PGNTrainer: distil a teacher loss's gradient into a perceptual gradient network.

Each step (Nikulin et al. 2021):
1. a batch of target images y; one of the online autoencoder generators (depths ``generator_depths``,
   taken in turn) makes y_hat = G(y);
2. g_true = d teacher(y_hat, y) / d y_hat by autograd (per-sample gradient: see
   :func:`perfloss.pgn.teacher.per_sample_sum`);
3. the PGN predicts (p, g_pred) from (y_hat, y); objective
   ``grad_coef * MSE(g_pred, g_true) + perceptual_coef * teacher(p, y) + l1_coef * L1(p, y)``
   (defaults 2^26, 0.2, 0.5; the teacher term is the per-sample loss averaged over the batch);
   Adam (lr 1e-3); the gradient norm is clipped at ``clip_factor`` (5) times its moving average;
4. the generator steps on the PREDICTED gradient (``generator_gradient="pgn"``, as in the paper; or
   ``"true"``), and is re-initialised when its teacher loss plateaus (no relative improvement of
   ``plateau_tol`` over ``plateau_patience`` of its own steps), so the PGN keeps seeing both early
   (poor) and late (good) reconstructions.

Held-out metrics (``evaluate``): on fixed pairs (y_hat, y) made from held-out images y, with y_hat the
output of a randomly initialised autoencoder generator (depths in turn) blended towards y by 0, 0.5
or 0.9 (what online generators produce early and later in training), the mean per-sample cosine(g_pred, g_true), the
relative error ||g_pred - g_true|| / ||g_true|| and the scaled gradient MSE; and ``online_cosine`` /
``online_rel_error``: the same on the held-out images run through the CURRENT online generators (the
distribution the PGN trains on; the teacher gradient is taken at evaluation time).
"""
import itertools
import math
import os
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from perfloss import checkpoint

from ..images import center_crop
from .data import batches_from_iterable, batches_from_pool, image_pool
from .generators import AutoencoderGenerator
from .model import PerceptualGradientNetwork
from .teacher import paper_teacher, per_sample_sum, teacher_gradient


GRAD_LOSSES = ("mse", "relative")
DEFAULT_GRAD_COEF = {"mse": 2.0 ** 26, "relative": 1.0}


def gradient_metrics(g_pred: torch.Tensor, g_true: torch.Tensor) -> Dict[str, float]:
    p, t = g_pred.flatten(1).double(), g_true.flatten(1).double()
    cos = F.cosine_similarity(p, t, dim=1, eps=1e-30)
    rel = (p - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-30)
    return {"cosine": float(cos.mean()), "rel_error": float(rel.mean())}


class PGNTrainer:
    """Train ``pgn`` to predict ``teacher``'s gradient.

    Args:
        pgn: a :class:`PerceptualGradientNetwork`, an arch name, or None (``"resnet4"``).
        teacher: any callable ``loss(input, target)`` (a perfloss loss or your own); None = the paper's
            VGG-19 avg-pool L1 teacher (:func:`perfloss.pgn.teacher.paper_teacher`) with ``teacher_weights``.
            Its parameters are set to ``requires_grad=False``.
        images: a folder of images (JPEG, PNG, WebP, BMP, TIFF; sub-folders included), a tensor (N, 3, H, W), a list of (3, H, W) tensors,
            or any iterable of (3, H, W) images / (N, 3, H, W) batches (training stops when it ends).
        holdout: images for the held-out metrics; None takes ``n_holdout`` images out of a folder/tensor/list
            (or the first batch of an iterable).
        crop: random crop size (None: images used whole; they must then share one size). A ``holdout``
            tensor is used as given; holdout images taken from the data are centre-cropped.
        seed: seeds torch's global RNG at construction (PGN and generator init), the batch order and
            the held-out pairs.
        grad_loss: ``"mse"`` (default, the paper's: ``grad_coef`` (default 2^26) * MSE(g_pred, g_true)) or
            ``"relative"``: MSE divided by the batch's mean squared true gradient, i.e. the pooled squared
            relative error, with ``grad_coef`` default 1. The paper's 2^26 is tuned to its teacher's
            gradient magnitude; the relative form is scale-free (a deviation from the paper).
        grad_coef: None = the default of ``grad_loss``.

    A PGN built with ``grad_scale="auto"`` is calibrated at construction on the first training batch
    run through every online generator (``calibration`` records s and the norms; the batch is then
    trained on as usual): s = 2 ||y_hat - y|| / (C H W ||g_true||), so that the proxy gradient's scale
    matches this teacher's (:func:`perfloss.pgn.outputs.calibrate_grad_scale`). With the paper's fixed
    s = 0.025 and a teacher whose gradients are much smaller than the ImageNet VGG-19's at 224x224, the
    gradient MSE is minimised by p -> y_hat (g -> 0) long before directions are learnt.

    ``train(steps=..., minutes=...)`` runs the loop (tqdm progress unless ``progress=False``), evaluates
    every ``eval_every`` steps (``eval_history``), and every ``checkpoint_every`` steps and at the end
    writes, atomically (:mod:`perfloss.checkpoint`), ``checkpoint_dir/pgn_last.pt`` (the network:
    :meth:`PerceptualGradientNetwork.save` format, with the step and the last held-out metrics) and
    ``checkpoint_dir/trainer_state.pt`` (everything a run needs to continue: :meth:`save_state`; the
    one before is kept as ``trainer_state.pt.prev``). A trainer built with the same arguments continues
    from it with :meth:`resume`, exactly as the uninterrupted run would have.
    """

    def __init__(self, pgn=None, teacher: Optional[Callable] = None, images=None, *, holdout=None,
                 n_holdout: int = 8, batch_size: int = 8, crop: Optional[int] = None, lr: float = 1e-3,
                 grad_coef: Optional[float] = None, perceptual_coef: float = 0.2, l1_coef: float = 0.5,
                 clip_factor: float = 5.0, clip_momentum: float = 0.98, generator_depths=(0, 1, 2),
                 generator_lr: float = 1e-3, generator_width: int = 16, generator_gradient: str = "pgn",
                 plateau_patience: int = 100, plateau_tol: float = 0.01, teacher_weights=None,
                 device="cpu", checkpoint_dir=None, checkpoint_every: int = 1000, progress: bool = True,
                 seed: int = 0, grad_loss: str = "mse"):
        if images is None:
            raise ValueError("images is required: a folder, a tensor, a list of tensors or an iterable")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if generator_gradient not in ("pgn", "true"):
            raise ValueError(f"generator_gradient must be 'pgn' or 'true', got {generator_gradient!r}")
        if not generator_depths:
            raise ValueError("generator_depths must name at least one depth")
        if grad_loss not in GRAD_LOSSES:
            raise ValueError(f"grad_loss must be one of {GRAD_LOSSES}, got {grad_loss!r}")
        if grad_coef is None:
            grad_coef = DEFAULT_GRAD_COEF[grad_loss]
        self.grad_loss = grad_loss
        self.device = torch.device(device)
        torch.manual_seed(seed)
        if pgn is None or isinstance(pgn, str):
            pgn = PerceptualGradientNetwork(pgn or "resnet4")
        if not isinstance(pgn, PerceptualGradientNetwork):
            raise TypeError(f"pgn must be a PerceptualGradientNetwork or an arch name, got {type(pgn).__name__}")
        self.pgn = pgn.to(self.device)
        if teacher is None:
            teacher = paper_teacher(weights=teacher_weights, input_range=pgn.input_range)
        if not callable(teacher):
            raise TypeError(f"teacher must be callable as loss(input, target), got {type(teacher).__name__}")
        if isinstance(teacher, nn.Module):
            teacher = teacher.to(self.device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.teacher = teacher
        self.grad_coef, self.perceptual_coef, self.l1_coef = grad_coef, perceptual_coef, l1_coef
        self.clip_factor, self.clip_momentum = clip_factor, clip_momentum
        self.grad_norm_avg: Optional[float] = None
        self.generator_gradient = generator_gradient
        self.generator_depths = tuple(generator_depths)
        self.generator_lr, self.generator_width = generator_lr, generator_width
        self.plateau_patience, self.plateau_tol = plateau_patience, plateau_tol
        self.batch_size, self.crop = batch_size, crop
        self.checkpoint_dir, self.checkpoint_every = checkpoint_dir, checkpoint_every
        self.progress = progress
        self.optimizer = torch.optim.Adam(self.pgn.parameters(), lr=lr)
        self.step_count = 0
        self.history: List[dict] = []
        self.eval_history: List[dict] = []
        self.resets = 0

        pool = image_pool(images)
        if pool is not None:
            if holdout is None:
                if len(pool) < 2:
                    raise ValueError("need at least 2 images to hold some out (or pass holdout=...)")
                k = min(n_holdout, len(pool) // 2)
                holdout, pool = torch.stack([center_crop(t, crop) for t in pool[-k:]]), pool[:-k]
            self._batches = batches_from_pool(pool, batch_size, crop, seed)
        else:
            self._batches = batches_from_iterable(images, batch_size, crop, seed)
            if holdout is None:
                holdout = next(self._batches)
        if isinstance(holdout, (str, os.PathLike, list, tuple)):
            holdout = torch.stack([center_crop(t, crop) for t in image_pool(holdout)])
        self._make_eval_set(holdout, seed)

        self.generators = [self._new_generator(d) for d in self.generator_depths]
        self._gen_state = [{"best": math.inf, "since": 0, "ema": None} for _ in self.generators]
        self.calibration: Optional[dict] = None
        if not self.pgn.calibrated:
            self._calibrate()

    # -- grad_scale="auto" ------------------------------------------------------------------------
    def _calibrate(self) -> None:
        """Calibrate the PGN's s on the first training batch, run through every online generator (the
        pairs the PGN will train on), from the teacher's gradient; the batch is then trained on as usual."""
        try:
            y = next(self._batches)
        except StopIteration:
            raise ValueError("no training batch to calibrate grad_scale='auto' on") from None
        self._batches = itertools.chain([y], self._batches)
        y = y.to(self.device, torch.float32)
        with torch.no_grad():
            y_hat = torch.cat([gen(y) for gen, _ in self.generators])
        y = y.repeat(len(self.generators), 1, 1, 1)
        _, g_true = teacher_gradient(self.teacher, y_hat, y)
        s = self.pgn.calibrate_grad_scale(y_hat, y, g_true)
        self.calibration = {"grad_scale": s, "images": int(y.shape[0]),
                            "teacher_grad_norm": float(g_true.flatten(1).norm(dim=1).mean()),
                            "pixel_diff_norm": float((y_hat - y).flatten(1).norm(dim=1).mean())}

    # -- generators -------------------------------------------------------------------------------
    def _new_generator(self, depth: int):
        gen = AutoencoderGenerator(depth, self.generator_width, self.pgn.input_range).to(self.device)
        return gen, torch.optim.Adam(gen.parameters(), lr=self.generator_lr)

    def _track_plateau(self, i: int, loss: float) -> bool:
        st = self._gen_state[i]
        st["ema"] = loss if st["ema"] is None else 0.9 * st["ema"] + 0.1 * loss
        if st["ema"] < st["best"] * (1 - self.plateau_tol):
            st["best"], st["since"] = st["ema"], 0
            return False
        st["since"] += 1
        if st["since"] >= self.plateau_patience:
            self.generators[i] = self._new_generator(self.generator_depths[i])
            self._gen_state[i] = {"best": math.inf, "since": 0, "ema": None}
            self.resets += 1
            return True
        return False

    # -- held-out pairs ---------------------------------------------------------------------------
    def _make_eval_set(self, holdout, seed: int) -> None:
        if not isinstance(holdout, torch.Tensor) or holdout.dim() != 4 or holdout.shape[1] != 3:
            raise ValueError("holdout must be images of shape (N, 3, H, W)")
        y = holdout.float().to(self.device)
        lo, hi = self.pgn.input_range
        n = y.shape[0]
        kinds = []
        depths = self.generator_depths
        for i in range(n):
            # a randomly initialised generator's output, blended towards the target by alpha: the
            # kind of y_hat an online generator produces early (alpha 0) and later (alpha 0.5, 0.9)
            alpha = (0.0, 0.5, 0.9)[i % 3]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 100 + i)
                g = AutoencoderGenerator(depths[i % len(depths)], self.generator_width, (lo, hi)).to(self.device)
            with torch.no_grad():
                kinds.append(torch.lerp(g(y[i:i + 1])[0], y[i], alpha))
        self.eval_y = y
        self.eval_y_hat = torch.stack(kinds)
        _, self.eval_g_true = teacher_gradient(self.teacher, self.eval_y_hat, self.eval_y)

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        was_training = self.pgn.training
        self.pgn.eval()
        _, g_pred = self.pgn(self.eval_y_hat, self.eval_y)
        self.pgn.train(was_training)
        metrics = gradient_metrics(g_pred, self.eval_g_true)
        metrics["grad_loss"] = float(self.grad_coef * self._grad_loss(g_pred, self.eval_g_true))
        # "online": the current generators (the distribution the PGN trains on) applied to the held-out
        # images, with the teacher's gradient taken now
        y = self.eval_y
        y_hat = torch.cat([gen(y[i::len(self.generators)]) for i, (gen, _) in enumerate(self.generators)
                           if y[i::len(self.generators)].shape[0]])
        y = torch.cat([y[i::len(self.generators)] for i in range(len(self.generators))
                       if y[i::len(self.generators)].shape[0]])
        _, g_true = teacher_gradient(self.teacher, y_hat, y)
        self.pgn.eval()
        _, g_pred = self.pgn(y_hat, y)
        self.pgn.train(was_training)
        online = gradient_metrics(g_pred, g_true)
        metrics["online_cosine"], metrics["online_rel_error"] = online["cosine"], online["rel_error"]
        return metrics

    def _grad_loss(self, g_pred: torch.Tensor, g_true: torch.Tensor) -> torch.Tensor:
        """``"mse"``: MSE(g_pred, g_true) (the paper's, with grad_coef 2^26); ``"relative"``: the same
        divided by the batch's mean squared true gradient (a constant), i.e. the pooled squared relative
        error ||g_pred - g_true||^2 / ||g_true||^2: scale-free, so grad_coef (default 1) needs no re-tuning
        for another teacher or image size."""
        mse = F.mse_loss(g_pred, g_true)
        if self.grad_loss == "relative":
            mse = mse / g_true.detach().pow(2).mean().clamp_min(torch.finfo(g_true.dtype).tiny)
        return mse

    # -- one step ---------------------------------------------------------------------------------
    def _clip(self) -> float:
        params = [p for p in self.pgn.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
        if not math.isfinite(norm):
            for p in params:
                p.grad = None
            return norm
        if self.grad_norm_avg is not None:
            limit = self.clip_factor * self.grad_norm_avg
            if norm > limit:
                for p in params:
                    p.grad.mul_(limit / norm)
                norm = limit
            self.grad_norm_avg = self.clip_momentum * self.grad_norm_avg + (1 - self.clip_momentum) * norm
        else:
            self.grad_norm_avg = norm
        return norm

    def step(self, y: torch.Tensor) -> Dict[str, float]:
        y = y.to(self.device, torch.float32)
        gi = self.step_count % len(self.generators)
        gen, gen_opt = self.generators[gi]
        y_hat = gen(y)
        teacher_value, g_true = teacher_gradient(self.teacher, y_hat, y)

        self.pgn.train()
        proxy, g_pred = self.pgn(y_hat.detach(), y)
        grad_loss = self._grad_loss(g_pred, g_true)
        total = self.grad_coef * grad_loss
        perc = torch.zeros(())
        if self.perceptual_coef:
            perc = per_sample_sum(self.teacher, proxy, y) / y.shape[0]
            total = total + self.perceptual_coef * perc
        l1 = F.l1_loss(proxy, y)
        total = total + self.l1_coef * l1
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        norm = self._clip()
        if math.isfinite(norm):
            self.optimizer.step()

        gen_opt.zero_grad(set_to_none=True)
        y_hat.backward(g_pred.detach() if self.generator_gradient == "pgn" else g_true)
        gen_opt.step()
        gen_loss = float(teacher_value) / y.shape[0]
        reset = self._track_plateau(gi, gen_loss)

        self.step_count += 1
        record = {"step": self.step_count, "loss": float(total.detach()), "grad_loss": float(self.grad_coef * grad_loss.detach()),
                  "perceptual": float(perc.detach()), "l1": float(l1.detach()), "grad_norm": norm, "generator": gi,
                  "generator_teacher_loss": gen_loss, "reset": reset}
        record.update(gradient_metrics(g_pred.detach(), g_true))
        self.history.append(record)
        return record

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_path(self, path, default_name: str) -> str:
        if path is not None:
            return os.fspath(path)
        if self.checkpoint_dir is None:
            raise ValueError("no checkpoint path: pass path=... or checkpoint_dir=...")
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        return os.path.join(self.checkpoint_dir, default_name)

    def save_checkpoint(self, path=None) -> str:
        """Write the PGN (:meth:`PerceptualGradientNetwork.save` format) to ``path`` (default
        ``checkpoint_dir/pgn_last.pt``) atomically; returns the path."""
        path = self._checkpoint_path(path, "pgn_last.pt")
        last_eval = self.eval_history[-1] if self.eval_history else {}
        metrics = {k: float(v) for k, v in last_eval.items()}
        return checkpoint.atomic_write(path, lambda tmp: self.pgn.save(tmp, step=self.step_count, metrics=metrics),
                                       keep_previous=False)

    def _stateful(self) -> Dict[str, object]:
        objects = {"pgn": self.pgn, "optimizer": self.optimizer}
        for i, (gen, gen_opt) in enumerate(self.generators):
            objects[f"generator{i}"], objects[f"generator{i}_optimizer"] = gen, gen_opt
        return objects

    def save_state(self, path=None) -> str:
        """Write the whole training state to ``path`` (default ``checkpoint_dir/trainer_state.pt``)
        atomically, keeping the previous file as ``<path>.prev``: PGN and online generators with their
        optimizers, step and plateau counters, gradient-clipping average, histories, calibration, RNG
        states. Returns the path."""
        path = self._checkpoint_path(path, "trainer_state.pt")
        extra = {"pgn_config": self.pgn.config(), "grad_norm_avg": self.grad_norm_avg,
                 "generator_state": self._gen_state, "resets": self.resets, "calibration": self.calibration,
                 "history": self.history, "eval_history": self.eval_history}
        return checkpoint.save_training_state(path, self._stateful(), self.step_count, extra)

    def resume(self, path) -> "PGNTrainer":
        """Continue from a :meth:`save_state` file. This trainer must have been built with the arguments
        of the run that wrote it (same PGN architecture, images, batch size, seed...); the batch stream
        is advanced past the batches already trained on (an iterable source is read again from its
        start to get there). Returns self."""
        if self.step_count:
            raise RuntimeError(f"resume() needs a trainer that has not trained yet; this one is at step {self.step_count}")
        state = checkpoint.read_training_state(path)
        config = state["extra"]["pgn_config"]
        if config["arch"] != self.pgn.arch or config["output"] != self.pgn.output:
            raise ValueError(f"{os.fspath(path)!r} was written for a PGN {config}, this trainer has {self.pgn.config()}")
        step, extra = checkpoint.restore_training_state(state, self._stateful(), source=f"checkpoint {os.fspath(path)!r}")
        self.pgn.grad_scale = None if config["grad_scale"] == "auto" else config["grad_scale"]
        self.grad_norm_avg = extra["grad_norm_avg"]
        self._gen_state = [dict(st) for st in extra["generator_state"]]
        self.resets, self.calibration = extra["resets"], extra["calibration"]
        self.history, self.eval_history = list(extra["history"]), list(extra["eval_history"])
        for _ in range(step):  # each step took one batch
            next(self._batches)
        self.step_count = step
        return self

    def train(self, steps: Optional[int] = None, minutes: Optional[float] = None, eval_every: int = 100,
              callback: Optional[Callable[[dict], None]] = None) -> List[dict]:
        """Train for ``steps`` steps and/or ``minutes`` of wall clock (whichever ends first; at least
        one must be given). Evaluates every ``eval_every`` steps and at the end; returns the history."""
        if steps is None and minutes is None:
            raise ValueError("give steps=... and/or minutes=...")
        from tqdm.auto import tqdm

        start = time.perf_counter()
        deadline = None if minutes is None else start + 60.0 * minutes
        bar = tqdm(total=steps, disable=not self.progress, desc="pgn-train", unit="step")
        done = 0
        try:
            while steps is None or done < steps:
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                try:
                    y = next(self._batches)
                except StopIteration:
                    break
                record = self.step(y)
                done += 1
                record["time_s"] = time.perf_counter() - start
                if eval_every and self.step_count % eval_every == 0:
                    ev = dict(self.evaluate(), step=self.step_count, time_s=record["time_s"])
                    self.eval_history.append(ev)
                    record["eval"] = ev
                if callback is not None:
                    callback(record)
                bar.update(1)
                bar.set_postfix(grad_loss=f"{record['grad_loss']:.3g}", cos=f"{record['cosine']:.3f}")
                if self.checkpoint_dir is not None and self.step_count % self.checkpoint_every == 0:
                    self.save_checkpoint()
                    self.save_state()
        finally:
            bar.close()
        if not self.eval_history or self.eval_history[-1]["step"] != self.step_count:
            self.eval_history.append(dict(self.evaluate(), step=self.step_count,
                                          time_s=time.perf_counter() - start))
        if self.checkpoint_dir is not None:
            self.save_checkpoint()
            self.save_state()
        return self.history
