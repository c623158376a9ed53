"""Section ``cg``: time per CG iteration, ``learnsolve.linalg.cg`` vs ``scipy.sparse.linalg.cg``.

Protocol: the shared Poisson matrix and one random b, same rtol (1e-12, not reached) and ``maxiter``
(200; 50 with ``--quick``): both do exactly ``maxiter`` iterations (checked and reported; a mismatch
marks the goals as not met). learnsolve is timed as ``cg`` called in grad mode (as a user would, with
tensors that do not require grad), ``cg`` under ``torch.no_grad()`` and ``solve(..., method="cg")``
under ``torch.no_grad()``; all four callables are timed interleaved (:func:`benchmarks.harness.bench`,
no extra warm-up: the counting runs before serve as warm-up). Also reported: the relative difference of
the two iterates. Two sizes: the 512 x 512 Poisson matrix (100 x 100 with ``--quick``) and the shared ``--n``
grid (n = 1e6). Goals: <= 0.45x scipy per iteration at 512^2, <= 0.4x at 1e6. learnsolve runs the
compiled CG loop (:mod:`learnsolve.linalg.solvers.fused`) in all three forms.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import SparseMatrix, cg, solve

from .harness import Section, bench, ms, rel_diff, scipy_cg, timings_json
from .problems import Config, Problems

NAME = "cg"
TITLE = "2. CG time per iteration vs scipy.sparse.linalg.cg"


def run(cfg: Config, P: Problems, sec: Section) -> None:
    from learnsolve.data.generators import poisson_matrix

    small = 512 if cfg.n_side >= 512 else 100
    A5 = poisson_matrix(small)
    _run_one(cfg, A5, SparseMatrix.from_scipy(A5), sec, 0.45)
    _run_one(cfg, P.poisson, P.S, sec, 0.4)


def _run_one(cfg: Config, A, S, sec: Section, target: float) -> None:
    n = A.shape[0]
    K, rtol = cfg.cg_maxiter, cfg.cg_rtol
    rng = np.random.default_rng(cfg.seed + 1)
    b = rng.standard_normal(n)
    bt = torch.from_numpy(b.copy())

    # warm-up runs that also count iterations and check that the tolerance is not reached
    x_sp, flag, it_scipy = scipy_cg(A, b, rtol=rtol, maxiter=K)
    x_ls, info = cg(S, bt, rtol=rtol, maxiter=K)
    it_ls = int(info.iterations)
    with torch.no_grad():
        _, info_sv = solve(S, bt, method="cg", rtol=rtol, maxiter=K, on_fail="ignore", return_info=True)
    it_sv = int(info_sv.iterations)
    diff = rel_diff(x_ls, x_sp)

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
        r = sec.row(
            f"CG / iteration, n = {n}: {label}",
            ms(tl),
            ms(ts),
            baseline_name="scipy cg",
            ratio=tl / ts,
            target=("<=", target),
            note=note_it,
        )
        if not same:
            r.met = False
    sec.details[f"n{n}"] = {
        "n": n,
        "maxiter": K,
        "rtol": rtol,
        "iterations": {"learnsolve_cg": it_ls, "learnsolve_solve": it_sv, "scipy": it_scipy},
        "scipy_info": flag,
        "solution_rel_diff": diff,
        "timings": timings_json(t),
    }
    sec.notes.append(
        f"CG: n={n}, rtol={rtol:g} (not reached), maxiter={K}; both did {K} iterations: {same}; "
        f"rel. diff of the iterates {diff:.1e}"
    )
