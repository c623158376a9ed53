"""backward="stochastic" with ONE right-hand side: the randomly truncated, reweighted adjoint (unbiased, cheaper)."""

from __future__ import annotations

import pytest
import torch

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.linalg import SparseMatrix, solve

from .conftest import convdiff2d


def _system(m=48, seed=3):
    d = GENERATORS["diffusion2d"](m, seed=seed)
    return SparseMatrix.from_scipy(to_scipy(d)), d.b.double()


def _grads(A, b, c, backward, **adjoint):
    v = A.values.clone().requires_grad_()
    bb = b.clone().requires_grad_()
    x, info = solve(A.with_values(v), bb, precond="jacobi", rtol=1e-10, backward=backward,
                    adjoint=adjoint or None, return_info=True)
    torch.dot(c, x).backward()
    return torch.cat([v.grad, bb.grad]), info


def test_one_rhs_estimate_is_unbiased_and_costs_under_half_the_implicit_backward():
    """The goal case: diffusion2d 48^2, Jacobi-PCG rtol 1e-10, one right-hand side, 100 draws."""
    A, b = _system()
    c = torch.randn(A.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact, info = _grads(A, b, c, "implicit")
    implicit_iters = int(info.adjoint.iterations)
    gen = torch.Generator().manual_seed(1)
    draws, iters = [], []
    for _ in range(100):
        g, inf = _grads(A, b, c, "stochastic", generator=gen)
        draws.append(g)
        iters.append(int(inf.adjoint.iterations))
        assert "stochastic adjoint" in inf.adjoint.method
    D = torch.stack(draws)
    se = float(D.var(0).sum().sqrt()) / 10.0
    assert se > 0  # genuinely random: some draws continued, most did not
    assert float((D.mean(0) - exact).norm()) < 4 * se
    assert sum(iters) / len(iters) <= 0.5 * implicit_iters, (sum(iters) / 100, implicit_iters)


def test_continued_draw_is_the_reweighted_implicit_gradient_and_exact_when_short():
    A, b = _system(m=16, seed=1)
    c = torch.ones(A.shape[0], dtype=torch.float64)
    exact, _ = _grads(A, b, c, "implicit")
    # survive = 1: always continued, the estimate is lambda_m + (lambda - lambda_m) = lambda
    g, info = _grads(A, b, c, "stochastic", survive=1.0)
    assert torch.allclose(g, exact, rtol=1e-7, atol=1e-10) and "continued" in info.adjoint.method
    # truncate = 1: the first level already converges (same iteration count as the forward): exact
    g, info = _grads(A, b, c, "stochastic", truncate=1.0, survive=0.5)
    assert torch.allclose(g, exact, rtol=1e-7, atol=1e-10)


def test_nonsymmetric_gmres_estimate_is_unbiased():
    A = SparseMatrix.from_scipy(convdiff2d(8, peclet=10.0))
    b = torch.linspace(-1, 1, A.shape[0], dtype=torch.float64)

    def grads(backward, **adj):
        v = A.values.clone().requires_grad_()
        x = solve(A.with_values(v), b, method="gmres", restart=10, rtol=1e-10, backward=backward,
                  adjoint=adj or None)
        x.square().sum().backward()
        return v.grad

    exact = grads("implicit")
    gen = torch.Generator().manual_seed(2)
    D = torch.stack([grads("stochastic", generator=gen, truncate=0.3, survive=0.3) for _ in range(60)])
    se = float(D.var(0).sum().sqrt()) / 60**0.5
    assert se > 0 and float((D.mean(0) - exact).norm()) < 4 * se


def test_bad_options_and_no_silent_double_backward():
    A, b = _system(m=8)
    for bad in (0.0, 1.5, "x", True):
        with pytest.raises(ValueError, match="truncate must be a number in"):
            solve(A, b, backward="stochastic", adjoint={"truncate": bad})
    with pytest.raises(ValueError, match="survive"):
        solve(A, b, backward="stochastic", adjoint={"survive": -1})
    with pytest.raises(ValueError, match="stochastic' only"):
        solve(A, b, adjoint={"truncate": 0.5})
    v = A.values.clone().requires_grad_()
    x = solve(A.with_values(v), b, backward="stochastic")
    with pytest.raises(RuntimeError, match="cannot be differentiated twice"):
        torch.autograd.grad(x.sum(), v, create_graph=True)
