"""Preconditioners and the triangular-solve kernel against dense references.

References: numpy.linalg.cholesky / solve / inv, scipy.linalg.solve_triangular, straightforward
dense IC(0) / ILU(0) implementations written here, scipy.sparse.linalg.spsolve, and
torch.autograd.gradcheck / gradgradcheck in float64. Transposes are checked against the transpose
of the dense matrix of the preconditioner (M^{-T} = (M^{-1})^T), on NONSYMMETRIC matrices.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import scipy.linalg
import scipy.sparse as sp
import torch
from torch.autograd import gradcheck, gradgradcheck

from learnsolve.linalg import (
    IC0,
    ILU0,
    LLT,
    MIC0,
    DenseOperator,
    FactorizationError,
    Jacobi,
    SparseMatrix,
    cg,
    make_preconditioner,
    triangular_solve,
)

from .conftest import SHARED_MATRICES
from .precond_refs import blk as _blk
from .precond_refs import csr as _csr
from .precond_refs import dense_ic0 as _dense_ic0
from .precond_refs import dense_ilu0 as _dense_ilu0
from .precond_refs import dense_mic0 as _dense_mic0
from .precond_refs import dense_of as _dense_of
from .precond_refs import poisson2d as _poisson2d
from .precond_refs import random_nonsym as _random_nonsym
from .precond_refs import tridiag as _tridiag

F64 = torch.float64
MATRICES = SHARED_MATRICES


# one torch thread for these tiny problems: see conftest._single_thread


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# triangular_solve
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("unit", [False, True])
def test_triangular_solve_vs_scipy(lower, unit):
    rng = np.random.default_rng(0)
    A = _random_nonsym(30, 0.15, rng)  # full matrix: the other triangle must be ignored
    S = SparseMatrix.from_scipy(A)
    D = A.toarray()
    T = np.tril(D) if lower else np.triu(D)
    for shape in [(30,), (30, 3), (2, 30, 3)]:
        b = rng.standard_normal(shape)
        y = triangular_solve(S, torch.from_numpy(b), lower=lower, unit_diagonal=unit)
        assert y.shape == b.shape
        ref = scipy.linalg.solve_triangular(T, b if b.ndim < 3 else np.concatenate(list(b), axis=1),
                                            lower=lower, unit_diagonal=unit)
        if b.ndim == 3:
            ref = np.stack(np.split(ref, 2, axis=1))
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-11, atol=1e-12)


def test_triangular_solve_batched_values():
    rng = np.random.default_rng(1)
    A = _random_nonsym(20, 0.2, rng)
    S = SparseMatrix.from_scipy(A)
    vals = torch.stack([S.values, S.values * torch.from_numpy(rng.uniform(0.5, 1.5, S.nnz))])
    Sb = S.with_values(vals)
    b_shared = rng.standard_normal(20)
    b_each = rng.standard_normal((2, 20, 2))
    y1 = triangular_solve(Sb, torch.from_numpy(b_shared))
    y2 = triangular_solve(Sb, torch.from_numpy(b_each), lower=False)
    for i in range(2):
        Di = Sb.to_dense()[i].numpy()
        np.testing.assert_allclose(y1[i].numpy(), scipy.linalg.solve_triangular(np.tril(Di), b_shared, lower=True),
                                   rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(y2[i].numpy(), scipy.linalg.solve_triangular(np.triu(Di), b_each[i], lower=False),
                                   rtol=1e-11, atol=1e-12)


def test_triangular_solve_zero_diagonal_names_row():
    D = np.array([[2.0, 0, 0, 0], [1, 3, 0, 0], [0, 1, 0, 0], [1, 0, 1, 4]])
    D[2, 2] = 0.0  # missing (not stored) diagonal in row 2
    S = SparseMatrix.from_scipy(sp.csr_matrix(D))
    with pytest.raises(FactorizationError, match="row 2") as e:
        triangular_solve(S, torch.ones(4, dtype=F64))
    assert e.value.row == 2
    # a unit-diagonal solve does not need the diagonal
    y = triangular_solve(S, torch.ones(4, dtype=F64), unit_diagonal=True)
    np.testing.assert_allclose(y.numpy(), scipy.linalg.solve_triangular(D, np.ones(4), lower=True,
                                                                        unit_diagonal=True), rtol=1e-14)


@pytest.mark.parametrize("lower,unit", [(True, False), (False, False), (True, True)])
def test_triangular_solve_gradcheck(lower, unit):
    rng = np.random.default_rng(2)
    A = _random_nonsym(5, 0.5, rng)
    S = SparseMatrix.from_scipy(A)
    v = S.values.clone().requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal((5, 2))).requires_grad_(True)

    def f(v, b):
        return triangular_solve(S.with_values(v), b, lower=lower, unit_diagonal=unit)

    assert gradcheck(f, (v, b))
    assert gradgradcheck(f, (v, b))


def test_triangular_solve_gradcheck_batched_values_shared_rhs():
    rng = np.random.default_rng(3)
    S = SparseMatrix.from_scipy(_random_nonsym(4, 0.5, rng))
    v = torch.stack([S.values, 1.3 * S.values]).requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal(4)).requires_grad_(True)  # shared by both matrices
    assert gradcheck(lambda v, b: triangular_solve(S.with_values(v), b), (v, b))
    assert gradgradcheck(lambda v, b: triangular_solve(S.with_values(v), b), (v, b))


def test_triangular_solve_values_gradient_matches_dense():
    rng = np.random.default_rng(4)
    A = _random_nonsym(15, 0.2, rng)
    S = SparseMatrix.from_scipy(A)
    v = S.values.clone().requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal(15))
    w = torch.from_numpy(rng.standard_normal(15))
    (triangular_solve(S.with_values(v), b) @ w).backward()
    Td = torch.from_numpy(np.tril(A.toarray())).requires_grad_(True)
    (torch.linalg.solve_triangular(Td, b.unsqueeze(1), upper=False)[:, 0] @ w).backward()
    r, c = S.pattern.row.long(), S.pattern.col.long()
    ref = torch.where(c <= r, Td.grad[r, c], torch.zeros(()))  # upper entries are unused: zero gradient
    torch.testing.assert_close(v.grad, ref.to(F64), rtol=1e-11, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Jacobi
# ------------------------------------------------------------------------------------------------

def test_jacobi_apply_sparse_dense_batched():
    rng = np.random.default_rng(5)
    A = _random_nonsym(12, 0.3, rng)
    R = rng.standard_normal((1, 12, 3))
    d = A.diagonal()
    for op in (SparseMatrix.from_scipy(A), DenseOperator(torch.from_numpy(A.toarray()))):
        P = Jacobi(op)
        np.testing.assert_allclose(P.apply(torch.from_numpy(R)).numpy(), R / d[None, :, None], rtol=1e-15)
        np.testing.assert_allclose(P.apply_transpose(torch.from_numpy(R)).numpy(), R / d[None, :, None], rtol=1e-15)
        assert P.T is P
    S = SparseMatrix.from_scipy(A)
    Sb = S.with_values(torch.stack([S.values, 2 * S.values]))
    Rb = rng.standard_normal((2, 12, 1))
    out = Jacobi(Sb).apply(torch.from_numpy(Rb)).numpy()
    np.testing.assert_allclose(out[0, :, 0], Rb[0, :, 0] / d, rtol=1e-15)
    np.testing.assert_allclose(out[1, :, 0], Rb[1, :, 0] / (2 * d), rtol=1e-15)


def test_jacobi_zero_diagonal_error():
    D = np.diag([1.0, 2.0, 0.0, 4.0])
    D[2, 1] = 1.0
    with pytest.raises(ValueError, match="zero diagonal entry in row 2"):
        Jacobi(SparseMatrix.from_scipy(sp.csr_matrix(D)))


# ------------------------------------------------------------------------------------------------
# IC(0) and L L^T
# ------------------------------------------------------------------------------------------------

def test_ic0_exact_on_tridiagonal_matches_cholesky():
    rng = np.random.default_rng(6)
    A = _tridiag(25, rng, symmetric=True)  # no fill: IC(0) is the exact Cholesky factor
    P = IC0(SparseMatrix.from_scipy(A))
    L = P.L.to_dense().numpy()
    np.testing.assert_allclose(L, np.linalg.cholesky(A.toarray()), rtol=1e-13, atol=1e-14)
    assert P.shift == 0.0
    R = rng.standard_normal((25, 3))
    np.testing.assert_allclose(P.apply(_blk(R))[0].numpy(), np.linalg.solve(A.toarray(), R), rtol=1e-11,
                               atol=1e-13)
    assert P.symmetric and P.T is P


def test_ic0_matches_reference_on_variable_poisson_and_batch():
    rng = np.random.default_rng(7)
    A1, A2 = _poisson2d(6, rng), _poisson2d(6, rng)  # same pattern, different coefficients
    assert (A1 != 0).toarray().tolist() == (A2 != 0).toarray().tolist()
    S = SparseMatrix.from_scipy(A1)
    Sb = S.with_values(torch.stack([S.values, torch.from_numpy(A2.data)]))
    Pb = IC0(Sb)
    Ls = Pb.L.to_dense().numpy()
    R = rng.standard_normal((2, 36, 2))
    out = Pb.apply(torch.from_numpy(R)).numpy()
    for i, A in enumerate((A1, A2)):
        Lref = _dense_ic0(A.toarray())
        np.testing.assert_allclose(Ls[i], Lref, rtol=1e-12, atol=1e-14)
        # zero fill: L lives exactly on tril(A)'s pattern, and L L^T = A there
        np.testing.assert_array_equal(Ls[i] != 0, np.tril(A.toarray()) != 0)
        LLt = Ls[i] @ Ls[i].T
        on = A.toarray() != 0
        np.testing.assert_allclose(LLt[on], A.toarray()[on], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out[i], np.linalg.solve(Lref @ Lref.T, R[i]), rtol=1e-10, atol=1e-12)
    # the unbatched factor equals the first batch member's; a dense operator gives the same factor
    np.testing.assert_allclose(IC0(S).L.to_dense().numpy(), Ls[0], rtol=0, atol=0)
    Pd = IC0(DenseOperator(torch.from_numpy(A1.toarray())))
    np.testing.assert_allclose(Pd.L.to_dense().numpy(), Ls[0], rtol=1e-15, atol=0)


def test_mic0_matches_reference_preserves_row_sums_and_beats_ic0():
    """MIC(0): same pattern as IC(0); L L^T has A's row sums (the defining property), A's off-diagonal entries on
    the pattern, and equals a dense right-looking reference; batched and unbatched agree; on a diffusion matrix
    it needs fewer CG iterations than IC(0) (its purpose)."""
    rng = np.random.default_rng(11)
    A1, A2 = _poisson2d(7, rng), _poisson2d(7, rng)
    S = SparseMatrix.from_scipy(A1)
    Sb = S.with_values(torch.stack([S.values, torch.from_numpy(A2.data)]))
    Pb = MIC0(Sb)
    Ls = Pb.L.to_dense().numpy()
    R = rng.standard_normal((2, 49, 1))
    out = Pb.apply(torch.from_numpy(R)).numpy()
    for i, A in enumerate((A1, A2)):
        Ad = A.toarray()
        Lref = _dense_mic0(Ad)
        np.testing.assert_allclose(Ls[i], Lref, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(Ls[i] != 0, np.tril(Ad) != 0)  # zero fill, like IC(0)
        LLt = Ls[i] @ Ls[i].T
        np.testing.assert_allclose(LLt.sum(1), Ad.sum(1), rtol=0, atol=1e-12 * np.abs(Ad).max())
        off = (Ad != 0) & ~np.eye(49, dtype=bool)
        np.testing.assert_allclose(LLt[off], Ad[off], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out[i], np.linalg.solve(Lref @ Lref.T, R[i]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(MIC0(S).L.to_dense().numpy(), Ls[0], rtol=0, atol=0)
    assert isinstance(make_preconditioner("mic0", S), MIC0) and Pb.symmetric and Pb.T is Pb
    from .conftest import diffusion2d

    D = SparseMatrix.from_scipy(diffusion2d(32, seed=1))
    b = torch.from_numpy(np.random.default_rng(0).standard_normal(32 * 32))
    its = {P.__name__: int(cg(D, b, P(D), rtol=1e-8)[1].iterations) for P in (IC0, MIC0)}
    assert its["MIC0"] < 0.85 * its["IC0"], its


def test_mic0_breakdown_names_row_and_auto_shift():
    # SPD (smallest eigenvalue 0.13) but not an M-matrix: MIC(0)'s compensation of the dropped (1, 2) fill
    # drives the last pivot negative (IC(0) factors it)
    A = np.array([[1.0, -0.71, -0.47, 0.0], [-0.71, 1.0, 0.0, -0.39], [-0.47, 0.0, 1.0, 0.35],
                  [0.0, -0.39, 0.35, 1.0]])
    assert np.linalg.eigvalsh(A).min() > 0.1
    S = SparseMatrix.from_scipy(sp.csr_matrix(A))
    IC0(S)
    with pytest.raises(FactorizationError, match=r"MIC\(0\) broke down at row 3") as err:
        MIC0(S)
    assert err.value.row == 3
    P = MIC0(S, shift="auto")
    assert P.shift > 0
    L = P.L.to_dense().numpy()
    assert np.isfinite(L).all() and (np.diag(L) > 0).all()


def _breakdown_matrix():
    """SPD-looking diagonal with an indefinite 2x2 block in rows 3, 4: IC(0) breaks down at row 4.

    Pivot of row 4 after shifting by s * diag: (1 + s) - 1.05^2 / (1 + s) > 0 iff s > 0.05, so the
    smallest shift of the ladder 1e-3, 1e-2, 1e-1, ... that works is 0.1."""
    D = np.diag([2.0, 3.0, 1.5, 1.0, 1.0, 2.0])
    D[3, 4] = D[4, 3] = 1.05
    D[0, 1] = D[1, 0] = 0.5
    return D


def test_ic0_breakdown_names_row_and_auto_shift():
    D = _breakdown_matrix()
    S = SparseMatrix.from_scipy(sp.csr_matrix(D))
    with pytest.raises(FactorizationError, match="row 4") as e:
        IC0(S)
    assert e.value.row == 4
    assert "shift" in str(e.value)
    P = IC0(S, shift="auto")
    assert P.shift == pytest.approx(0.1)
    # the factor is IC(0) (= exact Cholesky here, no fill) of A + shift * diag(A)
    As = D + P.shift * np.diag(np.diag(D))
    np.testing.assert_allclose(P.L.to_dense().numpy(), np.linalg.cholesky(As), rtol=1e-13, atol=1e-14)
    P2 = IC0(S, shift=0.5)
    assert P2.shift == 0.5
    np.testing.assert_allclose(P2.L.to_dense().numpy(), np.linalg.cholesky(D + 0.5 * np.diag(np.diag(D))),
                               rtol=1e-13, atol=1e-14)
    with pytest.raises(FactorizationError, match="row 4"):
        IC0(S, shift=0.01)  # too small a fixed shift still breaks down


def test_ic0_negative_diagonal_fails_even_with_auto_shift():
    D = np.diag([1.0, 2.0, -1.0, 3.0])
    with pytest.raises(FactorizationError, match="row 2") as e:
        IC0(SparseMatrix.from_scipy(sp.csr_matrix(D)), shift="auto")
    assert e.value.row == 2


def _lower_factor(n, rng, density=0.4):
    L = sp.tril(sp.random(n, n, density=density, random_state=rng), -1).tocsr()
    L.data = rng.uniform(-0.5, 0.5, L.nnz)
    return _csr(L + sp.diags(rng.uniform(1.0, 2.0, n)))


def test_llt_apply_vs_dense():
    rng = np.random.default_rng(8)
    L = _lower_factor(20, rng, 0.2)
    P = LLT(SparseMatrix.from_scipy(L))
    R = rng.standard_normal((20, 4))
    M = L.toarray() @ L.toarray().T
    np.testing.assert_allclose(P.apply(_blk(R))[0].numpy(), np.linalg.solve(M, R), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(P.apply_transpose(_blk(R))[0].numpy(), np.linalg.solve(M, R), rtol=1e-10,
                               atol=1e-12)
    with pytest.raises(TypeError, match="SparseMatrix"):
        LLT(torch.from_numpy(L.toarray()))
    with pytest.raises(ValueError, match="square"):
        LLT(SparseMatrix.from_scipy(sp.csr_matrix(np.ones((2, 3)))))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_llt_fast_path_batched_vs_dense_and_plain_path(dtype):
    """No-grad apply (LDL^T fast path) vs dense solves and vs the differentiable path, for every
    batching of factor values and right-hand sides, k > 1, float32."""
    rng = np.random.default_rng(21)
    n = 25
    Ls = _lower_factor(n, rng, 0.25)
    L = SparseMatrix.from_scipy(Ls).to(dtype)
    Lb = L.with_values(torch.stack([L.values, L.values * torch.from_numpy(rng.uniform(0.5, 1.5, L.nnz)).to(dtype)]))
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for fac, Bx in ((L, 1), (L, 3), (Lb, 1), (Lb, 2)):
        for k in (1, 4):
            R = torch.from_numpy(rng.standard_normal((Bx, n, k))).to(dtype)
            P = LLT(fac)
            Z = P.apply(R)
            Bv = fac._vals2d.shape[0]
            assert Z.shape == (max(Bv, Bx), n, k) and Z.dtype == dtype
            assert P._ldlt is not None and P._ldlt[1] is not None  # the fast path ran
            for b in range(Z.shape[0]):
                Ld = fac.to_dense()[b if Bv > 1 else ...].double().numpy()
                ref = np.linalg.solve(Ld @ Ld.T, R[b if Bx > 1 else 0].double().numpy())
                np.testing.assert_allclose(Z[b].double().numpy(), ref, **tol)
            # the plain (differentiable) path gives the same result
            Rg = R.clone().requires_grad_(True)
            np.testing.assert_allclose(P.apply(Rg).detach().numpy(), Z.numpy(), **tol)


def test_llt_fast_path_follows_in_place_value_updates():
    rng = np.random.default_rng(22)
    n = 15
    Ls = _lower_factor(n, rng)
    v = torch.from_numpy(Ls.data.copy())
    P = LLT(SparseMatrix.from_scipy(Ls).with_values(v))
    R = _blk(rng.standard_normal(n))
    P.apply(R)
    with torch.no_grad():
        v.mul_(2.0)  # e.g. an optimizer step on a learned factor
    Ld = 2.0 * Ls.toarray()
    np.testing.assert_allclose(P.apply(R)[0, :, 0].numpy(), np.linalg.solve(Ld @ Ld.T, R[0, :, 0].numpy()),
                               rtol=1e-10, atol=1e-12)


def test_ic0_under_inference_mode():
    A = _poisson2d(6)
    R = _blk(np.random.default_rng(24).standard_normal(A.shape[0]))
    ref = IC0(SparseMatrix.from_scipy(A)).apply(R)
    with torch.inference_mode():
        Z = IC0(SparseMatrix.from_scipy(A)).apply(R)
    np.testing.assert_allclose(Z.numpy(), ref.numpy(), rtol=1e-14, atol=0)


def test_llt_zero_diagonal_names_row_without_grad():
    D = np.array([[2.0, 0, 0, 0], [1, 3, 0, 0], [0, 1, 1, 0], [1, 0, 1, 4]])
    S = SparseMatrix.from_scipy(sp.csr_matrix(D))
    vals = S.values.clone()
    vals[S.pattern.diag_positions()[2]] = 0.0
    with torch.no_grad(), pytest.raises(FactorizationError, match="row 2") as e:
        LLT(S.with_values(vals)).apply(_blk(np.ones(4)))
    assert e.value.row == 2
    Dm = D.copy()
    Dm[1, 1] = 0.0  # missing diagonal
    with pytest.raises(FactorizationError, match="row 1"):
        LLT(SparseMatrix.from_scipy(sp.csr_matrix(Dm))).apply(_blk(np.ones(4)))


def test_ic0_fast_path_float32_and_learned_factor_grad():
    rng = np.random.default_rng(23)
    A = _poisson2d(8, rng)
    S = SparseMatrix.from_scipy(A)
    P64, P32 = IC0(S), IC0(S.to(torch.float32))
    R = torch.from_numpy(rng.standard_normal((1, A.shape[0], 2)))
    Z64, Z32 = P64.apply(R), P32.apply(R.float())
    assert Z32.dtype == torch.float32
    Ld = P64.L.to_dense().numpy()
    np.testing.assert_allclose(Z64[0].numpy(), np.linalg.solve(Ld @ Ld.T, R[0].numpy()), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Z32.double().numpy(), Z64.numpy(), rtol=1e-4, atol=1e-5)
    # values that require grad take the differentiable path: gradients match a dense reference
    v = P64.L.values.clone().requires_grad_(True)
    LLT(P64.L.with_values(v)).apply(R).sum().backward()
    vd = torch.from_numpy(Ld).requires_grad_(True)
    torch.linalg.solve(vd @ vd.T, R[0]).sum().backward()
    r, c = P64.L.pattern.row.long(), P64.L.pattern.col.long()
    np.testing.assert_allclose(v.grad.numpy(), vd.grad[r, c].numpy(), rtol=1e-9, atol=1e-11)


def test_llt_gradcheck_factor_values_and_rhs():
    rng = np.random.default_rng(9)
    L = SparseMatrix.from_scipy(_lower_factor(5, rng))
    v = L.values.clone().requires_grad_(True)
    R = torch.from_numpy(rng.standard_normal((1, 5, 2))).requires_grad_(True)

    def f(v, R):
        return LLT(L.with_values(v)).apply(R)

    assert gradcheck(f, (v, R))
    assert gradgradcheck(f, (v, R))


# ------------------------------------------------------------------------------------------------
# ILU(0)
# ------------------------------------------------------------------------------------------------

def test_ilu0_exact_on_tridiagonal_nonsymmetric():
    rng = np.random.default_rng(10)
    A = _tridiag(20, rng, symmetric=False)  # no fill: ILU(0) is the exact LU without pivoting
    P = ILU0(SparseMatrix.from_scipy(A))
    LU = P.LU.to_dense().numpy()
    L, U = np.tril(LU, -1) + np.eye(20), np.triu(LU)
    np.testing.assert_allclose(L @ U, A.toarray(), rtol=1e-13, atol=1e-14)
    R = rng.standard_normal((20, 2))
    np.testing.assert_allclose(P.apply(_blk(R))[0].numpy(), np.linalg.solve(A.toarray(), R), rtol=1e-11)
    np.testing.assert_allclose(P.apply_transpose(_blk(R))[0].numpy(), np.linalg.solve(A.toarray().T, R),
                               rtol=1e-11)


def test_ilu0_matches_reference_and_transpose_on_nonsymmetric():
    rng = np.random.default_rng(11)
    A = _random_nonsym(40, 0.1, rng)
    Ad = A.toarray()
    assert np.abs(Ad - Ad.T).max() > 0.1
    P = ILU0(SparseMatrix.from_scipy(A))
    Lr, Ur = _dense_ilu0(Ad)
    LU = P.LU.to_dense().numpy()
    np.testing.assert_allclose(np.tril(LU, -1) + np.eye(40), Lr, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.triu(LU), Ur, rtol=1e-12, atol=1e-13)
    M = Lr @ Ur
    Minv = _dense_of(P.apply, 40)
    MinvT = _dense_of(P.apply_transpose, 40)
    np.testing.assert_allclose(Minv, np.linalg.inv(M), rtol=1e-9, atol=1e-11)
    # the transpose is M^{-T}, not M^{-1} (which differs a lot for this nonsymmetric matrix)
    np.testing.assert_allclose(MinvT, np.linalg.inv(M).T, rtol=1e-9, atol=1e-11)
    assert np.abs(Minv - Minv.T).max() > 1e-2
    # the transposed preconditioner object applies M^{-T} and transposes back
    np.testing.assert_allclose(_dense_of(P.T.apply, 40), MinvT, rtol=0, atol=0)
    assert P.T.T is P


def test_ilu0_batched():
    rng = np.random.default_rng(12)
    A = _random_nonsym(15, 0.2, rng)
    S = SparseMatrix.from_scipy(A)
    v2 = S.values * torch.from_numpy(rng.uniform(0.8, 1.2, S.nnz))
    Pb = ILU0(S.with_values(torch.stack([S.values, v2])))
    R = torch.from_numpy(rng.standard_normal((2, 15, 1)))
    out, outT = Pb.apply(R).numpy(), Pb.apply_transpose(R).numpy()
    for i, vals in enumerate((S.values, v2)):
        Lr, Ur = _dense_ilu0(S.with_values(vals).to_dense().numpy())
        np.testing.assert_allclose(out[i], np.linalg.solve(Lr @ Ur, R[i].numpy()), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(outT[i], np.linalg.solve((Lr @ Ur).T, R[i].numpy()), rtol=1e-10, atol=1e-12)


def test_ilu0_zero_pivot_errors():
    # U_11 = 1 - 1 * 1 = 0: breakdown in row 1
    D = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
    with pytest.raises(FactorizationError, match="row 1") as e:
        ILU0(SparseMatrix.from_scipy(sp.csr_matrix(D)))
    assert e.value.row == 1
    # missing diagonal in row 0
    D2 = np.array([[0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(FactorizationError, match="row 0"):
        ILU0(SparseMatrix.from_scipy(sp.csr_matrix(D2)))
