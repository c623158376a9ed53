"""solve(): gradients (gradcheck / gradgradcheck in float64), modes, references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.autograd import gradcheck, gradgradcheck

from learnsolve.linalg import (
    IC0,
    ILU0,
    LLT,
    AdjointOptions,
    MatrixFreeOperator,
    SparseMatrix,
    solve,
)

from .conftest import convdiff2d, diffusion2d, t64

TIGHT = {"rtol": 1e-13}


def small_spd(seed=0):
    return diffusion2d(4, seed=seed, contrast=1.0)  # n = 16


def small_nonsym():
    return convdiff2d(4, peclet=10.0)  # n = 16


def rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed),
                       requires_grad=True)


def check(f, inputs, fast: bool = True):
    # fast_mode checks random projections of the Jacobians (one jvp/vjp pair instead of one per
    # input entry); test_full_jacobian_gradcheck runs the entry-by-entry check.
    # nondet_tol: gradcheck runs each backward twice and by default demands bitwise equality; the
    # second adjoint solve warm-starts from the first (AdjointOptions.warm_start), which changes
    # the result within the solver tolerance (~1e-13 here), far below atol.
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast, nondet_tol=1e-10)
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast, nondet_tol=1e-10)


@pytest.mark.parametrize("method,matrix", [("cg", "spd"), ("gmres", "nonsym")])
def test_full_jacobian_gradcheck(method, matrix):
    """Entry-by-entry Jacobians (not random projections) on the smallest problems."""
    Asp = diffusion2d(3, seed=4) if matrix == "spd" else convdiff2d(3, peclet=10.0)
    S = SparseMatrix.from_scipy(Asp)
    v = S.values.clone().requires_grad_()
    precond = "ic0" if matrix == "spd" else "ilu0"
    check(lambda v, b: solve(S.with_values(v), b, method=method, precond=precond, **TIGHT), (v, rand(9)), fast=False)


# ------------------------------------------------------------------------------------------------
# gradcheck + gradgradcheck for every operator type and method
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precond", [None, "jacobi", "ic0"])
def test_sparse_cg_pcg(precond):
    S = SparseMatrix.from_scipy(small_spd())
    v = S.values.clone().requires_grad_()
    b = rand(S.shape[0])
    check(lambda v, b: solve(S.with_values(v), b, precond=precond, **TIGHT), (v, b))


def test_dense_cg():
    A = t64(small_spd().toarray()).requires_grad_()
    b = rand(16, 2)
    check(lambda A, b: solve(A, b, **TIGHT), (A, b))


def test_minres_symmetric_indefinite():
    Asp = (small_spd() - 1.2 * sp.eye(16)).tocsr()
    ev = np.linalg.eigvalsh(Asp.toarray())
    assert ev.min() < 0 < ev.max()
    S = SparseMatrix.from_scipy(Asp)
    v = S.values.clone().requires_grad_()
    check(lambda v, b: solve(S.with_values(v), b, method="minres", **TIGHT), (v, rand(16)))


@pytest.mark.parametrize("method", ["bicgstab", "gmres"])
@pytest.mark.parametrize("precond", [None, "ilu0"])
def test_nonsymmetric_with_ilu0(method, precond):
    """The adjoint must use A^T and M^T: a non-transposed ILU(0) would fail here."""
    S = SparseMatrix.from_scipy(small_nonsym())
    v = S.values.clone().requires_grad_()
    check(lambda v, b: solve(S.with_values(v), b, method=method, precond=precond, **TIGHT), (v, rand(16)))


def test_matrix_free_parameters():
    """A(theta) = diag(exp(theta)) + N (N nonsymmetric), given only as a matvec closure."""
    N = SparseMatrix.from_scipy(small_nonsym() * 0.01)
    theta = rand(16, seed=1)

    def f(theta, b):
        op = MatrixFreeOperator(lambda X, th: th.exp().reshape(1, -1, 1) * X + N.mv(X), 16, [theta])
        return solve(op, b, method="gmres", **TIGHT)

    check(f, (theta, rand(16)))


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_direct(kind):
    Asp = small_nonsym()
    if kind == "sparse":
        S = SparseMatrix.from_scipy(Asp)
        p = S.values.clone().requires_grad_()
        f = lambda p, b: solve(S.with_values(p), b, method="direct")
    else:
        p = t64(Asp.toarray()).requires_grad_()
        f = lambda p, b: solve(p, b, method="direct")
    check(f, (p, rand(16, 3)))


def test_batched_values_and_blocks():
    S = SparseMatrix.from_scipy(small_spd())
    S2 = SparseMatrix.from_scipy(small_spd(seed=7))  # same 5-point pattern, other coefficients
    assert S2.pattern.same_as(S.pattern)
    V = torch.stack([S.values, S2.values]).clone().requires_grad_()
    check(lambda V, b: solve(S.with_values(V), b, precond="jacobi", **TIGHT), (V, rand(2, 16)))
    # block diagonal (PyG batch): gradients flow to both blocks' values
    Bd = SparseMatrix.block_diag([SparseMatrix.from_scipy(small_spd(1)), SparseMatrix.from_scipy(diffusion2d(3))])
    vb = Bd.values.clone().requires_grad_()
    check(lambda v, b: solve(Bd.with_values(v), b, **TIGHT), (vb, rand(25)))


def test_learned_factor_preconditioner_gradient_is_zero_in_implicit_mode():
    """The exact solution does not depend on M: implicit mode gives M's parameters no gradient,
    unrolled mode does (and that gradient vanishes as the solve converges)."""
    S = SparseMatrix.from_scipy(small_spd())
    L0 = IC0(S).L
    lv = L0.values.clone().requires_grad_()
    b = t64(np.ones(16))
    x = solve(S, b, precond=LLT(L0.with_values(lv)), **TIGHT)
    assert x.grad_fn is None  # neither A nor b requires grad: nothing to differentiate
    v = S.values.clone().requires_grad_()
    x = solve(S.with_values(v), b, precond=LLT(L0.with_values(lv)), **TIGHT)
    gv, gl = torch.autograd.grad(x.sum(), (v, lv), allow_unused=True)
    assert gl is None and gv is not None
    x = solve(S, b, precond=LLT(L0.with_values(lv)), backward="unrolled", rtol=1e-2)
    (g,) = torch.autograd.grad(x.square().sum(), lv)
    assert float(g.abs().max()) > 0


# ------------------------------------------------------------------------------------------------
# gradients against an independent dense reference (catches wrong adjoints for nonsymmetric A)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,precond", [("gmres", "ilu0"), ("bicgstab", "ilu0"), ("gmres", "jacobi"),
                                            ("direct", None)])
def test_nonsymmetric_gradient_vs_dense_reference(method, precond):
    Asp = convdiff2d(6, peclet=30.0)
    S = SparseMatrix.from_scipy(Asp)
    v = S.values.clone().requires_grad_()
    b = rand(S.shape[0], seed=3)
    c = torch.randn(S.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x = solve(S.with_values(v), b, method=method, precond=precond, rtol=1e-13)
    gv, gb = torch.autograd.grad((c * x).sum() + x.square().sum(), (v, b))
    Ad = S.to_dense().detach().requires_grad_()
    bd = b.detach().clone().requires_grad_()
    xd = torch.linalg.solve(Ad, bd)
    gA, gbd = torch.autograd.grad((c * xd).sum() + xd.square().sum(), (Ad, bd))
    r, col = S.pattern.row.long(), S.pattern.col.long()
    assert torch.allclose(gv, gA[r, col], rtol=1e-8, atol=1e-10 * float(gA.abs().max()))
    assert torch.allclose(gb, gbd, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# backward modes
# ------------------------------------------------------------------------------------------------

def _grads(mode, method="cg", **kw):
    """Gradient of a linear functional of x w.r.t. (symmetrised values, b).

    CG only ever sees A through products with symmetric A, so unrolling it differentiates correctly
    only along symmetric perturbations of A; the implicit gradient is exact in every direction.
    For a symmetric parametrisation (A_ij and A_ji tied) the relevant gradient is g + g[perm]."""
    S = SparseMatrix.from_scipy(diffusion2d(6, seed=5, contrast=1.5))
    v = S.values.clone().requires_grad_()
    b = t64(np.random.default_rng(5).standard_normal(S.shape[0])).requires_grad_()
    x, info = solve(S.with_values(v), b, method=method, backward=mode, return_info=True, rtol=1e-12, **kw)
    loss = (x * torch.linspace(-1, 1, S.shape[0], dtype=torch.float64)).sum()
    gv, gb = torch.autograd.grad(loss, (v, b))
    _, perm = S.pattern.transpose()
    return x.detach(), torch.cat([gv + gv[perm], gb]), gv, info


def test_unrolled_matches_implicit_when_converged():
    x_i, g_i, gv_i, info = _grads("implicit")
    x_u, g_u, gv_u, _ = _grads("unrolled")
    assert info.adjoint is not None and info.adjoint.all_converged
    assert torch.allclose(x_i, x_u, rtol=1e-10)
    assert float((g_i - g_u).norm() / g_i.norm()) < 1e-8
    # ... but not along antisymmetric perturbations, where CG is not a solver of A x = b
    assert float((gv_i - gv_u).norm() / gv_i.norm()) > 1e-3
    # full GMRES handles any A: its unrolled gradient matches in every direction
    _, _, gv_g, _ = _grads("unrolled", method="gmres", restart=36)
    assert float((gv_i - gv_g).norm() / gv_i.norm()) < 1e-8


def test_truncated_is_less_accurate_and_improves_with_k():
    x_i, g_i, _, info = _grads("implicit")
    _, g_u, _, _ = _grads("unrolled")
    errs = {}
    for k in (1, 4, 16):
        x_t, g_t, _, _ = _grads("truncated", unroll_steps=k)
        assert torch.allclose(x_t, x_i, rtol=1e-10)  # same converged solution
        errs[k] = float((g_t - g_i).norm() / g_i.norm())
    assert errs[1] > 1e-2  # measurably wrong with a short window
    assert errs[16] < errs[1]
    _, g_t, _, _ = _grads("truncated", unroll_steps=info.niter)  # the whole history = unrolled
    assert float((g_t - g_u).norm() / g_u.norm()) < 1e-6


def test_adjoint_options_and_info():
    S = SparseMatrix.from_scipy(small_nonsym())
    v = S.values.clone().requires_grad_()
    b = t64(np.ones(16))
    x, info = solve(S.with_values(v), b, method="gmres", precond="ilu0", adjoint=AdjointOptions(method="bicgstab"),
                    return_info=True, rtol=1e-12)
    assert info.adjoint is None
    x.sum().backward()
    assert info.adjoint.method == "bicgstab" and info.adjoint.all_converged
    ref = torch.linalg.solve(S.to_dense().detach().T, torch.ones(16, dtype=torch.float64))
    lam_x = -(ref[S.pattern.row.long()] * x.detach()[S.pattern.col.long()])
    assert torch.allclose(v.grad, lam_x, rtol=1e-8, atol=1e-12)


def test_hessian_vector_product_vs_finite_differences():
    """Double backward through the solve: H v of f(values) = ||x(values)||^2 against FD of gradients."""
    S = SparseMatrix.from_scipy(small_spd(2))
    v0 = S.values.clone()
    b = t64(np.ones(16))

    def grad_at(vals, create_graph=False):
        vals = vals.clone().requires_grad_()
        x = solve(S.with_values(vals), b, method="cg", precond="ic0", rtol=1e-14)
        (g,) = torch.autograd.grad(x.square().sum(), vals, create_graph=create_graph)
        return vals, g

    d = torch.randn(v0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    vals, g = grad_at(v0, create_graph=True)
    (hv,) = torch.autograd.grad(g, vals, d)
    eps = 1e-5
    fd = (grad_at(v0 + eps * d)[1] - grad_at(v0 - eps * d)[1]) / (2 * eps)
    assert float((hv - fd).norm() / fd.norm()) < 1e-6


def test_warm_started_adjoint_in_repeated_backward():
    S = SparseMatrix.from_scipy(diffusion2d(8, seed=9))
    v = S.values.clone().requires_grad_()
    b = t64(np.ones(S.shape[0]))
    x, info = solve(S.with_values(v), b, rtol=1e-10, return_info=True)
    x.sum().backward(retain_graph=True)
    first = info.adjoint.niter
    x.sum().backward()
    assert first > 0 and info.adjoint.niter == 0  # same adjoint right-hand side: warm start is exact


def test_ic0_preconditioned_solution_against_scipy():
    Asp = diffusion2d(10, seed=11, contrast=2.0)
    b = np.random.default_rng(11).standard_normal(Asp.shape[0])
    import scipy.sparse.linalg as spla

    S = SparseMatrix.from_scipy(Asp)
    x = solve(S, t64(b), precond=IC0(S), rtol=1e-12)
    assert np.linalg.norm(x.numpy() - spla.spsolve(Asp.tocsc(), b)) / np.linalg.norm(b) < 1e-9
    xn = solve(SparseMatrix.from_scipy(small_nonsym()), t64(np.ones(16)), method="bicgstab",
               precond=ILU0(SparseMatrix.from_scipy(small_nonsym())), rtol=1e-12)
    assert np.allclose(xn.numpy(), spla.spsolve(small_nonsym().tocsc(), np.ones(16)), rtol=1e-9)
