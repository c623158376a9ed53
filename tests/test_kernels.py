"""Tests of the numba CSR kernels against independent dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import scipy.linalg
import scipy.sparse as sp

from learnsolve.linalg.kernels.csr import (
    csr_diag_positions,
    csr_trsv,
    csr_trsv_unit,
    ldlt_factor,
    trsv_unit_lower,
    trsv_unit_upper,
)

from .conftest import random_spd
from .kernel_refs import csr_parts as _csr_parts
from .kernel_refs import random_nonsym as _random_nonsym
from .kernel_refs import scatter as _scatter

# ----------------------------------------------------------------------------
# csr_diag_positions
# ----------------------------------------------------------------------------


def test_diag_positions():
    A = sp.csr_matrix(np.array([[1.0, 2, 0], [3, 0, 4], [0, 5, 6]]))
    A.eliminate_zeros()
    A.sort_indices()
    pos = csr_diag_positions(A.indptr, A.indices)
    assert pos.dtype == np.int64
    np.testing.assert_array_equal(pos, [0, -1, 5])


# ----------------------------------------------------------------------------
# csr_trsv
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("unit", [False, True])
def test_trsv_vs_scipy(index_dtype, dtype, k, lower, unit):
    rng = np.random.default_rng(1234 + k + 2 * lower + 4 * unit)
    n, nb = 60, 3
    A = _random_nonsym(n, 0.08, rng)
    indptr, indices, _ = _csr_parts(A, index_dtype)
    # three different value sets on the same pattern (full matrix: wrong-side
    # entries are present and must be ignored)
    data = np.stack([_csr_parts(A)[2] * rng.uniform(0.5, 1.5, A.nnz) for _ in range(nb)])
    b = rng.standard_normal((nb, n, k))
    data_t = data.astype(dtype)
    b_t = np.ascontiguousarray(b.astype(dtype))
    out = np.zeros_like(b_t)
    ret = csr_trsv(indptr, indices, data_t, b_t, lower, unit, out)
    assert ret == -1
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-4, "atol": 2e-5}
    for bi in range(nb):
        M = _scatter(indptr, indices, data_t[bi].astype(np.float64), n)
        T = np.tril(M) if lower else np.triu(M)
        ref = scipy.linalg.solve_triangular(T, b_t[bi].astype(np.float64), lower=lower, unit_diagonal=unit)
        assert out.dtype == dtype
        np.testing.assert_allclose(out[bi], ref, **tol)


def test_trsv_ignores_wrong_side_and_inplace():
    rng = np.random.default_rng(7)
    n = 40
    A = _random_nonsym(n, 0.1, rng)
    indptr, indices, data = _csr_parts(A)
    b = rng.standard_normal((1, n, 2))
    for lower in (True, False):
        T = sp.tril(A) if lower else sp.triu(A)
        ip_t, ix_t, d_t = _csr_parts(T)
        out_full = np.empty_like(b)
        out_tri = np.empty_like(b)
        assert csr_trsv(indptr, indices, data[None], b, lower, False, out_full) == -1
        assert csr_trsv(ip_t, ix_t, d_t[None], b, lower, False, out_tri) == -1
        np.testing.assert_array_equal(out_full, out_tri)
        # aliasing out with b is allowed
        bb = b.copy()
        assert csr_trsv(indptr, indices, data[None], bb, lower, False, bb) == -1
        np.testing.assert_array_equal(bb, out_full)
    # unit diagonal: the stored diagonal is ignored, even when zero / missing
    Z = A.tolil()
    Z.setdiag(0.0)
    Z = Z.tocsr()
    Z.eliminate_zeros()
    ip_z, ix_z, d_z = _csr_parts(Z)
    out_a = np.empty_like(b)
    out_z = np.empty_like(b)
    assert csr_trsv(indptr, indices, data[None], b, True, True, out_a) == -1
    assert csr_trsv(ip_z, ix_z, d_z[None], b, True, True, out_z) == -1
    np.testing.assert_allclose(out_a, out_z, rtol=1e-13, atol=1e-13)


def test_trsv_zero_or_missing_diagonal_reported():
    Mf = np.array([[2.0, 0, 0, 0], [1, 3, 0, 0], [0, 1, 1, 0], [1, 0, 1, 4]])
    indptr, indices, data = _csr_parts(Mf)
    # make row 2's diagonal a stored zero
    pos = csr_diag_positions(indptr, indices)
    data[pos[2]] = 0.0
    b = np.ones((1, 4, 1))
    out = np.empty_like(b)
    assert csr_trsv(indptr, indices, data[None], b, True, False, out) == 2
    assert csr_trsv(indptr, indices, data[None], b, True, True, out) == -1
    # missing diagonal (not stored at all), upper solve
    U = np.triu(Mf.T)
    U[1, 1] = 0.0
    ip, ix, dd = _csr_parts(U)
    assert csr_diag_positions(ip, ix)[1] == -1
    assert csr_trsv(ip, ix, dd[None], b, False, False, out) == 1
    # batched: smallest failing row among members is reported
    data3 = np.stack([_csr_parts(Mf)[2]] * 3)
    data3[1, pos[3]] = 0.0
    data3[2, pos[2]] = 0.0
    b3 = np.ones((3, 4, 2))
    out3 = np.empty_like(b3)
    assert csr_trsv(indptr, indices, data3, b3, True, False, out3) == 2


def _mixed_adjacent(n, rng):
    """Full nonsymmetric matrix with a nonzero diagonal where some rows have the entries in columns
    i-1 and i+1 (the register fast path) and others lack them, plus entries farther away."""
    D = np.diag(rng.choice([-1.0, 1.0], n) * rng.uniform(1.0, 2.0, n))
    for i in range(n):
        if i > 0 and i % 3 != 1:
            D[i, i - 1] = rng.uniform(-0.5, 0.5)
        if i < n - 1 and i % 4 != 2:
            D[i, i + 1] = rng.uniform(-0.5, 0.5)
        for j in rng.choice(n, 3, replace=False):
            if abs(j - i) > 1:
                D[i, j] = rng.uniform(-0.3, 0.3)
    A = sp.csr_matrix(D)
    A.sort_indices()
    # rows with and without each adjacent entry, and rows with only the adjacent entry
    assert any(D[i, i - 1] == 0 for i in range(1, n)) and any(D[i, i - 1] != 0 for i in range(1, n))
    return A


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("unit", [False, True])
def test_trsv_adjacent_fast_path_vs_scipy(index_dtype, dtype, k, lower, unit):
    rng = np.random.default_rng(50 + k + 2 * lower + 4 * unit)
    n, nb = 37, 2
    A = _mixed_adjacent(n, rng)
    indptr, indices, base = _csr_parts(A, index_dtype)
    data = np.stack([base * rng.uniform(0.5, 1.5, base.size) for _ in range(nb)]).astype(dtype)
    b = np.ascontiguousarray(rng.standard_normal((nb, n, k)).astype(dtype))
    tol = {"rtol": 1e-11, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-4, "atol": 2e-5}
    for nbi in (1, nb):  # B = 1 (single right-hand side when k = 1: the sequential branch) and B = 2
        out = np.empty_like(b[:nbi])
        assert csr_trsv(indptr, indices, data[:nbi], b[:nbi], lower, unit, out) == -1
        for bi in range(nbi):
            M = _scatter(indptr, indices, data[bi].astype(np.float64), n)
            T = np.tril(M) if lower else np.triu(M)
            ref = scipy.linalg.solve_triangular(T, b[bi].astype(np.float64), lower=lower, unit_diagonal=unit)
            assert out.dtype == dtype
            np.testing.assert_allclose(out[bi], ref, **tol)


def test_trsv_nonfinite_neighbour_does_not_leak():
    # y_1 = inf; row 2 has no entry in column 1, so y_2 must stay finite (the register value is not used)
    Mf = np.array([[1.0, 0, 0, 0], [0, 1e-320, 0, 0], [3.0, 0, 2.0, 0], [0, 0, 1.0, 1.0]])
    indptr, indices, data = _csr_parts(Mf)
    b = np.array([[[1.0], [1.0], [4.0], [1.0]]])
    out = np.empty_like(b)
    with np.errstate(all="ignore"):
        assert csr_trsv(indptr, indices, data[None], b, True, False, out) == -1
    assert np.isinf(out[0, 1, 0]) and out[0, 2, 0] == 0.5 and out[0, 3, 0] == 0.5


def _unit_ref(indptr, indices, data, n, lower, scale, b):
    M = _scatter(indptr, indices, data.astype(np.float64), n)
    T = np.tril(M, -1) if lower else np.triu(M, 1)
    rhs = b.astype(np.float64) * (scale.astype(np.float64)[:, None] if scale.size else 1.0)
    return scipy.linalg.solve_triangular(T + np.eye(n), rhs, lower=lower, unit_diagonal=True)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("scaled", [False, True])
def test_trsv_unit_vs_scipy(index_dtype, dtype, k, lower, scaled):
    rng = np.random.default_rng(70 + k + 2 * lower + 4 * scaled)
    n, nb = 41, 3
    A = _mixed_adjacent(n, rng)  # full matrix with a stored diagonal: both must be ignored
    indptr, indices, base = _csr_parts(A, index_dtype)
    data = np.stack([base * rng.uniform(0.5, 1.5, base.size) for _ in range(nb)]).astype(dtype)
    scale = rng.uniform(0.5, 2.0, (nb, n if scaled else 0)).astype(dtype)
    b = np.ascontiguousarray(rng.standard_normal((nb, n, k)).astype(dtype))
    tol = {"rtol": 1e-11, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-4, "atol": 2e-5}
    out = np.empty_like(b)
    csr_trsv_unit(indptr, indices, data, scale, b, lower, out)
    for bi in range(nb):
        ref = _unit_ref(indptr, indices, data[bi], n, lower, scale[bi], b[bi])
        assert out.dtype == dtype
        np.testing.assert_allclose(out[bi], ref, **tol)
        # the single right-hand-side loops on 1-D arrays, in place (out aliasing b)
        for c in range(k):
            col = b[bi, :, c].copy()
            (trsv_unit_lower if lower else trsv_unit_upper)(indptr, indices, data[bi], scale[bi], col, col)
            np.testing.assert_allclose(col, ref[:, c], **tol)
    # aliasing in the batched kernel
    bb = b.copy()
    csr_trsv_unit(indptr, indices, data, scale, bb, lower, bb)
    np.testing.assert_array_equal(bb, out)
    # the strict triangle alone gives the same result (diagonal and other side are not read)
    T = sp.tril(A, -1) if lower else sp.triu(A, 1)
    ip_t, ix_t, _ = _csr_parts(T, index_dtype)
    keep = np.array([(j < i) if lower else (j > i) for i in range(n)
                     for j in indices[indptr[i]:indptr[i + 1]]])
    out_t = np.empty_like(b)
    csr_trsv_unit(ip_t, ix_t, np.ascontiguousarray(data[:, keep]), scale, b, lower, out_t)
    np.testing.assert_array_equal(out_t, out)


def test_trsv_unit_shape_errors():
    indptr, indices, data = _csr_parts(np.eye(3))
    b = np.ones((1, 3, 1))
    with pytest.raises(ValueError, match="scale"):
        csr_trsv_unit(indptr, indices, data[None], np.ones((1, 2)), b, True, np.empty_like(b))
    with pytest.raises(ValueError, match="data"):
        csr_trsv_unit(indptr, indices, np.ones((2, 3)), np.ones((2, 0)), b, True, np.empty_like(b))


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ldlt_factor_vs_dense(index_dtype, dtype):
    rng = np.random.default_rng(90)
    n, nb = 30, 2
    S = random_spd(n, 0.15, rng)
    # a lower factor with extra entries right of the diagonal (they must be ignored)
    F = (sp.tril(S) + sp.triu(sp.random(n, n, 0.1, random_state=rng, format="csr"), 1)).tocsr()
    indptr, indices, base = _csr_parts(F, index_dtype)
    data = np.stack([base * rng.uniform(0.5, 1.5, base.size) for _ in range(nb)]).astype(dtype)
    lip, lix, lval, uip, uix, uval, dinv2, bad = ldlt_factor(indptr, indices, data)
    assert bad == -1
    assert lix.dtype == indices.dtype and uix.dtype == indices.dtype and lval.dtype == dtype
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for bi in range(nb):
        L = np.tril(_scatter(indptr, indices, data[bi].astype(np.float64), n))
        d = np.diag(L)
        Ut = _scatter(lip, lix, lval[bi].astype(np.float64), n)  # strictly lower L D^{-1}
        U = _scatter(uip, uix, uval[bi].astype(np.float64), n)  # its transpose (strictly upper)
        np.testing.assert_allclose(Ut, np.tril(L / d[None, :], -1), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(U, Ut.T, rtol=0, atol=0)
        np.testing.assert_allclose(dinv2[bi], 1.0 / d**2, rtol=rtol)
        # (L L^T)^{-1} r = U^{-1} (dinv2 * U^{-T} r)
        r = rng.standard_normal(n).astype(dtype)
        v = np.empty_like(r)
        trsv_unit_lower(lip, lix, lval[bi], dinv2[bi, :0], r, v)
        trsv_unit_upper(uip, uix, uval[bi], dinv2[bi], v, v)
        ref = np.linalg.solve(L @ L.T, r.astype(np.float64))
        np.testing.assert_allclose(v, ref, rtol=100 * rtol, atol=100 * rtol * np.abs(ref).max())


def test_ldlt_factor_bad_diagonal():
    Mf = np.array([[2.0, 0, 0, 0], [1, 3, 0, 0], [0, 1, 1, 0], [1, 0, 1, 4]])
    indptr, indices, data = _csr_parts(Mf)
    pos = csr_diag_positions(indptr, indices)
    d2 = np.stack([data, data])
    d2[1, pos[2]] = 0.0  # zero pivot in one member
    assert ldlt_factor(indptr, indices, d2)[-1] == 2
    d2[0, pos[1]] = 0.0
    assert ldlt_factor(indptr, indices, d2)[-1] == 1
    Z = Mf.copy()
    Z[3, 3] = 0.0  # missing
    ip, ix, dd = _csr_parts(Z)
    assert ldlt_factor(ip, ix, dd[None])[-1] == 3
