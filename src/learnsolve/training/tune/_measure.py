"""Measuring preconditioners on the tuned matrix: iterations, setup and solve times, the break-even count."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from learnsolve.linalg import SparseMatrix, cg

SLOW_S = 1.0  # a setup or solve this long is timed once


@dataclass
class Row:
    """One preconditioner on the tuned matrix: iterations to rtol on the validation right-hand side, its setup
    and solve time (ms; the solve with the preconditioner built), or why it has none."""

    iters: int | None = None
    converged: bool = False
    setup_ms: float | None = None
    solve_ms: float | None = None
    note: str | None = None


def solve_iters(A: SparseMatrix, b: Tensor, M, rtol: float, maxiter: int) -> tuple[int, bool]:
    with torch.no_grad():
        x, info = cg(A, b, M, rtol=rtol, maxiter=maxiter)
    ok = bool(info.all_converged) and info.breakdown is None and bool(torch.isfinite(x).all())
    return int(info.iterations.max()), ok


def _best_time(fn: Callable, repeats: int, min_total_s: float = 0.2, max_repeats: int = 50):
    """(best seconds, last result) of ``fn()`` over at least ``repeats`` runs, more (up to ``max_repeats``)
    until ``min_total_s`` was spent: millisecond timings on a shared machine need many runs; a run longer than
    :data:`SLOW_S` is not repeated."""
    best, spent, runs, out = math.inf, 0.0, 0, None
    while runs < max(1, repeats) or (spent < min_total_s and runs < max_repeats):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
        if dt > SLOW_S:  # seconds-long runs vary little; repeating them would only multiply the wait
            break
    return best, out


def measure(A: SparseMatrix, b: Tensor, build: Callable, *, rtol: float, maxiter: int,
            repeats: int = 3) -> tuple[Row, object]:
    """(Row, preconditioner): ``build()`` timed as the setup, then PCG iterations on b and the solve time with
    the built preconditioner (each the best of at least ``repeats`` runs, more for fast ones:
    :func:`_best_time`)."""
    setup, M = _best_time(build, repeats)
    its, ok = solve_iters(A, b, M, rtol, maxiter)
    if not ok:  # no time for a solve that does not converge
        return Row(its, False, 1e3 * setup, None), M

    def run():
        with torch.no_grad():
            cg(A, b, M, rtol=rtol, maxiter=maxiter)

    solve, _ = _best_time(run, repeats)
    return Row(its, ok, 1e3 * setup, 1e3 * solve), M


def retime_solves(A: SparseMatrix, b: Tensor, built: dict, rows: dict[str, Row], *, rtol: float, maxiter: int,
                  rounds: int = 5) -> None:
    """Each row's solve time again, the rows taking turns for ``rounds`` rounds (at least, and until 0.5 s was
    spent), two runs back to back per turn, the best run of each kept: rows measured minutes apart on a shared
    machine differed by up to 40% for the same factor; in turns they see the same load, and the second run of
    a turn finds the preconditioner's arrays in cache (after a turn of AMG-SA the first run of a small factor
    was slower). Rows whose solve takes longer than :data:`SLOW_S` keep their time."""
    built = {k: M for k, M in built.items() if rows[k].solve_ms is not None
             and rows[k].solve_ms < 1e3 * SLOW_S}
    best = {k: math.inf for k in built}
    spent, r = 0.0, 0
    while r < rounds or (spent < 0.5 and r < 20 * rounds):
        for key, M in built.items():
            # back to back: the second runs with M's arrays in cache, as repeated solves do
            for _ in range(2):
                t0 = time.perf_counter()
                with torch.no_grad():
                    cg(A, b, M, rtol=rtol, maxiter=maxiter)
                dt = time.perf_counter() - t0
                best[key], spent = min(best[key], dt), spent + dt
        r += 1
    for key, t in best.items():
        rows[key].solve_ms = 1e3 * t


def random_rhs(A: sp.spmatrix, seed: int, name: str, singular: bool = False) -> np.ndarray:
    """A seeded Gaussian b, or a consistent A r where A 1 = 0 (:func:`learnsolve.data.mtx.default_rhs`) or
    where A is known to be ``singular``."""
    from learnsolve.data.mtx import default_rhs, random_image

    return random_image(A, seed, "A singular")[0] if singular else default_rhs(A, "random", seed, name)[0]


def classical_builder(name: str, A: SparseMatrix):
    """``build()`` of the registered classical baseline ``name`` on A (:mod:`learnsolve.evaluation.baselines`:
    IC(0) and MIC(0) retried with a diagonal shift where they break down, pyamg's AMG-SA)."""
    from learnsolve.evaluation.baselines import build_baseline

    return lambda: build_baseline(name, A)


def break_even(tuning_s: float, tuned: Row, other: Row) -> int | str:
    """Solves N after which ``tuning_s`` + the tuned setup + N tuned solves cost no more than the other's
    setup + N solves; "never" when the tuned solve is not faster."""
    if tuned.solve_ms is None or other.solve_ms is None or tuned.solve_ms >= other.solve_ms:
        return "never"
    gap = 1e3 * tuning_s + (tuned.setup_ms or 0.0) - (other.setup_ms or 0.0)
    return max(1, math.ceil(gap / (other.solve_ms - tuned.solve_ms)))


__all__ = ["SLOW_S", "Row", "break_even", "classical_builder", "measure", "random_rhs", "retime_solves",
           "solve_iters"]
