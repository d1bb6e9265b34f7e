"""Process-level CPU memory-allocator setting used by the training engine."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_cpu_memory"]

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # the largest trim threshold mallopt takes: keep up to ~2 GiB of freed heap top


def keep_freed_cpu_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory in the process for reuse (Linux only; process-wide).

    By default glibc serves every allocation above a threshold (128 KiB, raised dynamically up to 32 MiB)
    with a fresh ``mmap`` and returns it to the system on ``free``. A CPU training iteration allocates and
    frees the same large activations every time (a ViT-B/16 MLP activation at crop 448 and batch 4 is
    ~38 MiB), so each one is page-faulted in again: on the benchmark machine this first-touch cost
    made up most of the time of element-wise ops such as GELU and of the bias copy of each linear layer.
    This sets ``M_MMAP_MAX = 0`` (allocate from the heap) and a trim threshold of 2 GiB (keep the freed heap),
    so the second and later iterations reuse the same pages. Results are unchanged (it only changes where
    memory comes from); the process keeps its peak heap instead of returning it between iterations.

    Called by :class:`~wsseg.training.Trainer` for CPU runs unless ``TrainConfig.keep_freed_memory`` is
    ``False`` (CLI ``--no-keep-freed-memory``). The equivalent without code: the environment variables
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``, or preloading jemalloc / tcmalloc.

    Returns:
        ``True`` if the setting was applied, ``False`` where glibc's ``mallopt`` is not available (macOS,
        Windows, musl), in which case nothing changes.

    Example:
        >>> from wsseg.utils import keep_freed_cpu_memory
        >>> keep_freed_cpu_memory()  # process-wide, so not run in the test session  # doctest: +SKIP
        True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl has mallopt as a no-op stub)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1 and ok
    return ok
