"""Peak resident memory of a block of code: the one memory probe of the project (standard library only).

What it measures: growth of the process's resident set size (RSS, physical memory in use) above a
baseline taken at the start of the block, up to the block's PEAK. tracemalloc would not do: it does not
see the allocations of torch's C++ allocator. Use it in a fresh process per measurement (a long-lived
process keeps freed memory and caches that blur the baseline), after a warm-up that performs the lazy
initialisation the measured code would otherwise pay for::

    with PeakRSS() as probe:
        x = solve(A, b); loss(x).backward()
    probe.growth_kb   # peak RSS during the block minus RSS at its start (kB); None where unmeasurable
    probe.exact       # True when the kernel's peak counter was reset at the start (see below)

Protocol of :class:`PeakRSS` on entry: ``gc.collect()`` and glibc ``malloc_trim(0)`` (``trim=True``) so
that freed heap memory goes back to the operating system and does not hide later growth; then the
kernel's peak-RSS counter ``VmHWM`` is reset to the current RSS by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0); the baseline is ``VmRSS`` of ``/proc/self/status`` right
after. On exit the peak is ``VmHWM``. If the reset is unavailable (no ``/proc``, a kernel or sandbox that
refuses the write) or had no effect (``VmHWM`` still above the baseline by more than 1 MiB), the peak is
``ru_maxrss`` of ``getrusage`` instead (``method == "ru_maxrss"``, ``exact`` False): the peak since the
process started, so the growth is exact only when the block holds the process's highest peak (hence one
fresh process per measurement). ``ru_maxrss`` is in kB on Linux and in bytes on macOS; it is
returned in kB on both.

Freed memory that glibc keeps (small blocks, blocks under the adaptive mmap threshold) still counts as
resident; setting ``MALLOC_MMAP_THRESHOLD_=65536`` in the environment of the measured process makes the
resident set follow the live tensors more closely (``learnsolve.evaluation.gradients.memory_study``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path
from typing import Self

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def status_kb(*keys: str) -> dict[str, int]:
    """Fields of ``/proc/self/status`` in kB (default ``VmRSS`` and ``VmHWM``); ``{}`` where unavailable."""
    keys = keys or ("VmRSS", "VmHWM")
    out: dict[str, int] = {}
    try:
        text = _STATUS.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            out[key] = int(rest.split()[0])
    return out


def rss_kb() -> int | None:
    """Current resident set size (``VmRSS``) in kB; None where ``/proc`` is unavailable."""
    return status_kb("VmRSS").get("VmRSS")


def max_rss_kb() -> int:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in kB: the process's peak RSS since it started."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def malloc_trim() -> bool:
    """Return freed heap memory to the operating system (glibc ``malloc_trim(0)``); False where
    unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``) to the current RSS: ``5`` to
    ``/proc/self/clear_refs``."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakRSS:
    """Context manager: peak RSS growth of the block above the RSS at its start (see the module docstring).

    Attributes after the block: ``method`` (``"clear_refs"`` or ``"ru_maxrss"``), ``baseline_kb`` (RSS at
    the start), ``peak_kb`` (peak RSS), ``growth_kb`` (their difference), ``exact`` (the peak counter
    was reset for this block). ``growth_now_kb()`` inside the block: current RSS minus the baseline.
    Values are None where ``/proc/self/status`` is unavailable.
    """

    def __init__(self, trim: bool = True):
        self.trim = trim
        self.method = ""
        self.baseline_kb: int | None = None
        self.peak_kb: int | None = None

    def __enter__(self) -> Self:
        if self.trim:
            gc.collect()
            malloc_trim()
        self.method = "clear_refs" if reset_peak() else "ru_maxrss"
        st = status_kb()
        self.baseline_kb = st.get("VmRSS")
        if (self.method == "clear_refs"
                and (self.baseline_kb is None or st.get("VmHWM", 0) > self.baseline_kb + 1024)):
            self.method = "ru_maxrss"  # the reset did not take effect
        return self

    def __exit__(self, *exc) -> None:
        self.peak_kb = status_kb("VmHWM").get("VmHWM") if self.exact else max_rss_kb()

    @property
    def exact(self) -> bool:
        return self.method == "clear_refs"

    @property
    def growth_kb(self) -> int | None:
        if self.peak_kb is None or self.baseline_kb is None:
            return None
        return self.peak_kb - self.baseline_kb

    def growth_now_kb(self) -> int | None:
        now = rss_kb()
        return None if now is None or self.baseline_kb is None else now - self.baseline_kb


__all__ = ["PeakRSS", "malloc_trim", "max_rss_kb", "reset_peak", "rss_kb", "status_kb"]
