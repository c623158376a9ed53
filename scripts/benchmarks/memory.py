"""Section ``memory``: peak memory of forward + backward, implicit vs ``backward="unrolled"``.

Protocol: a 316 x 316 Poisson grid (n ~ 1e5; 100 x 100 with ``--quick``); implicit vs
``backward="unrolled"`` with the iteration count forced to 100 and 1000 (20 and 200 with ``--quick``;
rtol = 0, ``on_fail="ignore"``), loss = <c, x>. Each configuration runs in a fresh subprocess
(:func:`child`); after warm-up on a tiny problem (imports, lazy initialisation, the code paths of the
mode) and building the pattern's transpose cache (as in a training loop), the solve is measured by
:class:`learnsolve.evaluation.memory.PeakRSS`: freed memory is returned to the OS (malloc_trim), the
kernel's peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) and the peak RSS (VmHWM) growth above
the RSS measured just before the solve is reported (tracemalloc would not see torch's allocations).
Fallback where clear_refs is unavailable: ``ru_maxrss`` minus the same baseline (``method`` in the
rows). Goals: implicit independent of the iteration count (peak(1000) / peak(100) <= 1.2) and
unrolled(1000) / implicit(1000) >= 100.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from learnsolve.data.generators import poisson_matrix
from learnsolve.evaluation.memory import PeakRSS, rss_kb
from learnsolve.linalg import SparseMatrix, solve

from .harness import Section, requiring_grad
from .problems import Config, Problems

NAME = "memory"
TITLE = "4. Peak memory of the backward: implicit vs unrolled"
MODES = ("implicit", "unrolled")
_SCRIPTS = Path(__file__).resolve().parents[1]  # the folder holding the ``benchmarks`` package


def child(spec: str) -> None:
    """Runs in a fresh interpreter: prints one JSON line with the peak RSS growth of one configuration.

    ``spec`` = ``"mode,iterations,grid side,threads"``.
    """
    mode, iters, grid, threads = spec.split(",")
    iters, grid, threads = int(iters), int(grid), int(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)

    def one(S, b, maxiter):
        A, vals, bb = requiring_grad(S, b)
        x, info = solve(A, bb, rtol=0.0, maxiter=maxiter, on_fail="ignore", backward=mode, return_info=True)
        return x, info, vals, bb

    # warm-up on a tiny problem: imports, lazy initialisation, code paths of this mode
    Sw = SparseMatrix.from_scipy(poisson_matrix(12))
    bw = torch.from_numpy(rng.standard_normal(144))
    x, _, _, _ = one(Sw, bw, 10)
    torch.dot(bw, x).backward()
    del x

    S = SparseMatrix.from_scipy(poisson_matrix(grid))
    n = S.shape[0]
    S.pattern.transpose()  # structural cache, built once per pattern (as in a training loop)
    b = torch.from_numpy(rng.standard_normal(n))
    c = torch.from_numpy(rng.standard_normal(n))
    with PeakRSS() as probe:
        x, info, vals, bb = one(S, b, iters)
        after_forward = rss_kb()
        torch.dot(c, x).backward()
    adj = info.adjoint
    out = {
        "mode": mode,
        "maxiter": iters,
        "n": n,
        "method": probe.method,
        "baseline_rss_kb": probe.baseline_kb,
        "peak_rss_kb": probe.peak_kb,
        "peak_growth_kb": probe.growth_kb,
        "after_forward_rss_kb": after_forward,
        "forward_growth_kb": after_forward - probe.baseline_kb,
        "forward_iterations": int(info.iterations),
        "adjoint_iterations": int(adj.iterations) if adj is not None else None,
        "grad_finite": bool(torch.isfinite(vals.grad).all() and torch.isfinite(bb.grad).all()),
    }
    print(json.dumps(out))


def _run_child(spec: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.path.insert(0, {str(_SCRIPTS)!r}); from benchmarks.memory import child; child({spec!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)


def _mib(kb: float) -> float:
    return kb / 1024.0


def run(cfg: Config, P: Problems, sec: Section) -> None:
    threads = torch.get_num_threads()
    res: dict[tuple[str, int], dict] = {}
    for mode in MODES:
        for iters in cfg.mem_iters:
            spec = f"{mode},{iters},{cfg.mem_grid},{threads}"
            proc = _run_child(spec)
            if proc.returncode != 0:
                sec.notes.append(f"memory child {spec} failed: {proc.stderr.strip()[-500:]}")
                continue
            res[(mode, iters)] = json.loads(proc.stdout.strip().splitlines()[-1])
    sec.details["runs"] = list(res.values())
    lo, hi = cfg.mem_iters
    for (mode, iters), r in res.items():  # in the order run: modes, then iteration counts
        sec.row(
            f"peak RSS growth fwd+bwd, {mode}, {iters} it",
            _mib(r["peak_growth_kb"]),
            unit="MiB",
            note=f"n={r['n']}, fwd it {r['forward_iterations']}, adj it {r['adjoint_iterations'] or '-'}, "
            f"{r['method']}",
        )
    if ("implicit", lo) in res and ("implicit", hi) in res:
        a, b_ = res[("implicit", hi)]["peak_growth_kb"], res[("implicit", lo)]["peak_growth_kb"]
        sec.row(
            f"implicit peak {hi} it / {lo} it",
            _mib(a),
            _mib(b_),
            unit="MiB",
            baseline_name=f"implicit {lo} it",
            ratio=a / max(b_, 1),
            target=("<=", 1.2),
            note="independent of the iteration count",
        )
    if ("implicit", hi) in res and ("unrolled", hi) in res:
        u, i_ = res[("unrolled", hi)]["peak_growth_kb"], res[("implicit", hi)]["peak_growth_kb"]
        sec.row(
            f"unrolled / implicit peak at {hi} it",
            _mib(u),
            _mib(i_),
            unit="MiB",
            baseline_name=f"implicit {hi} it",
            ratio=u / max(i_, 1),
            target=(">=", 100),
        )
    n = cfg.mem_grid**2
    sec.notes.append(
        f"memory: {cfg.mem_grid}x{cfg.mem_grid} Poisson (n={n}, one vector = {8 * n / 2**20:.2f} MiB); "
        "peak VmHWM growth above the RSS just before the solve, one fresh process per row"
    )
