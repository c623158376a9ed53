"""Section ``backward``: implicit differentiation, time of the backward / time of the forward solve.

Protocol: time of ``loss.backward()`` / time of the forward ``x = solve(A, b, rtol=1e-8)`` with A's
values and b requiring grad, loss = <c, x> (c random, so the adjoint system is as hard as the forward
one; both iteration counts are reported; the loss evaluation is not timed). One warm-up pass (pattern
transpose cache, first-touch allocations), then ``--repeats`` passes; the reported ratio is the median
of the per-pass ratios. Two settings: (a) a converged solve on the 300 x 300 Poisson grid (n = 9e4;
60 x 60 with ``--quick``), (b) the shared ``--n`` grid (n = 1e6) with a fixed ``maxiter`` = 200
(30 with ``--quick``) and ``on_fail="ignore"`` (forward and adjoint both run ``maxiter`` iterations).
Goal: ratio <= 1.3.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from learnsolve.data.generators import poisson_matrix
from learnsolve.linalg import SparseMatrix, solve

from .harness import Section, ms, requiring_grad
from .problems import Config, Problems

NAME = "backward"
TITLE = "3. Implicit backward time / forward solve time"


def _implicit_pass(S: SparseMatrix, b: torch.Tensor, c: torch.Tensor, **kw):
    A, _, bb = requiring_grad(S, b)
    t0 = time.perf_counter()
    x, info = solve(A, bb, return_info=True, **kw)
    t1 = time.perf_counter()
    loss = torch.dot(c, x)
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2, info


def run(cfg: Config, P: Problems, sec: Section) -> None:
    settings = [
        (
            f"{cfg.bwd_grid}x{cfg.bwd_grid} converged",
            SparseMatrix.from_scipy(poisson_matrix(cfg.bwd_grid)),
            {"rtol": cfg.bwd_rtol, "on_fail": "raise"},
        ),
        (
            f"{cfg.n_side}x{cfg.n_side}, maxiter={cfg.bwd_big_maxiter}",
            P.S,
            {"rtol": cfg.bwd_rtol, "maxiter": cfg.bwd_big_maxiter, "on_fail": "ignore"},
        ),
    ]
    rng = np.random.default_rng(cfg.seed + 2)
    for label, S, kw in settings:
        n = S.shape[0]
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
        per_it = (statistics.median(bw) / max(it_a, 1)) / (statistics.median(fw) / max(it_f, 1))
        sec.row(
            f"implicit backward / forward ({label})",
            ms(statistics.median(bw)),
            ms(statistics.median(fw)),
            baseline_name="forward solve",
            ratio=statistics.median(ratios),
            target=("<=", 1.3),
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
