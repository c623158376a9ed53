"""lowrank_precond on the inverse side: the coarse-corrected preconditioner against a dense formula, the
learned coarse space against IC(0) and against its untrained start, and the Lanczos kappa estimate against
eigenvalues at the sizes the loss runs on."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import IC0, CoarseCorrected, SparseMatrix, cg, condition_estimate, subdomains
from learnsolve.models.base import system_matrix
from learnsolve.models.lowrank_precond import LowRankPreconditioner


def _batch(size, seeds):
    return Batch.from_data_list([GENERATORS["diffusion2d"](size, seed=s) for s in seeds])


def _dense(M, n):
    return M.apply(torch.eye(n, dtype=torch.float64).unsqueeze(0))[0]


def _kappa_dense(A: SparseMatrix, Minv: torch.Tensor) -> float:
    """kappa(M^-1 A) from the eigenvalues of C^T A C, C C^T = M^-1 (symmetric, dense)."""
    C = torch.linalg.cholesky(0.5 * (Minv + Minv.T))
    ev = torch.linalg.eigvalsh(C.T @ A.to_dense() @ C)
    return float(ev[-1] / ev[0])


def test_coarse_corrected_matches_the_balancing_formula_and_is_spd():
    A = SparseMatrix.from_pyg(GENERATORS["diffusion2d"](10, seed=1)).detach()
    sub, m = subdomains(A, 1)
    assert 1 < m < 100 and bool((sub >= 0).all())
    w = torch.rand(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    B = IC0(A)
    M = CoarseCorrected(A, B, sub, m, w)
    Ad, Bd = A.to_dense(), _dense(B, 100)
    Z = torch.zeros(100, m, dtype=torch.float64)
    Z[torch.arange(100), sub] = w
    Q = Z @ torch.linalg.solve(Z.T @ Ad @ Z, Z.T)
    eye = torch.eye(100, dtype=torch.float64)
    ref = Q + (eye - Q @ Ad) @ Bd @ (eye - Ad @ Q)
    Md = _dense(M, 100)
    torch.testing.assert_close(Md, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(Md, Md.T, rtol=1e-9, atol=1e-12)
    assert float(torch.linalg.eigvalsh(0.5 * (Md + Md.T)).min()) > 0
    # range(Z) is solved exactly: M^-1 A Z = Z
    torch.testing.assert_close(Md @ Ad @ Z, Z, rtol=1e-8, atol=1e-10)


def test_coarse_corrected_gradient_wrt_weights():
    A = SparseMatrix.from_pyg(GENERATORS["diffusion2d"](5, seed=2)).detach()
    sub, m = subdomains(A, 1)
    r = torch.randn(1, 25, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    B = IC0(A)

    def f(w):
        return CoarseCorrected(A, B, sub, m, w).apply(r)

    w = (torch.rand(25, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(f, (w,))


def test_subdomains_stay_in_their_system():
    batch = _batch(12, [0, 1, 2])
    A = system_matrix(batch)
    sub, m = subdomains(A, 2)
    graph = torch.repeat_interleave(torch.arange(3), torch.tensor([144, 144, 144]))
    for g in range(3):
        ids = set(sub[graph == g].tolist())
        for h in range(3):
            if h != g:
                assert not ids & set(sub[graph == h].tolist())
    assert 3 <= m <= 3 * 9


@pytest.mark.parametrize("size, limit", [(64, 0.75), (128, 0.85)])
def test_untrained_coarse_space_beats_ic0_iterations(size, limit):
    batch = _batch(size, [960001, 960002])
    model = LowRankPreconditioner(hidden=8, layers=1).double()
    A = system_matrix(batch)
    b = batch.b.view(-1).double()
    with torch.no_grad():
        its = model.solve(batch, rtol=1e-6)[1].iterations.view(-1).double()
        ic0 = cg(A, b, M=IC0(A, shift="auto"), rtol=1e-6)[1].iterations.view(-1).double()
    assert bool((its <= limit * ic0).all()), (its, ic0)


@pytest.mark.parametrize("variant", ["gnn", pytest.param("fixed", marks=pytest.mark.slow)])  # gnn: the fast twin
def test_training_lowers_kappa_below_the_untrained_start_and_half_the_base(variant):
    torch.manual_seed(0)
    model = LowRankPreconditioner(hidden=8, layers=1, variant=variant, num_nodes=1024 if variant == "fixed" else None,
                                  cond_steps=40).double()
    held = _batch(32, range(950000, 950004))
    A = system_matrix(held)

    def log_kappa(M):
        with torch.no_grad():
            return torch.log(condition_estimate(A, M=M, steps=80))

    k0 = float(log_kappa(model.preconditioner_for(held)).mean())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        loss, _ = model.training_loss(_batch(32, range(4 * step, 4 * step + 4)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    k1 = log_kappa(model.preconditioner_for(held))
    base = log_kappa(IC0(A))
    assert float(k1.mean()) < k0 - 0.05, (k0, float(k1.mean()))
    assert bool((k1 < base - torch.log(torch.tensor(2.0))).all()), (k1, base)  # kappa at most half of IC(0)'s


def _estimate_vs_eigenvalues(size):
    batch = _batch(size, [970001])
    A = system_matrix(batch)
    model = LowRankPreconditioner(hidden=8, layers=1).double()
    n = A.shape[0]
    for M in (IC0(A), model.preconditioner_for(batch)):
        with torch.no_grad():
            est = float(condition_estimate(A, M=M, steps=model.cond_steps, generator=torch.Generator().manual_seed(0)))
            ref = _kappa_dense(A, _dense(M, n))
        assert est == pytest.approx(ref, rel=0.2), (type(M).__name__, est, ref)


def test_kappa_estimate_of_the_loss_is_within_20_percent_at_32():
    _estimate_vs_eigenvalues(32)


@pytest.mark.slow
def test_kappa_estimate_of_the_loss_is_within_20_percent_at_64():
    _estimate_vs_eigenvalues(64)
