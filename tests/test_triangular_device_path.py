"""The device-independent triangular solves: level scheduling (exact, O(nnz) memory) and Jacobi
sweeps (approximate), run here on the CPU through ``triangular.DEVICE_PATH_ON_CPU``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import scipy.sparse as sp
import torch

from learnsolve.linalg import IC0, ILU0, SparseMatrix, cg, gmres, triangular_solve
from learnsolve.linalg.preconditioners import triangular as tri

from .conftest import convdiff2d, diffusion2d


@pytest.fixture
def device_path(monkeypatch):
    monkeypatch.setattr(tri, "DEVICE_PATH_ON_CPU", True)


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("unit", [True, False])
def test_level_scheduled_solve_matches_the_compiled_kernel(monkeypatch, lower, unit):
    A = convdiff2d(9)  # nonsymmetric: lower and upper triangles differ
    T = SparseMatrix.from_scipy((sp.tril(A) if lower else sp.triu(A)).tocsr())
    g = torch.Generator().manual_seed(0)
    vals = torch.stack([T.values, T.values * (1 + 0.1 * torch.rand(T.nnz, dtype=torch.float64, generator=g))])
    Tb = T.with_values(vals)
    cases = [(T, torch.randn(81, 3, dtype=torch.float64, generator=g)),
             (Tb, torch.randn(2, 81, 2, dtype=torch.float64, generator=g)),
             (Tb, torch.randn(81, dtype=torch.float64, generator=g))]
    for M, b in cases:
        ref = triangular_solve(M, b, lower=lower, unit_diagonal=unit)
        monkeypatch.setattr(tri, "DEVICE_PATH_ON_CPU", True)
        y = triangular_solve(M, b, lower=lower, unit_diagonal=unit)
        monkeypatch.setattr(tri, "DEVICE_PATH_ON_CPU", False)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    dense = torch.from_numpy((sp.tril(A) if lower else sp.triu(A)).toarray())
    if unit:
        dense = dense - torch.diag(dense.diagonal()) + torch.eye(81, dtype=torch.float64)
    b = cases[0][1]
    torch.testing.assert_close(triangular_solve(T, b, lower=lower, unit_diagonal=unit),
                               torch.linalg.solve_triangular(dense, b, upper=not lower, unitriangular=unit))


def test_level_scheduled_solve_gradients(device_path):
    A = diffusion2d(4, seed=2)
    L = SparseMatrix.from_scipy(sp.tril(A).tocsr())
    v = L.values.clone().requires_grad_()
    b = torch.randn(16, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, b: triangular_solve(L.with_values(v), b), (v, b))


def test_level_scheduled_solve_reports_a_zero_diagonal(device_path):
    L = SparseMatrix.from_scipy(sp.tril(diffusion2d(4, seed=2)).tocsr())
    vals = L.values.clone()
    vals[L.pattern.diag_positions()[5]] = 0.0
    with pytest.raises(Exception, match="zero or missing diagonal in row 5"):
        triangular_solve(L.with_values(vals), torch.ones(16, dtype=torch.float64))


def test_jacobi_sweeps_give_a_symmetric_positive_definite_preconditioner():
    S = SparseMatrix.from_scipy(diffusion2d(10, seed=1))
    g = torch.Generator().manual_seed(1)
    U = torch.randn(1, 100, 4, dtype=torch.float64, generator=g)
    exact = IC0(S)
    for k in (1, 3):
        M = IC0(S, sweeps=k)
        MU = M.apply(U)
        G = U[0].T @ MU[0]
        torch.testing.assert_close(G, G.T, rtol=1e-12, atol=1e-12)
        assert float(torch.linalg.eigvalsh(0.5 * (G + G.T)).min()) > 0
    # many sweeps converge to the exact solves (the strictly triangular part is nilpotent)
    torch.testing.assert_close(IC0(S, sweeps=60).apply(U), exact.apply(U), rtol=1e-10, atol=1e-12)
    b = torch.randn(100, dtype=torch.float64, generator=g)
    its = [cg(S, b, M=IC0(S, sweeps=k), rtol=1e-10)[1] for k in (1, 3)]
    assert all(i.all_converged for i in its)
    assert its[1].niter <= its[0].niter
    N = SparseMatrix.from_scipy(convdiff2d(10))
    _, info = gmres(N, b, M=ILU0(N, sweeps=2), rtol=1e-10)
    assert info.all_converged
    with pytest.raises(ValueError, match="sweeps"):
        IC0(S, sweeps=0)


def test_jacobi_sweeps_are_differentiable_in_the_factor():
    from learnsolve.linalg import LLT

    L = IC0(SparseMatrix.from_scipy(diffusion2d(4, seed=3))).L
    v = L.values.clone().requires_grad_()
    R = torch.randn(1, 16, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: LLT(L.with_values(v), sweeps=2).apply(R), (v,))


def test_device_path_at_one_million_unknowns_needs_memory_of_order_nnz():
    """IC(0) on the 1000 x 1000 Poisson matrix, one preconditioner application through the level-scheduled path
    in a fresh process: its peak memory growth is bounded by a small multiple of nnz(L) bytes (a dense n x n
    fallback would need 8 TB)."""
    script = textwrap.dedent("""
        import resource, torch
        from learnsolve.data.generators import poisson_matrix
        from learnsolve.linalg import IC0, SparseMatrix
        from learnsolve.linalg.preconditioners import triangular as tri
        S = SparseMatrix.from_scipy(poisson_matrix(1000))
        M = IC0(S)
        r = torch.ones(1, S.shape[0], 1, dtype=torch.float64)
        ref = M.apply(r)
        tri.DEVICE_PATH_ON_CPU = True
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        y = M.apply(r)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        err = float((y - ref).norm() / ref.norm())
        print(M.L.nnz, (after - before) * 1024, err)
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    nnz, grown, err = out.stdout.split()[-3:]
    assert err and float(err) < 1e-12
    assert int(grown) <= 64 * int(nnz), (grown, nnz)
