"""build_checks: the check setup.py runs on the extension it linked, on small libraries linked both ways."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from perfloss.ops import library

# build_checks.py sits next to setup.py, outside the package: load it from the checkout
_spec = importlib.util.spec_from_file_location("build_checks", Path(__file__).resolve().parents[1] / "build_checks.py")
build_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_checks)
check_shared_libstdcxx, defines_libstdcxx_streams = build_checks.check_shared_libstdcxx, build_checks.defines_libstdcxx_streams

SOURCE = """
#include <sstream>
#include <string>
std::string describe(long n) { std::ostringstream s; s << "got " << n; return s.str(); }
"""

needs_toolchain = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("nm") is None,
                                     reason="needs g++ and nm")


def _link(tmp_path, name, *flags):
    src = tmp_path / "describe.cpp"
    src.write_text(SOURCE)
    out = tmp_path / name
    subprocess.run(["g++", "-shared", "-fPIC", "-O2", *flags, str(src), "-o", str(out)], check=True, timeout=120)
    return str(out)


@needs_toolchain
def test_a_library_linked_against_the_shared_libstdcxx_passes(tmp_path):
    path = _link(tmp_path, "shared.so")
    assert defines_libstdcxx_streams(path) is False
    check_shared_libstdcxx(path, "g++")


@needs_toolchain
def test_a_library_carrying_its_own_libstdcxx_is_refused_with_the_compiler_named(tmp_path):
    path = _link(tmp_path, "static.so", "-static-libstdc++")
    assert defines_libstdcxx_streams(path) is True
    with pytest.raises(RuntimeError, match=r"the compiler /opt/gcc/bin/g\+\+ links part of libstdc\+\+ statically"):
        check_shared_libstdcxx(path, "/opt/gcc/bin/g++")
    stripped = path + ".stripped"
    subprocess.run(["strip", path, "-o", stripped], check=True, timeout=60)
    assert defines_libstdcxx_streams(stripped) is True  # found in the dynamic symbol table too


@needs_toolchain
@pytest.mark.skipif(library.extension_error() is not None, reason="perfloss._C not built")
def test_the_built_extension_uses_the_shared_libstdcxx():
    import perfloss._C

    assert defines_libstdcxx_streams(perfloss._C.__file__) is False
