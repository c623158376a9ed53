"""Compiled CPU sparse kernels (numba) on plain NumPy CSR arrays.

All kernels take a CSR *pattern* ``(indptr, indices)`` shared by a batch of
``B`` matrices whose values are stored row-wise in ``data`` with shape
``(B, nnz)``. Column indices inside each row must be sorted ascending and
unique. Index arrays may be int32 or int64, values float32 or float64 (numba
compiles one specialisation per dtype combination; arithmetic is done in the
value dtype). ``n`` is the matrix order, ``nnz`` the number of stored entries
and ``r = nnz / n`` the average row length. No torch is imported here; callers
convert tensors with ``.numpy()``.

Kernels
-------
``csr_diag_positions(indptr, indices) -> int64 (n,)``
    Position of the diagonal entry of each row (``-1`` when missing), found by
    a linear scan of each row. Cost O(nnz).

``csr_trsv(indptr, indices, data, b, lower, unit_diagonal, out) -> int``
    Triangular solve ``T y = b`` by forward (``lower=True``) or backward
    (``lower=False``) substitution, ``b`` and ``out`` of shape ``(B, n, k)``
    (C-contiguous, ``out`` may alias ``b``). Only the entries on the requested
    side of the diagonal are used (col < row for ``lower``, col > row
    otherwise) plus the diagonal; entries on the other side are ignored, so a
    full ILU(0) factor can be passed for both the L and the U solve. Because
    the columns are sorted, a lower solve scans each row forward and stops at
    the diagonal, an upper solve scans it backward and stops at the diagonal.
    With ``unit_diagonal`` the diagonal is taken as 1 (stored diagonal
    ignored). Returns ``-1`` on success, else the smallest row index having a
    zero or missing diagonal in some batch member (``out`` is then
    unspecified). The ``B * k`` right-hand sides are independent and are
    solved in parallel (``prange``); each costs O(nnz) (only the used
    triangle is touched). The solve is latency-bound on the row-to-row
    dependency; see the comment above ``_trsv_lower_one`` for how the chain is
    cut to one fused multiply-add per row (the term in column i-1, resp. i+1, is
    applied last from a register, and rows are scaled by ``1 / d_ii`` before
    it), so results can differ from plain substitution in the last bits.

``csr_trsv_unit(indptr, indices, data, scale, b, lower, out) -> None``
    Unit-diagonal triangular solve ``T y = diag(scale) b`` (the stored diagonal
    and the entries on the other side are ignored, so a factor stored without
    its diagonal costs only its off-diagonal entries). ``data`` (B, nnz),
    ``scale`` (B, n), or (B, 0) for no scaling, ``b``/``out`` (B, n, k),
    ``out`` may alias ``b``; parallel over the ``B * k`` right-hand sides.
    ``trsv_unit_lower`` / ``trsv_unit_upper(indptr, indices, data, scale, b,
    out)`` are the single right-hand-side loops on 1-D arrays (``scale`` of
    length n or 0); call them directly for one right-hand side (going through
    another compiled function slows the loop). O(nnz) per right-hand side.

``ldlt_factor(indptr, indices, data) -> (lip, lix, lval, uip, uix, uval, dinv2, bad)``
    The LDL^T form of ``L L^T`` for a lower factor ``L`` (entries right of the
    diagonal ignored): ``L L^T = U^T D^2 U`` with ``D = diag(L)`` and
    ``U^T = L D^{-1}`` unit lower (entries ``L_ij / L_jj``). Returns the strictly
    lower CSR of ``U^T`` (``lip``, ``lix``, ``lval`` (B, m)), the strictly upper
    CSR of ``U`` (``uip``, ``uix``, ``uval`` (B, m)), ``dinv2 = 1 / L_ii^2``
    (B, n) and ``bad``: -1, or the first row whose diagonal is missing or zero
    in some member (the other outputs are then empty). With these, ``(L L^T)^{-1}
    r = U^{-1} (dinv2 * (U^{-T} r))``: two unit solves, the scaling fused into
    the second. Index arrays keep the input's dtypes. Cost O(nnz * B).

``ic0(indptr, indices, data) -> (L_data (B, nnz), info int64 (B,))``
    Zero-fill incomplete Cholesky ``A ~= L L^T`` on the pattern of the lower
    triangle of ``A`` (input: lower triangle incl. diagonal; any entry with
    col > row is ignored and set to 0 in ``L_data``). Row-oriented
    (left-looking, "IJK") algorithm: for row ``i`` and each ``k < i`` in its
    pattern (ascending)

        L_ik = (A_ik - sum_{j<k} L_ij L_kj) / L_kk,
        L_ii = sqrt(A_ii - sum_{j<i} L_ij^2),

    where each sum runs over the columns present in both rows (sorted merge of
    row ``i`` and row ``k``). ``info[b]`` is ``-1`` on success, otherwise the
    first row whose diagonal is missing or whose pivot is ``<= 0`` or not
    finite (the rest of that member's ``L_data`` is unspecified). Cost
    O(sum_i sum_{k in row i} (len_i + len_k)) = O(nnz * r) per matrix; the
    batch is processed in parallel (``prange`` over ``B``).

``ilu0(indptr, indices, data) -> (LU_data (B, nnz), info int64 (B,))``
    Zero-fill ILU in Saad's IKJ form (Iterative Methods for Sparse Linear
    Systems, Alg. 10.4) on the full pattern of a square matrix. ``LU_data``
    holds the strictly lower part of the unit lower triangular ``L`` and the
    upper part (with diagonal) of ``U``, so that ``(L U)`` restricted to the
    pattern equals ``A``. A dense work array maps column -> position within
    the current row (reset after each row). ``info[b]`` is ``-1`` on success,
    else the first row with a missing, zero or non-finite pivot. Cost
    O(sum_i sum_{k in L-row i} len(U-row k)) = O(nnz * r) per matrix plus
    O(n) workspace; parallel over ``B``.
"""

