"""``compare_gradient_methods(A, b)``: how good and how costly each way to differentiate YOUR solve is.

For the user's own A (sparse, dense or matrix-free; SPD or not) and b, and a scalar loss of the solution
(default ``<c, x> + 0.5 ||x||^2`` with c random), the gradient w.r.t. A's parameters (a sparse matrix's
values, a dense matrix, a matrix-free operator's tensors) and b is computed by each method and compared with
two references:

- ``exact``: the implicit gradient of a direct solve (sparse LU / dense LU; for a matrix-free A, GMRES to rtol
  1e-14): ``rel_error_exact`` = ||g - g_exact|| / ||g_exact||, ``cosine`` = cos(g, g_exact);
- ``fd``: central finite differences (Richardson-extrapolated) of the loss along ``directions`` GENERAL random
  directions of (parameters, b) -- not symmetric ones: an unrolled CG is only right along symmetric
  perturbations of A, and this is where it shows: ``rel_error_fd`` = max over directions |<g, v> - fd(v)|
  / |fd(v)|.

Methods: ``implicit`` (one adjoint solve), ``unrolled`` (backpropagation through every iteration),
``truncated`` (the gradient of the LAST ``unroll_steps`` iterations of the same solve: for CG the iterations
before them run without autograd and the last ones continue from their state; for other methods learnsolve's
``backward="truncated"``, which restarts the method from x_{N-k}), ``stochastic`` (``backward="stochastic"``:
a randomly truncated adjoint for one right-hand side, sampled right-hand sides for several; ``draws`` draws,
the errors are means over them and ``bias`` is the error of their mean), and ``fd`` itself (its
``rel_error_fd`` is its own Richardson error estimate, ``rel_error_exact`` its error against the exact
directional derivatives). ``seconds``: forward + backward (the median of ``repeats``); ``saved_bytes``: what
autograd saved for backward.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from learnsolve.linalg import DenseOperator, SparseMatrix, as_operator, make_preconditioner, solve

from .gradients import SavedBytes

METHODS = ("fd", "implicit", "unrolled", "truncated", "stochastic")
COLUMNS = ["method", "rel_error_fd", "rel_error_exact", "cosine", "seconds", "saved_bytes"]


def _flat(gs: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    return torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1) for g, t in zip(gs, like)])


def _symmetric(op, n: int, dtype) -> bool:
    g = torch.Generator().manual_seed(7)
    u, v = (torch.randn(n, generator=g, dtype=dtype) for _ in range(2))
    with torch.no_grad():
        Au, Av = op.matvec(u), op.matvec(v)
    return abs(float(u @ Av - v @ Au)) <= 1e-10 * float(Au.norm() * v.norm() + 1e-300)


def _truncated_cg(op, b: Tensor, M, rtol: float, k: int, maxiter: int) -> Tensor:
    """PCG; autograd records only the last k iterations of the SAME iteration (the earlier ones are replayed
    without it, then the state x, r, p, rho continues)."""

    def prec(r):
        return r if M is None else M.apply(r.reshape(1, -1, 1)).reshape(-1)

    def run(steps: int | None, record_from: int | None):
        x = torch.zeros_like(b)
        bb = b.detach()
        opd = op.with_params([p.detach() for p in op.params()])
        r = bb.clone()
        z = prec(r)
        p, rz = z.clone(), torch.dot(r, z)
        tol = rtol * float(bb.norm())
        it = 0
        while ((steps is None and float(r.norm()) > tol and it < maxiter)
               or (steps is not None and it < steps)):
            rec = record_from is not None and it >= record_from
            if rec and it == record_from:  # from here on: the differentiable operator and b, the same state
                r = r + (b - bb)  # value unchanged; d r / d b = I, as r = b - A x with x fixed
                r = r - (op.matvec(x) - opd.matvec(x))  # value unchanged; carries d(A x)/dA
            o = op if rec else opd
            Ap = o.matvec(p)
            alpha = rz / torch.dot(p, Ap)
            x = x + alpha * p
            r = r - alpha * Ap
            z = prec(r)
            rz_new = torch.dot(r, z)
            p = z + (rz_new / rz) * p
            rz = rz_new
            it += 1
        return x, it

    with torch.no_grad():
        _, N = run(None, None)
    x, _ = run(N, max(N - k, 0))
    return x


def compare_gradient_methods(A, b: Tensor, loss: Callable[[Tensor], Tensor] | None = None, *,
                             methods: Sequence[str] = METHODS, method: str | None = None, precond=None,
                             rtol: float = 1e-10, unroll_steps: int = 10, directions: int = 4,
                             draws: int = 20, repeats: int = 1, seed: int = 0) -> list[dict]:
    """One row per method with ``method, rel_error_fd, rel_error_exact, cosine, seconds, saved_bytes`` (and
    ``iterations``; ``bias``, ``bias_se``, ``draws`` for stochastic). See the module docstring.

    ``method``: the Krylov method (default: "cg" for a symmetric A, "gmres" otherwise); ``precond``: None or a
    preconditioner name. Float64 is recommended (finite differences)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if int(unroll_steps) < 1 or int(directions) < 1 or int(draws) < 1:
        raise ValueError("unroll_steps, directions and draws must be >= 1")
    op = as_operator(A)
    n = op.shape[0]
    if b.shape != (n,):
        raise ValueError(f"b: shape ({n},) is needed (one right-hand side), got {tuple(b.shape)}")
    dtype = b.dtype
    params0 = [p.detach().clone() for p in op.params()]
    b0 = b.detach().clone()
    method = method or ("cg" if _symmetric(op, n, dtype) else "gmres")
    gen = torch.Generator().manual_seed(seed)
    if loss is None:
        c = torch.randn(n, generator=gen, dtype=dtype)

        def loss(x):
            return torch.dot(c, x) + 0.5 * x.square().sum()

    direct = isinstance(op, (SparseMatrix, DenseOperator))
    exact_kw = {"method": "direct"} if direct else {"method": "gmres", "rtol": 1e-14, "restart": 100}
    M = make_preconditioner(precond, op) if isinstance(precond, str) else precond

    def L(params, bb, **kw) -> Tensor:
        return loss(solve(op.with_params(params), bb, **kw))

    def grad(run: Callable[[list, Tensor], Tensor]) -> tuple[Tensor, float, int]:
        ps = [p.clone().requires_grad_() for p in params0]
        bb = b0.clone().requires_grad_()
        t0 = time.perf_counter()
        with SavedBytes() as saved:
            value = run(ps, bb)
        gs = torch.autograd.grad(value, [*ps, bb], allow_unused=True)
        return _flat(gs, [*ps, bb]), time.perf_counter() - t0, sum(saved.seen.values())

    g_exact = grad(lambda ps, bb: L(ps, bb, **exact_kw))[0]
    # FD directions: general random directions, each tensor's part scaled to the tensor's entry size
    dirs = [[torch.randn(t.shape, generator=gen,
                         dtype=dtype) * (t.norm() / math.sqrt(max(t.numel(), 1)) + 1e-300)
             for t in (*params0, b0)] for _ in range(int(directions))]
    t0 = time.perf_counter()
    fds, fd_est = [], []
    with torch.no_grad():
        for d in dirs:
            def f(h, d=d):
                plus = L([p + h * v for p, v in zip(params0, d)], b0 + h * d[-1], **exact_kw)
                minus = L([p - h * v for p, v in zip(params0, d)], b0 - h * d[-1], **exact_kw)
                return float(plus - minus) / (2 * h)

            h = 1e-4
            d1, d2 = f(h), f(h / 2)
            fds.append((4 * d2 - d1) / 3)
            fd_est.append(abs(d2 - d1) / max(abs(d2), 1e-300))
    t_fd = time.perf_counter() - t0
    dflat = [_flat(d, d) for d in dirs]

    def errors(g: Tensor) -> dict:
        fd_err = max(abs(float(g @ d) - fd) / max(abs(fd), 1e-300) for d, fd in zip(dflat, fds))
        ex = float((g - g_exact).norm() / g_exact.norm())
        cos = float(g @ g_exact / (g.norm() * g_exact.norm()).clamp_min(1e-300))
        return {"rel_error_fd": fd_err, "rel_error_exact": ex, "cosine": cos}

    rows = []
    kw = {"method": method, "precond": M, "rtol": rtol}
    for name in methods:
        if name == "fd":
            exact_dd = [float(g_exact @ d) for d in dflat]
            err = max(abs(fd - e) / max(abs(e), 1e-300) for fd, e in zip(fds, exact_dd))
            rows.append({"method": "fd", "rel_error_fd": max(fd_est), "rel_error_exact": err,
                         "cosine": math.nan, "seconds": t_fd, "saved_bytes": 0, "directions": len(dirs)})
            continue
        if name == "stochastic":
            out = [grad(lambda ps, bb, i=i: L(ps, bb, backward="stochastic",
                                               adjoint={"generator":
                                                        torch.Generator().manual_seed(seed + 100 + i)},
                                               **kw)) for i in range(int(draws))]
            G = torch.stack([o[0] for o in out])
            per = [errors(o[0]) for o in out]
            row = {"method": name, **{k: statistics.mean(p[k] for p in per) for k in per[0]},
                   "seconds": statistics.mean(o[1] for o in out), "saved_bytes": out[0][2],
                   "draws": int(draws), "bias": float((G.mean(0) - g_exact).norm() / g_exact.norm()),
                   "bias_se": float(G.var(0).sum().sqrt() / g_exact.norm()) / math.sqrt(draws) if draws > 1
                   else math.nan}
            rows.append(row)
            continue
        if name == "truncated" and method == "cg":
            run = (lambda ps, bb: loss(_truncated_cg(op.with_params(ps), bb, M, rtol, int(unroll_steps),
                                                     10 * n + 100)))
        elif name == "truncated":
            run = (lambda ps, bb: L(ps, bb, backward="truncated", unroll_steps=int(unroll_steps), **kw))
        else:
            run = (lambda ps, bb, mode=name: L(ps, bb, backward=mode, **kw))
        out = [grad(run) for _ in range(max(1, int(repeats)) + 1)][1:]  # the first: a warm-up
        rows.append({"method": name, **errors(out[0][0]), "seconds": statistics.median(o[1] for o in out),
                     "saved_bytes": out[0][2]})
    return rows


