"""Benchmark of the ``learnsolve.linalg`` core against scipy, with goals.

Run (from the repository root)::

    python scripts/bench_linalg.py                      # full run, n = 1000 x 1000 = 1e6 (~2-4 min)
    python scripts/bench_linalg.py --quick              # small sizes, smoke run (< 1 min)
    python scripts/bench_linalg.py --only spmv,cg --repeats 11 --out /tmp/b.json

Every section measures learnsolve against a baseline in the SAME run (same process, same matrix,
same thread setting) and reports the ratio next to its goal. Timings are medians over
``--repeats`` samples taken after warm-up; a sample of a short kernel is the mean of an inner loop
long enough to last >= ``--min-sample`` seconds. Candidate and baseline samples are interleaved
(order alternating between repeats) so that machine noise hits both alike. torch runs with
``torch.set_num_threads(number of usable cores)`` (``--threads`` to override); scipy uses its
defaults (SpMV and the triangular solves are single-threaded there). Before each section the
script waits (at most ``--max-wait`` seconds) until other processes leave the CPUs idle, and it
records in the JSON how much CPU other processes used during the section (``other_load``, in
cores): on a shared 2-core machine a busy neighbour core slows multithreaded torch far more than
single-threaded scipy, so read ratios of a section with ``other_load`` > ~0.2 with care.

Matrix: the 5-point 2D Poisson matrix (Dirichlet) on an ``--n`` x ``--n`` grid (n = 1e6 unknowns by
default), float64 unless noted; "variable coefficients" means the finite-volume discretisation of
-div(k grad u) with a log-normal node coefficient k = exp(g), g ~ N(0, 1), harmonic face averages.

Sections (``--only`` takes a comma list of these names):

spmv
    ``SparseMatrix @ x`` vs scipy CSR ``A @ x``, float64 and float32. Goal: <= 0.6x scipy's time.
cg
    Time per CG iteration, ``learnsolve.linalg.cg`` vs ``scipy.sparse.linalg.cg`` on the same matrix
    and b, same rtol (1e-12, not reached) and ``maxiter`` (200): both do exactly ``maxiter``
    iterations (checked and reported). learnsolve is timed as ``cg`` called in grad mode (as a user
    would, with tensors that do not require grad), ``cg`` under ``torch.no_grad()`` and
    ``solve(..., method="cg")`` under ``torch.no_grad()``. Goal: <= 0.6x scipy per iteration.
backward
    Implicit differentiation: time of ``loss.backward()`` / time of the forward
    ``x = solve(A, b, rtol=1e-8)`` with A's values and b requiring grad, loss = <c, x> (c random, so
    the adjoint system is as hard as the forward one; both iteration counts are reported). Two
    settings: (a) a converged solve on a 300 x 300 grid (n = 9e4), (b) the n = 1e6 grid with a
    fixed ``maxiter`` = 200 and ``on_fail="ignore"`` (forward and adjoint both run 200 iterations).
    Goal: ratio <= 1.3.
memory
    Peak memory of forward + backward on a 316 x 316 grid (n ~ 1e5): implicit vs
    ``backward="unrolled"`` with the iteration count forced to 100 and 1000 (rtol = 0,
    ``on_fail="ignore"``). Each configuration runs in a fresh subprocess; after warm-up on a tiny
    problem, freed memory is returned to the OS (malloc_trim), the kernel's peak-RSS counter is
    reset (``/proc/self/clear_refs`` = 5) and the peak RSS (VmHWM) growth above the RSS measured just
    before the solve is reported (tracemalloc would not see torch's allocations). Fallback where
    clear_refs is unavailable: ``ru_maxrss`` minus the same baseline. Goals: implicit independent of
    the iteration count (peak(1000) / peak(100) <= 1.2) and unrolled(1000) / implicit(1000) >= 100.
batched
    64 variable-coefficient systems on a 64 x 64 grid (n = 4096 each; one shared pattern, values of
    shape (64, nnz)) in ONE ``learnsolve.linalg.cg`` call vs a Python loop over
    ``scipy.sparse.linalg.cg``, same rtol (1e-8). Goal: >= 5x faster. Also checks that all systems
    converge in both, reports iteration counts and the relative difference of the solutions.
ic0
    IC(0): setup ``IC0(A)`` vs scipy ``spilu(A.tocsc(), drop_tol=0, fill_factor=1)``, and one
    triangular-solve pair ``IC0(A).apply`` vs ``spilu(...).solve``, on the n = 1e6 Poisson matrix.
    The pair is reported in units of the learnsolve float64 SpMV measured in the same section.
    Goal: pair <= 3 SpMV times. Setup is timed with the pattern's caches warm (a training loop
    re-factors matrices with one pattern); a cold setup (fresh pattern) is reported as well.
gradcheck
    Relative error (2-norm) of the gradients of loss = ||x||^2 w.r.t. A's values and b, implicit
    ``solve(rtol=1e-12)`` vs a dense float64 reference (``torch.linalg.solve`` on ``to_dense()``
    with autograd, dense gradient gathered at the pattern), 20 x 20 variable-coefficient grid.
    Goal: <= 1e-8.

Output: a table on stdout (rich when available) and JSON at ``--out``
(default ``bench_results/bench_linalg.json``, written atomically: temp file, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import IC0, CSRPattern, SparseMatrix, cg, solve

SECTIONS = ("spmv", "cg", "backward", "memory", "batched", "ic0", "gradcheck")


# ------------------------------------------------------------------------------------------------
# problems
# ------------------------------------------------------------------------------------------------


def diffusion_2d(m: int, kappa: np.ndarray | None = None) -> sp.csr_matrix:
    """5-point finite-volume -div(k grad u) on an m x m grid, Dirichlet, sorted CSR (float64).

    ``kappa`` (m, m) positive node coefficients (harmonic mean on faces; a boundary face uses the
    node's own k); None gives the constant-coefficient Poisson matrix (4 on the diagonal, -1 off).
    The pattern depends on m only, so matrices with different kappa share it entry for entry.
    """
    N = m * m
    k = np.ones((m, m)) if kappa is None else np.asarray(kappa, dtype=np.float64)
    idx = np.arange(N).reshape(m, m)
    wh = 2 * k[:, :-1] * k[:, 1:] / (k[:, :-1] + k[:, 1:])  # faces (i, j)-(i, j+1)
    wv = 2 * k[:-1, :] * k[1:, :] / (k[:-1, :] + k[1:, :])  # faces (i, j)-(i+1, j)
    ei = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    ej = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    w = np.concatenate([wh.ravel(), wv.ravel()])
    nb = np.full((m, m), 4.0)  # missing neighbours -> Dirichlet ghost faces
    nb[1:, :] -= 1
    nb[:-1, :] -= 1
    nb[:, 1:] -= 1
    nb[:, :-1] -= 1
    diag = np.bincount(ei, w, N) + np.bincount(ej, w, N) + (k * nb).ravel()
    rows = np.concatenate([ei, ej, np.arange(N)])
    cols = np.concatenate([ej, ei, np.arange(N)])
    vals = np.concatenate([-w, -w, diag])
    A = sp.coo_matrix((vals, (rows, cols)), shape=(N, N)).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def random_kappa(m: int, rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    return np.exp(sigma * rng.standard_normal((m, m)))


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
    warm-up call calibrates the inner loop so that one sample lasts >= ``min_sample`` seconds.
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


def _goal(ratio: float | None, op: str, target: float) -> tuple[str, bool | None]:
    text = f"{op} {target:g}"
    if ratio is None or not math.isfinite(ratio):
        return text, None
    return text, (ratio <= target) if op == "<=" else (ratio >= target)


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

    def row(self, *args, **kw) -> Row:
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


def ms(t: float) -> float:
    return 1e3 * t


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class Config:
    n_side: int
    repeats: int
    min_sample: float
    cg_maxiter: int = 200
    cg_rtol: float = 1e-12
    bwd_grid: int = 300
    bwd_big_maxiter: int = 200
    bwd_rtol: float = 1e-8
    mem_grid: int = 316
    mem_iters: tuple[int, int] = (100, 1000)
    batch: int = 64
    batch_grid: int = 64
    batch_rtol: float = 1e-8
    grad_grid: int = 20
    seed: int = 0


def make_config(args) -> Config:
    if args.quick:
        return Config(
            n_side=args.n or 200,
            repeats=args.repeats or 3,
            min_sample=args.min_sample or 0.01,
            cg_maxiter=50,
            bwd_grid=60,
            bwd_big_maxiter=30,
            mem_grid=100,
            mem_iters=(20, 200),
            batch=16,
            batch_grid=32,
            grad_grid=10,
        )
    return Config(n_side=args.n or 1000, repeats=args.repeats or 7, min_sample=args.min_sample or 0.05)


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------


class Problems:
    """Matrices shared between sections (built once)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._poisson = None
        self._S = None

    @property
    def poisson(self) -> sp.csr_matrix:
        if self._poisson is None:
            self._poisson = diffusion_2d(self.cfg.n_side)
        return self._poisson

    @property
    def S(self) -> SparseMatrix:
        if self._S is None:
            self._S = SparseMatrix.from_scipy(self.poisson)
        return self._S


def section_spmv(cfg: Config, P: Problems, sec: Section) -> None:
    A, S = P.poisson, P.S
    n = A.shape[0]
    rng = np.random.default_rng(cfg.seed)
    x = rng.standard_normal(n)
    sec.details.update(n=n, nnz=int(A.nnz), index_dtype=str(S.pattern.col.dtype))
    for dt, np_dt in ((torch.float64, np.float64), (torch.float32, np.float32)):
        As = A.astype(np_dt)
        xs = x.astype(np_dt)
        St = S if dt == torch.float64 else S.to(dt)
        xt = torch.from_numpy(xs.copy())
        err = float(np.abs((St @ xt).numpy() - As @ xs).max() / np.abs(As @ xs).max())
        t = bench(
            {"learnsolve": lambda St=St, xt=xt: St @ xt, "scipy": lambda As=As, xs=xs: As @ xs},
            cfg.repeats,
            cfg.min_sample,
            warmup=2,
        )
        tl, ts = t["learnsolve"].median, t["scipy"].median
        ratio = tl / ts
        g, met = _goal(ratio, "<=", 0.6)
        tag = "f64" if dt == torch.float64 else "f32"
        sec.row(
            f"SpMV {tag} (n={n:.0e})",
            ms(tl),
            ms(ts),
            baseline_name="scipy CSR A@x",
            ratio=ratio,
            goal=g,
            met=met,
            note=f"max rel diff {err:.1e}",
        )
        sec.details[tag] = {k: v.to_json() for k, v in t.items()} | {"max_rel_diff": err}


def section_cg(cfg: Config, P: Problems, sec: Section) -> None:
    A, S = P.poisson, P.S
    n = A.shape[0]
    K, rtol = cfg.cg_maxiter, cfg.cg_rtol
    rng = np.random.default_rng(cfg.seed + 1)
    b = rng.standard_normal(n)
    bt = torch.from_numpy(b.copy())

    count = [0]

    def cb(_xk):
        count[0] += 1

    # warm-up runs that also count iterations and check that the tolerance is not reached
    x_sp, flag = spla.cg(A, b, rtol=rtol, maxiter=K, callback=cb)
    it_scipy = count[0]
    x_ls, info = cg(S, bt, rtol=rtol, maxiter=K)
    it_ls = int(info.iterations)
    with torch.no_grad():
        _, info_sv = solve(S, bt, method="cg", rtol=rtol, maxiter=K, on_fail="ignore", return_info=True)
    it_sv = int(info_sv.iterations)
    diff = float(np.linalg.norm(x_ls.numpy() - x_sp) / np.linalg.norm(x_sp))

    def run_cg_grad_mode():
        cg(S, bt, rtol=rtol, maxiter=K)

    def run_cg_nograd():
        with torch.no_grad():
            cg(S, bt, rtol=rtol, maxiter=K)

    def run_solve_nograd():
        with torch.no_grad():
            solve(S, bt, method="cg", rtol=rtol, maxiter=K, on_fail="ignore")

    def run_scipy():
        spla.cg(A, b, rtol=rtol, maxiter=K)

    t = bench(
        {
            "cg": run_cg_grad_mode,
            "cg_no_grad": run_cg_nograd,
            "solve_no_grad": run_solve_nograd,
            "scipy": run_scipy,
        },
        cfg.repeats,
        cfg.min_sample,
        warmup=0,
    )
    ts = t["scipy"].median / it_scipy
    same = it_scipy == it_ls == it_sv == K
    note_it = f"{it_ls} vs {it_scipy} iterations" + ("" if same else " (MISMATCH)")
    for key, label, its in (
        ("cg", "cg (grad mode on)", it_ls),
        ("cg_no_grad", "cg under no_grad", it_ls),
        ("solve_no_grad", 'solve(method="cg") no_grad', it_sv),
    ):
        tl = t[key].median / its
        ratio = tl / ts
        g, met = _goal(ratio, "<=", 0.6)
        sec.row(
            f"CG / iteration: {label}",
            ms(tl),
            ms(ts),
            baseline_name="scipy cg",
            ratio=ratio,
            goal=g,
            met=met if same else False,
            note=note_it,
        )
    sec.details.update(
        n=n,
        maxiter=K,
        rtol=rtol,
        iterations={"learnsolve_cg": it_ls, "learnsolve_solve": it_sv, "scipy": it_scipy},
        scipy_info=int(flag),
        solution_rel_diff=diff,
        timings={k: v.to_json() for k, v in t.items()},
    )
    sec.notes.append(
        f"CG: n={n}, rtol={rtol:g} (not reached), maxiter={K}; both did {K} iterations: {same}; "
        f"rel. diff of the iterates {diff:.1e}"
    )


def _implicit_pass(S: SparseMatrix, b: torch.Tensor, c: torch.Tensor, **kw):
    vals = S.values.detach().clone().requires_grad_(True)
    bb = b.detach().clone().requires_grad_(True)
    A = S.with_values(vals)
    t0 = time.perf_counter()
    x, info = solve(A, bb, return_info=True, **kw)
    t1 = time.perf_counter()
    loss = torch.dot(c, x)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, info


def section_backward(cfg: Config, P: Problems, sec: Section) -> None:
    settings = [
        (
            f"{cfg.bwd_grid}x{cfg.bwd_grid} converged",
            diffusion_2d(cfg.bwd_grid),
            {"rtol": cfg.bwd_rtol, "on_fail": "raise"},
        ),
        (
            f"{cfg.n_side}x{cfg.n_side}, maxiter={cfg.bwd_big_maxiter}",
            P.poisson,
            {"rtol": cfg.bwd_rtol, "maxiter": cfg.bwd_big_maxiter, "on_fail": "ignore"},
        ),
    ]
    rng = np.random.default_rng(cfg.seed + 2)
    for label, A, kw in settings:
        S = P.S if A is P.poisson else SparseMatrix.from_scipy(A)
        n = A.shape[0]
        b = torch.from_numpy(rng.standard_normal(n))
        c = torch.from_numpy(rng.standard_normal(n))
        _implicit_pass(S, b, c, **kw)  # warm-up (pattern transpose cache, first-touch allocations)
        fw, bw, ratios = [], [], []
        info = None
        for _ in range(cfg.repeats):
            f, bk, info = _implicit_pass(S, b, c, **kw)
            fw.append(f)
            bw.append(bk)
            ratios.append(bk / f)
        it_f = int(info.iterations)
        it_a = int(info.adjoint.iterations) if info.adjoint is not None else -1
        ratio = statistics.median(ratios)
        g, met = _goal(ratio, "<=", 1.3)
        per_it = (statistics.median(bw) / max(it_a, 1)) / (statistics.median(fw) / max(it_f, 1))
        sec.row(
            f"implicit backward / forward ({label})",
            ms(statistics.median(bw)),
            ms(statistics.median(fw)),
            baseline_name="forward solve",
            ratio=ratio,
            goal=g,
            met=met,
            note=f"iters fwd {it_f} / adj {it_a}; per-iteration ratio {per_it:.2f}",
        )
        sec.details[label] = {
            "n": n,
            "solve_kwargs": kw,
            "forward_s": fw,
            "backward_s": bw,
            "ratios": ratios,
            "forward_iterations": it_f,
            "adjoint_iterations": it_a,
            "forward_converged": bool(info.converged.all()),
            "adjoint_converged": bool(info.adjoint.converged.all()) if info.adjoint else None,
            "per_iteration_ratio": per_it,
        }
    sec.notes.append(
        "backward: loss = <c, x>, c random (adjoint as hard as the forward); A values and b "
        "require grad; times exclude the loss evaluation"
    )


# -- memory: one subprocess per configuration ----------------------------------------------------


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def mem_child(spec: str) -> None:
    """Runs in a fresh interpreter: prints one JSON line with the peak RSS growth of one configuration."""
    mode, iters, grid, threads = spec.split(",")
    iters, grid, threads = int(iters), int(grid), int(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)

    def one(S, b, c, maxiter):
        vals = S.values.detach().clone().requires_grad_(True)
        bb = b.clone().requires_grad_(True)
        x, info = solve(
            S.with_values(vals),
            bb,
            rtol=0.0,
            maxiter=maxiter,
            on_fail="ignore",
            backward=mode,
            return_info=True,
        )
        return x, info, vals, bb

    # warm-up on a tiny problem: imports, lazy initialisation, code paths of this mode
    Sw = SparseMatrix.from_scipy(diffusion_2d(12))
    bw = torch.from_numpy(rng.standard_normal(144))
    x, _, _, _ = one(Sw, bw, bw, 10)
    torch.dot(bw, x).backward()
    del x

    S = SparseMatrix.from_scipy(diffusion_2d(grid))
    n = S.shape[0]
    S.pattern.transpose()  # structural cache, built once per pattern (as in a training loop)
    b = torch.from_numpy(rng.standard_normal(n))
    c = torch.from_numpy(rng.standard_normal(n))
    gc.collect()
    _malloc_trim()
    method = "clear_refs"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        method = "ru_maxrss"
    st0 = _status_kb()
    base_kb = st0["VmRSS"]
    if method == "clear_refs" and st0["VmHWM"] > base_kb + 1024:  # reset did not take effect
        method = "ru_maxrss"
    x, info, vals, bb = one(S, b, c, iters)
    st1 = _status_kb()
    loss = torch.dot(c, x)
    loss.backward()
    st2 = _status_kb()
    peak_kb = st2["VmHWM"] if method == "clear_refs" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    adj = info.adjoint
    print(
        json.dumps(
            {
                "mode": mode,
                "maxiter": iters,
                "n": n,
                "method": method,
                "baseline_rss_kb": base_kb,
                "peak_rss_kb": peak_kb,
                "peak_growth_kb": peak_kb - base_kb,
                "after_forward_rss_kb": st1["VmRSS"],
                "forward_growth_kb": st1["VmRSS"] - base_kb,
                "forward_iterations": int(info.iterations),
                "adjoint_iterations": int(adj.iterations) if adj is not None else None,
                "grad_finite": bool(torch.isfinite(vals.grad).all() and torch.isfinite(bb.grad).all()),
            }
        )
    )


def section_memory(cfg: Config, P: Problems, sec: Section, threads: int) -> None:
    res: dict[tuple[str, int], dict] = {}
    for mode in ("implicit", "unrolled"):
        for iters in cfg.mem_iters:
            spec = f"{mode},{iters},{cfg.mem_grid},{threads}"
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--_mem-child", spec],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if proc.returncode != 0:
                sec.notes.append(f"memory child {spec} failed: {proc.stderr.strip()[-500:]}")
                continue
            res[(mode, iters)] = json.loads(proc.stdout.strip().splitlines()[-1])
    sec.details["runs"] = [v for v in res.values()]
    lo, hi = cfg.mem_iters

    def mib(kb):
        return kb / 1024.0

    for mode in ("implicit", "unrolled"):
        for iters in cfg.mem_iters:
            r = res.get((mode, iters))
            if r:
                sec.row(
                    f"peak RSS growth fwd+bwd, {mode}, {iters} it",
                    mib(r["peak_growth_kb"]),
                    unit="MiB",
                    note=f"n={r['n']}, fwd it {r['forward_iterations']}, adj it {r['adjoint_iterations'] or '-'}, "
                    f"{r['method']}",
                )
    if ("implicit", lo) in res and ("implicit", hi) in res:
        a, b_ = res[("implicit", hi)]["peak_growth_kb"], res[("implicit", lo)]["peak_growth_kb"]
        ratio = a / max(b_, 1)
        g, met = _goal(ratio, "<=", 1.2)
        sec.row(
            f"implicit peak {hi} it / {lo} it",
            mib(a),
            mib(b_),
            unit="MiB",
            baseline_name=f"implicit {lo} it",
            ratio=ratio,
            goal=g,
            met=met,
            note="independent of the iteration count",
        )
    if ("implicit", hi) in res and ("unrolled", hi) in res:
        u, i_ = res[("unrolled", hi)]["peak_growth_kb"], res[("implicit", hi)]["peak_growth_kb"]
        ratio = u / max(i_, 1)
        g, met = _goal(ratio, ">=", 100)
        sec.row(
            f"unrolled / implicit peak at {hi} it",
            mib(u),
            mib(i_),
            unit="MiB",
            baseline_name=f"implicit {hi} it",
            ratio=ratio,
            goal=g,
            met=met,
        )
    n = cfg.mem_grid**2
    sec.notes.append(
        f"memory: {cfg.mem_grid}x{cfg.mem_grid} Poisson (n={n}, one vector = {8 * n / 2**20:.2f} MiB); "
        "peak VmHWM growth above the RSS just before the solve, one fresh process per row"
    )


def section_batched(cfg: Config, P: Problems, sec: Section) -> None:
    # "64 systems of 64x64" read both ways: 64x64 grids (n = 4096 each, the SpMV dominates the
    # scipy loop) and 64 x 64 matrices (8x8 grids, n = 64: Python overhead dominates the loop)
    for m in dict.fromkeys((cfg.batch_grid, 8)):
        _batched_one(cfg, sec, m)


def _batched_one(cfg: Config, sec: Section, m: int) -> None:
    Bn, rtol = cfg.batch, cfg.batch_rtol
    rng = np.random.default_rng(cfg.seed + 3)
    mats = [diffusion_2d(m, random_kappa(m, rng)) for _ in range(Bn)]
    ref = mats[0]
    for M_ in mats[1:]:
        assert np.array_equal(M_.indptr, ref.indptr) and np.array_equal(M_.indices, ref.indices)
    n = ref.shape[0]
    S1 = SparseMatrix.from_scipy(ref)
    vals = torch.from_numpy(np.stack([M_.data for M_ in mats]))
    Sb = S1.with_values(vals)  # (B, nnz) values, one pattern
    bs = rng.standard_normal((Bn, n))
    bt = torch.from_numpy(bs.copy())

    its_sp = []
    x_sp = np.empty_like(bs)
    flags = []
    for i in range(Bn):
        cnt = [0]

        def cb(_xk, cnt=cnt):
            cnt[0] += 1

        x_sp[i], fl = spla.cg(mats[i], bs[i], rtol=rtol, maxiter=10 * n, callback=cb)
        its_sp.append(cnt[0])
        flags.append(fl)
    x_ls, info = cg(Sb, bt, rtol=rtol)
    x_ls = x_ls.numpy()
    rel = [float(np.linalg.norm(x_ls[i] - x_sp[i]) / np.linalg.norm(x_sp[i])) for i in range(Bn)]
    res_ls = [float(np.linalg.norm(bs[i] - mats[i] @ x_ls[i]) / np.linalg.norm(bs[i])) for i in range(Bn)]
    res_sp = [float(np.linalg.norm(bs[i] - mats[i] @ x_sp[i]) / np.linalg.norm(bs[i])) for i in range(Bn)]

    def run_ls():
        cg(Sb, bt, rtol=rtol)

    def run_sp():
        for i in range(Bn):
            spla.cg(mats[i], bs[i], rtol=rtol, maxiter=10 * n)

    Xb = bt.unsqueeze(-1).contiguous()
    t = bench(
        {
            "learnsolve": run_ls,
            "scipy_loop": run_sp,
            "learnsolve_batched_spmv": lambda: Sb.mv(Xb),
            "scipy_spmv_loop": lambda: [mats[i] @ bs[i] for i in range(Bn)],
        },
        cfg.repeats,
        cfg.min_sample,
        warmup=1,
    )
    tl, ts = t["learnsolve"].median, t["scipy_loop"].median
    speedup = ts / tl
    g, met = _goal(speedup, ">=", 5)
    it_ls = info.iterations.numpy()
    K = int(it_ls.max())
    per_ls = tl / (K * Bn)  # per system and iteration (all systems iterate until the slowest is done)
    per_sp = ts / sum(its_sp)
    mv_ls = t["learnsolve_batched_spmv"].median / Bn
    mv_sp = t["scipy_spmv_loop"].median / Bn
    sec.notes.append(
        f"batched: per system-iteration learnsolve {1e6 * per_ls:.1f} us (SpMV share {1e6 * mv_ls:.1f} us), "
        f"scipy {1e6 * per_sp:.1f} us (SpMV share {1e6 * mv_sp:.1f} us); learnsolve runs {K} iterations for all, "
        f"scipy {sum(its_sp) / Bn:.0f} on average; SpMV-only bound on the speed-up: "
        f"{per_sp / mv_ls * sum(its_sp) / (K * Bn):.1f}x"
    )
    sec.row(
        f"{Bn} x ({m}x{m}) batched cg (speed-up)",
        ms(tl),
        ms(ts),
        baseline_name="loop of scipy cg",
        ratio=speedup,
        goal=g,
        met=met,
        note=f"iters learnsolve max {int(it_ls.max())} (batch runs to the slowest), scipy "
        f"{min(its_sp)}..{max(its_sp)} (sum {sum(its_sp)})",
    )
    agree_ok = (
        bool(info.converged.all())
        and all(f == 0 for f in flags)
        and max(rel) <= 1e-5
        and max(res_ls) <= 10 * rtol
    )
    sec.row(
        f"batched cg ({m}x{m}): max rel. diff of solutions",
        max(rel),
        unit="",
        goal="<= 1e-05 (& all converge)",
        met=agree_ok,
        note=f"true rel. residual max: learnsolve {max(res_ls):.1e}, scipy {max(res_sp):.1e}",
    )
    sec.details[f"grid{m}"] = {
        "batch": Bn,
        "grid": m,
        "n": n,
        "nnz": int(ref.nnz),
        "rtol": rtol,
        "learnsolve_iterations": it_ls.tolist(),
        "scipy_iterations": its_sp,
        "learnsolve_converged": bool(info.converged.all()),
        "scipy_flags": flags,
        "solution_rel_diff": rel,
        "true_rel_residual_learnsolve": res_ls,
        "true_rel_residual_scipy": res_sp,
        "timings": {k: v.to_json() for k, v in t.items()},
    }


def section_ic0(cfg: Config, P: Problems, sec: Section) -> None:
    A, S = P.poisson, P.S
    n = A.shape[0]
    rng = np.random.default_rng(cfg.seed + 4)
    r = rng.standard_normal(n)
    Rt = torch.from_numpy(r.copy()).reshape(1, n, 1)
    xt = torch.from_numpy(r.copy())
    Acsc = A.tocsc()

    def setup_ls():
        return IC0(S)

    def setup_ls_cold():
        return IC0(SparseMatrix(CSRPattern(S.pattern.crow, S.pattern.col, S.shape), S.values))

    def setup_sp():
        return spla.spilu(Acsc, drop_tol=0, fill_factor=1)

    ts = bench(
        {"IC0": setup_ls, "IC0_cold": setup_ls_cold, "spilu": setup_sp},
        max(3, cfg.repeats // 2),
        cfg.min_sample,
        warmup=1,
    )
    M = IC0(S)
    ilu = setup_sp()
    y_ls = M.apply(Rt).reshape(-1).numpy()
    y_sp = ilu.solve(r)
    rel = float(np.linalg.norm(y_ls - y_sp) / np.linalg.norm(y_sp))
    ta = bench(
        {"IC0.apply": lambda: M.apply(Rt), "spilu.solve": lambda: ilu.solve(r), "SpMV": lambda: S @ xt},
        cfg.repeats,
        cfg.min_sample,
        warmup=2,
    )
    t_pair, t_sp, t_mv = ta["IC0.apply"].median, ta["spilu.solve"].median, ta["SpMV"].median
    # the triangular solves are sequential (one thread); SpMV on one thread, for reference
    nthreads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t_mv1 = bench({"SpMV_1thread": lambda: S @ xt}, cfg.repeats, cfg.min_sample, warmup=2)["SpMV_1thread"]
    finally:
        torch.set_num_threads(nthreads)
    in_mv = t_pair / t_mv
    g, met = _goal(in_mv, "<=", 3)
    sec.row(
        f"IC0.apply (L, L^T solves) in SpMV units ({nthreads} thr.)",
        ms(t_pair),
        ms(t_mv),
        baseline_name="learnsolve SpMV",
        ratio=in_mv,
        goal=g,
        met=met,
        note=f"= {t_pair / t_mv1.median:.2f} single-thread SpMV ({ms(t_mv1.median):.2f} ms); "
        f"{1e9 * t_pair / (2 * n):.2f} ns/row per solve",
    )
    sec.row(
        "IC0.apply vs spilu.solve",
        ms(t_pair),
        ms(t_sp),
        baseline_name="spilu.solve",
        ratio=t_pair / t_sp,
        note=f"spilu.solve = {t_sp / t_mv:.1f} SpMV; spilu is SuperLU ILUTP (nnz(L+U) {ilu.L.nnz + ilu.U.nnz}), "
        f"not IC(0): M^-1 r differs by {rel:.1e}",
    )
    for key, label in (
        ("IC0", "IC0(A) setup (pattern caches warm)"),
        ("IC0_cold", "IC0(A) setup (fresh pattern)"),
    ):
        sec.row(
            label,
            ms(ts[key].median),
            ms(ts["spilu"].median),
            baseline_name="spilu setup",
            ratio=ts[key].median / ts["spilu"].median,
        )
    # correctness of the factor: (L L^T)_ij = A_ij on A's pattern
    Ls = M.L.to_scipy()
    D = (Ls @ Ls.T - A).multiply(A != 0)
    fit = float(spla.norm(D) / spla.norm(A))
    sec.notes.append(
        f"ic0: n={n}; ||(L L^T - A) on pattern(A)|| / ||A|| = {fit:.1e}; setup and apply timed "
        f"with the pattern's caches warm; IC0.apply = two compiled sequential triangular solves"
    )
    sec.details.update(
        n=n,
        nnz=int(A.nnz),
        setup={k: v.to_json() for k, v in ts.items()},
        apply={k: v.to_json() for k, v in ta.items()},
        apply_rel_diff_vs_spilu=rel,
        spmv_1thread=t_mv1.to_json(),
        ic0_pattern_residual=fit,
        spilu_nnz=int(ilu.L.nnz + ilu.U.nnz),
        ic0_factor_nnz=int(M.L.nnz),
    )


def section_gradcheck(cfg: Config, P: Problems, sec: Section) -> None:
    m = cfg.grad_grid
    rng = np.random.default_rng(cfg.seed + 5)
    A = diffusion_2d(m, random_kappa(m, rng))
    S = SparseMatrix.from_scipy(A)
    n = A.shape[0]
    b0 = torch.from_numpy(rng.standard_normal(n))

    vals = S.values.detach().clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    x, info = solve(S.with_values(vals), b, rtol=1e-12, return_info=True)
    x.square().sum().backward()

    D = S.to_dense().detach().clone().requires_grad_(True)
    bref = b0.clone().requires_grad_(True)
    xr = torch.linalg.solve(D, bref)
    xr.square().sum().backward()
    row, col = S.pattern.row.long(), S.pattern.col.long()
    gv_ref = D.grad[row, col]

    def rel(a, b_):
        return float(torch.linalg.vector_norm(a - b_) / torch.linalg.vector_norm(b_))

    cond = float(torch.linalg.cond(D.detach()))
    for label, got, want in (("dL/d values", vals.grad, gv_ref), ("dL/d b", b.grad, bref.grad)):
        e = rel(got, want)
        g, met = _goal(e, "<=", 1e-8)
        sec.row(
            f"grad rel. error {label} ({m}x{m} var. coeff.)",
            e,
            unit="",
            goal=g,
            met=met,
            ratio=e,
            note="vs dense torch.linalg.solve float64",
        )
    sec.details.update(
        grid=m,
        n=n,
        cond=cond,
        x_rel_err=rel(x.detach(), xr.detach()),
        forward_iterations=int(info.iterations),
        adjoint_iterations=int(info.adjoint.iterations) if info.adjoint is not None else None,
    )
    sec.notes.append(
        f"gradcheck: n={n}, cond(A)={cond:.1e}, rtol=1e-12, loss=||x||^2, "
        f"x rel. err {sec.details['x_rel_err']:.1e}"
    )


TITLES = {
    "spmv": "1. SpMV: SparseMatrix @ x vs scipy CSR",
    "cg": "2. CG time per iteration vs scipy.sparse.linalg.cg",
    "backward": "3. Implicit backward time / forward solve time",
    "memory": "4. Peak memory of the backward: implicit vs unrolled",
    "batched": "5. Batched CG vs a loop of scipy cg",
    "ic0": "6. IC(0) setup and triangular-solve pair",
    "gradcheck": "7. Gradient relative error vs dense float64 reference",
}


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


def print_table(sections: list[Section], meta: dict) -> None:
    header = ["measurement", "learnsolve", "baseline", "ratio", "goal", "met", "note"]
    lines = []
    for s in sections:
        for r in s.rows:
            met = "-" if r.met is None else ("yes" if r.met else "NO")
            base = "-" if r.baseline is None else f"{_fmt(r.baseline, r.unit)} ({r.baseline_name})"
            lines.append(
                (s.title, [r.name, _fmt(r.value, r.unit), base, _fmt_ratio(r), r.goal or "-", met, r.note])
            )
    title = (
        f"learnsolve.linalg benchmark: torch {meta['torch']} ({meta['threads']} threads), "
        f"scipy {meta['scipy']}, {meta['cpu']}"
    )
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


def write_json(path: str, payload: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bench_linalg.", suffix=".json.tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cores() -> int:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n", type=int, default=None, help="grid side: n = N^2 unknowns (default 1000; 200 with --quick)"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, smoke run in < 1 minute")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed samples per measurement (default 7; 3 quick)"
    )
    ap.add_argument(
        "--min-sample",
        type=float,
        default=None,
        help="seconds one sample of a short kernel lasts at least (inner loop; default 0.05)",
    )
    ap.add_argument("--only", type=str, default=None, help=f"comma list of sections: {','.join(SECTIONS)}")
    ap.add_argument(
        "--out",
        type=str,
        default=os.path.join("bench_results", "bench_linalg.json"),
        help="JSON results path (written atomically; default bench_results/bench_linalg.json)",
    )
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: number of usable cores)"
    )
    ap.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help="seconds to wait for other processes to leave the CPUs idle before each section "
        "(0: never; default 30, 2 with --quick)",
    )
    ap.add_argument("--_mem-child", dest="mem_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    threads = args.threads or _cores()
    torch.set_num_threads(threads)
    if args.mem_child:
        mem_child(args.mem_child)
        return 0

    only = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    cfg = make_config(args)
    max_wait = args.max_wait if args.max_wait is not None else (2.0 if args.quick else 30.0)
    meta = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "threads": threads,
        "cores": _cores(),
        "cpu": _cpu_name(),
        "platform": platform.platform(),
        "config": dict(cfg.__dict__),
        "quick": args.quick,
    }
    problems = Problems(cfg)
    runners = {
        "spmv": section_spmv,
        "cg": section_cg,
        "backward": section_backward,
        "memory": lambda c, p, s: section_memory(c, p, s, threads),
        "batched": section_batched,
        "ic0": section_ic0,
        "gradcheck": section_gradcheck,
    }
    sections: list[Section] = []
    t_all = time.perf_counter()
    for name in SECTIONS:
        if name not in only:
            continue
        sec = Section(name, TITLES[name])
        if name in ("spmv", "cg", "backward", "ic0"):
            _ = problems.S  # build the shared matrix outside of the measured window
        sec.waited_s, _load = wait_quiet(max_wait)
        watch = CpuWatch()
        watch.start()
        t0 = time.perf_counter()
        print(f"[bench_linalg] {sec.title} ...", file=sys.stderr, flush=True)
        try:
            runners[name](cfg, problems, sec)
        except Exception as e:  # noqa: BLE001  (keep the other sections' results)
            sec.notes.append(f"FAILED: {type(e).__name__}: {e}")
            sec.row("section failed", None, note=f"{type(e).__name__}: {e}", met=False)
        sec.seconds = time.perf_counter() - t0
        sec.other_load = watch.stop()
        sections.append(sec)
        gc.collect()
    meta["total_seconds"] = time.perf_counter() - t_all
    print_table(sections, meta)
    if args.quick:
        print(
            "\n--quick: smoke run at small sizes; the goals are set for the full sizes (overheads dominate here)"
        )
    goals = [r for s in sections for r in s.rows if r.met is not None]
    unmet = [f"{r.section}: {r.name}" for r in goals if not r.met]
    payload = {
        "meta": meta,
        "sections": {s.name: s.to_json() for s in sections},
        "summary": {"goals": len(goals), "met": len(goals) - len(unmet), "not_met": unmet},
    }
    write_json(args.out, payload)
    print(
        f"\n{len(goals) - len(unmet)}/{len(goals)} goals met; total {meta['total_seconds']:.0f} s; "
        f"JSON: {os.path.abspath(args.out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
