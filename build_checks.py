"""Checks setup.py runs on the extension it has just linked (a module of its own so tests can import it).

Some toolchains put part of libstdc++ into the shared objects they link: a ``-static-libstdc++`` in the
compiler's specs, or a devtoolset-style g++ that adds the newer pieces from a static archive. On the GPU
machine's image (``/opt/gcc/bin/g++`` 13.3) the extension built that way carried its own
``std::ostream::_M_insert<long>``, and every error message that prints a number crashed the process
with SIGSEGV instead of raising (benchmarks/results/gpu/README.md). A build whose extension defines that
symbol itself is therefore refused, with the compiler named.
"""
import shutil
import subprocess
from typing import Optional

# std::basic_ostream<char>::_M_insert<long>(long): what every `stream << int64` calls. An extension
# linked against the shared libstdc++ imports it; one that defines it carries its own stream code.
STREAM_INSERT_LONG = "_ZNSo9_M_insertIlEERSoT_"


def defines_libstdcxx_streams(path: str) -> Optional[bool]:
    """Whether the shared object at ``path`` defines libstdc++'s ``ostream`` integer insertion itself
    (None where binutils' ``nm`` is not installed)."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    for table in ([], ["-D"]):  # the full symbol table, else (a stripped object) the dynamic one
        listing = subprocess.run([nm, "--defined-only", *table, path], capture_output=True, text=True)
        if STREAM_INSERT_LONG in listing.stdout:
            return True
    return False


def check_shared_libstdcxx(path: str, compiler: str) -> None:
    """Raise RuntimeError when the extension at ``path`` carries its own libstdc++ stream code."""
    if defines_libstdcxx_streams(path):
        raise RuntimeError(
            f"{path} defines libstdc++'s stream code itself ({STREAM_INSERT_LONG}): the compiler {compiler} "
            f"links part of libstdc++ statically. An extension like this (built by a GPU machine's /opt/gcc "
            f"g++ 13.3) crashed with SIGSEGV whenever torch formatted an error message with a number. Build "
            f"with a g++ that links the shared libstdc++, e.g. CXX=/usr/bin/g++ pip install "
            f"--no-build-isolation ., or install a perfloss wheel.")
