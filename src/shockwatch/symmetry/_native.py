"""The fused per-step kernel in C (``_fused.c``), loaded with ctypes.

Built at first use with the system's C compiler (``$CC``, else ``cc``) into a per-user cache
(``$SHOCKWATCH_CACHE``, else ``$XDG_CACHE_HOME/shockwatch``, else ``~/.cache/shockwatch``), named by
a hash of the source, the flags and the machine, so that a changed kernel is rebuilt and a stale one
never loaded. Where no compiler works (or ``SHOCKWATCH_NATIVE=0``) ``library()`` returns None and
``reason()`` says why: callers fall back to the eager torch kernel, which computes the same sums.

Built with OpenMP where the compiler has it (else without): ``sw_units`` then shares its tensors
among ``threads()`` threads, torch's intra-op count. torch's CPU wheels run on GNU OpenMP and ship
its ``libgomp.so.1``; loaded after torch, the kernel binds to that same runtime (the dynamic loader
reuses a loaded library of the same soname), so its team is torch's threads, still spinning after
the backward pass. Measured in the training loop (benchmarks/RESULTS.md): the monitor's extra time
5.0-5.3 -> 3.7-3.8 ms a step on a 1.9M-parameter MLP, 3.7-3.8 -> 2.7-3.0 ms on the width/4 VGG,
unchanged on the 85k MLP. ``SHOCKWATCH_NATIVE_THREADS=1`` turns the sharing off.
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

import torch

__all__ = ["address", "library", "reason", "threads"]

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
    # OpenMP first (sw_units shares tensors among torch's own threads), then without it
    for extra in (("-fopenmp", "-march=native"), ("-fopenmp",), ("-march=native",), ()):
        partial = None
        try:
            handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(handle)
            done = subprocess.run([compiler, *_FLAGS, *extra, "-x", "c", "-", "-o", partial], input=source, check=False,
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
                            pointer, pointer, i64]
    lib.sw_units.restype = ctypes.c_int
    lib.sw_openmp.argtypes = []
    lib.sw_openmp.restype = ctypes.c_int
    lib.sw_sumsq.argtypes = [i64, i64, pointer, pointer, pointer]
    lib.sw_sumsq.restype = ctypes.c_double
    lib.sw_scatter.argtypes = [i64, i64, pointer, i64, pointer, pointer, pointer, i64, pointer, i64, pointer]
    lib.sw_scatter.restype = None
    return lib


def address(array) -> int:
    """The data address of a NumPy array, for the kernel (``ndarray.ctypes`` costs a microsecond or two
    a call; this reads the array interface)."""
    return array.__array_interface__["data"][0]


def threads() -> int:
    """How many threads ``sw_units`` shares its tensors among: torch's intra-op thread count where the
    kernel was built with OpenMP (``$SHOCKWATCH_NATIVE_THREADS``, read once, overrides it), else 1."""
    lib = library()
    if lib is None or not _openmp(lib):
        return 1
    return _THREADS if _THREADS is not None else torch.get_num_threads()


@functools.cache
def _openmp(lib: ctypes.CDLL) -> bool:
    """Whether the kernel may share its tensors among threads: built with OpenMP, and (where the
    process's mappings can be read) no OpenMP runtime but GNU's loaded, so that the kernel's team is
    torch's own threads and not a second pool beside Intel's or LLVM's (measured: a separate pool of
    threads made the monitor slower)."""
    if not lib.sw_openmp():
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: trust the build
        return True
    return not any(name in maps for name in ("libiomp", "libomp.so", "libomp-"))


def _threads_setting() -> int | None:
    value = os.environ.get("SHOCKWATCH_NATIVE_THREADS")
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"SHOCKWATCH_NATIVE_THREADS must be a positive integer, got {value!r}")
    return int(value)


_THREADS = _threads_setting()


def reason() -> str | None:
    """Why ``library()`` is None (None when it loaded or was not tried yet)."""
    return _why_not
