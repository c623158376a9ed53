"""Compiled symmetric V(1,1)-cycle of a multigrid hierarchy stored as ONE global CSR (no torch imported here).

The levels 0..L-1 (smoothed) and the coarsest level L occupy the consecutive index ranges
``off[l]:off[l + 1]`` (``off`` has L + 2 entries) of global vectors. ``aptr, aidx, aval``: the block-diagonal
CSR of A_0..A_{L-1} (global column indices, sorted in each row), ``adiag`` the position of each row's diagonal
entry in it, ``dinv`` the inverse diagonals; ``pptr, pidx, pval``: the CSR of
the prolongators, row i of level l holding P_l's row with global column indices of level l + 1; ``lc`` the
dense lower Cholesky factor of A_L. ``b`` and ``x`` are work vectors of the global length.

``vcycle(off, aptr, aidx, aval, adiag, dinv, pptr, pidx, pval, lc, r, out, b, x)``: out = M^{-1} r for the
cycle

    x = (D + L)^{-1} r;  x += P (cycle on P^T (r - A x));  x += (D + U)^{-1} (r - A x)

on every level (the post-smoothing is an in-place backward Gauss-Seidel sweep, equal in exact arithmetic),
with a Cholesky solve on the coarsest. Cost per call: about 2 nnz(A_l) + 2 nnz(P_l) multiply-adds per level
plus nc^2 on the coarsest.
"""

from __future__ import annotations

import numba


@numba.njit(cache=True, fastmath={"contract"})
def vcycle(off, aptr, aidx, aval, adiag, dinv, pptr, pidx, pval, lc, r, out, b, x):
    L = off.shape[0] - 2
    n0 = off[1] - off[0]
    for i in range(n0):
        b[i] = r[i]
    for lv in range(L):
        s, e = off[lv], off[lv + 1]
        for i in range(s, e):  # forward Gauss-Seidel from zero
            acc = b[i]
            for p in range(aptr[i], adiag[i]):
                acc -= aval[p] * x[aidx[p]]
            x[i] = acc * dinv[i]
        for c in range(e, off[lv + 2]):
            b[c] = 0.0
            x[c] = 0.0
        for i in range(s, e):  # restrict r - A x = (1 / dinv_i - a_ii) x_i - triu(A, 1) x (the rest is exact)
            acc = (1.0 / dinv[i] - aval[adiag[i]]) * x[i]
            for p in range(adiag[i] + 1, aptr[i + 1]):
                acc -= aval[p] * x[aidx[p]]
            for q in range(pptr[i], pptr[i + 1]):
                b[pidx[q]] += pval[q] * acc
    s, e = off[L], off[L + 1]
    nc = e - s
    for i in range(nc):  # coarsest: L_c L_c^T x = b
        acc = b[s + i]
        for j in range(i):
            acc -= lc[i, j] * x[s + j]
        x[s + i] = acc / lc[i, i]
    for i in range(nc - 1, -1, -1):
        acc = x[s + i]
        for j in range(i + 1, nc):
            acc -= lc[j, i] * x[s + j]
        x[s + i] = acc / lc[i, i]
    for lv in range(L - 1, -1, -1):
        s, e = off[lv], off[lv + 1]
        for i in range(s, e):  # prolong
            acc = 0.0
            for q in range(pptr[i], pptr[i + 1]):
                acc += pval[q] * x[pidx[q]]
            x[i] += acc
        for i in range(e - 1, s - 1, -1):  # backward Gauss-Seidel / SOR
            acc = b[i]
            for p in range(aptr[i], aptr[i + 1]):
                acc -= aval[p] * x[aidx[p]]
            x[i] += acc * dinv[i]
    for i in range(n0):
        out[i] = x[i]
