"""Dense references for the numba CSR kernel tests (test_kernels*.py): independent of learnsolve's kernels
except for the ``ic0`` call in :func:`run_ic0`, which unpacks the kernel's output for comparison."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from learnsolve.linalg.kernels.csr import ic0


def csr_parts(A, index_dtype=np.int64):
    A = sp.csr_matrix(A)
    A.sum_duplicates()
    A.sort_indices()
    return A.indptr.astype(index_dtype), A.indices.astype(index_dtype), A.data.copy()


def random_nonsym(n, density, rng, dominance=1.0):
    """Random nonsymmetric sparse matrix with a full, nonzero diagonal."""
    R = sp.random(n, n, density=density, random_state=rng, format="csr")
    R.data = rng.uniform(-1.0, 1.0, R.nnz)
    rowsum = np.abs(R).sum(axis=1).A.ravel()
    signs = rng.choice([-1.0, 1.0], n)
    D = sp.diags(signs * (dominance * rowsum + rng.uniform(0.5, 1.5, n)))
    A = (R - sp.diags(R.diagonal()) + D).tocsr()
    A.sort_indices()
    return A




def dense_ic0(A, mask):
    """Right-looking IC(0) on a dense copy, only updating entries in ``mask``.

    ``mask`` is the (lower-triangular) pattern. Returns (L, info).
    """
    L = np.where(mask, np.tril(A), 0.0).astype(np.float64)
    n = L.shape[0]
    for k in range(n):
        piv = L[k, k]
        if not (mask[k, k] and piv > 0 and np.isfinite(piv)):
            return L, k
        L[k, k] = np.sqrt(piv)
        for i in range(k + 1, n):
            if mask[i, k]:
                L[i, k] /= L[k, k]
        for j in range(k + 1, n):
            if L[j, k] == 0.0 and not mask[j, k]:
                continue
            for i in range(j, n):
                if mask[i, j] and mask[i, k]:
                    L[i, j] -= L[i, k] * L[j, k]
    return L, -1


def dense_ilu0(A, mask):
    """Right-looking (KIJ) ILU(0) on a dense copy restricted to ``mask``.

    Returns (LU, info) with LU holding strict L (unit diag implied) and U.
    """
    W = np.where(mask, A, 0.0).astype(np.float64)
    n = W.shape[0]
    for k in range(n):
        piv = W[k, k]
        if not (mask[k, k] and piv != 0 and np.isfinite(piv)):
            return W, k
        for i in range(k + 1, n):
            if not mask[i, k]:
                continue
            W[i, k] /= piv
            for j in range(k + 1, n):
                if mask[i, j]:
                    W[i, j] -= W[i, k] * W[k, j]
    return W, -1


def scatter(indptr, indices, values, n):
    return sp.csr_matrix((values, indices, indptr), shape=(n, n)).toarray()


def mask(indptr, indices, n):
    return scatter(indptr, indices, np.ones(len(indices)), n) != 0


def run_ic0(A, index_dtype=np.int64):
    Lw = sp.tril(A).tocsr()
    Lw.sort_indices()
    indptr, indices, data = csr_parts(Lw, index_dtype)
    Ld, info = ic0(indptr, indices, data[None, :])
    return indptr, indices, data, Ld[0], int(info[0])
