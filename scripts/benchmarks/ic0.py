"""Section ``ic0``: IC(0) setup and one triangular-solve pair vs scipy ``spilu``.

Protocol: on the shared Poisson matrix (n = 1e6), setup ``IC0(A)`` vs scipy
``spilu(A.tocsc(), drop_tol=0, fill_factor=1)``, and one triangular-solve pair ``IC0(A).apply`` vs
``spilu(...).solve``. The pair is reported in units of the learnsolve float64 SpMV measured in the same
section (interleaved with it), and of the single-thread SpMV (the triangular solves are sequential).
Setup is timed with the pattern's caches warm (a training loop re-factors matrices with one pattern);
a cold setup (fresh pattern) is reported as well. spilu is SuperLU ILUTP, not IC(0): the difference of
``M^-1 r`` is reported, and the factor is checked: ``(L L^T)_ij = A_ij`` on A's pattern.
Goal: pair <= 3 SpMV times.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import IC0, CSRPattern, SparseMatrix

from .harness import Section, bench, ms, rel_diff, timings_json
from .problems import Config, Problems

NAME = "ic0"
TITLE = "6. IC(0) setup and triangular-solve pair"


def run(cfg: Config, P: Problems, sec: Section) -> None:
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
    y_sp = ilu.solve(r)
    rel = rel_diff(M.apply(Rt).reshape(-1), y_sp)
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
    sec.row(
        f"IC0.apply (L, L^T solves) in SpMV units ({nthreads} thr.)",
        ms(t_pair),
        ms(t_mv),
        baseline_name="learnsolve SpMV",
        ratio=t_pair / t_mv,
        target=("<=", 3),
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
        setup=timings_json(ts),
        apply=timings_json(ta),
        apply_rel_diff_vs_spilu=rel,
        spmv_1thread=t_mv1.to_json(),
        ic0_pattern_residual=fit,
        spilu_nnz=int(ilu.L.nnz + ilu.U.nnz),
        ic0_factor_nnz=int(M.L.nnz),
    )
