"""Training state survives a crash: atomic checkpoint files (perfloss.checkpoint) and exact resumption,
for any model + optimizer + scheduler and for PGNTrainer and ``perfloss pgn-train --resume``."""
import argparse
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from perfloss import checkpoint
from perfloss.pgn import PGNTrainer
from perfloss.pgn import cli as pgn_cli
from perfloss.pgn.data import procedural_images

from test_pgn_trainer import TinyTeacher

pytestmark = pytest.mark.usefixtures("one_thread")


# -- any model, optimizer and scheduler ------------------------------------------------------------
def make_run():
    """A model with dropout and BatchNorm, Adam and a step scheduler (fresh, seeded the same way)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return {"model": model, "optimizer": opt, "scheduler": sched}


def train(objects, steps):
    """Steps whose data come from all three global RNGs (torch, numpy, Python), as real loops' do."""
    model, opt, sched = objects["model"], objects["optimizer"], objects["scheduler"]
    for _ in range(steps):
        x = torch.randn(8, 6) * (1 + np.random.rand()) + random.random()
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def seed_all():
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)


def assert_same_state(a, b, atol):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=atol, msg=ka)


@pytest.mark.parametrize("restore_rng", [True, False])
def test_resumed_run_matches_the_straight_run(tmp_path, restore_rng):
    straight = make_run()
    seed_all()
    train(straight, 10)

    first = make_run()
    seed_all()
    train(first, 5)
    path = checkpoint.save_training_state(tmp_path / "state.pt", first, step=5, extra={"note": "half"})
    seed_all()  # the new process's RNGs are anywhere
    resumed = make_run()
    step, extra = checkpoint.load_training_state(path, resumed, restore_rng=restore_rng)
    assert step == 5 and extra == {"note": "half"}
    train(resumed, 5)
    if restore_rng:
        assert_same_state(resumed["model"], straight["model"], atol=1e-6)
        assert resumed["scheduler"].get_last_lr() == straight["scheduler"].get_last_lr()
        assert resumed["optimizer"].state_dict()["state"][0]["step"] == 10
    else:  # the check above can fail: without the RNG states the data differ
        with pytest.raises(AssertionError):
            assert_same_state(resumed["model"], straight["model"], atol=1e-6)


def test_previous_file_is_kept_and_a_failed_write_changes_nothing(tmp_path):
    path = tmp_path / "state.pt"
    model = nn.Linear(2, 2)
    for step in (1, 2):
        with torch.no_grad():
            model.weight.fill_(step)
        checkpoint.save_training_state(path, {"model": model}, step=step)
    assert checkpoint.read_training_state(path)["step"] == 2
    assert checkpoint.read_training_state(str(path) + ".prev")["step"] == 1
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as torch.save's files
    before = path.read_bytes()

    def failing(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(path, failing)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["state.pt", "state.pt.prev"]  # no temporary file left


def test_damaged_or_foreign_files_are_named(tmp_path):
    path = tmp_path / "state.pt"
    model = nn.Linear(2, 2)
    checkpoint.save_training_state(path, {"model": model}, step=1)
    checkpoint.save_training_state(path, {"model": model}, step=2)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=f"checkpoint '{path}' is truncated .*state.pt.prev' may still be good"):
        checkpoint.load_training_state(path, {"model": model})
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, other)
    with pytest.raises(ValueError, match="is not a perfloss training state"):
        checkpoint.read_training_state(other)
    with pytest.raises(ValueError, match=r"holds \['model'\], but \['model', 'optimizer'\] were given"):
        checkpoint.load_training_state(str(path) + ".prev",
                                       {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=1)})
    with pytest.raises(TypeError, match="has no state_dict"):
        checkpoint.save_training_state(path, {"model": 3}, step=0)