from __future__ import annotations

import os

import numba
import numpy as np

# numba's default threading layer on Linux is OpenMP (a second OpenMP runtime next to torch's): after one
# parallel kernel (e.g. an IC(0) factorisation) its idle workers made every later torch op of the process
# up to 40x slower (measured: a GNN solve 0.45 s -> 19 s). The workqueue layer has no spinning workers.
# NUMBA_THREADING_LAYER set by the user still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

__all__ = [
    "csr_diag_positions", "csr_trsv", "csr_trsv_unit", "ic0", "ilu0", "ldlt_factor", "trsv_levels",
    "trsv_unit_lower", "trsv_unit_upper",
]


@numba.njit(cache=True)
def csr_diag_positions(indptr, indices):
    """Position of the diagonal entry of each CSR row, ``-1`` when missing."""
    n = indptr.shape[0] - 1
    pos = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            if j == i:
                pos[i] = p
                break
            if j > i:
                break
    return pos


# The substitution is latency-bound: y_i waits for y_{i-1} whenever row i has an entry in column i-1
# (every row of a banded or grid matrix in natural order). The kernels therefore keep y_{i-1} in a
# register, accumulate all other terms of row i first (they do not depend on y_{i-1}) and finish with a
# single fused multiply-add with the register value; for a non-unit diagonal, both the partial sum and
# the adjacent coefficient are pre-multiplied by 1 / d_ii (off the chain), so the row-to-row dependency
# is one FMA, y_i = acc_i / d_ii - (t_{i,i-1} / d_ii) * y_{i-1}, instead of a store, a load, a
# multiply-add and a multiply. Rows without the adjacent entry take the plain path (no term at all, so
# a non-finite y_{i-1} does not leak into them). The upper solve is the mirror image (column i+1).


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _trsv_lower_one(indptr, indices, data, b, out, bi, c, unit_diagonal):
    n = indptr.shape[0] - 1
    if n == 0:
        return -1
    one = np.ones(1, dtype=data.dtype)[0]  # 1 in the value dtype (no f32->f64 promotion)
    prev = b[bi, 0, c]  # y_{i-1}, carried in a register (only read when row i has column i-1)
    for i in range(n):
        acc = b[bi, i, c]
        p = indptr[i]
        end = indptr[i + 1]
        # all terms but column i-1 (columns are sorted: stop at the first column >= i-1)
        while p < end:
            j = indices[p]
            if j >= i - 1:
                break
            acc -= data[bi, p] * out[bi, j, c]
            p += 1
        has_adj = False
        adj = acc
        if p < end and indices[p] == i - 1:
            adj = data[bi, p]
            has_adj = True
            p += 1
        if unit_diagonal:
            if has_adj:
                acc -= adj * prev  # the only operation on the row-to-row chain
        else:
            if p >= end or indices[p] != i or data[bi, p] == 0:
                return i
            inv = one / data[bi, p]
            acc = acc * inv
            if has_adj:
                acc -= (adj * inv) * prev
        out[bi, i, c] = acc
        prev = acc
    return -1


