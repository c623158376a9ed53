"""One large system on several threads (``learnsolve.linalg.kernels.cg_threads`` through
``learnsolve.linalg.solvers.fused``): solutions against scipy's direct solve, iteration counts against the one-thread kernel and the torch iteration,
cross-block entries anywhere in the matrix, bitwise repeatability, breakdowns and the true-residual guard."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import SparseMatrix, cg, solve
from learnsolve.linalg.solvers import fused

from .conftest import diffusion2d, ill_conditioned_spd, poisson2d, t64


@pytest.fixture
def threads(monkeypatch):
    """Run every single system with at least 8 rows on ``T`` threads (small matrices: the blocks are tiny)."""
    calls = []
    real = fused.KP.cg_block

    def counting(*a):
        calls.append(a[1])
        return real(*a)

    monkeypatch.setattr(fused.KP, "cg_block", counting)
    monkeypatch.setattr(fused, "PAR_MIN_ROWS", 8)
    monkeypatch.setattr(fused, "PAR_ROWS_PER_THREAD", 1)

    def use(T):
        monkeypatch.setattr(fused, "PAR_THREADS", T)
        calls.clear()
        return calls

    return use


def random_spd(n: int, density: float, seed: int) -> sp.csr_matrix:
    """A sparse SPD matrix with entries anywhere (no band: cross-block entries between every pair of blocks)."""
    rng = np.random.default_rng(seed)
    B = sp.random(n, n, density=density, random_state=rng, format="csr")
    A = (B + B.T).tocsr()
    A = A + sp.diags(np.asarray(abs(A).sum(axis=1)).ravel() + 0.5)
    A.sort_indices()
    return A.tocsr()


def rel(x, ref) -> float:
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("T", [2, 3, 5])
@pytest.mark.parametrize("M", [None, "jacobi"])
@pytest.mark.parametrize("kind", ["diffusion", "random"])
def test_threads_match_spsolve_and_one_thread(threads, T, M, kind):
    A = diffusion2d(23, seed=2, contrast=2.0) if kind == "diffusion" else random_spd(400, 0.02, 1)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    S = SparseMatrix.from_scipy(A)
    calls = threads(T)
    x, info = cg(S, t64(b), M=M, rtol=1e-11)
    assert calls and set(calls) == {T}, "the threaded kernel was not used"
    assert info.all_converged and info.breakdown is None
    ref = t64(spla.spsolve(A.tocsc(), b))
    assert rel(x, ref) < 1e-8
    assert np.linalg.norm(A @ x.numpy() - b) <= 1e-11 * np.linalg.norm(b) * (1 + 1e-6)
    threads(1)
    _x1, info1 = cg(S, t64(b), M=M, rtol=1e-11)
    # the same Krylov iteration in another form (Chronopoulos-Gear): counts agree up to rounding, which this
    # badly scaled unpreconditioned case (contrast e^2 per cell) amplifies most: 459-463 against 447 measured
    assert abs(int(info.iterations) - int(info1.iterations)) <= 2 + 0.05 * int(info1.iterations)
    h = min(10, info.residual_history.shape[0])
    torch.testing.assert_close(info.residual_history[:h], info1.residual_history[:h], rtol=1e-6, atol=0.0)


def test_bitwise_repeatable_for_a_thread_count(threads):
    A = random_spd(600, 0.01, 3)
    S = SparseMatrix.from_scipy(A)
    b = torch.from_numpy(np.random.default_rng(1).standard_normal(600))
    threads(3)
    runs = [cg(S, b, M="jacobi", rtol=1e-10) for _ in range(4)]
    for x, info in runs[1:]:
        assert torch.equal(x, runs[0][0]) and torch.equal(info.residual_history, runs[0][1].residual_history)


def test_breakdown_budget_and_stagnation(threads):
    threads(2)
    ind = (sp.diags(np.r_[np.full(10, 2.0), -1.0, np.full(9, 3.0)]) + sp.diags(np.full(19, 0.1), 1)
           + sp.diags(np.full(19, 0.1), -1)).tocsr()
    _x, info = cg(SparseMatrix.from_scipy(ind), torch.ones(20, dtype=torch.float64))
    assert not info.all_converged and "not positive definite" in info.breakdown
    _x, info = cg(SparseMatrix.from_scipy(poisson2d(16)), torch.ones(256, dtype=torch.float64), rtol=1e-12, maxiter=7)
    assert not info.all_converged and info.niter == 7 and info.breakdown is None
    A, b = ill_conditioned_spd()
    x, info = cg(SparseMatrix.from_dense(A), b, rtol=1e-12, maxiter=20000)
    true = float((b - A @ x).norm() / b.norm())
    if bool(info.converged):
        assert true <= 1e-12 * (1 + 1e-6)
    else:
        assert "stagnated at true relative residual" in info.breakdown


def test_solve_forward_and_adjoint_on_threads_give_the_dense_gradient(threads):
    calls = threads(2)
    A = diffusion2d(9, seed=1, contrast=1.0)
    v = t64(A.data).requires_grad_()
    b = t64(np.linspace(1, 2, A.shape[0])).requires_grad_()
    x = solve(SparseMatrix.from_scipy(A).with_values(v), b, method="cg", precond="jacobi", rtol=1e-12)
    (x * x.detach().flip(0)).sum().backward()
    assert len(calls) >= 4  # forward and adjoint, two threads each
    coo = A.tocoo()
    vd, bd = v.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    Ad = torch.zeros(A.shape, dtype=torch.float64).index_put((t64(coo.row).long(), t64(coo.col).long()), vd)
    xd = torch.linalg.solve(Ad, bd)
    (xd * xd.detach().flip(0)).sum().backward()
    assert rel(v.grad, vd.grad) < 1e-8 and rel(b.grad, bd.grad) < 1e-8
