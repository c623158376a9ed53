"""compare_gradient_methods on the user's own A and b: errors of known size, every operator kind."""

from __future__ import annotations

import math

import torch

from learnsolve.evaluation import compare_gradient_methods
from learnsolve.evaluation.compare import COLUMNS, comparison_markdown
from learnsolve.linalg import MatrixFreeOperator, SparseMatrix

from .conftest import convdiff2d, diffusion2d


def _by(rows):
    return {r["method"]: r for r in rows}


def test_spd_sparse_known_errors():
    A = SparseMatrix.from_scipy(diffusion2d(8, seed=1))
    b = torch.linspace(-1, 1, A.shape[0], dtype=torch.float64)
    rows = compare_gradient_methods(A, b, precond="jacobi", rtol=1e-10, draws=20, unroll_steps=5)
    assert [r["method"] for r in rows] == ["fd", "implicit", "unrolled", "truncated", "stochastic"]
    assert all(set(COLUMNS) <= set(r) for r in rows)
    r = _by(rows)
    assert r["fd"]["rel_error_exact"] < 1e-6  # the finite differences are right (general directions)
    assert r["implicit"]["rel_error_exact"] < 1e-8 and r["implicit"]["rel_error_fd"] < 1e-6
    assert r["implicit"]["cosine"] > 1 - 1e-12
    # unrolled CG is right only along symmetric perturbations: general directions expose it (documented)
    assert r["unrolled"]["rel_error_fd"] > 100 * r["implicit"]["rel_error_fd"]
    assert r["unrolled"]["saved_bytes"] > 10 * r["implicit"]["saved_bytes"]
    assert r["truncated"]["rel_error_exact"] > 1e-3  # 5 of the iterations only
    s = r["stochastic"]
    assert s["rel_error_exact"] > 1e-8 and s["bias"] < 4 * s["bias_se"]  # noisy per draw, unbiased
    assert "| implicit |" in comparison_markdown(rows)


def test_truncated_over_every_iteration_is_the_unrolled_gradient():
    A = SparseMatrix.from_scipy(diffusion2d(5, seed=2))
    b = torch.ones(A.shape[0], dtype=torch.float64)
    r = _by(compare_gradient_methods(A, b, methods=("unrolled", "truncated"), rtol=1e-4, unroll_steps=10_000))
    # the same iterations recorded (the truncated replay is a plain PCG; solve's CG also confirms convergence on
    # the true residual): measured 0.3226 vs 0.3232
    u, t = r["unrolled"]["rel_error_exact"], r["truncated"]["rel_error_exact"]
    assert u > 0.1 and abs(t - u) < 1e-2 * u


def test_nonsymmetric_dense_and_matrix_free():
    S = SparseMatrix.from_scipy(convdiff2d(6, peclet=10.0))
    b = torch.linspace(0, 1, S.shape[0], dtype=torch.float64)
    r = _by(compare_gradient_methods(S, b, precond="ilu0", methods=("fd", "implicit", "unrolled"), rtol=1e-11))
    assert r["implicit"]["rel_error_exact"] < 1e-8
    assert r["unrolled"]["rel_error_fd"] < 1e-5  # unrolled GMRES is right in every direction
    D = torch.from_numpy(convdiff2d(4, peclet=5.0).toarray())
    b = torch.ones(16, dtype=torch.float64)
    r = _by(compare_gradient_methods(D, b, methods=("fd", "implicit"), rtol=1e-12))
    assert r["implicit"]["rel_error_exact"] < 1e-8 and r["fd"]["rel_error_exact"] < 1e-6
    w = torch.tensor([2.5, -1.0, -0.7], dtype=torch.float64)  # a 1-D stencil with parameters: matrix-free

    def mv(X, w):
        Y = w[0] * X
        Y[:, 1:] += w[1] * X[:, :-1]
        Y[:, :-1] += w[2] * X[:, 1:]
        return Y

    M = MatrixFreeOperator(lambda X, w: mv(X.clone(), w), 30, (w,))
    r = _by(compare_gradient_methods(M, torch.ones(30, dtype=torch.float64), methods=("fd", "implicit"),
                                     rtol=1e-12))
    assert r["implicit"]["rel_error_exact"] < 1e-8 and r["implicit"]["rel_error_fd"] < 1e-6
    assert math.isnan(r["fd"]["cosine"])
