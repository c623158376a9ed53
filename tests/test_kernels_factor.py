"""Tests of the numba IC(0) / ILU(0) kernels and their batching against independent dense references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.linalg
import scipy.sparse as sp

from learnsolve.linalg.kernels.csr import (
    csr_diag_positions,
    csr_trsv,
    ic0,
    ilu0,
)

from .conftest import poisson2d as _poisson2d
from .conftest import random_spd
from .kernel_refs import csr_parts as _csr_parts
from .kernel_refs import dense_ic0 as _dense_ic0
from .kernel_refs import dense_ilu0 as _dense_ilu0
from .kernel_refs import mask as _mask
from .kernel_refs import random_nonsym as _random_nonsym
from .kernel_refs import run_ic0 as _run_ic0
from .kernel_refs import scatter as _scatter

# ----------------------------------------------------------------------------
# ic0
# ----------------------------------------------------------------------------


def _check_ic0(A, index_dtype=np.int64, rtol=1e-10):
    n = A.shape[0]
    indptr, indices, _, Ld, info = _run_ic0(A, index_dtype)
    mask = _mask(indptr, indices, n)
    Lref, info_ref = _dense_ic0(A.toarray(), mask)
    assert info == info_ref
    if info_ref == -1:
        L = _scatter(indptr, indices, Ld, n)
        scale = np.abs(Lref).max()
        np.testing.assert_allclose(L, Lref, rtol=rtol, atol=rtol * scale)
    return indptr, indices, Ld, info


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_ic0_poisson_vs_dense(index_dtype):
    A = _poisson2d(7)  # n = 49, has fill -> IC(0) is not exact
    indptr, indices, Ld, info = _check_ic0(A, index_dtype)
    assert info == -1
    L = _scatter(indptr, indices, Ld, A.shape[0])
    R = L @ L.T
    mask = _mask(indptr, indices, A.shape[0])
    # IC(0) property: (L L^T) agrees with A on the lower pattern
    np.testing.assert_allclose(R[mask], A.toarray()[mask], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ic0_random_spd_vs_dense(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 81))
    A = random_spd(n, 0.06, rng)
    _, _, _, info = _check_ic0(A)
    assert info == -1


def test_ic0_banded_exact():
    rng = np.random.default_rng(3)
    n = 50
    main = rng.uniform(3.0, 4.0, n)
    off = rng.uniform(-1.0, 1.0, n - 1)
    A = sp.diags([off, main, off], [-1, 0, 1]).tocsr()
    indptr, indices, _, Ld, info = _run_ic0(A)
    assert info == -1
    L = _scatter(indptr, indices, Ld, n)
    np.testing.assert_allclose(L @ L.T, A.toarray(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(L, np.linalg.cholesky(A.toarray()), rtol=0, atol=1e-12)


def test_ic0_float32():
    A = _poisson2d(6)
    Lw = sp.tril(A).tocsr()
    indptr, indices, data = _csr_parts(Lw, np.int32)
    L64, i64 = ic0(indptr, indices, data[None])
    L32, i32 = ic0(indptr, indices, data[None].astype(np.float32))
    assert L32.dtype == np.float32 and i32[0] == -1 and i64[0] == -1
    np.testing.assert_allclose(L32[0], L64[0], rtol=1e-5, atol=1e-6)


def test_ic0_breakdown_reported():
    # diag(1, -1)
    _, _, _, _, info = _run_ic0(sp.diags([1.0, -1.0]).tocsr())
    assert info == 1
    # symmetric, positive diagonal, negative second pivot 1 - 4 = -3
    A = sp.csr_matrix(np.array([[1.0, 2, 0], [2, 1, 0], [0, 0, 1]]))
    _, _, _, _, info = _run_ic0(A)
    assert info == 1
    _check_ic0(A)  # reference agrees
    # zero pivot counts as breakdown
    A = sp.csr_matrix(np.array([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))
    assert _run_ic0(A)[4] == 1
    # missing diagonal in row 2
    M = np.array([[4.0, 1, 0], [1, 4, 1], [0, 1, 0]])
    assert _run_ic0(sp.csr_matrix(M))[4] == 2
    # batch: only the indefinite member fails
    A = _poisson2d(4)
    Lw = sp.tril(A).tocsr()
    indptr, indices, data = _csr_parts(Lw)
    data3 = np.stack([data, data.copy(), data])
    pos = csr_diag_positions(indptr, indices)
    data3[1, pos[5]] = -1.0
    _, info3 = ic0(indptr, indices, data3)
    np.testing.assert_array_equal(info3, [-1, 5, -1])


def test_ic0_ignores_upper_entries():
    A = _poisson2d(5)
    indptr, indices, _, Ld, info = _run_ic0(A)
    ip_f, ix_f, d_f = _csr_parts(A)
    Lf, info_f = ic0(ip_f, ix_f, d_f[None])
    assert info == -1 and info_f[0] == -1
    Lfull = _scatter(ip_f, ix_f, Lf[0], A.shape[0])
    np.testing.assert_array_equal(Lfull, _scatter(indptr, indices, Ld, A.shape[0]))


def _bcsstk03_path():
    candidates = [
        Path("/work/shared/benchmarks/matrices/bcsstk03.mtx"),
        Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "matrices" / "bcsstk03.mtx",
    ]
    for c in candidates:
        if c.exists():
            return c
    return None


def test_ic0_bcsstk03():
    path = _bcsstk03_path()
    if path is None:
        pytest.skip("bcsstk03.mtx not available")
    A = sp.csr_matrix(scipy.io.mmread(str(path)))
    assert A.shape == (112, 112)
    np.testing.assert_allclose((A - A.T).toarray(), 0.0)
    n = A.shape[0]
    # plain IC(0) breaks down on bcsstk03 (first non-positive pivot at row 24);
    # with a diagonal shift A + alpha diag(A), alpha >= 0.1, it succeeds.
    for alpha in (0.0, 0.01, 0.2):
        As = (A + alpha * sp.diags(A.diagonal())).tocsr()
        indptr, indices, _, Ld, info = _run_ic0(As)
        mask = _mask(indptr, indices, n)
        Lref, info_ref = _dense_ic0(As.toarray(), mask)
        assert info == info_ref
        if info_ref == -1:
            L = _scatter(indptr, indices, Ld, n)
            # entries span many orders of magnitude: compare row-scaled
            scale = np.abs(Lref).max(axis=1, keepdims=True)
            np.testing.assert_allclose(L / scale, Lref / scale, rtol=0, atol=1e-9)
    assert info == -1  # the largest shift must succeed


# ----------------------------------------------------------------------------
# ilu0
# ----------------------------------------------------------------------------


def _run_ilu0(A, index_dtype=np.int64):
    indptr, indices, data = _csr_parts(A, index_dtype)
    LU, info = ilu0(indptr, indices, data[None])
    return indptr, indices, data, LU[0], int(info[0])


def _split_lu(indptr, indices, LUd, n):
    M = _scatter(indptr, indices, LUd, n)
    return np.tril(M, -1) + np.eye(n), np.triu(M)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("seed", range(4))
def test_ilu0_random_vs_dense(index_dtype, seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(30, 81))
    A = _random_nonsym(n, 0.07, rng, dominance=0.6)
    indptr, indices, _, LUd, info = _run_ilu0(A, index_dtype)
    mask = _mask(indptr, indices, n)
    Wref, info_ref = _dense_ilu0(A.toarray(), mask)
    assert info == info_ref == -1
    W = _scatter(indptr, indices, LUd, n)
    np.testing.assert_allclose(W, Wref, rtol=1e-10, atol=1e-12 * np.abs(Wref).max())
    # defining ILU(0) property: (L U)[pattern] == A[pattern]
    L, U = _split_lu(indptr, indices, LUd, n)
    np.testing.assert_allclose((L @ U)[mask], A.toarray()[mask], rtol=1e-10, atol=1e-12)


def test_ilu0_tridiagonal_exact():
    rng = np.random.default_rng(11)
    n = 40
    A = sp.diags(
        [rng.uniform(-1, 1, n - 1), rng.uniform(2.5, 3.5, n), rng.uniform(-1, 1, n - 1)], [-1, 0, 1]
    ).tocsr()
    indptr, indices, _, LUd, info = _run_ilu0(A)
    assert info == -1
    L, U = _split_lu(indptr, indices, LUd, n)
    np.testing.assert_allclose(L @ U, A.toarray(), rtol=0, atol=1e-12)


def test_ilu0_float32():
    rng = np.random.default_rng(5)
    A = _random_nonsym(50, 0.08, rng)
    indptr, indices, data = _csr_parts(A, np.int32)
    LU64, i64 = ilu0(indptr, indices, data[None])
    LU32, i32 = ilu0(indptr, indices, data[None].astype(np.float32))
    assert LU32.dtype == np.float32 and i32[0] == -1 and i64[0] == -1
    np.testing.assert_allclose(LU32[0], LU64[0], rtol=1e-4, atol=1e-5)


def test_ilu0_zero_pivot_reported():
    # second pivot becomes 1 - 1*1 = 0
    A = sp.csr_matrix(np.array([[1.0, 1, 0], [1, 1, 1], [0, 1, 2]]))
    indptr, indices, data, _, info = _run_ilu0(A)
    assert info == 1
    assert _dense_ilu0(A.toarray(), _mask(indptr, indices, 3))[1] == 1
    # stored zero diagonal at row 0
    indptr, indices, data = _csr_parts(np.array([[1.0, 1], [1, 1]]))
    data[0] = 0.0
    assert int(ilu0(indptr, indices, data[None])[1][0]) == 0
    # missing diagonal at row 2
    M = np.array([[2.0, 1, 0], [0, 2, 1], [1, 1, 0]])
    assert _run_ilu0(sp.csr_matrix(M))[4] == 2
    # non-finite pivot
    indptr, indices, data = _csr_parts(np.array([[1.0, 0], [1, np.inf]]))
    assert int(ilu0(indptr, indices, data[None])[1][0]) == 1


# ----------------------------------------------------------------------------
# batching: B=3 equals three B=1 calls
# ----------------------------------------------------------------------------


def test_batched_equals_loop():
    rng = np.random.default_rng(42)
    n, nb = 64, 3
    A = _random_nonsym(n, 0.08, rng)
    indptr, indices, base = _csr_parts(A)
    data = np.stack([base * rng.uniform(0.5, 1.5, base.size) for _ in range(nb)])
    b = rng.standard_normal((nb, n, 3))

    LU, info = ilu0(indptr, indices, data)
    assert (info == -1).all()
    for bi in range(nb):
        LU1, info1 = ilu0(indptr, indices, data[bi : bi + 1])
        assert info1[0] == -1
        np.testing.assert_array_equal(LU[bi], LU1[0])

    for lower, unit in ((True, True), (False, False)):
        out = np.empty_like(b)
        assert csr_trsv(indptr, indices, LU, b, lower, unit, out) == -1
        for bi in range(nb):
            out1 = np.empty((1, n, 3))
            assert csr_trsv(indptr, indices, LU[bi : bi + 1], b[bi : bi + 1], lower, unit, out1) == -1
            np.testing.assert_array_equal(out[bi], out1[0])

    S = random_spd(n, 0.08, rng)
    Lw = sp.tril(S).tocsr()
    ip, ix, d0 = _csr_parts(Lw)
    pos = csr_diag_positions(ip, ix)
    dS = np.stack([d0.copy() for _ in range(nb)])
    for bi in range(nb):
        dS[bi, pos] *= 1.0 + 0.5 * bi  # stays SPD, different values
    Lb, infob = ic0(ip, ix, dS)
    assert (infob == -1).all()
    for bi in range(nb):
        L1, i1 = ic0(ip, ix, dS[bi : bi + 1])
        assert i1[0] == -1
        np.testing.assert_array_equal(Lb[bi], L1[0])