def comparison_markdown(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"

    def fmt(v):
        return f"{v:.2e}" if isinstance(v, float) else str(v)

    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def user_cases(m: int, seed: int = 0, rtol: float = 1e-10, unroll_steps: int = 10, draws: int = 20,
               progress=None) -> list[dict]:
    """The comparison on two systems a user might bring (m x m grids, one right-hand side each): an SPD
    ``diffusion2d`` one (CG, Jacobi) and a NONSYMMETRIC ``convdiff2d`` one (GMRES, ILU(0)); rows gain
    ``case``."""
    from learnsolve.data import GENERATORS, to_scipy

    rows = []
    for case, family, method, precond in (("diffusion2d SPD, cg + jacobi", "diffusion2d", "cg", "jacobi"),
                                          ("convdiff2d nonsymmetric, gmres + ilu0", "convdiff2d", "gmres",
                                           "ilu0")):
        if progress is not None:
            progress(f"compare_gradient_methods: {case}, {m}x{m}")
        d = GENERATORS[family](m, seed=seed)
        A = SparseMatrix.from_scipy(to_scipy(d)).to(torch.float64)
        for r in compare_gradient_methods(A, d.b.to(torch.float64), method=method, precond=precond, rtol=rtol,
                                          unroll_steps=unroll_steps, draws=draws, seed=seed):
            rows.append({"case": case, "n": A.shape[0], **r})
    return rows
