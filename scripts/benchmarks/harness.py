"""Shared harness of the benchmark sections: timing protocol, machine noise, rows with goals, output.

Timing protocol. Every section measures learnsolve against a baseline in the SAME run (same process, same
matrix, same thread setting) and reports the ratio next to its goal. Timings are medians over
``--repeats`` samples taken after warm-up; a sample of a short kernel is the mean of an inner loop long
enough to last >= ``--min-sample`` seconds (:func:`bench`). Candidate and baseline samples are
interleaved (order alternating between repeats) so that machine noise hits both alike. torch runs with
``torch.set_num_threads(number of usable cores)`` (``--threads`` to override); scipy uses its defaults
(SpMV and the triangular solves are single-threaded there).

Machine noise. Before each section the driver waits (at most ``--max-wait`` seconds) until other
processes leave the CPUs idle (:func:`wait_quiet`), and it records in the JSON how much CPU other
processes used during the section (``other_load_cores``, :class:`CpuWatch`): on a shared 2-core machine a
busy neighbour core slows multithreaded torch far more than single-threaded scipy, so read ratios of a
section with ``other_load`` > ~0.2 with care.

Output: a table on stdout (rich when available, :func:`print_table`) and JSON (:func:`write_results`,
written atomically by :func:`learnsolve.files.write_json`): ``meta`` (machine, versions, configuration),
``sections`` (per section: title, rows, details, notes, seconds, other_load_cores, waited_for_quiet_s)
and ``summary`` (goals, met, not_met).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy
import scipy.sparse.linalg as spla
import torch

from learnsolve.files import write_json

# ------------------------------------------------------------------------------------------------
# timing and machine noise
# ------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    samples: list[float]  # seconds per call
    inner: int

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def to_json(self) -> dict:
        q = np.quantile(self.samples, [0.25, 0.75]) if len(self.samples) > 1 else [self.median] * 2
        return {
            "median_s": self.median,
            "min_s": self.min,
            "q25_s": float(q[0]),
            "q75_s": float(q[1]),
            "inner_loop": self.inner,
            "samples_s": self.samples,
        }


def bench(
    fns: dict[str, Callable[[], object]], repeats: int, min_sample: float, warmup: int = 1
) -> dict[str, Timing]:
    """Median-of-``repeats`` timings of several callables, samples interleaved.

    Each callable is called ``warmup`` times first (JIT, caches, first-touch page faults); the last
    warm-up call calibrates the inner loop so that one sample lasts >= ``min_sample`` seconds. Repeat r
    takes one sample of every callable, in the given order for even r and in reverse order for odd r.
    """
    inner: dict[str, int] = {}
    for name, f in fns.items():
        dt = 0.0
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            f()
            dt = time.perf_counter() - t0
        inner[name] = max(1, min(10_000, math.ceil(min_sample / max(dt, 1e-9))))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            f, k = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(k):
                f()
            samples[name].append((time.perf_counter() - t0) / k)
    return {k: Timing(samples[k], inner[k]) for k in names}


def timings_json(t: dict[str, Timing]) -> dict[str, dict]:
    return {k: v.to_json() for k, v in t.items()}


def _proc_stat_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    v = [float(x) for x in parts]
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)
    total = sum(v[:8]) if len(v) >= 8 else sum(v)
    return total - idle, total


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuWatch:
    """CPU used by OTHER processes (in cores) between start() and stop(); None where /proc is missing."""

    def __init__(self):
        self.ok = os.path.exists("/proc/stat")
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def start(self):
        if self.ok:
            self._b0, self._t0 = _proc_stat_busy()
            self._s0 = _self_cpu()
            self._w0 = time.perf_counter()

    def stop(self) -> float | None:
        if not self.ok:
            return None
        b1, _ = _proc_stat_busy()
        s1 = _self_cpu()
        wall = time.perf_counter() - self._w0
        if wall <= 0:
            return None
        other = (b1 - self._b0) / self.hz - (s1 - self._s0)
        return max(other, 0.0) / wall


def wait_quiet(max_wait: float, threshold: float = 0.25, window: float = 0.5) -> tuple[float, float | None]:
    """Wait until other processes use < ``threshold`` cores (over ``window`` s), at most ``max_wait`` s.

    Returns (seconds waited, last measured other load)."""
    w = CpuWatch()
    if not w.ok or max_wait <= 0:
        return 0.0, None
    t0 = time.perf_counter()
    load = None
    while True:
        w.start()
        time.sleep(window)
        load = w.stop()
        waited = time.perf_counter() - t0
        if load is None or load < threshold or waited >= max_wait:
            return waited, load


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------


def goal(ratio: float | None, op: str, target: float) -> tuple[str, bool | None]:
    """(goal text, met): ``met`` is None when the ratio is missing or not finite."""
    text = f"{op} {target:g}"
    if ratio is None or not math.isfinite(ratio):
        return text, None
    return text, (ratio <= target) if op == "<=" else (ratio >= target)


@dataclass
class Row:
    section: str
    name: str
    value: float | None  # learnsolve measurement (or the measured quantity)
    baseline: float | None = None
    unit: str = "ms"
    baseline_name: str = ""
    ratio: float | None = None
    goal: str = ""  # e.g. "<= 0.6"
    met: bool | None = None
    note: str = ""

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    other_load: float | None = None
    waited_s: float = 0.0

    def row(self, *args, target: tuple[str, float] | None = None, **kw) -> Row:
        """Add a row; ``target=("<=", 0.6)`` sets ``goal`` and ``met`` from the row's ``ratio``."""
        if target is not None:
            kw["goal"], kw["met"] = goal(kw.get("ratio"), *target)
        r = Row(self.name, *args, **kw)
        self.rows.append(r)
        return r

    def to_json(self) -> dict:
        return {
            "title": self.title,
            "rows": [r.to_json() for r in self.rows],
            "details": self.details,
            "notes": self.notes,
            "seconds": self.seconds,
            "other_load_cores": self.other_load,
            "waited_for_quiet_s": self.waited_s,
        }


