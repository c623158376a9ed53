"""``local_solve``: a few entries of x = A^{-1} b in time independent of n, for diagonally dominant A.

For a strictly diagonally dominant A (rho = max_i sum_{j != i} |a_ij| / |a_ii| < 1) the entries of A^{-1}
decay geometrically with the graph distance (Demko, Moss and Smith 1984): x_i depends, to any accuracy, only
on b and A near i. ``local_solve`` grows a neighbourhood S of the requested entries by breadth-first search
over A's rows, doubling its radius, and solves the truncated system A_SS z = b_S exactly (a sparse LU of |S|
unknowns) each time. It stops when the requested entries moved by at most ``tol`` (relative to their size)
between two radii: the truncation error shrinks at least geometrically in the radius, so the last change
bounds it (an estimate, not a proof: the decay constant is not computed). Only rows in S are read: no O(n)
work or memory in the forward.

The result is differentiable w.r.t. A's values and b: the estimate is the exact solution of the local system,
so its gradient is the local adjoint (one transposed solve with the same factorisation): d x_i / d a_jk = -w_j
z_k and d x_i / d b_j = w_j for j, k in S, with w = A_SS^{-T} e_i; zero outside S. (Autograd allocates the
full-size gradient buffers, O(nnz), in the backward.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import Tensor

from ..operators.sparse import CSRPattern, SparseMatrix


@dataclass
class LocalInfo:
    """How the estimate was made: neighbourhood size and radius, the last change (the error estimate)."""

    size: int
    radius: int
    change: float
    rounds: int
    converged: bool


def _rows(pattern_np, S: np.ndarray):
    """(entry positions, their columns, local row of each entry) of the rows S (sorted)."""
    crow, col = pattern_np
    starts, ends = crow[S], crow[S + 1]
    counts = ends - starts
    total = int(counts.sum())
    offs = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    pos = np.arange(total) + offs
    return pos, col[pos], np.repeat(np.arange(S.size), counts)


def _grow(pattern_np, S: np.ndarray, hops: int) -> np.ndarray:
    frontier = S
    for _ in range(hops):
        _, cols, _ = _rows(pattern_np, frontier)
        new = np.setdiff1d(np.unique(cols), S, assume_unique=True)
        if new.size == 0:
            break
        S = np.union1d(S, new)
        frontier = new
    return S


def _local_system(pattern_np, vals: np.ndarray, S: np.ndarray):
    """(entry positions inside S x S, local rows, local cols, diagonal dominance ratios of rows S)."""
    pos, cols, lrow = _rows(pattern_np, S)
    j = np.searchsorted(S, cols)
    j_ok = np.minimum(j, S.size - 1)
    inside = S[j_ok] == cols
    a = np.abs(vals[pos])
    on_diag = cols == S[lrow]
    diag = np.bincount(lrow[on_diag], weights=a[on_diag], minlength=S.size)
    off = np.bincount(lrow, weights=a, minlength=S.size) - diag
    return pos[inside], lrow[inside], j_ok[inside], off / np.where(diag > 0, diag, np.nan)


def local_solve(A: SparseMatrix, b: Tensor, index, *, weights=None, tol: float = 1e-3,
                max_size: int = 200_000, return_info: bool = False):
    """Estimate x[index] (or ``weights @ x[index]``) of A x = b without touching the rest of A.

    Args:
        A: a :class:`SparseMatrix` (one matrix, CPU), strictly diagonally dominant on the rows it reads
            (checked: a row with sum_{j != i} |a_ij| >= |a_ii| raises ``ValueError`` naming it).
        b: (n,) right-hand side.
        index: an int or a sequence of ints, the requested entries.
        weights: optional, same length as ``index``: return sum_k weights[k] x[index[k]] (c^T x for a sparse
            c).
        tol: relative change of the estimates between two radii at which to stop (the error estimate).
        max_size: neighbourhood size at which to give up (``RuntimeError``: A's inverse does not decay fast
            enough for a local solve; use :func:`solve`).
        return_info: also return a :class:`LocalInfo`.

    Returns:
        The estimates, shape (len(index),) (a scalar for an int index or with ``weights``), differentiable
            w.r.t. ``A``'s values and ``b`` (the gradient is zero outside the neighbourhood);
            ``(estimates, info)`` with ``return_info=True``.

    Raises:
        TypeError: A is not one ``SparseMatrix`` (a batch or a block matrix).
        ValueError: a non-square A, a bad index or weights, or a visited row that is not strictly diagonally
            dominant.
        RuntimeError: the neighbourhood reached ``max_size``.
    """
    if not isinstance(A, SparseMatrix) or A.batch_size is not None or A.blocks is not None:
        raise TypeError("A: local_solve needs one SparseMatrix (not a batch or block matrix)")
    n = A.shape[0]
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"A: a square matrix is needed, got {A.shape}")
    if b.shape != (n,):
        raise ValueError(f"b: shape ({n},) is needed, got {tuple(b.shape)}")
    scalar = isinstance(index, (int, np.integer))
    idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
    if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"index: entries in [0, {n}) are needed, got {index!r}")
    if not tol > 0:
        raise ValueError(f"tol: must be > 0, got {tol}")
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=b.dtype)
        if weights.shape != (idx.size,):
            raise ValueError(f"weights: shape ({idx.size},) is needed, got {tuple(weights.shape)}")
    pattern_np = (A.pattern.crow.numpy(), A.pattern.col.numpy())
    vals = A.values.detach().numpy()
    bn = b.detach().numpy()
    S = np.unique(idx)
    prev, radius, rounds, change = None, 0, 0, math.inf
    while True:
        hops = 1 if radius == 0 else radius  # radius 1, 2, 4, 8, ...
        S = _grow(pattern_np, S, hops)
        radius += hops
        rounds += 1
        pos, lr, lc, ratio = _local_system(pattern_np, vals, S)
        bad = ~(ratio < 1.0)
        if bad.any():
            row = int(S[np.argmax(bad)])
            raise ValueError(f"A: row {row} is not strictly diagonally dominant (sum of |off-diagonal| / "
                             f"|diagonal| = {ratio[np.argmax(bad)]:.3g} >= 1): local_solve needs a decaying "
                             "inverse; use solve()")
        M = sp.csc_matrix((vals[pos], (lr, lc)), shape=(S.size, S.size))
        where = np.searchsorted(S, idx)  # the requested entries' places in the grown S
        z = spla.spsolve(M, bn[S])[where]
        if prev is not None:
            scale = max(float(np.abs(z).max()), 1e-300)
            change = float(np.abs(z - prev).max()) / scale
            if change <= tol:
                break
        prev = z
        if S.size >= min(max_size, n):
            if S.size >= n:  # the whole matrix: exact
                change = 0.0
                break
            raise RuntimeError(f"local_solve: the estimate still moved by {change:.2e} (tol {tol:g}) with "
                               f"{S.size} unknowns (max_size {max_size}); A's inverse decays too slowly here")
    x_S = _differentiable_local(A, b, S, pos, lr, lc)
    out = x_S[torch.from_numpy(where)]
    if weights is not None:
        out = weights @ out
    elif scalar:
        out = out[0]
    info = LocalInfo(int(S.size), radius, change, rounds, True)
    return (out, info) if return_info else out


def _differentiable_local(A: SparseMatrix, b: Tensor, S: np.ndarray, pos, lr, lc) -> Tensor:
    """The local solution A_SS^{-1} b_S through :func:`solve` (direct, implicit backward)."""
    from .solve import solve

    m = S.size
    order = np.lexsort((lc, lr))
    lr, lc, pos = lr[order], lc[order], pos[order]
    crow = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(np.bincount(lr, minlength=m), out=crow[1:])
    sub = SparseMatrix(CSRPattern(torch.from_numpy(crow), torch.from_numpy(lc.astype(np.int64)), (m, m)),
                       A.values.index_select(0, torch.from_numpy(pos)))
    return solve(sub, b.index_select(0, torch.from_numpy(S)), method="direct")
