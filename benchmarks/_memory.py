"""Peak-memory measurement shared by the benchmark scripts (Linux ``/proc``).

Method: reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS by writing ``5`` to
``/proc/self/clear_refs``, run the measured call once, and report ``VmHWM - VmRSS(before)``. Each case
runs in a fresh subprocess so earlier cases do not raise the baseline. ``ru_maxrss`` is not used: a
child process inherits its parent's peak. Returns ``None`` where ``/proc`` is unavailable.
"""

from __future__ import annotations

from collections.abc import Callable


def proc_status_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` (or any ``/proc/self/status`` field in kB) of this process, or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_increase_mib(fn: Callable[[], object]) -> float | None:
    """Run ``fn()`` once and return the rise of the peak RSS above the RSS before the call, in MiB."""
    if not reset_peak_rss() or proc_status_kib("VmHWM") is None:
        fn()
        return None
    before = proc_status_kib("VmRSS")
    fn()
    return (proc_status_kib("VmHWM") - before) / 1024.0


def peak_memory_mib(fn: Callable[[], object], device: str = "cpu") -> float:
    """Run ``fn()`` once; the rise of peak memory above the level before it, in MiB (NaN where unknown).

    On CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the call (synchronised);
    elsewhere :func:`peak_rss_increase_mib`.
    """
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    mib = peak_rss_increase_mib(fn)
    return float("nan") if mib is None else mib
