"""Preconditioners against dense references: low rank + diagonal (Woodbury), AMG, FunctionPreconditioner,
make_preconditioner, and the real matrices of ../shared. (test_precond.py: triangular solves, Jacobi, IC(0),
L L^T, ILU(0).)

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
import scipy.sparse.linalg as spla
import torch
from torch.autograd import gradcheck, gradgradcheck

from learnsolve.linalg import (
    AMG,
    IC0,
    ILU0,
    FactorizationError,
    FunctionPreconditioner,
    Jacobi,
    LowRankDiagonal,
    Preconditioner,
    SparseMatrix,
    cg,
    gmres,
    make_preconditioner,
)

from .conftest import SHARED_MATRICES
from .precond_refs import blk as _blk
from .precond_refs import convection_diffusion as _convection_diffusion
from .precond_refs import csr as _csr
from .precond_refs import dense_ic0 as _dense_ic0
from .precond_refs import dense_ilu0 as _dense_ilu0
from .precond_refs import dense_of as _dense_of
from .precond_refs import poisson2d as _poisson2d

F64 = torch.float64
MATRICES = SHARED_MATRICES


# one torch thread for these tiny problems: see conftest._single_thread


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# low rank + diagonal (Woodbury)
# ------------------------------------------------------------------------------------------------

def test_low_rank_diagonal_vs_dense_inverse():
    rng = np.random.default_rng(13)
    n, r = 12, 3
    D = rng.uniform(0.5, 2.0, n)
    U, V = rng.standard_normal((n, r)), rng.standard_normal((n, r))
    P = LowRankDiagonal(torch.from_numpy(D), torch.from_numpy(U), torch.from_numpy(V))
    M = np.diag(D) + U @ V.T
    R = rng.standard_normal((n, 2))
    np.testing.assert_allclose(P.apply(_blk(R))[0].numpy(), np.linalg.solve(M, R), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(P.apply_transpose(_blk(R))[0].numpy(), np.linalg.solve(M.T, R), rtol=1e-9,
                               atol=1e-11)
    np.testing.assert_allclose(_dense_of(P.T.apply, n), np.linalg.inv(M).T, rtol=1e-9, atol=1e-11)
    assert not P.symmetric
    # V = None: M = D + U U^T, symmetric
    Ps = LowRankDiagonal(torch.from_numpy(D), torch.from_numpy(U))
    assert Ps.symmetric and Ps.T is Ps
    np.testing.assert_allclose(_dense_of(Ps.apply, n), np.linalg.inv(np.diag(D) + U @ U.T), rtol=1e-9,
                               atol=1e-11)


def test_low_rank_diagonal_batched():
    rng = np.random.default_rng(14)
    B, n, r = 2, 8, 2
    D = rng.uniform(0.5, 2.0, (B, n))
    U, V = rng.standard_normal((B, n, r)), rng.standard_normal((B, n, r))
    P = LowRankDiagonal(torch.from_numpy(D), torch.from_numpy(U), torch.from_numpy(V))
    R = rng.standard_normal((B, n, 3))
    out, outT = P.apply(torch.from_numpy(R)).numpy(), P.apply_transpose(torch.from_numpy(R)).numpy()
    for i in range(B):
        M = np.diag(D[i]) + U[i] @ V[i].T
        np.testing.assert_allclose(out[i], np.linalg.solve(M, R[i]), rtol=1e-9, atol=1e-11)
        np.testing.assert_allclose(outT[i], np.linalg.solve(M.T, R[i]), rtol=1e-9, atol=1e-11)


def test_low_rank_diagonal_block_diagonal_segments():
    """segment: M = D + U_g V_g^T on each block g (a PyG batch), one r x r system per block; the blocks are
    independent, the transpose swaps U and V, and D, U, V get gradients (twice)."""
    rng = np.random.default_rng(16)
    sizes, r = [5, 7, 4], 2
    n = sum(sizes)
    segment = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    D = rng.uniform(0.5, 2.0, n)
    U, V = rng.standard_normal((n, r)), rng.standard_normal((n, r))
    t = torch.from_numpy
    P = LowRankDiagonal(t(D), t(U), t(V), segment=segment, num_blocks=3)
    Ps = LowRankDiagonal(t(D), t(U), segment=segment)  # V = U; number of blocks from segment
    assert Ps.symmetric and not P.symmetric and Ps.G == 3
    blocks = np.split(np.arange(n), np.cumsum(sizes)[:-1])
    M = scipy.linalg.block_diag(*(np.diag(D[s]) + U[s] @ V[s].T for s in blocks))
    Ms = scipy.linalg.block_diag(*(np.diag(D[s]) + U[s] @ U[s].T for s in blocks))
    np.testing.assert_allclose(_dense_of(P.apply, n), np.linalg.inv(M), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(_dense_of(P.apply_transpose, n), np.linalg.inv(M).T, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(_dense_of(Ps.apply, n), np.linalg.inv(Ms), rtol=1e-9, atol=1e-11)
    # one block given as a segment of zeros equals the unsegmented preconditioner
    R = t(rng.standard_normal((2, n, 3)))
    one = LowRankDiagonal(t(D), t(U), t(V), segment=torch.zeros(n, dtype=torch.int64))
    torch.testing.assert_close(one.apply(R), LowRankDiagonal(t(D), t(U), t(V)).apply(R), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="segment"):
        LowRankDiagonal(t(D), t(U), segment=segment[:-1])
    Dg, Ug, Vg = (t(a[:9]).clone().requires_grad_(True) for a in (D, U, V))
    seg = segment[:9]
    Rg = t(rng.standard_normal((1, 9, 2)))

    def f(D, U, V):
        P = LowRankDiagonal(D, U, V, segment=seg, num_blocks=2)
        return P.apply(Rg), P.apply_transpose(Rg)

    assert gradcheck(f, (Dg, Ug, Vg))
    assert gradgradcheck(f, (Dg, Ug, Vg))


def test_low_rank_diagonal_errors():
    with pytest.raises(ValueError, match="zero"):
        LowRankDiagonal(torch.tensor([1.0, 0.0], dtype=F64), torch.ones(2, 1, dtype=F64))
    with pytest.raises(ValueError, match="shapes"):
        LowRankDiagonal(torch.ones(3, dtype=F64), torch.ones(3, 2, dtype=F64), torch.ones(3, 1, dtype=F64))


def test_low_rank_diagonal_gradcheck():
    rng = np.random.default_rng(15)
    n, r = 5, 2
    D = torch.from_numpy(rng.uniform(1.0, 2.0, n)).requires_grad_(True)
    U = torch.from_numpy(0.5 * rng.standard_normal((n, r))).requires_grad_(True)
    V = torch.from_numpy(0.5 * rng.standard_normal((n, r))).requires_grad_(True)
    R = torch.from_numpy(rng.standard_normal((1, n, 2)))

    def f(D, U, V):
        P = LowRankDiagonal(D, U, V)
        return P.apply(R), P.apply_transpose(R)

    assert gradcheck(f, (D, U, V))
    assert gradgradcheck(f, (D, U, V))


# ------------------------------------------------------------------------------------------------
# AMG
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sa", "rs"])
def test_amg_symmetric_poisson(kind):
    rng = np.random.default_rng(16)
    A = _poisson2d(16, rng)
    S = SparseMatrix.from_scipy(A)
    P = AMG(S, kind=kind)
    assert P.symmetric
    Minv = _dense_of(P.apply, 256)
    np.testing.assert_allclose(Minv, Minv.T, rtol=0, atol=1e-12 * np.abs(Minv).max())
    np.testing.assert_allclose(_dense_of(P.apply_transpose, 256), Minv, rtol=0, atol=0)
    # a V-cycle is a convergent iteration: spectral radius of I - M^{-1} A well below 1
    rho = np.abs(np.linalg.eigvals(np.eye(256) - Minv @ A.toarray())).max()
    assert rho < 0.5
    b = torch.from_numpy(rng.standard_normal(256))
    x, info = cg(S, b, M=P, rtol=1e-10)
    _, info0 = cg(S, b, rtol=1e-10)
    assert info.all_converged and info.niter < info0.niter / 2
    np.testing.assert_allclose(x.numpy(), spla.spsolve(A.tocsc(), b.numpy()), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", ["sa", "rs"])
def test_amg_transpose_is_exact_on_nonsymmetric(kind):
    A = _convection_diffusion(12)
    S = SparseMatrix.from_scipy(A)
    P = AMG(S, kind=kind)
    assert not P.symmetric
    Minv = _dense_of(P.apply, 144)
    MinvT = _dense_of(P.apply_transpose, 144)
    scale = np.abs(Minv).max()
    assert np.abs(Minv - Minv.T).max() > 1e-2 * scale  # nonsymmetric preconditioner
    np.testing.assert_allclose(MinvT, Minv.T, rtol=0, atol=1e-12 * scale)
    # custom (transposable) smoothers: forward GS before, backward GS after
    Pf = AMG(S, kind=kind, presmoother=("gauss_seidel", {"sweep": "forward"}),
             postsmoother=("gauss_seidel", {"sweep": "backward"}))
    Mf = _dense_of(Pf.apply, 144)
    np.testing.assert_allclose(_dense_of(Pf.apply_transpose, 144), Mf.T, rtol=0, atol=1e-12 * scale)


def test_amg_batched_and_errors():
    np.random.seed(0)  # pyamg draws its spectral-radius start vectors from numpy's global generator
    A = _convection_diffusion(6)
    S = SparseMatrix.from_scipy(A)
    Sb = S.with_values(torch.stack([S.values, 2 * S.values]))
    P = AMG(Sb)
    E = torch.eye(36, dtype=F64)
    M = P.apply(E.expand(2, 36, 36))
    MT = P.apply_transpose(E.expand(2, 36, 36))
    for i in range(2):
        # each batch member is the V-cycle of its own matrix (pyamg's setup estimates spectral radii
        # from a random start, so two setups agree only to ~1e-6)
        Mi = _dense_of(AMG(S.with_values(Sb.values[i])).apply, 36)
        np.testing.assert_allclose(M[i].numpy(), Mi, rtol=0, atol=1e-5 * np.abs(Mi).max())
        np.testing.assert_allclose(MT[i].numpy(), M[i].numpy().T, rtol=0, atol=1e-12 * float(M[i].abs().max()))
    with pytest.raises(ValueError, match="kind"):
        AMG(S, kind="nope")


# ------------------------------------------------------------------------------------------------
# FunctionPreconditioner and make_preconditioner
# ------------------------------------------------------------------------------------------------

def test_function_preconditioner():
    rng = np.random.default_rng(17)
    W = torch.from_numpy(rng.standard_normal((6, 6)))
    P = FunctionPreconditioner(lambda R: W @ R, lambda R: W.T @ R)
    R = torch.from_numpy(rng.standard_normal((1, 6, 2)))
    torch.testing.assert_close(P.apply(R), W @ R)
    torch.testing.assert_close(P(R), W @ R)
    torch.testing.assert_close(P.apply_transpose(R), W.T @ R)
    torch.testing.assert_close(P.T.apply(R), W.T @ R)
    assert P.T.T is P and P.linear
    Pn = FunctionPreconditioner(lambda R: W @ R)
    with pytest.raises(NotImplementedError, match="transpose"):
        Pn.apply_transpose(R)
    Ps = FunctionPreconditioner(lambda R: 2 * R, symmetric=True)
    torch.testing.assert_close(Ps.apply_transpose(R), 2 * R)
    assert Ps.T is Ps
    assert not FunctionPreconditioner(torch.tanh, linear=False).linear


@pytest.mark.parametrize("name,cls", [("jacobi", Jacobi), ("ic0", IC0), ("ilu0", ILU0), ("amg", AMG),
                                      ("amg_sa", AMG), ("amg_rs", AMG)])
def test_make_preconditioner(name, cls):
    rng = np.random.default_rng(18)
    A = _poisson2d(6, rng)
    S = SparseMatrix.from_scipy(A)
    S = S.with_values(S.values.clone().requires_grad_(True))  # factors are built from detached values
    P = make_preconditioner(name, S)
    assert isinstance(P, cls) and isinstance(P, Preconditioner)
    R = torch.from_numpy(rng.standard_normal((1, 36, 1)))
    out = P.apply(R)
    assert not out.requires_grad
    Ad = A.toarray()
    if name == "jacobi":
        ref = R[0].numpy() / np.diag(Ad)[:, None]
    elif name == "ic0":
        Lr = _dense_ic0(Ad)
        ref = np.linalg.solve(Lr @ Lr.T, R[0].numpy())
    elif name == "ilu0":
        Lr, Ur = _dense_ilu0(Ad)
        ref = np.linalg.solve(Lr @ Ur, R[0].numpy())
    else:  # AMG: one V-cycle reduces the A-norm error of A x = r from x = 0
        x = out[0, :, 0].numpy()
        xs = np.linalg.solve(Ad, R[0, :, 0].numpy())
        e, e0 = x - xs, xs
        assert e @ Ad @ e < 0.25 * (e0 @ Ad @ e0)
        return
    np.testing.assert_allclose(out[0].numpy(), ref, rtol=1e-10, atol=1e-12)


def test_make_preconditioner_unknown_name():
    S = SparseMatrix.from_scipy(_poisson2d(3))
    with pytest.raises(ValueError, match="unknown preconditioner 'foo'"):
        make_preconditioner("foo", S)


# ------------------------------------------------------------------------------------------------
# real matrices (SuiteSparse) from ../shared when present
# ------------------------------------------------------------------------------------------------

def _load(name):
    path = MATRICES / f"{name}.mtx"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return _csr(scipy.io.mmread(path))


def test_ic0_bcsstk03_breakdown_and_auto_shift():
    A = _load("bcsstk03")
    S = SparseMatrix.from_scipy(A)
    with pytest.raises(FactorizationError, match="row 24") as e:
        IC0(S)
    assert e.value.row == 24
    P = IC0(S, shift="auto")
    assert P.shift > 0
    # the factor is IC(0) of the shifted matrix (dense reference; 112 x 112)
    As = A.toarray() + P.shift * np.diag(A.diagonal())
    np.testing.assert_allclose(P.L.to_dense().numpy(), _dense_ic0(As), rtol=1e-10,
                               atol=1e-12 * np.abs(As).max() ** 0.5)
    b = torch.from_numpy(np.random.default_rng(19).standard_normal(A.shape[0]))
    x, info = cg(S, b, M=P, rtol=1e-12, maxiter=2000)
    assert info.all_converged
    _, info0 = cg(S, b, rtol=1e-12, maxiter=4 * info.niter)
    assert not info0.all_converged  # plain CG needs more than 4x the iterations
    xr = spla.spsolve(A.tocsc(), b.numpy())
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-9 * np.abs(xr).max())


def test_ilu0_sherman5_gmres():
    A = _load("sherman5")
    assert abs(A - A.T).max() > 1.0  # nonsymmetric
    S = SparseMatrix.from_scipy(A)
    n = A.shape[0]
    P = ILU0(S)
    rng = np.random.default_rng(20)
    b = torch.from_numpy(rng.standard_normal(n))
    x, info = gmres(S, b, M=P, rtol=1e-12, maxiter=1000)
    assert info.all_converged
    _, info0 = gmres(S, b, rtol=1e-12, maxiter=4 * info.niter)
    assert not info0.all_converged  # unpreconditioned: not even in 4x the iterations
    xr = spla.spsolve(A.tocsc(), b.numpy())
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-9 * np.abs(xr).max())
    # transpose consistency at full size (dot-product test): <M^{-1} r, s> = <r, M^{-T} s>
    r = torch.from_numpy(rng.standard_normal((1, n, 1)))
    s = torch.from_numpy(rng.standard_normal((1, n, 1)))
    lhs, rhs = float((P.apply(r) * s).sum()), float((r * P.apply_transpose(s)).sum())
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)


def test_jacobi_from_dense_tensor_and_from_diagonal():
    """A dense (n, n) tensor is a matrix (not a batch of diagonals); from_diagonal takes the diagonal."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 5, dtype=torch.float64, generator=g) + 5 * torch.eye(5, dtype=torch.float64)
    R = torch.randn(1, 5, 2, dtype=torch.float64, generator=g)
    ref = torch.linalg.solve(torch.diag(torch.diagonal(A)), R[0])
    assert torch.allclose(Jacobi(A).apply(R)[0], ref, rtol=1e-14)
    assert torch.allclose(Jacobi.from_diagonal(torch.diagonal(A)).apply(R)[0], ref, rtol=1e-14)
