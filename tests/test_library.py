"""perfloss.ops.library: which implementation runs each op, and the one switch that changes it."""
import os
import re
import subprocess
import sys

import pytest
import torch

from op_helpers import rand, ref_gram
from perfloss.ops import library
from perfloss.ops.feature_distance import feature_distance
from perfloss.ops.gram import gram
from perfloss.ops.style_loss import style_loss
from perfloss.ops.tv_loss import tv_loss

CPP_OPS = ("gram", "style_loss", "feature_distance", "tv_loss", "relu_mask", "relu_mask_", "relu_mask_backward",
           "maxpool_codes", "maxpool_unroute", "sign_pack", "sign_unpack")


def test_backend_info_reports_the_default_kernels():
    info = library.backend_info()
    built = library.extension_error() is None
    assert info["_extension"]["perfloss._C"] == ("loaded" if built else library.extension_error())
    for op in CPP_OPS:
        assert info[op]["cpu"] == ("cpp" if built else "reference")
        assert info[op]["cuda"] == ("triton" if library.triton_available() else "reference")


@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_use_switches_kernels_and_restores_them():
    bad = torch.randn(3, 4, 5)  # the C++ kernel and the reference fail differently on a 3-D input
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.perfloss.gram(bad, True)
    with library.use("reference"):
        assert library.backend_info()["gram"]["cpu"] == "reference"
        with pytest.raises(ValueError, match="not enough values"):
            torch.ops.perfloss.gram(bad, True)
        with library.use("cpp"):  # nested: the C++ kernel is back inside, the reference after
            with pytest.raises(RuntimeError, match="4-D"):
                torch.ops.perfloss.gram(bad, True)
        assert library.backend_info()["gram"]["cpu"] == "reference"
    assert library.backend_info()["gram"]["cpu"] == "cpp"
    with pytest.raises(RuntimeError, match="4-D"):
        torch.ops.perfloss.gram(bad, True)


def test_use_routes_calls_to_the_chosen_kernel(monkeypatch):
    """use() registers the implementation's function with torch: the op's calls reach it."""
    entry = library._OPS["gram"]
    calls = []

    def spy(features, normalize):
        calls.append(features.shape)
        return entry.reference(features, normalize)

    monkeypatch.setattr(entry, "triton", spy)
    monkeypatch.setattr(library, "interpreting", lambda: True)  # Triton may run CPU tensors
    x = torch.randn(2, 3, 4, 5)
    with library.use("triton"):
        assert library.backend_info()["gram"]["cpu"] == "triton"
        gram(x)
    gram(x)
    assert calls == [x.shape]


def test_use_rejects_unknown_implementations():
    with pytest.raises(ValueError, match="implementation must be one of"):
        with library.use("cuda_graphs"):
            pass


def test_cuda_default_follows_cuda_order_then_the_reference():
    """The per-device order the module docstring gives (a C++ CUDA kernel cannot be registered here):
    Triton first on CUDA, except for the ops CUDA_ORDER puts their C++ kernel first."""
    def entry(name, triton, cpp):
        return library._Entry(name=name, reference=None, triton=triton, cpp=cpp)

    assert entry("relu_mask", print, ("cpu", "cuda")).default("cuda") == "triton"
    assert entry("relu_mask", None, ("cpu", "cuda")).default("cuda") == "cpp"
    assert entry("relu_mask", None, ("cpu",)).default("cuda") == "reference"
    assert entry("gram", print, ("cpu", "cuda")).default("cuda") == "cpp"
    assert entry("gram", print, ("cpu",)).default("cuda") == "triton"
    assert entry("relu_mask", print, ("cpu", "cuda")).default("cpu") == "cpp"
    assert entry("relu_mask", print, ()).default("cpu") == "reference"  # Triton on CPU tensors only when forced


def _fake_build(monkeypatch, torch_version, cuda_version):
    build = type(sys)("perfloss._build_info")
    build.TORCH_VERSION, build.CUDA_VERSION, build.CUDA_ARCHS = torch_version, cuda_version, None
    monkeypatch.setitem(sys.modules, "perfloss._build_info", build)


def test_check_build_names_both_torch_builds_on_a_mismatch(monkeypatch):
    installed = torch.__version__.split("+")[0]
    major, minor = (int(v) for v in installed.split(".")[:2])
    _fake_build(monkeypatch, installed, None)
    library.check_build()  # the same torch: nothing to say
    _fake_build(monkeypatch, f"{major}.{minor}.9", None)
    library.check_build()  # a patch release keeps the C++ ABI
    _fake_build(monkeypatch, f"{major}.{minor + 1}.0", None)
    with pytest.raises(ImportError, match=rf"built for torch {major}\.{minor + 1}\.0 \(CPU\), but torch {re.escape(torch.__version__)}"):
        library.check_build()
    if torch.version.cuda is None:  # a CUDA build of the extension cannot load into a CPU torch
        _fake_build(monkeypatch, installed, "13.0")
        with pytest.raises(ImportError, match=r"built for torch .* \(CUDA 13\.0\), but torch .* \(CPU\) is installed"):
            library.check_build()


def _import_with(impl):
    env = dict(os.environ, PERFLOSS_IMPL=impl)
    code = "import perfloss, json; print(json.dumps(perfloss.backend_info()['gram']))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_perfloss_impl_is_read_at_import():
    done = _import_with("reference")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"cpu": "reference", "cuda": "reference"}'
    done = _import_with("fastest")
    assert done.returncode != 0 and "implementation must be one of" in done.stderr


def test_compile_fullgraph(impl):
    """The fake kernels and autograd rules hold for every implementation: one graph, eager's numbers."""
    torch._dynamo.reset()
    target = ref_gram(rand((2, 4, 5, 6), torch.float32, seed=2))[:1].float()

    def loss_fn(x, y):
        return (style_loss(x, target) + feature_distance(x, y, "lpips") + feature_distance(x, y, "mse")
                + tv_loss(x, "l1") + gram(x).sum())

    x = rand((2, 4, 5, 6), torch.float32).requires_grad_(True)
    y = rand((2, 4, 5, 6), torch.float32, seed=1)
    counts = {"n": 0}

    def backend(gm, example_inputs):
        counts["n"] += 1
        return torch._dynamo.backends.debugging.aot_eager(gm, example_inputs)

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    out = compiled(x, y)
    (g,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_(True)
    out2 = loss_fn(x2, y)
    (g2,) = torch.autograd.grad(out2, x2)
    assert counts["n"] == 1  # one graph, no breaks
    assert torch.allclose(out, out2, rtol=1e-5, atol=1e-6)
    assert torch.allclose(g, g2, rtol=1e-4, atol=1e-7)
