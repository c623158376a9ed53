"""SparseMatrix: constructors, structure operations and SpMV with O(nnz) gradients.

References are independent: scipy.sparse (COO/CSR assembly, transposes, triangles, products),
dense numpy/torch matrices, and torch.autograd.gradcheck / gradgradcheck (finite differences) in
float64.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.autograd import gradcheck, gradgradcheck

from learnsolve.linalg import SparseMatrix

from .conftest import poisson2d as _poisson2d

F64 = torch.float64


# one torch thread for these tiny problems: see conftest._single_thread


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _rand_csr(n, m, density, rng, *, diag=False):
    A = sp.random(n, m, density=density, random_state=rng, format="csr")
    A.data = rng.uniform(-1.0, 1.0, A.nnz) + np.sign(rng.uniform(-1, 1, A.nnz)) * 0.5
    if diag:
        A = (A + sp.diags(rng.uniform(1.0, 2.0, min(n, m)), shape=(n, m))).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def _dense(S: SparseMatrix) -> np.ndarray:
    return S.to_dense().detach().numpy()


def _batched_from_scipy(mats):
    """SparseMatrix with values (B, nnz) on the union pattern of scipy matrices (a shared pattern)."""
    union = sum(abs(M) for M in mats).tocsr()
    union.sort_indices()
    r, c = union.nonzero()
    vals = np.stack([np.asarray(M[r, c]).ravel() for M in mats])
    return SparseMatrix.from_coo(torch.from_numpy(r), torch.from_numpy(c), torch.from_numpy(vals), union.shape)


# ------------------------------------------------------------------------------------------------
# constructors
# ------------------------------------------------------------------------------------------------

def test_from_coo_sums_duplicates_and_sorts_unsorted_input():
    rng = np.random.default_rng(0)
    n, m, nnz = 9, 7, 60  # 60 entries on 63 positions: many duplicates, random order
    row = rng.integers(0, n, nnz)
    col = rng.integers(0, m, nnz)
    val = rng.standard_normal(nnz)
    S = SparseMatrix.from_coo(torch.from_numpy(row), torch.from_numpy(col), torch.from_numpy(val), (n, m))
    ref = sp.coo_matrix((val, (row, col)), shape=(n, m))  # scipy sums duplicates on conversion
    np.testing.assert_allclose(_dense(S), ref.toarray(), rtol=0, atol=1e-14)
    refc = ref.tocsr()
    refc.sum_duplicates()
    refc.sort_indices()
    assert S.nnz == refc.nnz
    np.testing.assert_array_equal(S.pattern.crow.numpy(), refc.indptr)
    np.testing.assert_array_equal(S.pattern.col.numpy(), refc.indices)
    np.testing.assert_allclose(S.values.numpy(), refc.data, rtol=0, atol=1e-14)
    # the stored row index of every entry is consistent with crow
    np.testing.assert_array_equal(S.pattern.row.numpy(), np.repeat(np.arange(n), np.diff(refc.indptr)))


def test_from_coo_unsorted_unique_permutes_values():
    rng = np.random.default_rng(1)
    A = _rand_csr(8, 8, 0.4, rng)
    r, c = A.nonzero()
    v = np.asarray(A[r, c]).ravel()
    perm = rng.permutation(len(r))
    S = SparseMatrix.from_coo(torch.from_numpy(r[perm]), torch.from_numpy(c[perm]), torch.from_numpy(v[perm]), 8)
    np.testing.assert_array_equal(_dense(S), A.toarray())
    np.testing.assert_array_equal(S.values.numpy(), A.data)


def test_from_coo_batched_values_with_duplicates():
    rng = np.random.default_rng(2)
    n, nnz, B = 6, 30, 4
    row, col = rng.integers(0, n, nnz), rng.integers(0, n, nnz)
    vals = rng.standard_normal((B, nnz))
    S = SparseMatrix.from_coo(torch.from_numpy(row), torch.from_numpy(col), torch.from_numpy(vals), (n, n))
    assert S.batch_size == B and S.values.shape == (B, S.nnz)
    D = S.to_dense().numpy()
    for b in range(B):
        np.testing.assert_allclose(D[b], sp.coo_matrix((vals[b], (row, col)), shape=(n, n)).toarray(),
                                   rtol=0, atol=1e-14)


def test_from_coo_duplicate_summation_is_differentiable():
    row = torch.tensor([2, 0, 2, 1, 0, 2])
    col = torch.tensor([1, 0, 1, 1, 0, 2])
    v = torch.randn(6, dtype=F64, requires_grad=True)
    assert gradcheck(lambda v: SparseMatrix.from_coo(row, col, v, 3).to_dense(), (v,))
    # d A[2,1] / d v = 1 for both duplicates (entries 0 and 2)
    A = SparseMatrix.from_coo(row, col, v, 3).to_dense()
    (g,) = torch.autograd.grad(A[2, 1], v)
    np.testing.assert_array_equal(g.numpy(), [1, 0, 1, 0, 0, 0])


def test_from_coo_errors():
    r = torch.tensor([0, 1, 1])
    c = torch.tensor([0, 1, 1])
    v = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="duplicate"):
        SparseMatrix.from_coo(r, c, v, 2, sum_duplicates=False)
    with pytest.raises(ValueError, match="out of range"):
        SparseMatrix.from_coo(torch.tensor([0, 2]), torch.tensor([0, 0]), torch.ones(2, dtype=F64), 2)
    with pytest.raises(ValueError, match="values must have shape"):
        SparseMatrix.from_coo(r, c, torch.ones(4, dtype=F64), 2)
    with pytest.raises(ValueError, match="equal length"):
        SparseMatrix.from_coo(r, c[:2], v, 2)


def test_from_scipy_roundtrip_int32_and_unsorted_duplicates():
    rng = np.random.default_rng(3)
    A = _rand_csr(30, 20, 0.2, rng)
    S = SparseMatrix.from_scipy(A)
    assert S.shape == (30, 20) and S.dtype == F64
    assert S.pattern.crow.dtype == torch.int32 and S.pattern.col.dtype == torch.int32
    assert S.pattern.row.dtype == torch.int32
    np.testing.assert_array_equal(_dense(S), A.toarray())
    back = S.to_scipy()
    assert (back != A).nnz == 0
    # CSR with duplicate and unsorted column indices inside rows
    indptr = np.array([0, 3, 5])
    indices = np.array([2, 0, 2, 1, 0])
    data = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    M = sp.csr_matrix((data, indices, indptr), shape=(2, 3))
    S2 = SparseMatrix.from_scipy(M)
    np.testing.assert_array_equal(_dense(S2), [[2.0, 0.0, 4.0], [5.0, 4.0, 0.0]])
    assert S2.nnz == 4
    # integer matrices are converted to float64, dtype= casts
    S3 = SparseMatrix.from_scipy(sp.csr_matrix(np.array([[1, 0], [2, 3]])), dtype=torch.float32)
    assert S3.dtype == torch.float32
    np.testing.assert_array_equal(_dense(S3), [[1, 0], [2, 3]])
    with pytest.raises(TypeError, match="scipy.sparse"):
        SparseMatrix.from_scipy(np.eye(2))


def test_from_dense_single_and_batched_union_pattern():
    rng = np.random.default_rng(4)
    D = torch.from_numpy(_rand_csr(7, 5, 0.3, rng).toarray())
    S = SparseMatrix.from_dense(D)
    assert S.nnz == int((D != 0).sum())
    assert torch.equal(S.to_dense(), D)
    Db = torch.from_numpy(np.stack([_rand_csr(6, 6, 0.3, rng).toarray() for _ in range(3)]))
    Sb = SparseMatrix.from_dense(Db)
    assert Sb.batch_size == 3
    assert Sb.nnz == int((Db != 0).any(0).sum())  # union of the three patterns
    assert torch.equal(Sb.to_dense(), Db)
    # gathering is differentiable: d sum(W * to_dense(from_dense(D))) / dD = W on the pattern
    Dg = D.clone().requires_grad_(True)
    W = torch.randn_like(D)
    (g,) = torch.autograd.grad((SparseMatrix.from_dense(Dg).to_dense() * W).sum(), Dg)
    assert torch.equal(g, torch.where(D != 0, W, torch.zeros_like(W)))


def test_from_torch_coo_and_csr():
    rng = np.random.default_rng(5)
    A = _rand_csr(10, 8, 0.3, rng)
    r, c = A.nonzero()
    v = np.asarray(A[r, c]).ravel()
    # uncoalesced COO with a duplicate: (r0, c0) twice
    idx = torch.from_numpy(np.stack([np.r_[r, r[0]], np.r_[c, c[0]]]))
    coo = torch.sparse_coo_tensor(idx, torch.from_numpy(np.r_[v, 2.5]), (10, 8), check_invariants=True)
    S = SparseMatrix.from_torch(coo)
    ref = A.toarray()
    ref[r[0], c[0]] += 2.5
    np.testing.assert_allclose(_dense(S), ref, rtol=0, atol=1e-15)
    csr = torch.from_numpy(A.toarray()).to_sparse_csr()
    S2 = SparseMatrix.from_torch(csr)
    np.testing.assert_array_equal(_dense(S2), A.toarray())
    assert S2.pattern.col.dtype == torch.int32
    with pytest.raises(TypeError, match="layout"):
        SparseMatrix.from_torch(torch.from_numpy(A.toarray()).to_sparse_csc())


def test_block_diag_vs_scipy():
    rng = np.random.default_rng(6)
    mats = [_rand_csr(k, k, 0.4, rng, diag=True) for k in (3, 5, 4)]
    S = SparseMatrix.block_diag([SparseMatrix.from_scipy(M) for M in mats])
    np.testing.assert_array_equal(_dense(S), sp.block_diag(mats).toarray())
    np.testing.assert_array_equal(S.blocks.numpy(), [0, 3, 8, 12])
    x = torch.from_numpy(rng.standard_normal(12))
    np.testing.assert_allclose((S @ x).numpy(), sp.block_diag(mats) @ x.numpy(), rtol=1e-14, atol=1e-14)
    # nested: block_diag of a block-diagonal matrix keeps the finer blocks
    S2 = SparseMatrix.block_diag([S, SparseMatrix.from_scipy(mats[0])])
    np.testing.assert_array_equal(S2.blocks.numpy(), [0, 3, 8, 12, 15])
    # batched blocks (same batch size) concatenate their value batches
    Sb = SparseMatrix.block_diag([_batched_from_scipy([M, 2 * M]) for M in mats])
    assert Sb.batch_size == 2
    np.testing.assert_allclose(Sb.to_dense()[1].numpy(), 2 * sp.block_diag(mats).toarray(), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="batch size"):
        SparseMatrix.block_diag([SparseMatrix.from_scipy(mats[0]), _batched_from_scipy([mats[1], mats[1]])])
    with pytest.raises(ValueError, match="square"):
        SparseMatrix.block_diag([SparseMatrix.from_scipy(_rand_csr(3, 4, 0.5, rng))])
    with pytest.raises(ValueError, match="at least one"):
        SparseMatrix.block_diag([])


def test_from_edge_index_without_and_with_batch():
    rng = np.random.default_rng(7)
    mats = [_rand_csr(k, k, 0.5, rng, diag=True) for k in (4, 3, 5)]
    big = sp.block_diag(mats).tocoo()
    perm = rng.permutation(big.nnz)  # PyG does not promise sorted edges
    ei = torch.from_numpy(np.stack([big.row[perm], big.col[perm]]))
    ea = torch.from_numpy(big.data[perm])
    S = SparseMatrix.from_edge_index(ei, ea, 12)
    assert S.blocks is None
    np.testing.assert_array_equal(_dense(S), big.toarray())
    batch = torch.tensor([0] * 4 + [1] * 3 + [2] * 5)
    Sb = SparseMatrix.from_edge_index(ei, ea.unsqueeze(1), 12, batch=batch)  # edge_attr (nnz, 1) accepted
    np.testing.assert_array_equal(_dense(Sb), big.toarray())
    np.testing.assert_array_equal(Sb.blocks.numpy(), [0, 4, 7, 12])


def test_from_edge_index_errors():
    ei = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    ea = torch.ones(4, dtype=F64)
    with pytest.raises(ValueError, match="sorted"):
        SparseMatrix.from_edge_index(ei, ea, 4, batch=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="different graphs"):
        SparseMatrix.from_edge_index(torch.tensor([[0, 1, 2, 3, 1], [0, 1, 2, 3, 2]]), torch.ones(5, dtype=F64),
                                     4, batch=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="num_nodes"):
        SparseMatrix.from_edge_index(ei, ea, 4, batch=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="edge_index"):
        SparseMatrix.from_edge_index(ei.T, ea, 4)
    with pytest.raises(ValueError, match="edge_attr"):
        SparseMatrix.from_edge_index(ei, torch.ones(3, dtype=F64), 4)


# ------------------------------------------------------------------------------------------------
# structure: transpose, diagonal, triangles, conversions
# ------------------------------------------------------------------------------------------------

def test_transpose_vs_scipy_and_cached():
    rng = np.random.default_rng(8)
    A = _rand_csr(9, 13, 0.3, rng)
    S = SparseMatrix.from_scipy(A)
    St = S.T
    assert St.shape == (13, 9)
    At = A.T.tocsr()
    At.sort_indices()
    np.testing.assert_array_equal(St.pattern.crow.numpy(), At.indptr)
    np.testing.assert_array_equal(St.pattern.col.numpy(), At.indices)
    np.testing.assert_array_equal(St.values.numpy(), At.data)
    np.testing.assert_array_equal(St.T.to_dense().numpy(), A.toarray())
    # the transposed pattern is cached: same objects on every call, and T of T is the original pattern
    assert S.pattern.transpose()[0] is St.pattern
    assert S.T.pattern is St.pattern
    assert St.T.pattern is S.pattern
    # batched values are permuted per batch member
    Sb = S.with_values(torch.stack([S.values, -3 * S.values]))
    np.testing.assert_array_equal(Sb.T.to_dense()[1].numpy(), -3 * A.T.toarray())


def test_diagonal_tril_triu_vs_scipy():
    rng = np.random.default_rng(9)
    A = _rand_csr(10, 10, 0.35, rng)
    A = A.tolil()
    A[3, 3] = 0.0  # a missing diagonal entry reads as 0
    A = A.tocsr()
    A.eliminate_zeros()
    S = SparseMatrix.from_scipy(A)
    assert S.pattern.diag_positions()[3] == -1
    np.testing.assert_array_equal(S.diagonal().numpy(), A.diagonal())
    for k in (-2, -1, 0, 1, 3):
        np.testing.assert_array_equal(S.tril(k).to_dense().numpy(), sp.tril(A, k).toarray())
        np.testing.assert_array_equal(S.triu(k).to_dense().numpy(), sp.triu(A, k).toarray())
        assert S.tril(k).nnz == sp.tril(A, k).nnz
    # rectangular diagonal, batched diagonal
    R = _rand_csr(5, 8, 0.6, rng, diag=True)
    np.testing.assert_array_equal(SparseMatrix.from_scipy(R).diagonal().numpy(), R.diagonal())
    Sb = S.with_values(torch.stack([S.values, 2 * S.values]))
    np.testing.assert_array_equal(Sb.diagonal().numpy(), np.stack([A.diagonal(), 2 * A.diagonal()]))
    np.testing.assert_array_equal(Sb.tril().to_dense()[1].numpy(), 2 * sp.tril(A).toarray())


def test_diagonal_and_triangle_are_differentiable():
    rng = np.random.default_rng(10)
    S = SparseMatrix.from_scipy(_rand_csr(6, 6, 0.5, rng, diag=True))
    v = S.values.clone().requires_grad_(True)
    assert gradcheck(lambda v: S.with_values(v).diagonal(), (v,))
    assert gradcheck(lambda v: S.with_values(v).tril(-1).to_dense(), (v,))
    assert gradcheck(lambda v: S.with_values(v).T.to_dense(), (v,))


def test_to_scipy_and_to_dense_batched():
    rng = np.random.default_rng(11)
    mats = [_rand_csr(7, 7, 0.4, rng, diag=True) for _ in range(3)]
    # same pattern, different values
    mats = [mats[0].copy() for _ in range(3)]
    for i, M in enumerate(mats):
        M.data = M.data * (i + 1)
    S = _batched_from_scipy(mats)
    D = S.to_dense()
    assert D.shape == (3, 7, 7)
    for i, M in enumerate(mats):
        np.testing.assert_array_equal(D[i].numpy(), M.toarray())
        assert abs(S.to_scipy(i) - M).max() == 0
    with pytest.raises(ValueError, match="index"):
        S.to_scipy()


def test_is_symmetric():
    A = _poisson2d(4)
    assert SparseMatrix.from_scipy(A).is_symmetric()
    N = (A + sp.diags([0.5], [1], shape=A.shape)).tocsr()
    assert not SparseMatrix.from_scipy(N).is_symmetric()


# ------------------------------------------------------------------------------------------------
# matvec
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(11, 11), (9, 14)])
def test_matvec_shapes_single_matrix(n, m):
    rng = np.random.default_rng(12)
    A = _rand_csr(n, m, 0.3, rng)
    S = SparseMatrix.from_scipy(A)
    x = rng.standard_normal(m)
    X = rng.standard_normal((m, 3))
    XB = rng.standard_normal((4, m, 3))
    y = S @ torch.from_numpy(x)
    assert y.shape == (n,)
    np.testing.assert_allclose(y.numpy(), A @ x, rtol=1e-13, atol=1e-13)
    Y = S.matvec(torch.from_numpy(X))
    assert Y.shape == (n, 3)
    np.testing.assert_allclose(Y.numpy(), A @ X, rtol=1e-13, atol=1e-13)
    YB = S @ torch.from_numpy(XB)
    assert YB.shape == (4, n, 3)
    for b in range(4):
        np.testing.assert_allclose(YB[b].numpy(), A @ XB[b], rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="x has shape"):
        S @ torch.zeros(m + 1, dtype=F64)


def test_matvec_shapes_shared_pattern_batch():
    rng = np.random.default_rng(13)
    base = _rand_csr(10, 10, 0.3, rng, diag=True)
    mats = []
    for _ in range(3):
        M = base.copy()
        M.data = rng.standard_normal(M.nnz)
        mats.append(M)
    S = _batched_from_scipy(mats)
    B, n = 3, 10
    x_shared = rng.standard_normal(n)
    xb = rng.standard_normal((B, n))
    Xb = rng.standard_normal((B, n, 2))
    y = S @ torch.from_numpy(x_shared)  # one vector shared by all matrices
    assert y.shape == (B, n)
    y2 = S @ torch.from_numpy(xb)
    assert y2.shape == (B, n)
    Y3 = S @ torch.from_numpy(Xb)
    assert Y3.shape == (B, n, 2)
    for b, M in enumerate(mats):
        np.testing.assert_allclose(y[b].numpy(), M @ x_shared, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(y2[b].numpy(), M @ xb[b], rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(Y3[b].numpy(), M @ Xb[b], rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="x has shape"):
        S @ torch.zeros(B + 1, n, dtype=F64)


def test_matvec_float32():
    rng = np.random.default_rng(14)
    A = _rand_csr(20, 20, 0.2, rng, diag=True)
    S = SparseMatrix.from_scipy(A, dtype=torch.float32)
    x = rng.standard_normal(20).astype(np.float32)
    y = S @ torch.from_numpy(x)
    assert y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), (A @ x.astype(np.float64)), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# SpMV gradients
# ------------------------------------------------------------------------------------------------

def _grad_case(seed=15, n=5, B=None):
    rng = np.random.default_rng(seed)
    A = _rand_csr(n, n, 0.4, rng, diag=True)
    S = SparseMatrix.from_scipy(A)
    if B is not None:
        S = S.with_values(torch.from_numpy(rng.standard_normal((B, S.nnz))))
    return S, rng


@pytest.mark.parametrize("xshape", [(5,), (5, 2), (2, 5, 2)])
def test_spmv_gradcheck_single_matrix(xshape):
    S, rng = _grad_case()
    v = S.values.clone().requires_grad_(True)
    x = torch.from_numpy(rng.standard_normal(xshape)).requires_grad_(True)

    def f(v, x):
        return S.with_values(v) @ x

    assert gradcheck(f, (v, x))
    assert gradgradcheck(f, (v, x))


@pytest.mark.parametrize("xshape", [(5,), (3, 5), (3, 5, 2)])
def test_spmv_gradcheck_batched_values(xshape):
    # (5,): one x broadcast to the B = 3 matrices (grad_x sums over the batch)
    S, rng = _grad_case(B=3)
    v = S.values.clone().requires_grad_(True)
    x = torch.from_numpy(rng.standard_normal(xshape)).requires_grad_(True)

    def f(v, x):
        return S.with_values(v) @ x

    assert gradcheck(f, (v, x))
    assert gradgradcheck(f, (v, x))


def test_spmv_gradcheck_shared_values_batched_x():
    # one matrix broadcast to a batch of right-hand-side blocks (grad_values sums over the batch)
    S, rng = _grad_case(seed=16)
    v = S.values.clone().requires_grad_(True)
    x = torch.from_numpy(rng.standard_normal((3, 5, 2))).requires_grad_(True)
    assert gradcheck(lambda v, x: S.with_values(v).mv(x), (v, x))
    assert gradgradcheck(lambda v, x: S.with_values(v).mv(x), (v, x))


def test_spmv_gradcheck_block_diagonal():
    rng = np.random.default_rng(17)
    S = SparseMatrix.block_diag([SparseMatrix.from_scipy(_rand_csr(k, k, 0.5, rng, diag=True)) for k in (2, 3)])
    v = S.values.clone().requires_grad_(True)
    x = torch.from_numpy(rng.standard_normal(5)).requires_grad_(True)
    assert gradcheck(lambda v, x: S.with_values(v) @ x, (v, x))
    assert gradgradcheck(lambda v, x: S.with_values(v) @ x, (v, x))


def test_values_gradient_is_exactly_g_row_times_x_col_and_matches_dense():
    S, rng = _grad_case(seed=18, n=12)
    v = S.values.clone().requires_grad_(True)
    x = torch.from_numpy(rng.standard_normal(12))
    y = S.with_values(v) @ x
    loss = y.square().sum()
    loss.backward()
    g = 2 * y.detach()
    row, col = S.pattern.row.long(), S.pattern.col.long()
    # exactly the O(nnz) formula, bit for bit
    assert torch.equal(v.grad, g[row] * x[col])
    # and the dense gradient dL/dA = g x^T gathered on the pattern
    Ad = S.to_dense().clone().requires_grad_(True)
    (Ad @ x).square().sum().backward()
    torch.testing.assert_close(v.grad, Ad.grad[row, col], rtol=1e-14, atol=1e-14)
    # x-gradient goes through the transpose: A^T g
    xg = x.clone().requires_grad_(True)
    (S @ xg).square().sum().backward()
    torch.testing.assert_close(xg.grad, S.to_dense().T @ g, rtol=1e-13, atol=1e-13)


def test_values_gradient_batched_multiple_rhs_matches_dense():
    S, rng = _grad_case(seed=19, n=9, B=2)
    v = S.values.clone().requires_grad_(True)
    X = torch.from_numpy(rng.standard_normal((2, 9, 3)))
    W = torch.from_numpy(rng.standard_normal((2, 9, 3)))
    ((S.with_values(v) @ X) * W).sum().backward()
    Ad = S.to_dense().clone().requires_grad_(True)
    ((Ad @ X) * W).sum().backward()
    row, col = S.pattern.row.long(), S.pattern.col.long()
    torch.testing.assert_close(v.grad, Ad.grad[:, row, col], rtol=1e-14, atol=1e-14)
    # reference formula: sum_k W[b, row, k] * X[b, col, k]
    torch.testing.assert_close(v.grad, (W[:, row] * X[:, col]).sum(-1), rtol=1e-14, atol=1e-14)


# The O(nnz) memory test runs in a fresh interpreter so that the measurement is not polluted by
# other tests. Measurement: Linux's per-process peak resident set size (VmHWM). Writing "5" to
# /proc/self/clear_refs resets VmHWM to the current RSS, so VmHWM after backward minus VmRSS just
# before it is the peak growth of *all* memory (torch allocations, MKL buffers, anything) during
# backward. If clear_refs is not writable we fall back to ru_maxrss growth, which can only
# underestimate; a control allocation of known size checks that the measurement sees allocations.
_MEM_SCRIPT = textwrap.dedent(r"""
    import json, resource, sys
    import numpy as np, scipy.sparse as sp, torch
    from learnsolve.linalg import SparseMatrix

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_peak():
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return "vmhwm"
        except OSError:
            return "ru_maxrss"

    def peak(mode):
        if mode == "vmhwm":
            return status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def start(mode):
        return status("VmRSS") if mode == "vmhwm" else peak(mode)

    m = 316
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    I = sp.identity(m)
    A = (sp.kron(I, T) + sp.kron(T, I)).tocsr()
    S = SparseMatrix.from_scipy(A)
    # warm up the code paths (library loading, thread pools) on a tiny matrix
    Sw = SparseMatrix.from_scipy((sp.kron(sp.identity(3), T.tocsr()[:3, :3])).tocsr())
    vw = Sw.values.clone().requires_grad_(True)
    (Sw.with_values(vw) @ torch.ones(9, dtype=torch.float64)).square().sum().backward()

    v = S.values.clone().requires_grad_(True)
    x = torch.randn(A.shape[0], dtype=torch.float64)
    loss = (S.with_values(v) @ x).square().sum()
    mode = reset_peak()
    before = start(mode)
    loss.backward()
    growth = peak(mode) - before

    # control: an allocation of known size must be seen by the same measurement
    ctrl_bytes = 20 * S.nnz * 8
    mode = reset_peak()
    before = start(mode)
    t = torch.ones(ctrl_bytes // 8, dtype=torch.float64)
    ctrl = peak(mode) - before
    del t

    g = 2 * (S @ x)
    exact = bool(torch.equal(v.grad, g[S.pattern.row.long()] * x[S.pattern.col.long()]))
    print(json.dumps(dict(n=A.shape[0], nnz=S.nnz, growth=growth, ctrl=ctrl, ctrl_bytes=ctrl_bytes,
                          mode=mode, exact=exact)))
""")


def test_values_gradient_memory_is_O_nnz_at_n_1e5():
    import json

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT], check=False, capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    n, nnz = res["n"], res["nnz"]
    assert n == 316 * 316 and nnz == 5 * n - 4 * 316
    assert res["exact"]
    # the measurement sees a known allocation (otherwise the bound below would be vacuous)
    assert res["ctrl"] >= 0.9 * res["ctrl_bytes"], res
    # a dense n x n float64 gradient would be n^2 * 8 = 80 GB; O(nnz) means a few value-sized arrays
    assert res["growth"] < 50 * nnz * 8, f"backward grew memory by {res['growth'] / (nnz * 8):.1f} x nnz*8 bytes"


def test_spmv_backward_does_not_build_dense_tensors_small():
    # every tensor autograd saves for the backward has at most max(n, nnz) elements (no n x n)
    S, rng = _grad_case(seed=20, n=40)
    v = S.values.clone().requires_grad_(True)
    x = torch.from_numpy(rng.standard_normal(40)).requires_grad_(True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = S.with_values(v) @ x
    y.square().sum().backward()
    assert max(sizes) <= max(40, S.nnz)
