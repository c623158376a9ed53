"""Fused, compiled (P)CG iterations on NumPy arrays (numba): every system runs its whole iteration in
one compiled loop, in place, with no per-iteration Python, allocation or temporary vectors.

Systems ("tasks")
-----------------
A task is one independent system: rows ``[r0, r1)`` (a diagonal block of a PyG batch, or all rows) of
column ``c`` of the ``(S, n)`` vector arrays, using value set ``v`` of the matrix and preconditioner.
Tasks run in parallel (``prange``), each sequentially, so a batch of many small systems uses every core and
a converged system simply stops (no masking, no lock-step with the slowest system).

Matrix storage
--------------
``sym = True``: symmetric storage, the strictly lower triangle in CSR (``indptr``, ``off`` = ``i - j``
as uint16 when the bandwidth allows, else uint32; ``vals`` (V, m)) plus the diagonal ``diag`` (V, n).
It halves the matrix traffic, and the SpMV sweep (row order) also applies ``p <- z + beta p`` just
before row i is used: rows j < i are already updated, so one pass does both. The contribution of row i to
row i - 1 (offset 1) is kept in a register until row i is done: written back through memory, every row would
wait on the previous row's store (measured: 5 ns per row instead of 2 on a 5-point stencil).
``sym = False``: plain CSR (``off`` = column index), the direction update in its own pass.

Preconditioner ``pkind``: 0 none, 1 Jacobi (``dinv`` (V, n), applied on the fly), 2 ``L L^T`` in LDL^T form
(``csr.ldlt_factor``: unit lower ``U^T`` (``lip, lix, lval``) and unit upper ``U`` (``uip, uix, uval``) in
CSR with column indices, ``dinv2`` (V, n)): two unit triangular sweeps per iteration.

Per iteration and task (n_t rows, m_t stored entries): one matrix sweep O(m_t + n_t) (which also applies the
previous step to x, so the vector sweep reads only r and q) and one vector sweep O(n_t) (plus the two
O(nnz(L)) triangular sweeps for ``pkind = 2``). Dot products accumulate in float64.

Measured and dropped: running 8 systems of a batch in lock-step with their vectors and values interleaved
((n, S) row-major, the inner loop over the 8 systems for SIMD) cost 8.4-12 us per system for one SpMV at
n = 4096 against 7.8 us for this per-system loop (every stored entry then touches two strided cache lines).

State and status
----------------
Per task: column ``tcol``, rows ``tr0``..``tr1``, matrix value set ``tval``, preconditioner value set ``tpv``.
``rz`` (T,), ``beta`` (T,): CG scalars carried between calls; ``iters`` (T,) iterations done.
``status``: ``FRESH`` (start or restart: compute z = M r, r^T z, direction p = z), ``ACTIVE``,
``CONVERGED`` (||r|| <= tol), ``NOT_PD`` (p^T A p <= 0), ``PREC_NOT_PD`` (r^T M r < 0), ``NONFINITE``,
``MAXITER``, ``STAGNATED`` (set by the caller: the true residual stalled). One call runs every FRESH/ACTIVE
task for at most ``chunk`` iterations (and at most ``maxit - iters``), writing ||r|| after each into
``hist[t, 1..h]`` and ``h`` into ``nhist[t]``.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import csr  # noqa: F401  (sets numba's threading layer before the first parallel kernel)

FRESH, ACTIVE, CONVERGED, NOT_PD, PREC_NOT_PD, NONFINITE, MAXITER, STAGNATED = 0, 1, 2, 3, 4, 5, 6, 7

__all__ = ["ACTIVE", "CONVERGED", "FRESH", "MAXITER", "NONFINITE", "NOT_PD", "PREC_NOT_PD",
           "STAGNATED", "pcg"]

# Every index is cast to unsigned before use: numba adds a negative-index wrap-around test to each access with
# a signed index, which made the SpMV 1.5x slower (measured at n = 512^2).
U = np.uint64


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _lower_unit(r, z, lip, lix, lv, r0, r1):
    """z = U^{-T} r on rows [r0, r1) (unit lower, strictly lower entries in CSR)."""
    for i in range(r0, r1):
        iu = U(i)
        s = r[iu]
        for jj in range(lip[iu], lip[iu + U(1)]):
            ju = U(jj)
            s -= lv[ju] * z[U(lix[ju])]
        z[iu] = s


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _upper_unit(r, z, uip, uix, uv, d2, r0, r1):
    """z = U^{-1} (d2 * z) in place on rows [r0, r1), backward; returns r^T z."""
    rz = 0.0
    for i in range(r1 - 1, r0 - 1, -1):
        iu = U(i)
        s = d2[iu] * z[iu]
        for jj in range(uip[iu], uip[iu + U(1)]):
            ju = U(jj)
            s -= uv[ju] * z[U(uix[ju])]
        z[iu] = s
        rz += r[iu] * s
    return rz


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _direction(pkind, r, z, dv, i):
    """z_i = (M^{-1} r)_i: r_i, r_i / a_ii (Jacobi) or the stored z_i."""
    if pkind == 0:
        return r[i]
    if pkind == 1:
        return r[i] * dv[i]
    return z[i]


@numba.njit(cache=True, parallel=True, fastmath={"contract"})
def pcg(indptr, off, vals, diag, sym, pkind, dinv, lip, lix, lval, uip, uix, uval, dinv2,
        tcol, tr0, tr1, tval, tpv, X, R, P, Q, Z, tol2, rz, beta, status, iters, maxit, hist, nhist, chunk):
    T = tcol.shape[0]
    for t in prange(T):
        nhist[t] = 0
        st = status[t]
        if st != FRESH and st != ACTIVE:
            continue
        c, r0, r1, v, w = tcol[t], tr0[t], tr1[t], tval[t], tpv[t]
        x, r, p, q, z = X[c], R[c], P[c], Q[c], Z[c if pkind == 2 else 0]
        av, dg, dv, lv, uv, d2 = vals[v], diag[v], dinv[w], lval[w], uval[w], dinv2[w]
        if st == FRESH:
            if pkind == 2:
                _lower_unit(r, z, lip, lix, lv, r0, r1)
                rzt = _upper_unit(r, z, uip, uix, uv, d2, r0, r1)
            else:
                rzt = 0.0
                for i in range(r0, r1):
                    iu = U(i)
                    rzt += r[iu] * r[iu] * (dv[iu] if pkind == 1 else 1.0)
            rz[t] = rzt
            beta[t] = 0.0
            if rzt < 0.0:
                status[t] = PREC_NOT_PD
                continue
            status[t] = ACTIVE
        h = 0
        al = 0.0  # the step x += al * p not yet applied (x lags one step behind r)
        while h < chunk and iters[t] < maxit:
            be = beta[t]
            # --- direction update p <- z + beta p, SpMV q = A p, p^T A p -------------------------------
            pq = 0.0
            if sym:
                prev = 0.0  # q at row i - 1, still accumulating (see the module docstring)
                for i in range(r0, r1):
                    iu = U(i)
                    po = p[iu]
                    x[iu] += al * po  # the previous step, applied here while p_i is at hand
                    pi = _direction(pkind, r, z, dv, iu) + be * po
                    p[iu] = pi
                    di = dg[iu] * pi
                    s = 0.0
                    for jj in range(indptr[iu], indptr[iu + U(1)]):
                        ju = U(jj)
                        d = U(off[ju])
                        a = av[ju]
                        s += a * p[iu - d]
                        if d == U(1):
                            prev += a * pi
                        else:
                            q[iu - d] += a * pi
                    if i > r0:
                        q[iu - U(1)] = prev
                    prev = di + s
                    pq += pi * (di + 2.0 * s)
                if r1 > r0:
                    q[U(r1 - 1)] = prev
            else:
                for i in range(r0, r1):
                    iu = U(i)
                    po = p[iu]
                    x[iu] += al * po
                    p[iu] = _direction(pkind, r, z, dv, iu) + be * po
                for i in range(r0, r1):
                    iu = U(i)
                    s = 0.0
                    for jj in range(indptr[iu], indptr[iu + U(1)]):
                        ju = U(jj)
                        s += av[ju] * p[U(off[ju])]
                    q[iu] = s
                    pq += p[iu] * s
            if not pq > 0.0:  # also NaN
                status[t] = NONFINITE if np.isnan(pq) else NOT_PD
                break
            al = rz[t] / pq
            # --- r -= alpha q, ||r||^2, r^T M^{-1} r (x += alpha p in the next sweep or at the end) ---------
            rr = 0.0
            rzn = 0.0
            for i in range(r0, r1):
                iu = U(i)
                ri = r[iu] - al * q[iu]
                r[iu] = ri
                rr += ri * ri
                if pkind == 1:
                    rzn += ri * ri * dv[iu]
            iters[t] += 1
            h += 1
            hist[t, h] = np.sqrt(rr)
            if not np.isfinite(rr):
                status[t] = NONFINITE
                break
            if rr <= tol2[t]:
                status[t] = CONVERGED
                break
            if pkind == 2:
                _lower_unit(r, z, lip, lix, lv, r0, r1)
                rzn = _upper_unit(r, z, uip, uix, uv, d2, r0, r1)
            elif pkind == 0:
                rzn = rr
            if rzn < 0.0:
                status[t] = PREC_NOT_PD
                break
            beta[t] = rzn / rz[t]
            rz[t] = rzn
        if al != 0.0:
            for i in range(r0, r1):
                iu = U(i)
                x[iu] += al * p[iu]
        nhist[t] = h
        if status[t] == ACTIVE and iters[t] >= maxit:
            status[t] = MAXITER
