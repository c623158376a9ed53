"""Compiled right-looking incomplete Cholesky on an UPPER CSR pattern, plain or modified (MIC(0)).

``ic0_upper(indptr, indices, data, modified) -> (U_data (B, nnz), info int64 (B,))``: for each batch member,
``A ~ U^T U`` with ``U`` on the pattern of ``triu(A)`` (CSR, sorted columns, the diagonal first in every row).
Column ``k`` of the elimination is row ``k`` of ``U``: ``u_kk = sqrt(w_kk)``, ``u_kj = w_kj / u_kk``, then
every pair ``k < i <= j`` of row ``k`` updates ``w_ij -= u_ki u_kj``. An update that falls outside the pattern
(fill-in) is dropped (IC(0)) or, with ``modified``, subtracted from both diagonals ``w_ii`` and ``w_jj``
instead: the row sums of ``U^T U`` then equal those of ``A`` (Gustafsson's MIC(0), no relaxation), which is
what removes IC(0)'s smallest eigenvalues on diffusion problems. ``info`` is -1, or the first row with a
missing diagonal or a pivot that is not positive and finite. Cost per member: sum over rows of (row length)^2
/ 2 binary searches. No torch is imported here.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _position(indices, lo, hi, j):
    """Index of column ``j`` in the sorted ``indices[lo:hi]``, or -1."""
    while lo < hi:
        mid = (lo + hi) // 2
        c = indices[mid]
        if c < j:
            lo = mid + 1
        elif c > j:
            hi = mid
        else:
            return mid
    return -1


@numba.njit(cache=True)
def _ic0_upper_one(indptr, indices, W, bi, modified):
    n = indptr.shape[0] - 1
    for i in range(n):  # every row must start with its diagonal (upper CSR, sorted)
        if indptr[i] == indptr[i + 1] or indices[indptr[i]] != i:
            return i
    for k in range(n):
        s = indptr[k]
        e = indptr[k + 1]
        d = W[bi, s]
        if not (d > 0 and d < np.inf):
            return k
        ukk = np.sqrt(d)
        W[bi, s] = ukk
        for p in range(s + 1, e):
            W[bi, p] /= ukk
        for p in range(s + 1, e):
            i = indices[p]
            uki = W[bi, p]
            ri = indptr[i]
            re = indptr[i + 1]
            W[bi, ri] -= uki * uki
            for q in range(p + 1, e):
                j = indices[q]
                prod = uki * W[bi, q]
                pos = _position(indices, ri + 1, re, j)
                if pos >= 0:
                    W[bi, pos] -= prod
                elif modified:
                    W[bi, ri] -= prod
                    W[bi, indptr[j]] -= prod
    return -1


@numba.njit(cache=True, parallel=True)
def ic0_upper(indptr, indices, data, modified):
    nb = data.shape[0]
    W = data.copy()
    info = np.full(nb, -1, dtype=np.int64)
    for bi in numba.prange(nb):
        info[bi] = _ic0_upper_one(indptr, indices, W, bi, modified)
    return W, info
