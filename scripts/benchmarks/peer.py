"""Section ``peer``: forward + implicit backward of Jacobi-PCG, learnsolve vs torch-sla (a peer library).

torch-sla (PyPI ``torch-sla``, optional; the section is skipped with a note when it is absent; read against
0.4.0) is a differentiable PyTorch sparse-solve library. One pass = what a training step does: from COO data
(row, col, values requiring grad) build the matrix, solve A x = b (b requires grad), loss = <c, x>,
``loss.backward()``; all of it timed, the matrix build included, for both libraries. learnsolve:
``SparseMatrix.from_coo(row, col, values, shape)`` (its public COO constructor; the COO is in CSR order, as
torch-sla gets it, so no sort) then ``solve(A, b, method="cg", precond="jacobi", rtol=1e-8)`` (implicit
backward). torch-sla: ``spsolve(values, row, col, shape, b, backend="pytorch", method="cg",
preconditioner="jacobi", atol=1e-8)`` (it builds its CSR by COO -> CSR, for the forward and again, transposed,
for the adjoint).
Same stopping rule on both sides (read from torch-sla 0.4.0's source: ``linear_solve.spsolve``,
``SparseLinearSolvePyTorch``, ``_adjoint_solve``, ``backends.pytorch_backend.pcg_solve_optimized``): its pytorch
backend ignores ``tol=`` and fixes rtol = 1e-10, so PCG stops at ||r|| < max(atol, 1e-10 ||b||); its backward
first scales dL/dx to unit norm, runs the same PCG on A^T with the same absolute ``atol``, and scales back. With
||b|| = ||c|| = 1 (both normalised here) and atol = 1e-8 both libraries stop forward AND adjoint at
||r|| <= 1e-8 ||rhs||. Reported per case, from one untimed pass per library (also the warm-up): forward and
adjoint iteration counts (learnsolve: ``info.iterations`` / ``info.adjoint.iterations``; torch-sla's
``spsolve`` returns x only, so for that pass ``pytorch_backend.pcg_solve_optimized``, whose ``SolveResult``
carries ``num_iters`` = SpMVs, is wrapped to record them, forward then adjoint; timed passes run unwrapped),
the true relative residuals of both forward solutions (||A x - b|| / ||b||) and of both adjoint solutions
(||A^T lam - c|| / ||c||, lam = dL/db), and the relative difference of the gradients (dL/dvalues, dL/db).
Timed passes alternate between the libraries in one process: medians of ``--repeats`` (one at 1e6: a pass is
tens of seconds). Problems: ``diffusion2d`` on a 256 x 256 grid (64 x 64 with ``--quick``) and the shared
Poisson matrix (n = ``--n``^2 = 1e6). Goal: learnsolve's time <= 0.5x torch-sla's.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from learnsolve.linalg import SparseMatrix, solve

from .harness import Section, ms
from .problems import Config, Problems, diffusion_systems

NAME = "peer"
TITLE = "8. Forward + implicit backward vs torch-sla (Jacobi-PCG)"
RTOL = 1e-8


def _pass_learnsolve(row, col, vals, shape, b, c):
    v, bb = vals.clone().requires_grad_(), b.clone().requires_grad_()
    t0 = time.perf_counter()
    A = SparseMatrix.from_coo(row, col, v, shape)
    x, info = solve(A, bb, method="cg", precond="jacobi", rtol=RTOL, return_info=True)
    torch.dot(c, x).backward()
    t = time.perf_counter() - t0
    return t, x.detach(), v.grad, bb.grad, (int(info.iterations), int(info.adjoint.iterations))


def _pass_torch_sla(row, col, vals, shape, b, c, count: bool = False):
    import torch_sla
    from torch_sla.backends import pytorch_backend as pb

    v, bb = vals.clone().requires_grad_(), b.clone().requires_grad_()
    pcg, iters = pb.pcg_solve_optimized, []

    def counted(*args, **kw):  # the counting pass only: record each PCG's iteration count (forward, adjoint)
        res = pcg(*args, **kw)
        iters.append(int(res.num_iters))
        return res

    if count:
        pb.pcg_solve_optimized = counted  # looked up as a module global by pcg_solve_fused
    try:
        t0 = time.perf_counter()
        x = torch_sla.spsolve(v, row, col, shape, bb, backend="pytorch", method="cg", preconditioner="jacobi",
                              atol=RTOL, maxiter=100_000)
        torch.dot(c, x).backward()
        t = time.perf_counter() - t0
    finally:
        pb.pcg_solve_optimized = pcg
    if count and len(iters) != 2:
        raise RuntimeError(f"torch-sla: expected 2 PCG solves (forward, adjoint), saw {len(iters)}")
    return t, x.detach(), v.grad, bb.grad, tuple(iters) if count else None


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _res(M, z: torch.Tensor, rhs: torch.Tensor) -> float:
    return float(np.linalg.norm(M @ z.numpy() - rhs.numpy()) / np.linalg.norm(rhs.numpy()))


def run(cfg: Config, P: Problems, sec: Section) -> None:
    try:
        import torch_sla  # noqa: F401
    except ImportError:
        sec.notes.append("peer: torch-sla is not installed (pip install torch-sla); section skipped")
        return
    m = 64 if cfg.n_side <= 200 else 256
    mats, bs = diffusion_systems(m, 1, cfg.seed + 5)
    cases = [(f"diffusion2d {m}x{m}", SparseMatrix.from_scipy(mats[0]), torch.from_numpy(bs[0].copy()), cfg.repeats),
             (f"Poisson {cfg.n_side}x{cfg.n_side}", P.S, None, 1)]
    rng = np.random.default_rng(cfg.seed + 6)
    for label, S, b, reps in cases:
        n = S.shape[0]
        if b is None:
            b = torch.from_numpy(rng.standard_normal(n))
        b = b / b.norm()  # unit norm: torch-sla's absolute atol is then our rtol (see the module docstring)
        c = torch.from_numpy(rng.standard_normal(n))
        c = c / c.norm()  # unit norm: the adjoint's right-hand side, which torch-sla normalises anyway
        args = (S.pattern.row.long(), S.pattern.col.long(), S.values.detach(), S.shape, b, c)
        ours = _pass_learnsolve(*args)  # untimed: warm-up, checks, iteration counts
        theirs = _pass_torch_sla(*args, count=True)
        t_ours, t_theirs = [], []
        for _ in range(reps):
            t_ours.append(_pass_learnsolve(*args)[0])
            t_theirs.append(_pass_torch_sla(*args)[0])
        A = S.to_scipy()
        AT = A.T.tocsr()
        fwd = [_res(A, r[1], b) for r in (ours, theirs)]
        adj = [_res(AT, r[3], c) for r in (ours, theirs)]
        gdiff = max(_rel(ours[2], theirs[2]), _rel(ours[3], theirs[3]))
        (fo, ao), (ft, at) = ours[4], theirs[4]
        tl, ts = statistics.median(t_ours), statistics.median(t_theirs)
        row = sec.row(
            f"fwd + implicit bwd, {label}",
            ms(tl),
            ms(ts),
            baseline_name="torch-sla",
            ratio=tl / ts,
            target=("<=", 0.5),
            note=f"iters fwd/adj {fo}/{ao} vs {ft}/{at}; true rel. residual fwd {fwd[0]:.1e} vs {fwd[1]:.1e}, "
            f"adj {adj[0]:.1e} vs {adj[1]:.1e}; gradients differ by {gdiff:.1e}",
        )
        if gdiff > 1e-4 or max(fwd[0], adj[0]) > 10 * RTOL:
            row.met = False
        sec.details[label] = {
            "n": n, "repeats": reps, "learnsolve_s": t_ours, "torch_sla_s": t_theirs,
            "iterations": {"learnsolve": {"forward": fo, "adjoint": ao}, "torch_sla": {"forward": ft, "adjoint": at}},
            "true_rel_residual": {"learnsolve": {"forward": fwd[0], "adjoint": adj[0]},
                                  "torch_sla": {"forward": fwd[1], "adjoint": adj[1]}},
            "gradient_rel_diff": gdiff,
        }
    sec.notes.append(
        "peer: both build the matrix from COO values inside the timed pass (learnsolve SparseMatrix.from_coo; "
        "torch-sla spsolve's COO -> CSR); ||b|| = ||c|| = 1 and torch-sla atol = 1e-8 = learnsolve rtol, so "
        "both stop forward and adjoint at 1e-8 relative; torch-sla iterations counted by wrapping "
        "pytorch_backend.pcg_solve_optimized in an untimed pass; passes alternate; loss <c, x>"
    )
