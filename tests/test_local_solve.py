"""local_solve: entries of x for diagonally dominant A from a neighbourhood only (against full solves)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import SparseMatrix, local_solve, solve


def _lap(m, shift=2.0, seed=None):
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    A = (sp.kron(sp.eye(m), T) + sp.kron(T, sp.eye(m)) + shift * sp.eye(m * m)).tocsr()
    if seed is not None:  # nonsymmetric, still strictly dominant: scale the off-diagonals row by row
        rng = np.random.default_rng(seed)
        A = (sp.diags(0.5 + 0.5 * rng.random(m * m)) @ (A - sp.diags(A.diagonal())) + sp.diags(A.diagonal())).tocsr()
    return A


@pytest.mark.parametrize("seed", [None, 1])
def test_entries_match_a_direct_solve(seed):
    A = _lap(100, seed=seed)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    x = spla.spsolve(A.tocsc(), b)
    idx = [5050, 17 * 100 + 5, 9997]
    est, info = local_solve(SparseMatrix.from_scipy(A), torch.from_numpy(b), idx, tol=1e-4, return_info=True)
    assert np.max(np.abs(est.numpy() - x[idx]) / np.abs(x[idx])) < 1e-4
    assert info.size < A.shape[0] / 2 and info.change <= 1e-4
    c = local_solve(SparseMatrix.from_scipy(A), torch.from_numpy(b), idx, weights=[1.0, -2.0, 0.5], tol=1e-6)
    assert abs(float(c) - (x[idx[0]] - 2 * x[idx[1]] + 0.5 * x[idx[2]])) < 1e-5 * np.abs(x[idx]).max()


def test_local_adjoint_matches_the_full_implicit_gradient():
    A = SparseMatrix.from_scipy(_lap(40, seed=2))
    b = torch.from_numpy(np.random.default_rng(1).standard_normal(A.shape[0]))
    i = 820

    def grads(f):
        v = A.values.clone().requires_grad_()
        bb = b.clone().requires_grad_()
        f(A.with_values(v), bb).backward()
        return v.grad, bb.grad

    rv, rb = grads(lambda M, bb: solve(M, bb, method="direct")[i])
    gv, gb = grads(lambda M, bb: local_solve(M, bb, i, tol=1e-10))  # grows to the whole 40 x 40 grid: exact
    assert float((gv - rv).norm() / rv.norm()) < 1e-10 and float((gb - rb).norm() / rb.norm()) < 1e-10
    gv, gb = grads(lambda M, bb: local_solve(M, bb, i, tol=1e-3))  # a neighbourhood: local, close
    assert float((gv - rv).norm() / rv.norm()) < 1e-3 and float((gb - rb).norm() / rb.norm()) < 1e-3
    assert 0 < int((gb != 0).sum()) < A.shape[0] / 2  # the local adjoint lives on the neighbourhood only


def test_matrices_without_decay_get_clear_errors():
    b = torch.ones(400, dtype=torch.float64)
    with pytest.raises(ValueError, match="row .* is not strictly diagonally dominant"):
        local_solve(SparseMatrix.from_scipy(_lap(20, shift=0.0)), b, 210)
    with pytest.raises(RuntimeError, match="decays too slowly"):
        local_solve(SparseMatrix.from_scipy(_lap(20, shift=1e-6)), b, 210, tol=1e-12, max_size=100)
    S = SparseMatrix.from_scipy(_lap(20))
    for bad, exc, msg in ((400, ValueError, "index"), (-1, ValueError, "index")):
        with pytest.raises(exc, match=msg):
            local_solve(S, b, bad)
    with pytest.raises(ValueError, match="b: shape"):
        local_solve(S, b[:5], 3)
    with pytest.raises(ValueError, match="weights"):
        local_solve(S, b, [1, 2], weights=[1.0])
