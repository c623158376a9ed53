"""Bad input, non-convergence and singular systems in ``solve``.

Every bad argument raises an error whose message names the problem; non-convergence of the forward
and of the adjoint solve follows ``on_fail``; singular systems behave as the theory says (CG on a
consistent symmetric positive semidefinite system converges to the minimum-norm solution, an
inconsistent one cannot converge, CG on an indefinite matrix reports p^T A p <= 0). References:
torch.linalg.solve, numpy.linalg.pinv / eigh, scipy.sparse.linalg.cg.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.io
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import (
    ConvergenceError,
    ConvergenceWarning,
    FunctionPreconditioner,
    SingularMatrixError,
    SparseMatrix,
    cg,
    solve,
)

from .conftest import SHARED_MATRICES
from .conftest import poisson2d as _poisson2d

F64 = torch.float64
MATRICES = SHARED_MATRICES


# one torch thread for these tiny problems: see conftest._single_thread


def _spd(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(n, n, dtype=F64, generator=g)
    return Q @ Q.T + n * torch.eye(n, dtype=F64)


def _neumann1d(n):
    """Pure Neumann 1D Laplacian: SPSD, null space = constants."""
    d = np.full(n, 2.0)
    d[0] = d[-1] = 1.0
    return sp.diags([-np.ones(n - 1), d, -np.ones(n - 1)], [-1, 0, 1]).tocsr()


def _neumann2d(m):
    N = _neumann1d(m)
    Id = sp.identity(m)
    return (sp.kron(Id, N) + sp.kron(N, Id)).tocsr()


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------

def test_non_square_A():
    with pytest.raises(ValueError, match="square"):
        solve(torch.randn(3, 4, dtype=F64), torch.randn(3, dtype=F64))
    S = SparseMatrix.from_dense(torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="square"):
        solve(S, torch.randn(3, dtype=F64))


def test_b_shape_mismatch():
    A = _spd(5)
    with pytest.raises(ValueError, match=r"b has shape \(4,\)"):
        solve(A, torch.randn(4, dtype=F64))
    with pytest.raises(ValueError, match="b has shape"):
        solve(A, torch.randn(2, 4, 3, dtype=F64))
    Ab = torch.stack([_spd(5, 1), _spd(5, 2)])
    with pytest.raises(ValueError, match=r"b has shape \(3, 5\).*batch of 2"):
        solve(Ab, torch.randn(3, 5, dtype=F64))
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        solve(A, np.ones(5))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_in_A(bad):
    A = _spd(4)
    A[1, 2] = bad
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        solve(A, torch.ones(4, dtype=F64))
    S = SparseMatrix.from_dense(A)
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        solve(S, torch.ones(4, dtype=F64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_in_b(bad):
    b = torch.ones(4, dtype=F64)
    b[3] = bad
    with pytest.raises(ValueError, match="b contains NaN or Inf"):
        solve(_spd(4), b)
    with pytest.raises(ValueError, match="b contains NaN or Inf"):
        solve(SparseMatrix.from_dense(_spd(4)), b)


def test_dtype_mismatch():
    with pytest.raises(TypeError, match="dtype mismatch.*float64.*float32"):
        solve(_spd(4), torch.ones(4, dtype=torch.float32))
    with pytest.raises(TypeError, match="floating point"):
        solve(_spd(4), torch.ones(4, dtype=torch.int64))


def test_device_mismatch_meta():
    # the 'meta' device gives a second device on any machine; validation stops before touching data
    with pytest.raises(ValueError, match="device mismatch"):
        solve(_spd(4), torch.ones(4, dtype=F64, device="meta"))
    with pytest.raises(ValueError, match="device mismatch"):
        solve(_spd(4).to("meta"), torch.ones(4, dtype=F64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_cuda():
    with pytest.raises(ValueError, match="device mismatch"):
        solve(_spd(4).cuda(), torch.ones(4, dtype=F64))


def test_empty_system():
    with pytest.raises(ValueError, match="empty"):
        solve(torch.zeros(0, 0, dtype=F64), torch.zeros(0, dtype=F64))


def test_unknown_method_precond_backward_on_fail():
    A, b = _spd(4), torch.ones(4, dtype=F64)
    with pytest.raises(ValueError, match="unknown method 'lsqr'"):
        solve(A, b, method="lsqr")
    with pytest.raises(ValueError, match="unknown preconditioner 'ilut'"):
        solve(A, b, precond="ilut")
    with pytest.raises(ValueError, match="unknown backward mode 'adjoint'"):
        solve(A, b, backward="adjoint")
    with pytest.raises(ValueError, match="unroll_steps"):
        solve(A, b, backward="truncated")
    with pytest.raises(ValueError, match="unroll_steps"):
        solve(A, b, backward="truncated", unroll_steps=0)
    with pytest.raises(ValueError, match="on_fail.*'explode'"):
        solve(A, b, on_fail="explode")
    with pytest.raises(ValueError, match="unknown adjoint method 'qr'"):
        solve(A, b, adjoint={"method": "qr"})
    with pytest.raises(TypeError, match="precond"):
        solve(A, b, precond=3)
    with pytest.raises(ValueError, match="x0 has shape"):
        solve(A, b, x0=torch.zeros(3, dtype=F64))
    with pytest.raises(TypeError, match="MatrixFreeOperator"):
        solve(lambda x: x, b)


def test_nonlinear_preconditioner_with_cg():
    A, b = _spd(4), torch.ones(4, dtype=F64)
    M = FunctionPreconditioner(torch.tanh, symmetric=True, linear=False)
    for method in ("cg", "minres", "bicgstab"):
        with pytest.raises(ValueError, match=f"nonlinear preconditioner breaks {method}.*fcg"):
            solve(A, b, method=method, precond=M)
    # flexible methods accept it (and still solve the system)
    x = solve(A, b, method="fcg", precond=M, maxiter=200)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# zero right-hand side
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["cg", "minres", "bicgstab", "gmres", "fcg"])
def test_zero_rhs_returns_zeros_without_iterating(method):
    A = SparseMatrix.from_scipy(_poisson2d(4))
    b = torch.zeros(16, 2, dtype=F64, requires_grad=True)
    x, info = solve(A, b, method=method, return_info=True)
    assert torch.equal(x, torch.zeros(16, 2, dtype=F64))
    assert info.iterations.shape == (2,) and int(info.iterations.max()) == 0 and info.all_converged
    # the gradient still comes from the adjoint solve: dL/db = A^{-T} g
    g = torch.randn(16, 2, dtype=F64)
    x.backward(g)
    torch.testing.assert_close(b.grad, torch.linalg.solve(A.to_dense().T, g), rtol=1e-8, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# non-convergence policy, forward and adjoint
# ------------------------------------------------------------------------------------------------

def _hard_problem():
    A = _poisson2d(8)
    b = np.random.default_rng(0).standard_normal(64)
    return A, SparseMatrix.from_scipy(A), torch.from_numpy(b)


def test_forward_non_convergence_raise_warn_ignore():
    A, S, b = _hard_problem()
    with pytest.raises(ConvergenceError, match="forward solve did not converge") as e:
        solve(S, b, maxiter=3)
    info = e.value.info
    assert not info.all_converged and int(info.iterations) == 3
    assert info.residual_history.shape == (4,)
    # the reported residual is the true residual of 3 CG steps; scipy's CG gives the same iterate
    x_ref, _ = spla.cg(A, b.numpy(), rtol=1e-10, maxiter=3)
    np.testing.assert_allclose(float(info.residual_norm), np.linalg.norm(b.numpy() - A @ x_ref), rtol=1e-8)
    with pytest.warns(ConvergenceWarning, match="forward solve did not converge"):
        x = solve(S, b, maxiter=3, on_fail="warn")
    np.testing.assert_allclose(x.numpy(), x_ref, rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x2, info2 = solve(S, b, maxiter=3, on_fail="ignore", return_info=True)
    assert torch.equal(x, x2) and not info2.all_converged


def _adjoint_failing_solve(on_fail):
    _, S, b = _hard_problem()
    v = S.values.clone().requires_grad_(True)
    bb = b.clone().requires_grad_(True)
    x, info = solve(S.with_values(v), bb, adjoint={"maxiter": 1}, on_fail=on_fail, return_info=True)
    assert info.all_converged  # the forward solve is fine
    w = torch.from_numpy(np.random.default_rng(1).standard_normal(64))
    return x, info, (x * w).sum(), bb, v


def test_adjoint_non_convergence_raises():
    _, _, loss, _, _ = _adjoint_failing_solve("raise")
    with pytest.raises(ConvergenceError, match="adjoint solve did not converge") as e:
        loss.backward()
    assert not e.value.info.all_converged and int(e.value.info.iterations) == 1


def test_adjoint_non_convergence_warns():
    _, info, loss, bb, v = _adjoint_failing_solve("warn")
    with pytest.warns(ConvergenceWarning, match="adjoint solve did not converge"):
        loss.backward()
    assert bb.grad is not None and v.grad is not None
    assert info.adjoint is not None and not info.adjoint.all_converged


def test_adjoint_non_convergence_ignore_is_silent():
    _, info, loss, _, _ = _adjoint_failing_solve("ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss.backward()
    assert not info.adjoint.all_converged and int(info.adjoint.iterations) == 1


def test_adjoint_converges_with_enough_iterations():
    # control for the three tests above: the same problem with a normal adjoint passes
    A, S, b = _hard_problem()
    bb = b.clone().requires_grad_(True)
    x, info = solve(S, bb, return_info=True)
    w = torch.from_numpy(np.random.default_rng(1).standard_normal(64))
    (x * w).sum().backward()
    assert info.adjoint.all_converged
    np.testing.assert_allclose(bb.grad.numpy(), np.linalg.solve(A.toarray().T, w.numpy()), rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# singular systems
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("A", [_neumann1d(40), _neumann2d(12)], ids=["neumann1d", "neumann2d"])
def test_singular_consistent_neumann_solves_with_cg(A):
    n = A.shape[0]
    Ad = A.toarray()
    assert np.abs(Ad @ np.ones(n)).max() < 1e-14  # constants span the null space
    rng = np.random.default_rng(2)
    b = rng.standard_normal(n)
    b -= b.mean()  # orthogonal to the null space: consistent
    x, info = solve(SparseMatrix.from_scipy(A), torch.from_numpy(b), rtol=1e-10, return_info=True)
    assert info.all_converged
    assert np.linalg.norm(Ad @ x.numpy() - b) <= 1e-9 * np.linalg.norm(b)
    # CG from x0 = 0 stays in range(A): the minimum-norm solution pinv(A) b
    np.testing.assert_allclose(x.numpy(), np.linalg.pinv(Ad) @ b, rtol=0, atol=1e-7 * np.abs(x.numpy()).max())


@pytest.mark.parametrize("A", [_neumann1d(40), _neumann2d(12)], ids=["neumann1d", "neumann2d"])
def test_singular_inconsistent_neumann_reports_non_convergence(A):
    n = A.shape[0]
    b = np.random.default_rng(3).standard_normal(n)
    b += 1.0 - b.mean()  # a constant component: no solution exists
    S, bt = SparseMatrix.from_scipy(A), torch.from_numpy(b)
    with pytest.raises(ConvergenceError, match="did not converge") as e:
        solve(S, bt, maxiter=300)
    info = e.value.info
    assert not info.all_converged
    # the residual can never drop below the component of b along the null space: |mean(b)| sqrt(n)
    assert float(info.residual_history.min()) >= 0.99 * np.sqrt(n) * abs(b.mean())
    _, info2 = solve(S, bt, maxiter=300, on_fail="ignore", return_info=True)
    assert not info2.all_converged


def test_singular_poisson1033_from_shared():
    path = MATRICES / "poisson1033.mtx"
    if not path.exists():
        pytest.skip(f"{path} not available")
    A = scipy.io.mmread(path).tocsr()
    n = A.shape[0]
    # its null space is one-dimensional (NOT the constants: the null vector is the indicator of a
    # 129-node floating subdomain); find it independently by shift-invert Lanczos (scipy ARPACK)
    w, V = spla.eigsh(A.tocsc(), k=2, sigma=-1e-2, which="LM")
    order = np.argsort(w)
    w, V = w[order], V[:, order]
    assert abs(w[0]) < 1e-10 and w[1] > 1e-3
    z = V[:, 0] / np.linalg.norm(V[:, 0])
    assert np.linalg.norm(A @ z) < 1e-10
    rng = np.random.default_rng(4)
    b = rng.standard_normal(n)
    b -= (z @ b) * z  # consistent: b in range(A) = null(A)^perp
    S = SparseMatrix.from_scipy(A)
    x, info = solve(S, torch.from_numpy(b), rtol=1e-10, return_info=True)
    assert info.all_converged
    xn = x.numpy()
    assert np.linalg.norm(A @ xn - b) <= 1e-9 * np.linalg.norm(b)
    # the solutions are x_mn + t z; CG from x0 = 0 stays in range(A), so it returns the
    # minimum-norm one (no component along z)
    assert abs(z @ xn) <= 1e-8 * np.linalg.norm(xn)
    # inconsistent right-hand side: non-convergence is reported
    b_bad = b + 0.1 * z
    with pytest.raises(ConvergenceError, match="did not converge"):
        solve(S, torch.from_numpy(b_bad), maxiter=300)


# ------------------------------------------------------------------------------------------------
# indefinite matrices
# ------------------------------------------------------------------------------------------------

def test_cg_indefinite_reports_breakdown():
    rng = np.random.default_rng(5)
    Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    evals = np.array([-3.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0])
    A = torch.from_numpy(Q @ np.diag(evals) @ Q.T)
    b = torch.from_numpy(Q[:, 0] + 0.1 * Q[:, 5])  # b^T A b < 0: the first p^T A p is negative
    assert float(b @ A @ b) < 0
    with pytest.raises(ConvergenceError, match=r"p\^T A p <= 0") as e:
        solve(A, b)
    info = e.value.info
    assert "p^T A p <= 0" in info.breakdown and bool(info.breakdown_mask)
    assert not info.all_converged
    _, info2 = cg(A, b)
    assert "p^T A p <= 0" in info2.breakdown
    # MINRES handles the same symmetric indefinite system
    x = solve(A, b, method="minres")
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-9)


def test_cg_negative_definite_sparse_breakdown_batched():
    # batch of two: one SPD system converges, the negative definite one breaks down (per-system mask)
    A = _poisson2d(4)
    S = SparseMatrix.from_scipy(A)
    Sb = S.with_values(torch.stack([S.values, -S.values]))
    b = torch.from_numpy(np.random.default_rng(6).standard_normal((2, 16)))
    x, info = solve(Sb, b, on_fail="ignore", return_info=True)
    assert info.converged.tolist() == [True, False]
    assert info.breakdown_mask.tolist() == [False, True]
    assert "p^T A p <= 0" in info.breakdown
    np.testing.assert_allclose(x[0].numpy(), spla.spsolve(A.tocsc(), b[0].numpy()), rtol=1e-8, atol=1e-10)


def test_krylov_entry_points_validate_and_method_options_are_checked():
    A = torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match="square"):
        cg(torch.ones(3, 4, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        cg(A, torch.tensor([1.0, float("nan"), 0.0, 0.0], dtype=F64))
    with pytest.raises(TypeError, match="unknown option"):
        solve(A, torch.ones(4, dtype=F64), method="cg", restart=5)
    x = solve(A, torch.ones(4, dtype=F64), method="gmres", restart=2)
    assert torch.allclose(x, torch.ones(4, dtype=F64))


@pytest.mark.parametrize("A", [_neumann2d(4), _neumann2d(16)], ids=["2d-4", "2d-16"])
@pytest.mark.parametrize("sparse", [False, True])
def test_direct_solve_of_an_inconsistent_singular_system_is_not_a_silent_answer(A, sparse):
    """A 1 = 0 and b outside the range: the direct path used to return a finite x with a residual of the order of b's
    and no word. Now its residual is checked like the Krylov methods' (floor sqrt(eps)); a consistent b still
    solves, and an ill-conditioned but nonsingular matrix (Hilbert 10x10, kappa 1.6e13) still passes."""
    n = A.shape[0]
    b = np.random.default_rng(4).standard_normal(n)
    b += 1.0 - b.mean()  # a constant component: no solution exists
    At = SparseMatrix.from_scipy(A) if sparse else torch.from_numpy(A.toarray())
    with pytest.raises(ConvergenceError, match="direct solve left a large residual") as e:
        solve(At, torch.from_numpy(b), method="direct")
    assert float(e.value.info.residual_history.max()) >= 0.1 * np.linalg.norm(b)  # scipy/numpy's x is as bad
    with pytest.warns(ConvergenceWarning):
        solve(At, torch.from_numpy(b), method="direct", on_fail="warn")
    H = torch.from_numpy(scipy.linalg.hilbert(10))
    x = solve(H, torch.ones(10, dtype=torch.float64), method="direct")
    assert float((H @ x - 1).norm()) <= 1e-8 * np.sqrt(10)
    # an exactly singular factorisation (the 1-D Neumann matrix) is refused by the factorisation itself
    with pytest.raises(SingularMatrixError, match="singular"):
        solve(torch.from_numpy(_neumann1d(16).toarray()), torch.from_numpy(b[:16]), method="direct")


@pytest.mark.parametrize("rtol, atol", [(1.0, 0.0), (2.5, 0.0), (-1e-3, 0.0), (float("nan"), 0.0), (1e-6, -1.0),
                                        (1e-6, float("inf"))])
def test_tolerances_outside_their_range_are_refused(rtol, atol):
    """rtol >= 1 used to be accepted and x = 0 'converged'; every entry point now names the bad tolerance."""
    A = torch.from_numpy(_neumann2d(4).toarray() + np.eye(16))
    b = torch.ones(16, dtype=torch.float64)
    name = "rtol" if not 0 <= rtol < 1 or np.isnan(rtol) else "atol"
    with pytest.raises(ValueError, match=name):
        solve(A, b, rtol=rtol, atol=atol)
    with pytest.raises(ValueError, match=name):
        cg(A, b, rtol=rtol, atol=atol)