@numba.njit(cache=True, inline="always", fastmath={"contract"})
def _trsv_upper_one(indptr, indices, data, b, out, bi, c, unit_diagonal):
    n = indptr.shape[0] - 1
    if n == 0:
        return -1
    one = np.ones(1, dtype=data.dtype)[0]  # 1 in the value dtype (no f32->f64 promotion)
    prev = b[bi, 0, c]  # y_{i+1}, carried in a register (only read when row i has column i+1)
    for i in range(n - 1, -1, -1):
        acc = b[bi, i, c]
        start = indptr[i]
        p = indptr[i + 1] - 1
        # all terms but column i+1 (scan backward: stop at the first column <= i+1)
        while p >= start:
            j = indices[p]
            if j <= i + 1:
                break
            acc -= data[bi, p] * out[bi, j, c]
            p -= 1
        has_adj = False
        adj = acc
        if p >= start and indices[p] == i + 1:
            adj = data[bi, p]
            has_adj = True
            p -= 1
        if unit_diagonal:
            if has_adj:
                acc -= adj * prev  # the only operation on the row-to-row chain
        else:
            if p < start or indices[p] != i or data[bi, p] == 0:
                return i
            inv = one / data[bi, p]
            acc = acc * inv
            if has_adj:
                acc -= (adj * inv) * prev
        out[bi, i, c] = acc
        prev = acc
    return -1


@numba.njit(cache=True, parallel=True, fastmath={"contract"})
def csr_trsv(indptr, indices, data, b, lower, unit_diagonal, out):
    """Solve ``T y = b`` for each batch member and column; see module doc.

    ``indptr`` (n+1,), ``indices`` (nnz,), ``data`` (B, nnz), ``b`` and ``out``
    (B, n, k). Returns -1 on success, else the first row with a zero or
    missing diagonal (only possible when ``unit_diagonal`` is False).
    """
    n = indptr.shape[0] - 1
    nb = b.shape[0]
    k = b.shape[2]
    if b.shape[1] != n or out.shape[0] != nb or out.shape[1] != n or out.shape[2] != k:
        raise ValueError("csr_trsv: b/out must have shape (B, n, k) matching indptr")
    if data.shape[0] != nb or data.shape[1] != indices.shape[0]:
        raise ValueError("csr_trsv: data must have shape (B, nnz)")
    ntask = nb * k
    if ntask == 1:
        # a single right-hand side runs on the calling thread: a parallel launch would add nothing but
        # the thread-pool barrier, which costs a scheduler time slice whenever another process holds a core
        if lower:
            return _trsv_lower_one(indptr, indices, data, b, out, 0, 0, unit_diagonal)
        return _trsv_upper_one(indptr, indices, data, b, out, 0, 0, unit_diagonal)
    err = np.full(ntask, -1, dtype=np.int64)
    for t in numba.prange(ntask):
        bi = t // k
        c = t - bi * k
        if lower:
            err[t] = _trsv_lower_one(indptr, indices, data, b, out, bi, c, unit_diagonal)
        else:
            err[t] = _trsv_upper_one(indptr, indices, data, b, out, bi, c, unit_diagonal)
    res = -1
    for t in range(ntask):
        e = err[t]
        if e >= 0 and (res < 0 or e < res):
            res = e
    return res


# Unit-diagonal solves with an optional row scaling of the right-hand side, for a factor stored without
# its diagonal (the LDL^T form of L L^T): the row-to-row chain is one FMA and each row streams only its
# off-diagonal entries. Kept as separate, specialised functions: a runtime ``unit`` flag, or calling
# them through another compiled function, measurably slows the loop (about 0.3-0.6 ns/row).


@numba.njit(cache=True, fastmath={"contract"})
def trsv_unit_lower(indptr, indices, data, scale, b, out):
    """``y = T^{-1} (scale * b)``, T unit lower (1-D ``data``, ``b``, ``out``); see module doc."""
    n = indptr.shape[0] - 1
    if n == 0:
        return
    scaled = scale.shape[0] != 0
    prev = b[0]  # y_{i-1}, carried in a register (only read when row i has column i-1)
    for i in range(n):
        acc = b[i]
        if scaled:
            acc *= scale[i]
        p = indptr[i]
        end = indptr[i + 1]
        while p < end:
            j = indices[p]
            if j >= i - 1:
                break
            acc -= data[p] * out[j]
            p += 1
        if p < end and indices[p] == i - 1:
            acc -= data[p] * prev  # the only operation on the row-to-row chain
        out[i] = acc
        prev = acc


