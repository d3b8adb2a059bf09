import os

# Triton kernels are checked on CPU through the interpreter; it must be set before triton is imported.
if os.environ.get("PERFLOSS_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """Tiny shapes: one intra-op thread is faster, and far faster on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _implementations():
    from perfloss.kernels.common import interpreting
    from perfloss.ops import library

    return ["reference",
            pytest.param("cpp", marks=pytest.mark.skipif(library.extension_error() is not None,
                                                          reason="perfloss._C not built")),
            pytest.param("triton", marks=pytest.mark.skipif(not (library.triton_available() and interpreting()),
                                                             reason="needs triton and TRITON_INTERPRET=1"))]


@pytest.fixture(params=_implementations())
def impl(request):
    """Every op that has implementation ``impl`` runs on it for the test (perfloss.ops.library.use)."""
    from perfloss.ops import library

    with library.use(request.param):
        yield request.param
