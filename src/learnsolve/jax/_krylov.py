"""JAX-native Krylov loops (``lax.while_loop``): jit-able, vmap-able, device-independent.

Each method solves ONE system ``A x = b`` for a vector b; ``jax.vmap`` batches them (a batched loop runs until
every system has stopped; stopped systems are frozen). ``mv`` and ``M`` are linear maps on vectors. Every
method confirms convergence on the TRUE residual ``b - A x`` (as the torch core does): a system whose
recursive residual fell below the tolerance but whose true residual did not is restarted from the true
residual, unless that did not halve since the previous restart; it then stops as stagnated (the attainable
accuracy).

Returns :class:`KrylovResult` with ``status``: 0 converged, 1 iteration budget spent, 2 breakdown (see
``BREAKDOWNS``), 3 non-finite residual, 4 stagnated.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

RUNNING, CONVERGED, MAXITER, BREAKDOWN, NONFINITE, STAGNATED = -1, 0, 1, 2, 3, 4
STATUS_TEXT = {MAXITER: "the iteration budget (maxiter) was spent",
               NONFINITE: "the residual became NaN/Inf",
               STAGNATED: "stagnated: the recursive residual fell below the tolerance, the true one did not"}
BREAKDOWNS = {"cg": "p^T A p <= 0 or r^T M r <= 0: A or the preconditioner is not positive definite "
                    "(use bicgstab or gmres)",
              "bicgstab": "BiCGStab breakdown (rho or r0^T v = 0): try gmres",
              "gmres": "GMRES breakdown"}
MAX_RESTARTS = 8


class KrylovResult(NamedTuple):
    x: jax.Array
    iterations: jax.Array
    residual_norm: jax.Array
    status: jax.Array


def _dot(a, b):
    return jnp.vdot(a, b).real


def _norm(a):
    return jnp.sqrt(_dot(a, a))


def _status(rnorm, k, ok, tol, maxiter):
    """Status after an iteration: breakdown, non-finite, converged, budget spent, or still running."""
    ok = jnp.asarray(ok, bool)
    return jnp.where(~ok, BREAKDOWN, jnp.where(~jnp.isfinite(rnorm), NONFINITE,
                     jnp.where(rnorm <= tol, CONVERGED, jnp.where(k >= maxiter, MAXITER, RUNNING))))


def _confirmed(run, mv, b, x0, tol, maxiter):
    """Run ``run(x, k) -> (x, k, status)`` and confirm CONVERGED on the true residual (restart or
    stagnate)."""
    x, k, st = run(x0, jnp.asarray(0, jnp.int32))
    rt = _norm(b - mv(x))
    inf = jnp.asarray(jnp.inf, rt.dtype)

    def again(s):
        _x, k, st, rt, last, nr = s
        return (st == CONVERGED) & (rt > tol) & (rt < 0.5 * last) & (k < maxiter) & (nr < MAX_RESTARTS)

    def body(s):
        x, k, _st, rt, _last, nr = s
        x2, k2, st2 = run(x, k)
        return x2, k2, st2, _norm(b - mv(x2)), rt, nr + 1

    x, k, st, rt, _last, _ = lax.while_loop(again, body, (x, k, st, rt, inf, jnp.asarray(0, jnp.int32)))
    bad = (st == CONVERGED) & (rt > tol)
    st = jnp.where(bad, jnp.where(k >= maxiter, MAXITER, STAGNATED), st)
    return KrylovResult(x, k, rt, st)


def cg(mv, M, b, x0, tol, maxiter: int) -> KrylovResult:
    """Preconditioned conjugate gradients (A and M symmetric positive definite)."""

    def run(x, k):
        r = b - mv(x)
        z = M(r)
        rz = _dot(r, z)
        rn = _norm(r)
        st = _status(rn, k, (rz > 0) | (rn <= tol), tol, maxiter)

        def body(s):
            x, r, p, rz, k, _ = s
            Ap = mv(p)
            pAp = _dot(p, Ap)
            ok = pAp > 0
            alpha = rz / jnp.where(ok, pAp, 1.0)
            x2 = x + alpha * p
            r2 = r - alpha * Ap
            z2 = M(r2)
            rz2 = _dot(r2, z2)
            rn2 = _norm(r2)
            ok2 = ok & ((rz2 > 0) | (rn2 <= tol))
            p2 = z2 + (rz2 / jnp.where(rz != 0, rz, 1.0)) * p
            k2 = k + 1
            st = _status(rn2, k2, ok2, tol, maxiter)
            keep = ok  # on breakdown keep the last good iterate
            return (jnp.where(keep, x2, x), jnp.where(keep, r2, r), p2, rz2, jnp.where(keep, k2, k), st)

        x, r, _p, rz, k, st = lax.while_loop(lambda s: s[-1] == RUNNING, body, (x, r, z, rz, k, st))
        return x, k, st

    return _confirmed(run, mv, b, x0, tol, maxiter)


def bicgstab(mv, M, b, x0, tol, maxiter: int) -> KrylovResult:
    """Right-preconditioned BiCGStab (van der Vorst) for nonsymmetric A; one iteration = two products."""

    def run(x, k):
        r = b - mv(x)
        rhat = r
        rn = _norm(r)
        st = _status(rn, k, True, tol, maxiter)
        one = jnp.ones((), r.dtype)
        zero = jnp.zeros_like(r)

        def body(s):
            x, r, p, v, rho, alpha, omega, k, _ = s
            rho2 = _dot(rhat, r)
            ok = (rho2 != 0) & (omega != 0)
            beta = (rho2 / jnp.where(rho != 0, rho, 1.0)) * (alpha / jnp.where(omega != 0, omega, 1.0))
            p2 = r + beta * (p - omega * v)
            ph = M(p2)
            v2 = mv(ph)
            rv = _dot(rhat, v2)
            ok = ok & (rv != 0)
            alpha2 = rho2 / jnp.where(rv != 0, rv, 1.0)
            s_ = r - alpha2 * v2
            s_done = _norm(s_) <= tol
            sh = M(s_)
            t = mv(sh)
            tt = _dot(t, t)
            omega2 = jnp.where(s_done | (tt == 0), 0.0, _dot(t, s_) / jnp.where(tt > 0, tt, 1.0))
            x2 = x + alpha2 * ph + omega2 * sh
            r2 = s_ - omega2 * t
            k2 = k + 1
            rn2 = _norm(r2)
            ok = ok & (s_done | (omega2 != 0) | (rn2 <= tol))
            st = _status(rn2, k2, ok, tol, maxiter)
            omega_next = jnp.where(s_done, one, omega2)
            return (jnp.where(ok, x2, x), jnp.where(ok, r2, r), p2, v2, rho2, alpha2, omega_next,
                    jnp.where(ok, k2, k), st)

        init = (x, r, zero, zero, one, one, one, k, st)
        out = lax.while_loop(lambda s: s[-1] == RUNNING, body, init)
        return out[0], out[7], out[-1]

    return _confirmed(run, mv, b, x0, tol, maxiter)


def gmres(mv, M, b, x0, tol, maxiter: int, restart: int = 30) -> KrylovResult:
    """Right-preconditioned restarted GMRES(m) (Arnoldi with classical Gram-Schmidt applied twice, Givens
    rotations); each cycle ends with the true residual, so convergence is always on b - A x."""
    m = int(restart)
    n = b.shape[0]
    dt = b.dtype

    def cycle(s):
        x, k, _, _, last, nr = s
        r = b - mv(x)
        beta = _norm(r)
        V = jnp.zeros((m + 1, n), dt).at[0].set(r / jnp.where(beta > 0, beta, 1.0))
        H = jnp.zeros((m + 1, m), dt)
        cs = jnp.zeros(m, dt)
        sn = jnp.zeros(m, dt)
        g = jnp.zeros(m + 1, dt).at[0].set(beta)

        def arnoldi(a):
            V, H, cs, sn, g, j, k, _ = a
            w = mv(M(V[j]))
            h = V @ w
            w = w - V.T @ h
            h2 = V @ w
            w = w - V.T @ h2
            h = h + h2
            hn = _norm(w)
            V = V.at[j + 1].set(w / jnp.where(hn > 0, hn, 1.0))
            col = h.at[j + 1].set(hn)

            def rot(i, c):  # apply the previous rotations to the new column
                ci, si = cs[i], sn[i]
                a_, b_ = c[i], c[i + 1]
                new = c.at[i].set(ci * a_ + si * b_).at[i + 1].set(-si * a_ + ci * b_)
                return jnp.where(i < j, new, c)

            col = lax.fori_loop(0, m, rot, col)
            den = jnp.hypot(col[j], col[j + 1])
            c_ = jnp.where(den > 0, col[j] / jnp.where(den > 0, den, 1.0), 1.0)
            s_ = jnp.where(den > 0, col[j + 1] / jnp.where(den > 0, den, 1.0), 0.0)
            col = col.at[j].set(den).at[j + 1].set(0.0)
            H = H.at[:, j].set(col)
            g = g.at[j + 1].set(-s_ * g[j]).at[j].set(c_ * g[j])
            cs, sn = cs.at[j].set(c_), sn.at[j].set(s_)
            j2, k2 = j + 1, k + 1
            done = (jnp.abs(g[j2]) <= tol) | (j2 >= m) | (k2 >= maxiter) | (hn <= 0) | ~jnp.isfinite(g[j2])
            return V, H, cs, sn, g, j2, k2, done

        a0 = (V, H, cs, sn, g, jnp.asarray(0, jnp.int32), k, beta <= tol)
        V, H, cs, sn, g, j, k, _ = lax.while_loop(lambda a: ~a[-1], arnoldi, a0)
        # back substitution on the leading j x j triangle (the rest is masked to the identity)
        idx = jnp.arange(m)
        live = idx < j
        R = jnp.where(live[:, None] & live[None, :], H[:m], 0.0) + jnp.diag(jnp.where(live, 0.0, 1.0))
        diag_ok = jnp.all(jnp.where(live, jnp.diag(R) != 0, True))
        R = R + jnp.diag(jnp.where(jnp.diag(R) == 0, 1.0, 0.0))
        y = jax.scipy.linalg.solve_triangular(R, jnp.where(live, g[:m], 0.0), lower=False)
        x2 = x + M(V[:m].T @ y)
        rt = _norm(b - mv(x2))
        ok = diag_ok & jnp.isfinite(rt)
        st = jnp.where(~jnp.isfinite(rt), NONFINITE, jnp.where(~diag_ok, BREAKDOWN, jnp.where(
            rt <= tol, CONVERGED, jnp.where(k >= maxiter, MAXITER,
                                            jnp.where(rt >= 0.5 * last, STAGNATED, RUNNING)))))
        # a cycle that started converged has j = 0 and returns x unchanged
        return jnp.where(ok, x2, x), k, st, rt, jnp.where(jnp.abs(g[j]) <= tol, rt, jnp.inf), nr + 1

    r0 = _norm(b - mv(x0))
    st0 = jnp.where(r0 <= tol, CONVERGED, jnp.where(maxiter <= 0, MAXITER, RUNNING))
    init = (x0, jnp.asarray(0, jnp.int32), st0, r0, jnp.asarray(jnp.inf, r0.dtype), jnp.asarray(0, jnp.int32))
    x, k, st, rt, _, _ = lax.while_loop(lambda s: s[2] == RUNNING, cycle, init)
    return KrylovResult(x, k, rt, st)


METHODS = {"cg": cg, "bicgstab": bicgstab, "gmres": gmres}