@numba.njit(cache=True, fastmath={"contract"})
def trsv_unit_upper(indptr, indices, data, scale, b, out):
    """``y = T^{-1} (scale * b)``, T unit upper (1-D ``data``, ``b``, ``out``); see module doc."""
    n = indptr.shape[0] - 1
    if n == 0:
        return
    scaled = scale.shape[0] != 0
    prev = b[0]  # y_{i+1}, carried in a register (only read when row i has column i+1)
    for i in range(n - 1, -1, -1):
        acc = b[i]
        if scaled:
            acc *= scale[i]
        start = indptr[i]
        p = indptr[i + 1] - 1
        while p >= start:
            j = indices[p]
            if j <= i + 1:
                break
            acc -= data[p] * out[j]
            p -= 1
        if p >= start and indices[p] == i + 1:
            acc -= data[p] * prev  # the only operation on the row-to-row chain
        out[i] = acc
        prev = acc


@numba.njit(cache=True, parallel=True)
def csr_trsv_unit(indptr, indices, data, scale, b, lower, out):
    """``T y = diag(scale) b`` with T unit triangular, batched; see module doc.

    ``data`` (B, nnz), ``scale`` (B, n) or (B, 0) (no scaling), ``b`` and ``out`` (B, n, k).
    """
    n = indptr.shape[0] - 1
    nb = b.shape[0]
    k = b.shape[2]
    if b.shape[1] != n or out.shape[0] != nb or out.shape[1] != n or out.shape[2] != k:
        raise ValueError("csr_trsv_unit: b/out must have shape (B, n, k) matching indptr")
    if data.shape[0] != nb or data.shape[1] != indices.shape[0]:
        raise ValueError("csr_trsv_unit: data must have shape (B, nnz)")
    if scale.shape[0] != nb or (scale.shape[1] != n and scale.shape[1] != 0):
        raise ValueError("csr_trsv_unit: scale must have shape (B, n) or (B, 0)")
    for t in numba.prange(nb * k):
        bi = t // k
        c = t - bi * k
        if lower:
            trsv_unit_lower(indptr, indices, data[bi], scale[bi], b[bi, :, c], out[bi, :, c])
        else:
            trsv_unit_upper(indptr, indices, data[bi], scale[bi], b[bi, :, c], out[bi, :, c])


@numba.njit(cache=True)
def ldlt_factor(indptr, indices, data):
    """Unit factor and inverse squared pivots of ``L L^T``; see module doc.

    Returns ``(lip, lix, lval, uip, uix, uval, dinv2, bad)``.
    """
    n = indptr.shape[0] - 1
    nb = data.shape[0]
    if data.shape[1] != indices.shape[0]:
        raise ValueError("ldlt_factor: data must have shape (B, nnz)")
    diag = csr_diag_positions(indptr, indices)
    bad = -1
    for i in range(n):
        ok = diag[i] >= 0
        if ok:
            for bi in range(nb):
                if data[bi, diag[i]] == 0:
                    ok = False
        if not ok:
            bad = i
            break
    lip = np.zeros(n + 1, dtype=indptr.dtype)
    uip = np.zeros(n + 1, dtype=indptr.dtype)
    if bad >= 0:
        e_ix = np.empty(0, dtype=indices.dtype)
        e_v = np.empty((nb, 0), dtype=data.dtype)
        return lip, e_ix, e_v, uip, e_ix, e_v, np.empty((nb, 0), dtype=data.dtype), bad
    # strictly lower entries: positions indptr[i] .. diag[i]-1 of each row
    ucount = np.zeros(n + 1, dtype=np.int64)
    m = 0
    for i in range(n):
        for p in range(indptr[i], diag[i]):
            ucount[indices[p] + 1] += 1
        m += diag[i] - indptr[i]
        lip[i + 1] = m
    for j in range(n):
        ucount[j + 1] += ucount[j]
        uip[j + 1] = ucount[j + 1]
    lix = np.empty(m, dtype=indices.dtype)
    uix = np.empty(m, dtype=indices.dtype)
    lval = np.empty((nb, m), dtype=data.dtype)
    uval = np.empty((nb, m), dtype=data.dtype)
    dinv2 = np.empty((nb, n), dtype=data.dtype)
    one = np.ones(1, dtype=data.dtype)[0]
    q = 0
    for i in range(n):
        for bi in range(nb):
            d = data[bi, diag[i]]
            dinv2[bi, i] = one / (d * d)
        for p in range(indptr[i], diag[i]):
            j = indices[p]
            lix[q] = j
            r = ucount[j]  # next free slot of row j of U = L~^T (rows i arrive in ascending order)
            ucount[j] = r + 1
            uix[r] = i
            for bi in range(nb):
                v = data[bi, p] / data[bi, diag[j]]
                lval[bi, q] = v
                uval[bi, r] = v
            q += 1
    return lip, lix, lval, uip, uix, uval, dinv2, bad