def run_section(sec: Section, fn: Callable[[Section], None], max_wait: float, tag: str = "bench") -> Section:
    """Wait for quiet CPUs, run ``fn(sec)`` under the other-load watch; a failure becomes a failed row."""
    sec.waited_s, _ = wait_quiet(max_wait)
    watch = CpuWatch()
    watch.start()
    t0 = time.perf_counter()
    print(f"[{tag}] {sec.title} ...", file=sys.stderr, flush=True)
    try:
        fn(sec)
    except Exception as e:  # noqa: BLE001  (keep the other sections' results)
        sec.notes.append(f"FAILED: {type(e).__name__}: {e}")
        sec.row("section failed", None, note=f"{type(e).__name__}: {e}", met=False)
    sec.seconds = time.perf_counter() - t0
    sec.other_load = watch.stop()
    return sec


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(minimum wall seconds over ``repeats`` calls of ``fn``, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def ms(t: float) -> float:
    return 1e3 * t


def rel_diff(a, b) -> float:
    """||a - b|| / ||b|| (2-norm over all entries) of numpy arrays or CPU tensors."""
    a, b = (x.detach().numpy() if torch.is_tensor(x) else np.asarray(x) for x in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def requiring_grad(S, b: torch.Tensor):
    """Inputs of a differentiated solve: (S with a copy of its values requiring grad, those values, a copy
    of b requiring grad)."""
    vals = S.values.detach().clone().requires_grad_(True)
    return S.with_values(vals), vals, b.detach().clone().requires_grad_(True)


def scipy_cg(A, b: np.ndarray, **kw) -> tuple[np.ndarray, int, int]:
    """``scipy.sparse.linalg.cg(A, b, **kw)`` with its iteration count: (x, info flag, iterations)."""
    count = [0]

    def cb(_xk):
        count[0] += 1

    x, flag = spla.cg(A, b, callback=cb, **kw)
    return x, int(flag), count[0]


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "":
        return f"{v:.2e}"
    if abs(v) >= 100:
        return f"{v:.0f} {unit}"
    if abs(v) >= 1:
        return f"{v:.2f} {unit}"
    return f"{v:.3f} {unit}"


def _fmt_ratio(r: Row) -> str:
    if r.ratio is None:
        return "-"
    if r.unit == "":
        return f"{r.ratio:.2e}"
    return f"{r.ratio:.3g}x" if r.ratio < 1000 else f"{r.ratio:.0f}x"


def print_table(sections: list[Section], meta: dict, name: str = "learnsolve.linalg benchmark") -> None:
    header = ["measurement", "learnsolve", "baseline", "ratio", "goal", "met", "note"]
    lines = []
    for s in sections:
        for r in s.rows:
            met = "-" if r.met is None else ("yes" if r.met else "NO")
            base = "-" if r.baseline is None else f"{_fmt(r.baseline, r.unit)} ({r.baseline_name})"
            lines.append(
                (s.title, [r.name, _fmt(r.value, r.unit), base, _fmt_ratio(r), r.goal or "-", met, r.note])
            )
    title = f"{name}: torch {meta['torch']} ({meta['threads']} threads), scipy {meta['scipy']}, {meta['cpu']}"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text
        print(title)
        widths = [
            max(len(h), *(len(c[i]) for _, c in lines)) if lines else len(h) for i, h in enumerate(header)
        ]
        cur = None
        for sec_title, cells in lines:
            if sec_title != cur:
                cur = sec_title
                print(f"\n{sec_title}")
                print("  " + " | ".join(h.ljust(w) for h, w in zip(header, widths)))
            print("  " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)))
    else:
        table = Table(title=title, show_lines=False)
        for h in header:
            table.add_column(h, overflow="fold")
        cur = None
        for sec_title, cells in lines:
            if sec_title != cur:
                cur = sec_title
                table.add_section()
                table.add_row(f"[bold]{sec_title}[/bold]", *[""] * (len(header) - 1))
            style = {"yes": "green", "NO": "bold red"}.get(cells[5])
            cells = cells[:5] + [f"[{style}]{cells[5]}[/{style}]" if style else cells[5]] + cells[6:]
            table.add_row(*cells)
        Console(width=200).print(table)
    for s in sections:
        load = "" if s.other_load is None else f"; other processes used {s.other_load:.2f} cores"
        flag = "  [NOISY: timings of this section are unreliable]" if (s.other_load or 0) > 0.2 else ""
        print(f"- {s.name}: {s.seconds:.1f} s{load}{flag}")
        for note in s.notes:
            print(f"    {note}")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_meta(threads: int) -> dict:
    """Date, command line, versions, threads, cores and CPU of this run."""
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "threads": threads,
        "cores": cores(),
        "cpu": _cpu_name(),
        "platform": platform.platform(),
    }


def write_results(path: str, meta: dict, sections: list[Section]) -> dict:
    """Write ``{"meta", "sections", "summary"}`` to ``path`` atomically; returns the payload."""
    goals = [r for s in sections for r in s.rows if r.met is not None]
    unmet = [f"{r.section}: {r.name}" for r in goals if not r.met]
    payload = {
        "meta": meta,
        "sections": {s.name: s.to_json() for s in sections},
        "summary": {"goals": len(goals), "met": len(goals) - len(unmet), "not_met": unmet},
    }
    write_json(path, payload, default=str)
    return payload
