"""The compiled CG path (``learnsolve.linalg.solvers.fused``): solutions against scipy's direct solve, iterations and
residual histories against the torch iteration, batches, PyG blocks, several right-hand sides, breakdowns and
the true-residual confirmation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from learnsolve.linalg import LLT, SparseMatrix, cg, solve
from learnsolve.linalg.preconditioners.classical import make_preconditioner
from learnsolve.linalg.solvers import fused

from .conftest import diffusion2d, ill_conditioned_spd, poisson2d, t64


def both_paths(monkeypatch, *args, **kwargs):
    """(fused result, torch-iteration result) of the same cg call; asserts that the fused path was taken."""
    calls = []
    real = fused.K.pcg

    def counting(*a):
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(fused.K, "pcg", counting)
    out_f = cg(*args, **kwargs)
    assert calls, "the fused path was not used"
    monkeypatch.setattr(fused, "FUSED_CG", False)
    out_t = cg(*args, **kwargs)
    monkeypatch.setattr(fused, "FUSED_CG", True)
    return out_f, out_t


def spsolve(A: sp.csr_matrix, b: np.ndarray) -> torch.Tensor:
    return t64(spla.spsolve(A.tocsc(), b))


def rel(x, ref) -> float:
    return float((x - ref).norm() / ref.norm())


def close_counts(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a - b).abs() <= 1 + 0.02 * b).all())


def learned_factor(A: sp.csr_matrix, seed: int = 0) -> LLT:
    """A perturbed IC(0) factor: an arbitrary lower factor with a positive diagonal (a 'learned' L)."""
    L = make_preconditioner("ic0", SparseMatrix.from_scipy(A)).L
    g = torch.Generator().manual_seed(seed)
    v = L.values * (1 + 0.2 * torch.rand(L.values.shape, dtype=torch.float64, generator=g))
    return LLT(L.with_values(v))


@pytest.mark.parametrize("M", [None, "jacobi", "ic0", "mic0", "learned"])
def test_single_system_matches_spsolve_and_the_torch_iteration(monkeypatch, M):
    A = diffusion2d(20, seed=3, contrast=2.0)
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    S = SparseMatrix.from_scipy(A)
    P = learned_factor(A) if M == "learned" else M
    (x, info), (xt, it) = both_paths(monkeypatch, S, t64(b), M=P, rtol=1e-11)
    assert info.all_converged and info.breakdown is None
    assert rel(x, spsolve(A, b)) < 1e-8
    assert np.linalg.norm(A @ x.numpy() - b) <= 1e-11 * np.linalg.norm(b) * (1 + 1e-6)
    # the same recurrence: rounding differs (fused multiply-adds, float64 dot accumulation), so the count may differ
    # by one and the histories agree over the first iterations (CG amplifies rounding differences later on)
    assert close_counts(info.iterations, it.iterations)
    h = min(10, info.residual_history.shape[0], it.residual_history.shape[0])
    torch.testing.assert_close(info.residual_history[:h], it.residual_history[:h], rtol=1e-4, atol=0.0)
    assert rel(x, xt) < 1e-9


def test_nonsymmetric_values_use_the_general_storage(monkeypatch):
    """A pattern-symmetric matrix whose values are not symmetric is not stored as its lower triangle: CG then runs
    on the matrix given (here SPD-dominated, so it converges) and agrees with the torch iteration."""
    A = poisson2d(12).tolil()
    A[0, 1] = -0.9  # A[1, 0] stays -1
    A = A.tocsr()
    S = SparseMatrix.from_scipy(A)
    assert fused._matrix_arrays(S)[-1] is False
    b = np.ones(A.shape[0])
    (x, info), (xt, it) = both_paths(monkeypatch, S, t64(b), rtol=1e-10, maxiter=500)
    assert close_counts(info.iterations, it.iterations)
    assert rel(x, xt) < 1e-8
    assert fused._matrix_arrays(SparseMatrix.from_scipy(poisson2d(12)))[-1] is True


@pytest.mark.parametrize("M", [None, "jacobi", "ic0"])
def test_batch_of_matrices_each_system_on_its_own(monkeypatch, M):
    mats = [diffusion2d(10, seed=s, contrast=c) for s, c in ((0, 0.5), (1, 2.0), (2, 1.0), (3, 3.0))]
    S = SparseMatrix.from_scipy(mats[0]).with_values(torch.stack([t64(m.data) for m in mats]))
    b = torch.randn(4, mats[0].shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    P = None if M is None else make_preconditioner(M, S)
    (x, info), (_xt, it) = both_paths(monkeypatch, S, b, M=P, rtol=1e-10)
    assert info.converged.shape == (4,) and bool(info.converged.all())
    for i, m in enumerate(mats):
        assert rel(x[i], spsolve(m, b[i].numpy())) < 1e-7
    assert close_counts(info.iterations, it.iterations)  # per-system counts of the lock-step torch iteration
    assert len(set(info.iterations.tolist())) > 1  # the systems stop at different iterations


def test_pyg_blocks_and_several_right_hand_sides(monkeypatch):
    blocks = [diffusion2d(m, seed=m) for m in (6, 9, 5)]
    S = SparseMatrix.block_diag([SparseMatrix.from_scipy(m) for m in blocks])
    n = S.shape[0]
    B = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (x, info), (_xt, it) = both_paths(monkeypatch, S, B, M="jacobi", rtol=1e-10)
    assert info.converged.shape == (3, 3) and bool(info.converged.all())
    ref = spsolve(sp.block_diag(blocks).tocsr(), B.numpy())
    assert rel(x, ref) < 1e-8
    assert close_counts(info.iterations, it.iterations)


def test_warm_start_float32_and_zero_columns(monkeypatch):
    A = poisson2d(10)
    S = SparseMatrix.from_scipy(A)
    b = t64(np.random.default_rng(3).standard_normal(A.shape[0]))
    x_ref = spsolve(A, b.numpy())
    x0 = x_ref + 1e-3 * torch.ones_like(x_ref)
    (x, info), (_, it) = both_paths(monkeypatch, S, b, x0=x0, rtol=1e-10)
    assert info.all_converged and close_counts(info.iterations, it.iterations) and info.niter < 40
    assert rel(x, x_ref) < 1e-8
    S32 = SparseMatrix.from_scipy(A, dtype=torch.float32)
    (x32, i32), _ = both_paths(monkeypatch, S32, b.float(), rtol=1e-5)
    assert x32.dtype == torch.float32 and i32.all_converged and rel(x32.double(), x_ref) < 1e-4
    Bz = torch.stack([b, torch.zeros_like(b)], 1)  # a zero right-hand side converges at once
    (xz, iz), _ = both_paths(monkeypatch, S, Bz, rtol=1e-10)
    assert bool(iz.converged.all()) and int(iz.iterations[1]) == 0 and int(iz.iterations[0]) > 0
    assert float(xz[:, 1].abs().max()) == 0.0


def test_breakdowns_and_budget_match_the_torch_iteration(monkeypatch):
    ind = sp.diags([2.0, -1.0, 3.0, 1.0]).tocsr() + sp.diags([0.1, 0.1, 0.1], 1, shape=(4, 4)) \
        + sp.diags([0.1, 0.1, 0.1], -1, shape=(4, 4))
    (_x, info), (_, it) = both_paths(monkeypatch, SparseMatrix.from_scipy(ind.tocsr()), torch.ones(4, dtype=torch.float64))
    assert not info.all_converged and "not positive definite" in info.breakdown
    assert it.breakdown == info.breakdown
    (_x, info), (_, it) = both_paths(monkeypatch, SparseMatrix.from_scipy(poisson2d(16)),
                                   torch.ones(256, dtype=torch.float64), rtol=1e-12, maxiter=7)
    assert not info.all_converged and info.niter == 7 == it.niter and info.breakdown is None
    nan_b = torch.ones(256, dtype=torch.float64)
    S = SparseMatrix.from_scipy(poisson2d(16))
    bad = S.with_values(S.values.clone().index_fill_(0, torch.tensor([5]), float("nan")))
    with pytest.raises(ValueError, match="NaN or Inf"):
        cg(bad, nan_b, rtol=1e-8)


def test_no_false_convergence_through_the_fused_path(monkeypatch):
    """kappa = 1e8 stored sparse: converged only with a true residual below rtol, else stagnation is reported."""
    A, b = ill_conditioned_spd()
    S = SparseMatrix.from_dense(A)
    for rtol in (1e-10, 1e-12):
        (x, info), _ = both_paths(monkeypatch, S, b, rtol=rtol, maxiter=20000)
        true = float((b - A @ x).norm() / b.norm())
        if bool(info.converged):
            assert true <= rtol * (1 + 1e-6)
        else:
            assert "stagnated at true relative residual" in info.breakdown
            assert float(info.relative_residual) == pytest.approx(true, rel=1e-2)  # SpMV vs dense rounding


def test_solve_with_implicit_backward_runs_fused_forward_and_adjoint(monkeypatch):
    """solve(method="cg") records nothing in its forward and adjoint solves: both go through the kernel, and the
    gradient equals the dense reference."""
    A = diffusion2d(8, seed=1, contrast=1.0)
    calls = []
    real = fused.K.pcg
    monkeypatch.setattr(fused.K, "pcg", lambda *a: (calls.append(1), real(*a))[1])
    v = t64(A.data).requires_grad_()
    b = t64(np.linspace(1, 2, A.shape[0])).requires_grad_()
    S = SparseMatrix.from_scipy(A).with_values(v)
    x = solve(S, b, method="cg", precond="ic0", rtol=1e-12)
    (x * x.detach().flip(0)).sum().backward()
    assert len(calls) >= 2
    Ad = torch.zeros(A.shape, dtype=torch.float64)
    vd = v.detach().clone().requires_grad_()
    bd = b.detach().clone().requires_grad_()
    Ad = Ad.index_put((t64(A.tocoo().row).long(), t64(A.tocoo().col).long()), vd)
    xd = torch.linalg.solve(Ad, bd)
    (xd * xd.detach().flip(0)).sum().backward()
    assert rel(v.grad, vd.grad) < 1e-8 and rel(b.grad, bd.grad) < 1e-8