@numba.njit(cache=True)
def _ic0_one(indptr, indices, diag, src, L, bi):
    """IC(0) of batch member ``bi`` in place in ``L[bi]``; returns info."""
    n = indptr.shape[0] - 1
    for i in range(n):
        start = indptr[i]
        di = diag[i]
        if di < 0:
            return i
        # entries right of the diagonal are not part of L
        for p in range(di + 1, indptr[i + 1]):
            L[bi, p] = 0
        for p in range(start, di):
            kk = indices[p]
            dk = diag[kk]
            # s = A_ik - sum_{j<k} L_ij L_kj over common columns (sorted merge)
            s = src[bi, p]
            a = start
            q = indptr[kk]
            while a < p and q < dk:
                ja = indices[a]
                jq = indices[q]
                if ja == jq:
                    s -= L[bi, a] * L[bi, q]
                    a += 1
                    q += 1
                elif ja < jq:
                    a += 1
                else:
                    q += 1
            L[bi, p] = s / L[bi, dk]
        d = src[bi, di]
        for p in range(start, di):
            lij = L[bi, p]
            d -= lij * lij
        if not (d > 0 and d < np.inf):
            return i
        L[bi, di] = np.sqrt(d)
    return -1


@numba.njit(cache=True, parallel=True)
def ic0(indptr, indices, data):
    """Zero-fill incomplete Cholesky of a batch; see module doc.

    Returns ``(L_data, info)`` with ``L_data`` (B, nnz) and ``info`` int64 (B,).
    """
    nb = data.shape[0]
    nnz = data.shape[1]
    if nnz != indices.shape[0]:
        raise ValueError("ic0: data must have shape (B, nnz)")
    diag = csr_diag_positions(indptr, indices)
    L = np.empty((nb, nnz), dtype=data.dtype)
    info = np.full(nb, -1, dtype=np.int64)
    for bi in numba.prange(nb):
        for p in range(nnz):
            L[bi, p] = data[bi, p]
        info[bi] = _ic0_one(indptr, indices, diag, data, L, bi)
    return L, info


@numba.njit(cache=True)
def _ilu0_one(indptr, indices, diag, LU, bi, iw):
    """ILU(0) (IKJ) of batch member ``bi`` in place in ``LU[bi]``; returns info."""
    n = indptr.shape[0] - 1
    for i in range(n):
        start = indptr[i]
        end = indptr[i + 1]
        di = diag[i]
        if di < 0:
            return i
        for p in range(start, end):
            iw[indices[p]] = p
        for p in range(start, di):
            kk = indices[p]
            dk = diag[kk]
            lik = LU[bi, p] / LU[bi, dk]
            LU[bi, p] = lik
            for q in range(dk + 1, indptr[kk + 1]):
                w = iw[indices[q]]
                if w >= 0:
                    LU[bi, w] -= lik * LU[bi, q]
        for p in range(start, end):
            iw[indices[p]] = -1
        piv = LU[bi, di]
        if not (piv != 0 and abs(piv) < np.inf):
            return i
    return -1


@numba.njit(cache=True, parallel=True)
def ilu0(indptr, indices, data):
    """Zero-fill ILU (IKJ) of a batch; see module doc.

    Returns ``(LU_data, info)`` with ``LU_data`` (B, nnz) and ``info`` int64 (B,).
    """
    n = indptr.shape[0] - 1
    nb = data.shape[0]
    nnz = data.shape[1]
    if nnz != indices.shape[0]:
        raise ValueError("ilu0: data must have shape (B, nnz)")
    diag = csr_diag_positions(indptr, indices)
    LU = np.empty((nb, nnz), dtype=data.dtype)
    info = np.full(nb, -1, dtype=np.int64)
    for bi in numba.prange(nb):
        for p in range(nnz):
            LU[bi, p] = data[bi, p]
        iw = np.full(n, -1, dtype=np.int64)
        info[bi] = _ilu0_one(indptr, indices, diag, LU, bi, iw)
    return LU, info


@numba.njit(cache=True)
def trsv_levels(indptr, indices, lower):
    """Level of every row in a triangular solve (0: depends on no other row; else 1 + the largest level of the
    rows it depends on, the entries on the used side of the diagonal). Rows in order (lower) or in reverse
    (upper), O(nnz)."""
    n = indptr.shape[0] - 1
    level = np.zeros(n, dtype=np.int64)
    for s in range(n):
        i = s if lower else n - 1 - s
        lv = 0
        for jj in range(indptr[i], indptr[i + 1]):
            j = indices[jj]
            if ((j < i) if lower else (j > i)) and level[j] + 1 > lv:
                lv = level[j] + 1
        level[i] = lv
    return level
