"""linalg.preconditioners.multigrid: sparse products, aggregation, prolongators and the V-cycle against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import IC0, SparseMatrix, cg
from learnsolve.linalg.preconditioners.multigrid import (
    Multigrid,
    aggregate,
    build_multigrid,
    galerkin,
    gershgorin_radius,
    smoothed_prolongator,
    spectral_radius,
    spgemm,
    tentative,
)


def _rand_sparse(n, m, density, seed):
    return sp.random(n, m, density=density, random_state=seed, format="csr", dtype=np.float64)


def _poisson(m: int) -> SparseMatrix:
    return SparseMatrix.from_pyg(GENERATORS["poisson2d"](m, seed=0)).detach()


@pytest.mark.parametrize("grad", [False, True])
def test_spgemm_matches_scipy(grad):
    X, Y = _rand_sparse(9, 7, 0.3, 1), _rand_sparse(7, 5, 0.4, 2)
    Xs, Ys = SparseMatrix.from_scipy(X), SparseMatrix.from_scipy(Y)
    if grad:
        Xs = Xs.with_values(Xs.values.clone().requires_grad_())
    Z = spgemm(Xs, Ys)
    assert Z.shape == (9, 5)
    np.testing.assert_allclose(Z.to_dense().detach().numpy(), (X @ Y).toarray(), rtol=1e-13, atol=1e-15)


def test_spgemm_and_galerkin_gradients():
    A = SparseMatrix.from_scipy(_rand_sparse(6, 6, 0.5, 3) + sp.eye(6))
    P = SparseMatrix.from_scipy(_rand_sparse(6, 3, 0.6, 4))

    def f(av, pv):
        return galerkin(A.with_values(av), P.with_values(pv)).to_dense()

    av = A.values.clone().requires_grad_()
    pv = P.values.clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (av, pv))
    Pd, Ad = P.to_dense(), A.to_dense()
    torch.testing.assert_close(f(av, pv).detach(), Pd.T @ Ad @ Pd, rtol=1e-13, atol=1e-14)


def test_spectral_radius_is_per_system():
    batch = Batch.from_data_list([GENERATORS["poisson2d"](6, seed=0), GENERATORS["diffusion2d"](9, seed=1)])
    A = SparseMatrix.from_pyg(batch).detach()
    rho = spectral_radius(A, steps=60)
    for g, (lo, hi) in enumerate(zip(A.blocks[:-1].tolist(), A.blocks[1:].tolist())):
        Ad = A.to_dense()[lo:hi, lo:hi]
        dh = Ad.diagonal().rsqrt()
        ref = float(torch.linalg.eigvalsh(dh[:, None] * Ad * dh[None, :]).max())
        assert float(rho[g]) == pytest.approx(ref, rel=0.02) and float(rho[g]) <= ref * (1 + 1e-12)


def test_aggregates_cover_the_grid_and_stay_in_their_system():
    batch = Batch.from_data_list([GENERATORS["diffusion2d"](m, seed=s) for m, s in ((8, 0), (6, 1), (10, 2))])
    A = SparseMatrix.from_pyg(batch).detach()
    agg, ptr = aggregate(A)
    assert bool((agg >= 0).all())  # a connected grid with theta = 0: every node aggregated
    sizes = (A.blocks[1:] - A.blocks[:-1]).tolist()
    graph = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    for g in range(3):  # aggregates of system g are numbered ptr[g]..ptr[g+1]-1
        ids = agg[graph == g]
        assert int(ids.min()) == int(ptr[g]) and int(ids.max()) == int(ptr[g + 1]) - 1
    assert int(ptr[-1]) == int(agg.max()) + 1 and int(ptr[-1]) < A.shape[0] // 2


def test_tentative_has_orthonormal_columns():
    agg = torch.tensor([0, 0, 1, 2, 1, 1, -1, 2])
    T = tentative(agg, 3).to_dense()
    torch.testing.assert_close(T.T @ T, torch.eye(3, dtype=torch.float64))
    assert T[6].abs().sum() == 0  # an unaggregated node has no coarse basis function


def test_smoothed_prolongator_matches_dense_formula():
    A = _poisson(6)
    agg, ptr = aggregate(A)
    T = tentative(agg, int(ptr[-1]))
    W = torch.linspace(0.5, 1.5, A.nnz, dtype=torch.float64)
    P = smoothed_prolongator(A, T, W)
    Ad = A.to_dense()
    Wd = A.with_values(W).to_dense()
    dh = Ad.diagonal().rsqrt()
    rho = float(torch.linalg.eigvalsh(dh[:, None] * Ad * dh[None, :]).max())
    assert float(spectral_radius(A)[0]) == pytest.approx(rho, rel=0.03)  # 12 power steps: close, from below
    assert float(spectral_radius(A)[0]) <= rho * (1 + 1e-12)
    omega = 4.0 / (3.0 * float(spectral_radius(A)[0]))
    ref = (torch.eye(36, dtype=torch.float64) - omega * (Ad * Wd) / Ad.diagonal().unsqueeze(1)) @ T.to_dense()
    torch.testing.assert_close(P.to_dense(), ref, rtol=1e-13, atol=1e-14)
    assert float(gershgorin_radius(A)) == pytest.approx(float((Ad.abs().sum(1) / Ad.diagonal()).max()))


def _dense_vcycle(levels, coarse):
    """M^{-1} of the V(1,1)-cycle from its error propagation E = (I - U^{-1} A)(I - P A_c^{-1} P^T A)(I - L^{-1} A),
    M^{-1} = (I - E) A^{-1}, recursively (dense numpy: an independent reference)."""
    if not levels:
        return np.linalg.inv(coarse.to_dense().numpy())
    A, P = (m.to_dense().detach().numpy() for m in levels[0])
    n = A.shape[0]
    Bc = _dense_vcycle(levels[1:], coarse)
    L, U = np.tril(A), np.triu(A)
    eye = np.eye(n)
    E = (eye - np.linalg.solve(U, A)) @ (eye - P @ Bc @ P.T @ A) @ (eye - np.linalg.solve(L, A))
    return (eye - E) @ np.linalg.inv(A)


def test_vcycle_matches_dense_reference_and_is_spd():
    A = SparseMatrix.from_pyg(GENERATORS["diffusion2d"](12, seed=3)).detach()
    M = build_multigrid(A, coarse_size=4)
    assert M.num_levels >= 3
    ref = _dense_vcycle(M.levels, M.coarse)
    R = torch.randn(1, 144, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        compiled = M.apply(R)
    with torch.enable_grad():
        torch_path = M.apply(R.clone().requires_grad_()).detach()  # the differentiable (torch) path
    expect = torch.from_numpy(ref) @ R[0]
    torch.testing.assert_close(compiled[0], expect, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch_path[0], expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ref, ref.T, atol=1e-10 * np.abs(ref).max())
    assert np.linalg.eigvalsh(0.5 * (ref + ref.T)).min() > 0
    # the contraction: M^{-1} A has its spectrum in (0, 1]
    ev = np.linalg.eigvals(ref @ A.to_dense().numpy()).real
    assert ev.min() > 0 and ev.max() <= 1 + 1e-10


def test_vcycle_gradient_wrt_prolongator_weights():
    A = _poisson(5)
    r = torch.randn(1, 25, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def f(w):
        return build_multigrid(A, lambda Al, agg, lv: w if lv == 0 else None, coarse_size=3).apply(r)

    w = torch.rand(A.nnz, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5
    assert torch.autograd.gradcheck(f, (w.requires_grad_(),))


def test_multigrid_pcg_beats_ic0_and_is_size_robust():
    its = {}
    for m in (32, 96):
        A = _poisson(m)
        b = torch.ones(m * m, dtype=torch.float64)
        with torch.no_grad():
            _, mg = cg(A, b, M=build_multigrid(A), rtol=1e-8)
            _, ic = cg(A, b, M=IC0(A), rtol=1e-8)
        assert bool(mg.converged) and int(mg.iterations) < int(ic.iterations) / 2
        its[m] = int(mg.iterations)
    assert its[96] <= its[32] + 4  # multigrid: iterations nearly independent of the grid size


def test_coarsest_level_is_dense_and_bounded():
    A = _poisson(20)
    M = build_multigrid(A, coarse_size=10)
    assert M.sizes()[-1] <= 10 and M.sizes()[0] == 400
    assert isinstance(M, Multigrid) and M.symmetric


def test_bad_input_errors():
    A = _poisson(4)
    with pytest.raises(ValueError, match="one value set"):
        build_multigrid(A.with_values(A.values.unsqueeze(0).repeat(2, 1)))
    with pytest.raises(ValueError, match="positive diagonal"):
        build_multigrid(A.with_values(-A.values))
    with pytest.raises(ValueError, match="theta"):
        aggregate(A, theta=1.5)
    with pytest.raises(ValueError, match="do not chain"):
        spgemm(A, SparseMatrix.from_scipy(_rand_sparse(5, 3, 0.5, 0)))


def test_pyamg_hierarchies_in_the_compiled_cycle_are_spd_and_converge():
    """from_pyamg / AMG(cycle="compiled"): pyamg's SA and RS hierarchies in the compiled symmetric V-cycle give an SPD
    preconditioner (dense check against its own transpose and eigenvalues) that equals the torch cycle of the same
    levels, and CG converges to scipy's direct solution; a zero prolongator column (an emptied aggregate) is dropped."""
    import pyamg
    import scipy.sparse.linalg as spla

    from learnsolve.linalg import AMG
    from learnsolve.linalg.preconditioners.multigrid import from_pyamg

    data = GENERATORS["channels2d"](16, seed=3, reference=False)
    S = SparseMatrix.from_pyg(data).detach()
    A = S.to_scipy().tocsr()
    n = A.shape[0]
    E = torch.eye(n, dtype=torch.float64).unsqueeze(0)
    for kind in ("sa", "rs"):
        M = AMG(S, kind=kind, cycle="compiled")
        assert M.cycle == "compiled" and not M.host_blas
        Minv = M.apply(E)[0].numpy()
        np.testing.assert_allclose(Minv, Minv.T, atol=1e-10 * np.abs(Minv).max())
        assert np.linalg.eigvalsh(0.5 * (Minv + Minv.T)).min() > 0
        with torch.enable_grad():  # the torch (uncompiled) cycle of the same hierarchy
            ref = M._compiled[0]._cycle(0, E)[0].numpy()
        np.testing.assert_allclose(Minv, ref, atol=1e-10 * np.abs(ref).max())
        b = torch.from_numpy(np.random.default_rng(0).standard_normal(n))
        x, info = cg(S, b, M=M, rtol=1e-10)
        assert info.all_converged and int(info.iterations) < 30
        np.testing.assert_allclose(x.numpy(), spla.spsolve(A.tocsc(), b.numpy()), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="symmetric"):
        AMG(S.with_values(S.values * (1 + 0.1 * torch.rand(S.nnz, dtype=torch.float64))), cycle="compiled")
    # an emptied aggregate: append a zero column to the first prolongator (its coarse row and column are zero)
    ml = pyamg.smoothed_aggregation_solver(A, max_coarse=10)
    P0 = ml.levels[0].P
    ml.levels[0].P = sp.hstack([P0, sp.csr_matrix((n, 1))]).tocsr()
    A1 = ml.levels[1].A
    ml.levels[1].A = sp.block_diag([A1, sp.csr_matrix((1, 1))]).tocsr()
    if len(ml.levels) > 2:
        ml.levels[1].P = sp.vstack([ml.levels[1].P, sp.csr_matrix((1, ml.levels[1].P.shape[1]))]).tocsr()
    mg = from_pyamg(ml)
    assert mg.sizes()[1] == A1.shape[0]
    Minv = mg.apply(E)[0].numpy()
    assert np.linalg.eigvalsh(0.5 * (Minv + Minv.T)).min() > 0


def test_a_strength_with_no_strong_connection_falls_back_to_classical_aggregation():
    """A strength function that flags nothing (or almost nothing) strong: the level is aggregated with theta = 0, so
    the hierarchy is the classical one instead of stopping at the fine level."""
    A = SparseMatrix.from_pyg(GENERATORS["diffusion2d"](16, seed=1)).detach()
    classical = build_multigrid(A, coarse_size=4)
    for flags in (lambda M, lv: torch.zeros(M.nnz, dtype=torch.bool),
                  lambda M, lv: M.pattern.row == M.pattern.col):
        mg = build_multigrid(A, coarse_size=4, strength=flags)
        assert mg.sizes() == classical.sizes() and mg.num_levels >= 3
