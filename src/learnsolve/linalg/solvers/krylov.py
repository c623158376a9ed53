"""Batched Krylov methods: cg, fcg, minres, bicgstab, gmres.

All methods solve ``A X = B`` for canonical blocks ``B`` of shape (Bs, n, k) and treat every
(matrix, diagonal block, right-hand side) triple as an independent system with its own Krylov
scalars and its own convergence flag: a system that has converged (or broken down) is frozen, so a
batched solve returns exactly what a loop over the systems would. Convergence test, per system:

    ||b - A x||_2 <= max(rtol * ||b||_2, atol)

on the recursively updated residual (MINRES with a preconditioner tracks it explicitly, GMRES uses
the Givens estimate, which equals the true residual in exact arithmetic).

When autograd is recording (``backward="unrolled"``) the iterations are written out of place so
that gradients can flow through every step; otherwise vectors are updated in place.

Costs per iteration (N = size of the block, M = preconditioner application):
cg 1 SpMV + 1 M + 3 axpy + 2 dots; fcg(m) 1 SpMV + 1 M + (m + 2) dots; minres 1 SpMV + 1 M;
bicgstab 2 SpMV + 2 M; gmres(restart) 1 SpMV + 1 M + j dots at inner step j.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from ..operators.base import LinearOperator
from ..operators.convert import as_operator
from ..operators.layout import Layout, Reducer, canonicalize
from .fused import fused_cg
from .info import SolveInfo, _Monitor, default_rtol
from .threads import host_threads_for_preconditioner

Precond = Callable[[Tensor], Tensor]
METHODS = ("cg", "fcg", "minres", "bicgstab", "gmres")
METHOD_OPTIONS = {"fcg": ("truncation",), "gmres": ("restart",)}


def _safe(den: Tensor, ok: Tensor) -> Tensor:
    """den where it can be divided by, 1 elsewhere (masked systems; keeps autograd free of 0/0)."""
    return torch.where(ok & (den != 0), den, torch.ones_like(den))


def _axpy(Y: Tensor, a: Tensor, X: Tensor, inplace: bool) -> Tensor:
    """Y + a X (a broadcastable to Y)."""
    return Y.addcmul_(a, X) if inplace else Y + a * X


# ------------------------------------------------------------------------------------------------
# cores on canonical blocks
# ------------------------------------------------------------------------------------------------

def _confirm(mon: _Monitor, mv, Bm: Tensor, X: Tensor, R: Tensor, rnorm: Tensor | None, before: Tensor,
             red: Reducer):
    """When the loop would stop: confirm the systems converged since the last check (``before``: converged
    then) with the true residual (one SpMV, only when there are some); (R, rnorm, restarted) with the true
    residual in the rows of the re-opened systems."""
    newly = mon.converged & ~before
    restart = torch.zeros_like(newly)
    if not bool(newly.any()):
        return R, rnorm, restart
    Rt = Bm - mv(X)
    restart = mon.confirm(red.norm(Rt), newly)
    if bool(restart.any()):
        R = torch.where(red.expand(restart), Rt, R)
        rnorm = None if rnorm is None else red.norm(R)
    return R, rnorm, restart


def _start(mv, Bm: Tensor, X0: Tensor | None):
    if X0 is None:
        return torch.zeros_like(Bm), Bm.clone()
    X = X0.clone()
    return X, Bm - mv(X)


def _cg(mv, Bm, M, X0, red: Reducer, rtol, atol, maxiter, callback=None):
    X, R = _start(mv, Bm, X0)
    mon = _Monitor("cg", red.norm(R), red.norm(Bm), rtol, atol, maxiter)
    Z = M(R) if M is not None else R
    rz = red.dot(R, Z)
    if M is not None:
        mon.check(rz < 0, "r^T M r < 0: the preconditioner is not positive definite")
    P = Z.clone()
    inplace = None
    confirmed = mon.converged  # systems whose convergence was checked on the true residual
    while not mon.done():
        AP = mv(P)
        if inplace is None:
            # out of place only when autograd records something (b, x0, A's or M's parameters require
            # grad): grad mode alone, e.g. a plain cg() call, keeps the faster in-place updates
            inplace = not (torch.is_grad_enabled() and any(t.requires_grad for t in (X, R, P, AP)))
        pAp = red.dot(P, AP)
        mon.check(~(pAp > 0), "p^T A p <= 0: A is not positive definite (use minres, bicgstab or gmres)")
        act = mon.active
        alpha = torch.where(act, rz / _safe(pAp, act), torch.zeros_like(rz))
        ea = red.expand(alpha)
        X = _axpy(X, ea, P, inplace)
        R = _axpy(R, -ea, AP, inplace)
        rnorm = red.norm(R)
        mon.update(rnorm)
        if callback is not None:
            callback(X, mon.it)
        restart = torch.zeros_like(mon.converged)
        # confirm once nothing is left to iterate (an inactive system's x is frozen): no extra sync
        if mon.done():
            R, rnorm, restart = _confirm(mon, mv, Bm, X, R, rnorm, confirmed, red)
            confirmed = mon.converged
            if mon.done():
                break
        if M is None:
            Z, rz_new = R, rnorm * rnorm
        else:
            Z = M(R)
            rz_new = red.dot(R, Z)
            mon.check(rz_new < 0, "r^T M r < 0: the preconditioner is not positive definite")
        act = mon.active & ~restart  # a replaced residual restarts its direction: p = z
        beta = red.expand(torch.where(act, rz_new / _safe(rz, act), torch.zeros_like(rz)))
        P = torch.addcmul(Z, beta, P, out=P) if inplace else Z + beta * P  # one pass: P <- Z + beta P
        rz = rz_new
    return X, mon.info()


def _fcg(mv, Bm, M, X0, red: Reducer, rtol, atol, maxiter, callback=None, truncation: int = 1):
    """Flexible CG (Notay 2000): each direction is A-orthogonalised against the last ``truncation``
    ones and the step is ``alpha = p^T r / p^T A p``, so M may change between iterations (a network)."""
    X, R = _start(mv, Bm, X0)
    mon = _Monitor("fcg", red.norm(R), red.norm(Bm), rtol, atol, maxiter)
    window: deque = deque(maxlen=max(int(truncation), 1))
    confirmed = mon.converged
    while True:
        if mon.done():  # confirm on the true residual once nothing is left to iterate (see _cg)
            R, _, _ = _confirm(mon, mv, Bm, X, R, None, confirmed, red)
            confirmed = mon.converged
            if mon.done():
                break
        Z = M(R) if M is not None else R
        P = Z
        for Pj, APj, dj in window:
            act = mon.active
            c = torch.where(act, red.dot(Z, APj) / _safe(dj, act), torch.zeros_like(dj))
            P = P - red.expand(c) * Pj
        AP = mv(P)
        pAp = red.dot(P, AP)
        mon.check(~(pAp > 0), "p^T A p <= 0: A is not positive definite or the preconditioner "
                  "returned a zero direction")
        act = mon.active
        alpha = torch.where(act, red.dot(P, R) / _safe(pAp, act), torch.zeros_like(pAp))
        ea = red.expand(alpha)
        X = X + ea * P
        R = R - ea * AP
        mon.update(red.norm(R))
        if callback is not None:
            callback(X, mon.it)
        window.append((P, AP, pAp))
    return X, mon.info()


def _minres(mv, Bm, M, X0, red: Reducer, rtol, atol, maxiter, callback=None):
    """Preconditioned MINRES (Paige & Saunders 1975) for symmetric, possibly indefinite A and SPD M.

    Without M the residual norm is the Givens estimate |phibar|; with M the true residual is carried
    along recursively (A w is updated from A v), so the test is in the 2-norm for both."""
    X, R1 = _start(mv, Bm, X0)
    rn0 = red.norm(R1)
    mon = _Monitor("minres", rn0, red.norm(Bm), rtol, atol, maxiter)
    Y = M(R1) if M is not None else R1
    b1sq = red.dot(R1, Y)
    mon.check(b1sq < 0, "r^T M r < 0: the preconditioner is not positive definite")
    beta = b1sq.clamp_min(0).sqrt()
    zero = torch.zeros_like(beta)
    oldb, dbar, epsln, phibar = zero, zero, zero, beta
    cs, sn = -torch.ones_like(beta), zero
    W = W2 = torch.zeros_like(R1)
    R2 = R1
    track = M is not None
    if track:
        Rt = R1
        AW = AW2 = torch.zeros_like(R1)
    first = True
    while not mon.done():
        act = mon.active
        V = red.expand(1.0 / _safe(beta, act)) * Y
        AV = mv(V)
        Y = AV
        if not first:
            Y = Y - red.expand(beta / _safe(oldb, act)) * R1
        alfa = red.dot(V, Y)
        Y = Y - red.expand(alfa / _safe(beta, act)) * R2
        R1, R2 = R2, Y
        Y = M(R2) if M is not None else R2
        oldb = beta
        bsq = red.dot(R2, Y)
        mon.check(bsq < 0, "r^T M r < 0: the preconditioner is not positive definite")
        beta = bsq.clamp_min(0).sqrt()
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        gamma = torch.sqrt(gbar * gbar + beta * beta)
        gamma = torch.where(gamma > 0, gamma, torch.full_like(gamma, torch.finfo(gamma.dtype).tiny))
        cs = gbar / gamma
        sn = beta / gamma
        phi = torch.where(mon.active, cs * phibar, zero)
        phibar = sn * phibar
        W1, W2 = W2, W
        W = (V - red.expand(oldeps) * W1 - red.expand(delta) * W2) * red.expand(1.0 / gamma)
        X = X + red.expand(phi) * W
        if track:
            AW1, AW2 = AW2, AW
            AW = (AV - red.expand(oldeps) * AW1 - red.expand(delta) * AW2) * red.expand(1.0 / gamma)
            Rt = Rt - red.expand(phi) * AW
            rnorm = red.norm(Rt)
        else:
            rnorm = phibar.abs()
        first = False
        mon.update(rnorm)
        if callback is not None:
            callback(X, mon.it)
    return X, mon.info()


def _bicgstab(mv, Bm, M, X0, red: Reducer, rtol, atol, maxiter, callback=None):
    """Right-preconditioned BiCGStab (van der Vorst 1992); one iteration = 2 SpMV + 2 M.

    A system whose shadow residual becomes orthogonal to r or to A M p (rho = 0, <r0, A M p> = 0)
    or whose omega vanishes is restarted with r0 := r (common with unit-vector right-hand sides on
    sparse structures); a breakdown right after a restart is reported."""
    X, R = _start(mv, Bm, X0)
    mon = _Monitor("bicgstab", red.norm(R), red.norm(Bm), rtol, atol, maxiter)
    Rhat = R
    zero = torch.zeros_like(mon.tol)
    rho_prev, alpha, omega = zero + 1, zero + 1, zero + 1
    P = V = torch.zeros_like(R)
    Mf = M if M is not None else (lambda t: t)
    restart = torch.ones_like(mon.active)
    while not mon.done():
        rho = red.dot(Rhat, R)
        restart = restart | (mon.active & (rho == 0))
        if bool(restart.any()):
            er = red.expand(restart)
            Rhat = torch.where(er, R, Rhat)
            rho = torch.where(restart, red.dot(R, R), rho)
        act = mon.active
        ok = act & ~restart
        beta = torch.where(ok, (rho / _safe(rho_prev, ok)) * (alpha / _safe(omega, ok)), zero)
        P = R + red.expand(beta) * (P - red.expand(omega) * V)
        Phat = Mf(P)
        V = mv(Phat)
        rv = red.dot(Rhat, V)
        mon.check(restart & (rv == 0), "<r0, A M p> = 0 right after a restart (BiCGStab breakdown)")
        act = mon.active
        skip = act & (rv == 0)  # restart next iteration
        go = act & ~skip
        alpha = torch.where(go, rho / _safe(rv, go), zero)
        S = R - red.expand(alpha) * V
        snorm = red.norm(S)
        half = go & (snorm <= mon.tol)  # converged after the half step
        Shat = Mf(S)
        T = mv(Shat)
        full = go & ~half
        omega = torch.where(full, red.dot(T, S) / _safe(red.dot(T, T), full), zero)
        X = X + red.expand(alpha) * Phat + red.expand(omega) * Shat
        R = S - red.expand(omega) * T
        rnorm = torch.where(half, snorm, red.norm(R))
        mon.update(rnorm)
        stalled = full & (omega == 0) & ~mon.converged
        mon.check(stalled & restart, "omega = 0 right after a restart (BiCGStab stagnation)")
        restart = skip | stalled
        rho_prev = rho
        if callback is not None:
            callback(X, mon.it)
    return X, mon.info()


def _gmres(mv, Bm, M, X0, red: Reducer, rtol, atol, maxiter, callback=None, restart: int = 30):
    """Restarted flexible GMRES (right preconditioning, Saad 1993): modified Gram-Schmidt Arnoldi,
    Givens rotations per system; the preconditioned vectors Z_j are stored, so M may be nonlinear.
    Each system stops at its own inner step; the true residual is recomputed after every cycle and decides
    convergence (a system that met the tolerance only on the Givens estimate goes on)."""
    X, R = _start(mv, Bm, X0)
    bnorm = red.norm(Bm)
    beta = red.norm(R)
    mon = _Monitor("gmres", beta, bnorm, rtol, atol, maxiter)
    Mf = M if M is not None else (lambda t: t)
    m = max(1, int(restart))
    cycle = 0
    while not mon.done():
        cycle += 1
        act0 = mon.active.clone()
        Vs = [R * red.expand(1.0 / _safe(beta, act0))]
        Zs: list[Tensor] = []
        Hcols: list[list[Tensor]] = []  # rotated columns (the R factor)
        cs_list: list[Tensor] = []
        sn_list: list[Tensor] = []
        g = [beta]
        use: list[Tensor] = []
        live = act0.clone()
        for j in range(m):
            Z = Mf(Vs[j])
            Zs.append(Z)
            Wv = mv(Z)
            h = []
            for i in range(j + 1):
                hij = red.dot(Wv, Vs[i])
                Wv = Wv - red.expand(hij) * Vs[i]
                h.append(hij)
            hn = red.norm(Wv)
            Vs.append(Wv * red.expand(1.0 / _safe(hn, live)))
            for i in range(j):
                a, b = h[i], h[i + 1]
                h[i] = cs_list[i] * a + sn_list[i] * b
                h[i + 1] = -sn_list[i] * a + cs_list[i] * b
            den = torch.sqrt(h[j] * h[j] + hn * hn)
            ok = den > 0
            dsafe = torch.where(ok, den, torch.ones_like(den))
            c = torch.where(ok, h[j] / dsafe, torch.ones_like(den))
            s = torch.where(ok, hn / dsafe, torch.zeros_like(den))
            h[j] = c * h[j] + s * hn
            cs_list.append(c)
            sn_list.append(s)
            g.append(-s * g[j])
            g[j] = c * g[j]
            Hcols.append(h)
            use.append(live.clone())
            resid = g[j + 1].abs()
            mon.update(torch.where(live, resid, mon.hist[-1]))
            live = live & mon.active
            if not bool(live.any()) or mon.it >= mon.maxiter:
                break
        # back substitution R y = g, per system over its own number of columns
        k = len(Hcols)
        ys: list[Tensor | None] = [None] * k
        for i in range(k - 1, -1, -1):
            acc = g[i]
            for jj in range(i + 1, k):
                acc = acc - Hcols[jj][i] * ys[jj]
            rii = Hcols[i][i]
            ys[i] = torch.where(use[i], acc / _safe(rii, use[i]), torch.zeros_like(acc))
            mon.check(use[i] & (rii == 0), "singular Hessenberg matrix (GMRES breakdown)")
        for i in range(k):
            X = X + red.expand(ys[i]) * Zs[i]
        if callback is not None:
            callback(X, mon.it)
        # the Givens estimate can drift from the true residual (loss of orthogonality in Arnoldi, rounding
        # in an ill-conditioned M): test every system of this cycle with the true residual; one that
        # converged on the estimate only is resumed (or, at the iteration cap, reported as not converged)
        R = Bm - mv(X)
        beta = red.norm(R)
        true_ok = beta.detach() <= mon.tol
        relapse = act0 & mon.converged & ~true_ok
        mon.converged = (mon.converged & ~relapse) | (mon.active & true_ok)
        mon.active = (mon.active | (relapse if mon.it < mon.maxiter else torch.zeros_like(relapse))) \
            & ~mon.converged
    return X, mon.info()


_CORES = {"cg": _cg, "fcg": _fcg, "minres": _minres, "bicgstab": _bicgstab, "gmres": _gmres}


@host_threads_for_preconditioner  # torch's pool and numpy's BLAS pool in one loop (linalg.solvers.threads)
def _run_method(method: str, op: LinearOperator, Bm: Tensor, M: Precond | None, X0: Tensor | None,
               rtol: float, atol: float, maxiter: int, callback=None, **options):
    """Run a Krylov method on canonical blocks; returns (X, SolveInfo in (B, G, k) shape).

    CG, flexible CG and GMRES confirm convergence with the true residual inside their iteration; for MINRES
    and BiCGStab a system that converged on its recursive residual but not on the true one is restarted from
    its iterate (at most 3 times, within ``maxiter``), and stops as not converged once a restart no longer
    halves its true residual (the attainable accuracy) or the iteration budget is spent."""
    if method not in _CORES:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)} or 'direct'")
    if method == "cg" and (out := fused_cg(op, Bm, M, X0, rtol, atol, maxiter, callback)) is not None:
        return out  # the compiled path (nothing recorded by autograd, supported operator and preconditioner)
    red = op.reducer()
    X, info = _CORES[method](op.mv, Bm, M, X0, red, rtol, atol, maxiter, callback, **options)
    if method not in ("minres", "bicgstab"):
        return X, info
    tol = torch.clamp(rtol * info.b_norm, min=atol)
    last = torch.full_like(info.b_norm, float("inf"))
    for attempt in range(4):
        true = red.norm(Bm - op.mv(X)).detach()
        drift = info.converged & (true > tol)
        if not bool(drift.any()):
            break
        stalled = drift & (true >= 0.5 * last)
        left = maxiter - info.niter
        if bool(stalled.any()) or left <= 0 or attempt == 3:
            rel = true / torch.where(info.b_norm > 0, info.b_norm, torch.ones_like(info.b_norm))
            why = (f"stagnated at true relative residual {float(rel[drift].max()):.1e} (the attainable "
                   f"accuracy: the recursive residual fell below rtol {rtol:.1e}, the true one did not)")
            mask = drift if info.breakdown_mask is None else (info.breakdown_mask | drift)
            hist = info.residual_history.clone()
            hist[-1] = torch.where(drift, true, hist[-1])
            return X, SolveInfo(info.method, info.iterations, info.converged & ~drift, hist, info.b_norm,
                                info.rtol, info.atol, info.breakdown or why, mask)
        last = torch.where(drift, true, last)
        X2, info2 = _CORES[method](op.mv, Bm, M, X, red, rtol, atol, left, callback, **options)
        keep = red.expand(drift)  # only the drifted systems move; the others keep their iterate and record
        X = torch.where(keep, X2, X)
        hist = torch.cat([info.residual_history,
                          torch.where(drift, info2.residual_history[1:], info.residual_history[-1:])])
        mask = info.breakdown_mask if info2.breakdown_mask is None else (
            info2.breakdown_mask & drift if info.breakdown_mask is None
            else info.breakdown_mask | (info2.breakdown_mask & drift))
        info = SolveInfo(info.method, info.iterations + torch.where(drift, info2.iterations, 0),
                         torch.where(drift, info2.converged, info.converged), hist, info.b_norm, info.rtol,
                         info.atol, info.breakdown or info2.breakdown, mask)
    return X, info


def default_maxiter(method: str, n: int) -> int:
    return max(10 * n, 100) if method != "bicgstab" else max(5 * n, 50)


# ------------------------------------------------------------------------------------------------
# public entry points (no autograd Function: gradients, if any, flow through the iterations)
# ------------------------------------------------------------------------------------------------

def _public(method: str, A, b: Tensor, M, x0, rtol, atol, maxiter, callback, **options):
    from ..operators.validate import MAXITER_CAP, validate_count, validate_system, validate_tolerances
    from ..preconditioners.classical import resolve_preconditioner
    from .scaling import Scale, finite_only

    op = as_operator(A)
    validate_system(op, b)
    validate_tolerances(rtol, atol)
    maxiter = validate_count(maxiter, "maxiter", 0, MAXITER_CAP)
    n = op.shape[0]
    Bm, layout = canonicalize(b, n, op.batch_size, None if op.blocks is None else op.blocks.numel() - 1)
    X0 = None if x0 is None else canonicalize(x0, n, op.batch_size, None, name="x0")[0].expand_as(Bm)
    Mf = resolve_preconditioner(M, op)
    apply = None if Mf is None else Mf.apply  # resolve_preconditioner returns a Preconditioner or None
    sc = Scale(op, Bm, float(atol))  # b beyond 1e+-77: solved on a power-of-two scaled copy (callback sees x)
    cb = callback if callback is None or sc.rows is None else (lambda X, it: callback(sc.up(X), it))
    X, info = _run_method(method, op, sc.down(Bm), apply, sc.down(X0),
                         default_rtol(b.dtype) if rtol is None else float(rtol), sc.atol,
                         default_maxiter(method, n) if maxiter is None else maxiter, cb, **options)
    X = sc.up(X)
    info = finite_only(sc.info(info), X, op.reducer())
    return layout.unpack(X), info._reshaped(_system_shape(layout, info))


def _system_shape(layout: Layout, info: SolveInfo) -> tuple[int, ...]:
    B, G, k = info.converged.shape
    return layout.system_shape(B, G, k)


def cg(A, b, M=None, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None):
    """Preconditioned conjugate gradients for SPD A (and SPD M).

    Each matrix of a batch, graph of a PyG block matrix and right-hand side is an independent system that
    stops at ``||b - A x|| <= max(rtol ||b||, atol)``, confirmed with the true residual b - A x. Gradients
    flow through the iterations when autograd records; :func:`learnsolve.linalg.solve` differentiates
    implicitly instead. A CPU ``SparseMatrix`` without autograd and without ``callback`` runs the compiled
    loop (``learnsolve.linalg.solvers.fused``). Per iteration: 1 SpMV, 1 application of M, 2 dot products.

    Args:
        A: dense tensor, ``SparseMatrix``, ``LinearOperator``, or a scipy / torch sparse matrix.
        b: right-hand side(s).
        M: preconditioner: None, a ``Preconditioner``, a name (``"jacobi"``, ``"ic0"``, ``"mic0"``, ``"amg"``,
            ...) or a callable ``r -> M^-1 r`` on (B, n, k) blocks.
        x0: initial guess shaped like ``b`` (default zero).
        rtol: relative tolerance (default ``default_rtol(dtype)``: 1e-10 float64, 1e-5 float32).
        atol: absolute tolerance.
        maxiter: iteration cap per system (default max(10 n, 100)).
        callback: called as ``callback(X, iteration)`` after each iteration (X: the (B, n, k) block).

    Returns:
        ``(x, info)``: x shaped like ``b``, info a ``SolveInfo`` (per-system iterations, converged flags,
            residual history, breakdown reason). Non-convergence is reported in ``info``, not raised.

    Raises:
        ValueError: a non-square or empty A, NaN/Inf in A or b, a device mismatch, a bad tolerance.
        TypeError: b not a tensor, or non-floating or mismatched dtypes.

    Shapes:
        A: (n, n), (B, n, n) or a ``SparseMatrix`` with values (nnz,) / (B, nnz).
        b, x: (n,), (n, k), (B, n) or (B, n, k) (batched like ``torch.linalg.solve``).
    """
    return _public("cg", A, b, M, x0, rtol, atol, maxiter, callback)


def fcg(A, b, M=None, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None, truncation: int = 1):
    """Flexible CG for SPD A: M may be nonlinear or change between iterations (e.g. a network).

    Orthogonalises each direction against the last ``truncation`` ones (FCG(m)); with a fixed SPD M it equals
    :func:`cg`. Per iteration: 1 SpMV, 1 application of M, ``truncation + 2`` dot products.

    Args:
        A: the operator, as in :func:`cg`.
        b: right-hand side(s), as in :func:`cg`.
        M: preconditioner, as in :func:`cg`; may be nonlinear.
        x0: initial guess shaped like ``b`` (default zero).
        rtol: relative tolerance (default ``default_rtol(dtype)``: 1e-10 float64, 1e-5 float32).
        atol: absolute tolerance.
        maxiter: iteration cap per system (default max(10 n, 100)).
        callback: called as ``callback(X, iteration)`` after each iteration (X: the (B, n, k) block).
        truncation: number of earlier directions each new one is orthogonalised against.

    Returns:
        ``(x, info)``: x shaped like ``b``, info a ``SolveInfo`` (per-system iterations, converged flags,
            residual history, breakdown reason). Non-convergence is reported in ``info``, not raised.

    Raises:
        ValueError: a non-square or empty A, NaN/Inf in A or b, a device mismatch, a bad tolerance.
        TypeError: b not a tensor, or non-floating or mismatched dtypes.
    """
    return _public("fcg", A, b, M, x0, rtol, atol, maxiter, callback, truncation=truncation)


def minres(A, b, M=None, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None):
    """MINRES for symmetric (possibly indefinite) A with an SPD preconditioner M.

    Args:
        A: the operator, as in :func:`cg`; symmetric.
        b: right-hand side(s), as in :func:`cg`.
        M: SPD preconditioner, as in :func:`cg`.
        x0: initial guess shaped like ``b`` (default zero).
        rtol: relative tolerance (default ``default_rtol(dtype)``: 1e-10 float64, 1e-5 float32).
        atol: absolute tolerance.
        maxiter: iteration cap per system (default max(10 n, 100)).
        callback: called as ``callback(X, iteration)`` after each iteration (X: the (B, n, k) block).

    Returns:
        ``(x, info)``: x shaped like ``b``, info a ``SolveInfo`` (per-system iterations, converged flags,
            residual history, breakdown reason). Non-convergence is reported in ``info``, not raised.

    Raises:
        ValueError: a non-square or empty A, NaN/Inf in A or b, a device mismatch, a bad tolerance.
        TypeError: b not a tensor, or non-floating or mismatched dtypes.
    """
    return _public("minres", A, b, M, x0, rtol, atol, maxiter, callback)


def bicgstab(A, b, M=None, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None):
    """BiCGStab for general (nonsymmetric) A, right preconditioned. Per iteration: 2 SpMVs, 2 applications of
    M.

    Args:
        A: the operator, as in :func:`cg`.
        b: right-hand side(s), as in :func:`cg`.
        M: preconditioner, as in :func:`cg` (``"ilu0"`` for nonsymmetric A).
        x0: initial guess shaped like ``b`` (default zero).
        rtol: relative tolerance (default ``default_rtol(dtype)``: 1e-10 float64, 1e-5 float32).
        atol: absolute tolerance.
        maxiter: iteration cap per system (default max(5 n, 50)).
        callback: called as ``callback(X, iteration)`` after each iteration (X: the (B, n, k) block).

    Returns:
        ``(x, info)``: x shaped like ``b``, info a ``SolveInfo`` (per-system iterations, converged flags,
            residual history, breakdown reason). Non-convergence is reported in ``info``, not raised.

    Raises:
        ValueError: a non-square or empty A, NaN/Inf in A or b, a device mismatch, a bad tolerance.
        TypeError: b not a tensor, or non-floating or mismatched dtypes.
    """
    return _public("bicgstab", A, b, M, x0, rtol, atol, maxiter, callback)


def gmres(A, b, M=None, x0=None, rtol=None, atol=0.0, maxiter=None, callback=None, restart: int = 30):
    """Restarted (flexible) GMRES for general A, right preconditioned. M may be nonlinear.

    The stopping test uses the Givens estimate of the residual, re-checked with the true residual.

    Args:
        A: the operator, as in :func:`cg`.
        b: right-hand side(s), as in :func:`cg`.
        M: preconditioner, as in :func:`cg` (``"ilu0"`` for nonsymmetric A).
        x0: initial guess shaped like ``b`` (default zero).
        rtol: relative tolerance (default ``default_rtol(dtype)``: 1e-10 float64, 1e-5 float32).
        atol: absolute tolerance.
        maxiter: iteration cap per system, counting inner steps (default max(10 n, 100)).
        callback: called as ``callback(X, iteration)`` after each iteration (X: the (B, n, k) block).
        restart: Krylov subspace size between restarts.

    Returns:
        ``(x, info)``: x shaped like ``b``, info a ``SolveInfo`` (per-system iterations, converged flags,
            residual history, breakdown reason). Non-convergence is reported in ``info``, not raised.

    Raises:
        ValueError: a non-square or empty A, NaN/Inf in A or b, a device mismatch, a bad tolerance.
        TypeError: b not a tensor, or non-floating or mismatched dtypes.
    """
    return _public("gmres", A, b, M, x0, rtol, atol, maxiter, callback, restart=restart)


__all__ = ["METHODS", "SolveInfo", "bicgstab", "cg", "default_rtol", "fcg", "gmres", "minres"]
