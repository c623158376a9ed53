"""Section ``threads``: one large CG system on all threads vs the one-thread compiled kernel, by size.

Protocol: for each grid side m (64, 181, 256, 512 and the shared ``--n``; 64, 128 and 200 with ``--quick``), the
5-point Poisson matrix (:func:`learnsolve.data.generators.poisson_matrix`), one random b, ``solve(method="cg")``
under ``torch.no_grad()`` with rtol 1e-14 (not reached) and ``maxiter`` 100, no preconditioner and Jacobi; the
threaded kernel (:mod:`learnsolve.linalg.kernels.cg_threads`, torch's thread count) forced on at every size vs
the one-system-per-thread kernel (:mod:`learnsolve.linalg.kernels.cg`) forced on, timed interleaved
(:func:`benchmarks.harness.bench`). Reported: time per iteration of both (the whole ``solve`` call over its 100
iterations, so each call's setup is included on both sides) and their ratio; the threshold
``learnsolve.linalg.solvers.fused.PAR_MIN_ROWS`` (the size from which ``solve`` takes the threaded kernel) is set
from these. Also checked: both did 100 iterations. No goal (the goals are the ``cg`` and ``peer`` sections').
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from learnsolve.data.generators import poisson_matrix
from learnsolve.linalg import SparseMatrix, solve
from learnsolve.linalg.solvers import fused

from .harness import Section, bench, ms, timings_json
from .problems import Config, Problems

NAME = "threads"
TITLE = "9. One large CG system: all threads vs one thread, by size"
ITERS = 100


@contextlib.contextmanager
def _kernel(threaded: bool):
    saved = fused.PAR_MIN_ROWS, fused.PAR_ROWS_PER_THREAD
    fused.PAR_MIN_ROWS, fused.PAR_ROWS_PER_THREAD = (0, 1) if threaded else (1 << 62, 1 << 62)
    try:
        yield
    finally:
        fused.PAR_MIN_ROWS, fused.PAR_ROWS_PER_THREAD = saved


def run(cfg: Config, P: Problems, sec: Section) -> None:
    sides = (64, 128, 200) if cfg.n_side <= 200 else (64, 181, 256, 512, cfg.n_side)
    rng = np.random.default_rng(cfg.seed + 9)
    for m in sides:
        A = P.poisson if m == cfg.n_side else poisson_matrix(m)
        S = P.S if m == cfg.n_side else SparseMatrix.from_scipy(A)
        b = torch.from_numpy(rng.standard_normal(A.shape[0]))
        for pc in (None, "jacobi"):
            its = {}

            def call(threaded: bool, pc=pc, S=S, b=b, its=its):
                with _kernel(threaded), torch.no_grad():
                    _, info = solve(S, b, method="cg", precond=pc, rtol=1e-14, maxiter=ITERS, on_fail="ignore",
                                    return_info=True)
                its[threaded] = int(info.iterations)

            t = bench({"threads": lambda: call(True), "one": lambda: call(False)}, cfg.repeats, cfg.min_sample)
            tt, t1 = t["threads"].median / ITERS, t["one"].median / ITERS
            row = sec.row(f"CG / iteration, Poisson {m}^2, {pc or 'no preconditioner'}", ms(tt), ms(t1),
                          baseline_name="one thread", ratio=tt / t1,
                          note=f"{torch.get_num_threads()} threads; iterations {its[True]} / {its[False]}")
            if its[True] != ITERS or its[False] != ITERS:
                row.note += " (MISMATCH)"
            sec.details[f"m{m}_{pc or 'none'}"] = {"n": A.shape[0], "iterations": its} | timings_json(t)
