"""Helpers and dense references of the preconditioner tests (test_precond*.py)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

F64 = torch.float64

# helpers and dense references
# ------------------------------------------------------------------------------------------------

def csr(A):
    A = sp.csr_matrix(A)
    A.sum_duplicates()
    A.eliminate_zeros()
    A.sort_indices()
    return A




def random_nonsym(n, density, rng):
    R = sp.random(n, n, density=density, random_state=rng, format="csr")
    R.data = rng.uniform(-1.0, 1.0, R.nnz)
    R = R - sp.diags(R.diagonal())
    rowsum = np.abs(R).sum(axis=1).A.ravel()
    return csr(R + sp.diags(rng.choice([-1.0, 1.0], n) * (rowsum + rng.uniform(0.5, 1.5, n))))


def tridiag(n, rng, symmetric):
    lo = rng.uniform(-1.0, -0.2, n - 1)
    up = lo if symmetric else rng.uniform(-1.5, 0.5, n - 1)
    d = rng.uniform(2.5, 4.0, n)
    return csr(sp.diags([lo, d, up], [-1, 0, 1]))


def poisson2d(m, rng=None):
    """5-point Laplacian; with rng, variable coefficients (still SPD, M-matrix)."""
    if rng is None:
        T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
        Id = sp.identity(m)
        return csr(sp.kron(Id, T) + sp.kron(T, Id))
    n = m * m
    idx = np.arange(n).reshape(m, m)
    rows, cols, vals = [], [], []
    for a, b in [(idx[:, :-1], idx[:, 1:]), (idx[:-1, :], idx[1:, :])]:
        w = rng.uniform(0.1, 10.0, a.size)
        rows += [a.ravel(), b.ravel()]
        cols += [b.ravel(), a.ravel()]
        vals += [-w, -w]
    off = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return csr(off + sp.diags(-np.asarray(off.sum(axis=1)).ravel() + 0.1))


def convection_diffusion(m, c=0.6):
    """Nonsymmetric upwind convection-diffusion on an m x m grid."""
    A = poisson2d(m)
    C = sp.diags([-1.0, 1.0], [-1, 0], shape=(m, m))
    Id = sp.identity(m)
    return csr(A + c * (sp.kron(Id, C) + sp.kron(C, Id)))


def dense_ic0(A):
    """Right-looking IC(0) on a dense copy, updating only entries of tril(A)'s pattern."""
    mask = np.tril(A != 0)
    L = np.where(mask, np.tril(A), 0.0)
    n = L.shape[0]
    for k in range(n):
        L[k, k] = np.sqrt(L[k, k])
        L[k + 1:, k] = np.where(mask[k + 1:, k], L[k + 1:, k] / L[k, k], 0.0)
        for j in range(k + 1, n):
            L[j:, j] -= np.where(mask[j:, j], L[j:, k] * L[j, k], 0.0)
    return L


def dense_ilu0(A):
    """Right-looking (KIJ) ILU(0) on a dense copy restricted to A's pattern: (unit L, U)."""
    mask = A != 0
    W = A.astype(np.float64).copy()
    n = W.shape[0]
    for k in range(n):
        for i in range(k + 1, n):
            if mask[i, k]:
                W[i, k] /= W[k, k]
                W[i, k + 1:] -= np.where(mask[i, k + 1:], W[i, k] * W[k, k + 1:], 0.0)
    return np.tril(W, -1) + np.eye(n), np.triu(W)


def dense_of(apply, n, dtype=F64):
    """The n x n matrix of a linear map on canonical (1, n, k) blocks."""
    return apply(torch.eye(n, dtype=dtype).unsqueeze(0))[0].numpy()


def blk(x):
    """numpy (n,) or (n, k) -> canonical (1, n, k) block."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    return t.reshape(1, -1, 1) if t.ndim == 1 else t.unsqueeze(0)


def dense_mic0(A):
    """Dense right-looking MIC(0) on tril(A)'s pattern: fill-in outside the pattern is subtracted from the two
    diagonal entries of its row and column (Gustafsson); returns L."""
    W = np.array(A, dtype=np.float64)
    n = W.shape[0]
    P = W != 0
    L = np.zeros_like(W)
    for k in range(n):
        L[k, k] = np.sqrt(W[k, k])
        for i in range(k + 1, n):
            if P[i, k]:
                L[i, k] = W[i, k] / L[k, k]
        for i in range(k + 1, n):
            for j in range(k + 1, i + 1):
                if L[i, k] == 0 or L[j, k] == 0:
                    continue
                prod = L[i, k] * L[j, k]
                if P[i, j]:
                    W[i, j] -= prod
                    if i != j:
                        W[j, i] -= prod
                else:
                    W[i, i] -= prod
                    W[j, j] -= prod
    return L

