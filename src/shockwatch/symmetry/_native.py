"""The fused per-step kernel in C (``_fused.c``), loaded with ctypes.

Built at first use with the system's C compiler (``$CC``, else ``cc``) into a per-user cache
(``$SHOCKWATCH_CACHE``, else ``$XDG_CACHE_HOME/shockwatch``, else ``~/.cache/shockwatch``), named by
a hash of the source, the flags and the machine, so that a changed kernel is rebuilt and a stale one
never loaded. Where no compiler works (or ``SHOCKWATCH_NATIVE=0``) ``library()`` returns None and
``reason()`` says why: callers fall back to the eager torch kernel, which computes the same sums.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

__all__ = ["address", "library", "reason"]

_SOURCE = Path(__file__).with_name("_fused.c")
_FLAGS = ("-O3", "-fopenmp-simd", "-fPIC", "-shared")
_why_not: str | None = None


def _cache_dir() -> Path:
    if "SHOCKWATCH_CACHE" in os.environ:
        return Path(os.environ["SHOCKWATCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shockwatch"


def _build(source: bytes, target: Path, compiler: str) -> str | None:
    """Compile to ``target`` (atomically: a concurrent build never leaves a half-written file); the
    error text on failure. -march=native first (AVX2/AVX-512 where the CPU has them), then without."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only home, a file where the folder should be
        return f"cannot write the kernel cache {target.parent} ({error}): set SHOCKWATCH_CACHE"
    errors = []
    for extra in (("-march=native",), ()):
        partial = None
        try:
            handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(handle)
            done = subprocess.run([compiler, *_FLAGS, *extra, "-x", "c", "-", "-o", partial], input=source,
                                  capture_output=True, timeout=120)
            if done.returncode == 0:
                os.replace(partial, target)
                return None
            errors.append(done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["failed"])
        except (OSError, subprocess.TimeoutExpired) as error:
            errors.append([f"{type(error).__name__}: {error}"])
        finally:
            if partial is not None and os.path.exists(partial):
                os.unlink(partial)
    return f"{compiler} could not build the fused kernel: {errors[-1][0]}"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel, built on first use; None where it cannot be (see ``reason()``)."""
    global _why_not
    if os.environ.get("SHOCKWATCH_NATIVE", "1") == "0":
        _why_not = "disabled by SHOCKWATCH_NATIVE=0"
        return None
    try:
        source = _SOURCE.read_bytes()
    except OSError as error:  # an installation without the package data
        _why_not = f"the kernel source is missing ({error})"
        return None
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(source + repr((_FLAGS, compiler, platform.machine(), platform.node())).encode()).hexdigest()[:16]
    try:
        target = _cache_dir() / f"fused-{key}.so"
    except RuntimeError as error:  # no home directory to find
        _why_not = f"no cache directory for the kernel ({error}): set SHOCKWATCH_CACHE"
        return None
    if not target.exists():
        _why_not = _build(source, target, compiler)
        if _why_not is not None:
            return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as error:
        _why_not = f"could not load {target}: {error}"
        return None
    i64, pointer = ctypes.c_int64, ctypes.c_void_p
    lib.sw_units.argtypes = [i64, i64, i64, pointer, pointer, pointer, pointer, pointer, pointer, i64, pointer,
                            pointer, pointer]
    lib.sw_units.restype = ctypes.c_int
    lib.sw_sumsq.argtypes = [i64, i64, pointer, pointer, pointer]
    lib.sw_sumsq.restype = ctypes.c_double
    lib.sw_scatter.argtypes = [i64, i64, pointer, i64, pointer, pointer, pointer, i64, pointer, i64, pointer]
    lib.sw_scatter.restype = None
    return lib


def address(array) -> int:
    """The data address of a NumPy array, for the kernel (``ndarray.ctypes`` costs a microsecond or two
    a call; this reads the array interface)."""
    return array.__array_interface__["data"][0]


def reason() -> str | None:
    """Why ``library()`` is None (None when it loaded or was not tried yet)."""
    return _why_not