def test_sigkill_mid_run_leaves_a_loadable_checkpoint(tmp_path):
    """A writer saving as fast as it can (8 MB per file) is killed at an arbitrary moment: the file
    under the final name is complete, and its contents match its step."""
    path = tmp_path / "state.pt"
    script = textwrap.dedent(f"""
        import sys, torch
        from perfloss import checkpoint
        model = torch.nn.Linear(1000, 2000)
        step = 0
        while True:
            step += 1
            with torch.no_grad():
                model.weight.fill_(step)
            checkpoint.save_training_state({str(path)!r}, {{"model": model}}, step=step)
            print(step, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 2:
                break
        time.sleep(0.05)  # somewhere inside the next write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    model = nn.Linear(1000, 2000)
    step, _ = checkpoint.load_training_state(path, {"model": model})
    assert step >= 2 and bool((model.weight == step).all())
    prev = nn.Linear(1000, 2000)
    prev_step, _ = checkpoint.load_training_state(str(path) + ".prev", {"model": prev})
    # killed between keeping the old file as .prev and renaming the new one: both are the same step
    assert prev_step in (step - 1, step) and bool((prev.weight == prev_step).all())


# -- PGNTrainer and the CLI ---------------------------------------------------------------------------
def pgn_trainer(tmp_path=None, grad_scale="auto"):
    from perfloss.pgn import PerceptualGradientNetwork

    torch.manual_seed(123)  # the trainer reseeds: whatever came before must not matter
    pgn = PerceptualGradientNetwork("resnet4", grad_scale=grad_scale)
    return PGNTrainer(pgn, TinyTeacher(), procedural_images(12, 16, seed=0), batch_size=2, n_holdout=2,
                      progress=False, plateau_patience=1, plateau_tol=0.9, checkpoint_dir=tmp_path, checkpoint_every=3)


def test_pgn_trainer_resumes_exactly(tmp_path):
    straight = pgn_trainer()
    straight.train(steps=8, eval_every=4)

    first = pgn_trainer(tmp_path)
    first.train(steps=4, eval_every=4)  # writes trainer_state.pt at steps 3 and 4
    assert checkpoint.read_training_state(tmp_path / "trainer_state.pt.prev")["step"] == 3
    resumed = pgn_trainer().resume(tmp_path / "trainer_state.pt")
    assert resumed.step_count == 4 and resumed.pgn.grad_scale == first.pgn.grad_scale
    resumed.train(steps=4, eval_every=4)

    assert resumed.step_count == 8 and resumed.resets == straight.resets > 0  # generators were re-initialised
    assert_same_state(resumed.pgn, straight.pgn, atol=1e-6)
    for (g1, _), (g2, _) in zip(resumed.generators, straight.generators):
        assert_same_state(g1, g2, atol=1e-6)
    assert [r["loss"] for r in resumed.history] == pytest.approx([r["loss"] for r in straight.history], rel=1e-6)
    with pytest.raises(RuntimeError, match="has not trained yet"):
        resumed.resume(tmp_path / "trainer_state.pt")


def test_cli_resume_continues_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(pgn_cli, "build_teacher", lambda spec, weights, input_range, engine: TinyTeacher())
    parser = argparse.ArgumentParser(prog="perfloss")
    pgn_cli.add_parser(parser.add_subparsers(dest="command"))

    def run(folder, steps, *extra):
        args = parser.parse_args(["pgn-train", "--procedural", "10", "--size", "16", "--steps", str(steps),
                                  "--batch-size", "2", "--no-progress", "--eval-every", "0", "--grad-scale", "auto",
                                  "--checkpoint-dir", str(tmp_path / folder), "--checkpoint-every", "2", *extra])
        torch.manual_seed(0)  # the CLI builds the PGN before it seeds (--seed seeds the trainer)
        assert args.func(args) == 0
        return torch.load(tmp_path / folder / "pgn_last.pt", weights_only=True)

    straight = run("straight", 4)
    run("resumed", 2)
    resumed = run("resumed", 4, "--resume", str(tmp_path / "resumed" / "trainer_state.pt"))
    assert resumed["extra"]["step"] == 4 and resumed["config"] == straight["config"]
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
