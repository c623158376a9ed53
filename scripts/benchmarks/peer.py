"""Section ``peer``: forward + implicit backward of Jacobi-PCG, learnsolve vs torch-sla (a peer library).

torch-sla (PyPI ``torch-sla``, optional: ``pip install torch-sla``; the section is skipped with a note when
it is absent) is a differentiable PyTorch sparse-solve library. Protocol: one system, A's values and b
require grad, loss = <c, x> with c random (the adjoint as hard as the forward), one pass = forward solve +
``loss.backward()``; learnsolve ``solve(A, b, method="cg", precond="jacobi", rtol=1e-8)`` (implicit backward),
torch-sla ``spsolve(val, row, col, shape, b, backend="pytorch", method="cg", preconditioner="jacobi",
atol=1e-8 * ||b||)`` (its pytorch backend stops at ``max(atol, 1e-10 ||b||)``, so this is the same relative
tolerance; its backward is also an adjoint CG solve). Passes alternate between the two libraries in one
process after one warm-up each; medians of ``--repeats`` passes (at the 1e6 size one pass each, after the
smaller case compiled and warmed both libraries: one pass is tens of seconds). Checked: both gradients agree (relative difference of dL/dvalues and dL/db) and both solutions
reach the tolerance. Problems: ``diffusion2d`` on a 256 x 256 grid (64 x 64 with ``--quick``) and the
shared Poisson matrix (n = ``--n``^2 = 1e6). Goal: learnsolve's time <= 0.5x torch-sla's.
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


def _pass_learnsolve(S: SparseMatrix, b: torch.Tensor, c: torch.Tensor):
    v = S.values.detach().clone().requires_grad_()
    bb = b.clone().requires_grad_()
    t0 = time.perf_counter()
    x, info = solve(S.with_values(v), bb, method="cg", precond="jacobi", rtol=RTOL, return_info=True)
    torch.dot(c, x).backward()
    return time.perf_counter() - t0, x.detach(), v.grad, bb.grad, info


def _pass_torch_sla(S: SparseMatrix, b: torch.Tensor, c: torch.Tensor):
    import torch_sla

    v = S.values.detach().clone().requires_grad_()
    bb = b.clone().requires_grad_()
    row, col = S.pattern.row.long(), S.pattern.col.long()
    t0 = time.perf_counter()
    x = torch_sla.spsolve(v, row, col, S.shape, bb, backend="pytorch", method="cg", preconditioner="jacobi",
                          atol=RTOL * float(b.norm()), maxiter=100_000)
    torch.dot(c, x).backward()
    return time.perf_counter() - t0, x.detach(), v.grad, bb.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


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
        c = torch.from_numpy(rng.standard_normal(n))
        ours = _pass_learnsolve(S, b, c)
        theirs = _pass_torch_sla(S, b, c)
        t_ours, t_theirs = ([ours[0]], [theirs[0]]) if reps == 1 else ([], [])  # one pass: no warm-up
        for _ in range(reps if reps > 1 else 0):
            t_ours.append(_pass_learnsolve(S, b, c)[0])
            t_theirs.append(_pass_torch_sla(S, b, c)[0])
        _, x, gv, gb, info = ours
        _, xs, gvs, gbs = theirs
        A = S.to_scipy()
        res = [float(np.linalg.norm(A @ z.numpy() - b.numpy()) / np.linalg.norm(b.numpy())) for z in (x, xs)]
        gdiff = max(_rel(gv, gvs), _rel(gb, gbs))
        tl, ts = statistics.median(t_ours), statistics.median(t_theirs)
        row = sec.row(
            f"fwd + implicit bwd, {label}",
            ms(tl),
            ms(ts),
            baseline_name="torch-sla",
            ratio=tl / ts,
            target=("<=", 0.5),
            note=f"iters fwd {int(info.iterations)} / adj {int(info.adjoint.iterations)}; true rel. residual "
            f"{res[0]:.1e} vs {res[1]:.1e}; gradients differ by {gdiff:.1e}",
        )
        if gdiff > 1e-4 or res[0] > 10 * RTOL:
            row.met = False
        sec.details[label] = {
            "n": n, "repeats": reps, "learnsolve_s": t_ours, "torch_sla_s": t_theirs,
            "forward_iterations": int(info.iterations), "adjoint_iterations": int(info.adjoint.iterations),
            "true_rel_residual": {"learnsolve": res[0], "torch_sla": res[1]}, "gradient_rel_diff": gdiff,
        }
    sec.notes.append(
        "peer: torch-sla 'pytorch' backend (CG, Jacobi), tolerance as atol = 1e-8 ||b||; passes alternate; "
        "loss <c, x> with A's values and b requiring grad"
    )
