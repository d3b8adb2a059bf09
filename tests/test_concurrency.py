"""One loss module used from several threads at once (inference servers, nn.DataParallel's replicas
share it) gives the values and input gradients of serial use, and the plan cache builds one plan per
backbone even when threads race to it."""
import threading
import warnings

import pytest
import torch

import perfloss
from perfloss.engine import plan as plan_mod

THREADS = 4


def make_loss(kind, engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        if kind == "perceptual":
            return perfloss.PerceptualLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, engine=engine)
        if kind == "style":
            return perfloss.StyleLoss("vgg16", layers=["relu1_2", "relu2_2"], weights=None, engine=engine)
        return perfloss.PerceptualLoss("resnet18", layers=["layer1"], distance="l1", weights=None, engine=engine)


def pairs(n):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)) for _ in range(n)]


def value_and_grad(loss, x, t):
    x = x.clone().requires_grad_()
    v = loss(x, t)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


def assert_same(result, expected):
    """Equal up to rounding (a thread may split a convolution differently); cross-talk between threads
    would show as errors of the values' own size."""
    for a, b in zip(result, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def run_threads(loss, work, repeats):
    """Every thread runs every pair ``repeats`` times, all starting together; returns per-thread results
    and any exceptions."""
    barrier = threading.Barrier(THREADS)
    results = [[] for _ in range(THREADS)]
    errors = []

    def worker(i):
        try:
            barrier.wait()
            for _ in range(repeats):
                for x, t in work:
                    results[i].append(value_and_grad(loss, x, t))
        except Exception as err:  # reported below, with the thread's traceback
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results, errors


@pytest.mark.parametrize("kind, engine", [("perceptual", "lean"), ("perceptual", "eager"), ("style", "lean"),
                                          ("resnet", "lean")])
def test_threads_match_serial(kind, engine):
    torch.set_num_threads(1)
    try:
        loss = make_loss(kind, engine)
        work = pairs(3)
        serial = [value_and_grad(loss, x, t) for x, t in work]
        results, errors = run_threads(loss, work, repeats=2)
    finally:
        torch.set_num_threads(2)
    assert not errors, errors
    for per_thread in results:
        assert len(per_thread) == 2 * len(work)
        for result, expected in zip(per_thread, serial * 2):
            assert_same(result, expected)


def _counting_traces(monkeypatch, backbone):
    """Count compile_plan calls on ``backbone`` (not the shape-only meta copies a plan makes of itself)."""
    traced = []
    real = plan_mod.compile_plan

    def counting(module, *args, **kwargs):
        if module is backbone:
            traced.append(1)
        return real(module, *args, **kwargs)

    monkeypatch.setattr(plan_mod, "compile_plan", counting)
    return traced


def test_threads_calling_a_new_loss_trace_nothing(monkeypatch):
    """A loss traces its plans when it is built: threads calling it at once trace nothing (torch.fx's
    tracing patches nn.Module.__call__ process-wide, which broke the other threads' module calls with
    "module is not installed as a submodule") and all use its one plan."""
    torch.set_num_threads(1)
    try:
        for _ in range(3):  # a race: give it a few chances
            loss = make_loss("perceptual", "lean")
            plan = plan_mod.plan_for(loss.backbone)
            traced = _counting_traces(monkeypatch, loss.backbone)
            results, errors = run_threads(loss, pairs(1), repeats=1)
            assert not errors, errors
            assert not traced and plan_mod.plan_for(loss.backbone) is plan
            expected = value_and_grad(loss, *pairs(1)[0])
            for (result,) in results:
                assert_same(result, expected)
    finally:
        torch.set_num_threads(2)


def test_threads_racing_in_plan_for_share_one_plan(monkeypatch):
    """Without the lock two threads each traced a plan; the later replaced the earlier in the cache, and
    the earlier, held only by its thread's forward, was collected before that thread's backward."""
    loss = make_loss("perceptual", "lean")
    plan_mod._PLANS.pop(loss.backbone, None)
    traced = _counting_traces(monkeypatch, loss.backbone)
    barrier = threading.Barrier(THREADS)
    plans = []

    def worker():
        barrier.wait()
        plans.append(plan_mod.plan_for(loss.backbone))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(traced) == 1 and len(plans) == THREADS and all(p is plans[0] for p in plans)
