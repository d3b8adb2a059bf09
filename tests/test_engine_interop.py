"""The lean engine with autocast, channels_last, torch.compile and DistributedDataParallel (gloo, CPU),
on the whole batch and in chunks (``CHUNKS``: None picks the whole batch at these sizes, 1 splits it)."""

import pytest
import torch
import torch.nn as nn

from perfloss.engine import compile_plan, lean_loss
from perfloss.heads import TapHead

from test_engine import Toy, eager_values, frozen, rel_err

HEADS = [TapHead("a", "mse"), TapHead("b", "l1"), TapHead("c", "gram"), TapHead("d", "cosine")]
CHUNKS = pytest.mark.parametrize("chunk_size", [None, 1], ids=["whole batch", "chunks of 1"])


@CHUNKS
def test_autocast_bfloat16_cpu(chunk_size):
    net = frozen(Toy())
    plan = compile_plan(net)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    t = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = lean_loss(plan, x, HEADS, target_x=t, chunk_size=chunk_size)
        ve = eager_values(net, HEADS, x, target_x=t)
    assert v.dtype == torch.float32
    torch.testing.assert_close(v, ve, rtol=1e-2, atol=1e-3)
    (g1,) = torch.autograd.grad(v.sum(), x)
    (g2,) = torch.autograd.grad(ve.sum(), x)
    assert g1.dtype == x.dtype
    assert rel_err(g1, g2) < 2e-2  # both in bf16, rounding in different places


def test_autocast_lean_then_eager_on_the_same_leaf():
    """The lean pass must not leave an autocast-cached cast of x without grad_fn behind (prepared
    targets: x itself enters the plan)."""
    from perfloss.engine import target_features

    net = frozen(Toy())
    plan = compile_plan(net)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    t = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = lean_loss(plan, x, HEADS, targets=target_features(plan, t, HEADS))
        ve = eager_values(net, HEADS, x, target_x=t)
    (g1,) = torch.autograd.grad(v.sum(), x)
    (g2,) = torch.autograd.grad(ve.sum(), x)
    assert rel_err(g1, g2) < 2e-2


@CHUNKS
def test_channels_last(chunk_size):
    net = frozen(Toy())
    net_cl = frozen(Toy()).to(memory_format=torch.channels_last)
    net_cl.load_state_dict(net.state_dict())
    plan = compile_plan(net_cl)
    x = torch.randn(2, 3, 15, 17)
    t = torch.randn(2, 3, 15, 17)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    v = lean_loss(plan, x_cl, HEADS, target_x=t.contiguous(memory_format=torch.channels_last), chunk_size=chunk_size)
    x.requires_grad_()
    ve = eager_values(net, HEADS, x, target_x=t)
    torch.testing.assert_close(v, ve, rtol=1e-5, atol=1e-6)
    (g1,) = torch.autograd.grad(v.sum(), x_cl)
    (g2,) = torch.autograd.grad(ve.sum(), x)
    assert rel_err(g1, g2) <= 1e-5


def _ddp_worker(rank, world, init_file, out_file):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    gen = nn.Conv2d(3, 3, 3, padding=1)
    net = frozen(Toy())
    plan = compile_plan(net)
    z = torch.randn(world, 2, 3, 12, 12)
    t = torch.randn(world, 2, 3, 12, 12)
    model = DDP(gen)
    loss = lean_loss(plan, model(z[rank]), HEADS, target_x=t[rank], chunk_size=1).mean()
    loss.backward()
    if rank == 0:  # after backward's all-reduce: both ranks' gradients are in
        torch.save({"grad": gen.weight.grad.clone(), "state": gen.state_dict()}, out_file)
    # No rank may exit while gloo still carries a message to another, nor while another still tears its
    # gloo connections down (a barrier's own last message races the sender's exit; DDP's reference to
    # the process group, dropped only when this frame ended, tore it down after the peer had gone: both
    # seen as a rank waiting forever). So every rank drops its process group first, then they meet in a
    # file store, outside gloo.
    del model, loss
    dist.destroy_process_group()
    done = dist.FileStore(init_file + ".done", world)
    if done.add("ranks", 1) == world:
        done.set("all", "1")
    done.wait(["all"])


def test_ddp_two_cpu_processes(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    out_file = str(tmp_path / "grad.pt")
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), out_file), nprocs=world, join=True)
    got = torch.load(out_file, weights_only=True)
    # single-process eager reference: the mean over ranks of each rank's mean loss
    torch.manual_seed(0)
    gen = nn.Conv2d(3, 3, 3, padding=1)
    net = frozen(Toy())
    z = torch.randn(world, 2, 3, 12, 12)
    t = torch.randn(world, 2, 3, 12, 12)
    assert all(torch.equal(a, b) for a, b in zip(gen.state_dict().values(), got["state"].values()))
    total = sum(eager_values(net, HEADS, gen(z[r]), target_x=t[r]).mean() for r in range(world)) / world
    total.backward()
    assert rel_err(got["grad"], gen.weight.grad) <= 1e-5


@CHUNKS
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_torch_compile_fullgraph_training_step(backend, chunk_size, device, monkeypatch):
    """On CUDA, inductor's graph calls the ops' CUDA kernels (Triton, C++) from inside the compiled code."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # IEEE fp32 convolutions on both sides
    torch._dynamo.reset()
    net = frozen(Toy()).to(device)
    plan = compile_plan(net)
    heads = HEADS + [TapHead("c", "lpips", 0.5, torch.rand(12, device=device))]
    gen = nn.Conv2d(3, 3, 3, padding=1).to(device)
    opt = torch.optim.SGD(gen.parameters(), lr=0.1)
    z = torch.randn(2, 3, 16, 16).to(device)
    t = torch.randn(2, 3, 16, 16).to(device)

    def loss_fn(z):
        return lean_loss(plan, gen(z), heads, target_x=t, chunk_size=chunk_size).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    loss = compiled(z)
    loss.backward()
    got = gen.weight.grad.clone()
    gen.weight.grad = None
    ref = eager_values(net, heads, gen(z), target_x=t).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert rel_err(got, gen.weight.grad) <= 1e-5
    opt.step()  # a second step with new weights reuses the compiled graph
    loss2 = compiled(z)
    loss2.backward()
    assert torch.isfinite(loss2)
