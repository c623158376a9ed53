"""linalg.hvp (double backward through solves) and the stochastic (row-sampled) implicit gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from learnsolve.linalg import AdjointOptions, Jacobi, SparseMatrix, hvp, solve

from .conftest import convdiff2d, diffusion2d, t64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grad(f, vals):
    vals = vals.detach().requires_grad_()
    return torch.autograd.grad(f(vals), vals)[0]


def _fd_hvp(f, x, d, eps=1e-4):
    """Central differences of gradients with one Richardson step (error O(eps^4))."""
    def central(h):
        return (_grad(f, x + h * d) - _grad(f, x - h * d)) / (2 * h)
    return (4 * central(eps / 2) - central(eps)) / 3


@pytest.mark.parametrize("case", ["spd_cg_ic0", "nonsym_gmres_ilu0", "nonsym_direct"])
def test_hvp_wrt_sparse_values_vs_finite_differences_of_gradients(case):
    A = diffusion2d(5, seed=3, contrast=2.0) if case == "spd_cg_ic0" else convdiff2d(5, peclet=10.0)
    S = SparseMatrix.from_scipy(A)
    n = S.shape[0]
    b = t64(np.random.default_rng(1).standard_normal(n))
    w = t64(np.random.default_rng(2).standard_normal(n))
    kw = {"spd_cg_ic0": {"method": "cg", "precond": "ic0"}, "nonsym_gmres_ilu0": {"method": "gmres", "precond": "ilu0"},
          "nonsym_direct": {"method": "direct"}}[case]

    def f(vals, b, w):
        x = solve(S.with_values(vals), b, rtol=1e-14, **kw)
        return (w * x).sum() + 0.5 * x.square().sum() * x.sum()  # a nonquadratic loss of x

    d = torch.randn(S.nnz, dtype=torch.float64, generator=_gen(7))
    Hd = hvp(f, S.values, d, b, w)
    fd = _fd_hvp(lambda v: f(v, b, w), S.values, d)
    assert Hd.shape == S.values.shape and not Hd.requires_grad
    assert float((Hd - fd).norm() / fd.norm()) < 1e-6


def test_hvp_wrt_b_against_the_closed_form():
    """f(b) = 0.5 ||A^{-1} b||^2 has Hessian A^{-T} A^{-1}: H v = A^{-T} (A^{-1} v)."""
    A = convdiff2d(4, peclet=5.0)
    S = SparseMatrix.from_scipy(A)
    Ad = torch.from_numpy(A.toarray())
    b = torch.randn(16, dtype=torch.float64, generator=_gen(0))
    v = torch.randn(16, dtype=torch.float64, generator=_gen(1))
    Hv = hvp(lambda bb: 0.5 * solve(S, bb, method="bicgstab", rtol=1e-14).square().sum(), b, v)
    ref = torch.linalg.solve(Ad.T, torch.linalg.solve(Ad, v))
    assert torch.allclose(Hv, ref, rtol=1e-8, atol=1e-12)


def test_hvp_linear_function_gives_zero_and_bad_input_is_named():
    S = SparseMatrix.from_scipy(diffusion2d(3))
    b = torch.ones(9, dtype=torch.float64)
    v = torch.randn(9, dtype=torch.float64)
    assert torch.equal(hvp(lambda bb: solve(S, bb).sum(), b, v), torch.zeros(9, dtype=torch.float64))
    with pytest.raises(ValueError, match="v has shape"):
        hvp(lambda bb: bb.sum(), b, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="scalar"):
        hvp(lambda bb: bb * 2, b, v)
    with pytest.raises(ValueError, match="does not depend on x"):
        hvp(lambda bb: torch.tensor(1.0, dtype=torch.float64), b, v)
    w = torch.ones(9, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="does not depend on x"):
        hvp(lambda bb, w: w.square().sum(), b, v, w)
    with pytest.raises(TypeError, match="must match x"):
        hvp(lambda bb: bb.square().sum(), b, v.float())


# -- stochastic implicit gradients -------------------------------------------------------------------


def _problem(kind: str):
    """(operator builder from values, values, b, solve kwargs) with 8 right-hand sides."""
    rng = np.random.default_rng(0)
    if kind == "shared_spd":  # one matrix, b of shape (n, 8)
        S = SparseMatrix.from_scipy(diffusion2d(5, seed=1, contrast=2.0))
        b = t64(rng.standard_normal((S.shape[0], 8)))
        return S, S.values.clone(), b, {"method": "cg", "precond": "jacobi"}
    if kind == "shared_nonsym":  # nonsymmetric, a batch of right-hand sides (4, n, 2) sharing A
        S = SparseMatrix.from_scipy(convdiff2d(5, peclet=10.0))
        b = t64(rng.standard_normal((4, S.shape[0], 2)))
        return S, S.values.clone(), b, {"method": "gmres", "precond": "ilu0"}
    if kind == "batched":  # 8 matrices (B, nnz) with one right-hand side each, no preconditioner
        S = SparseMatrix.from_scipy(diffusion2d(5, seed=1))
        vals = torch.stack([S.values * (1 + 0.1 * i) for i in range(8)])
        b = t64(rng.standard_normal((8, S.shape[0])))
        return S, vals, b, {"method": "cg"}
    if kind == "batched_precond":  # batched with a preconditioner: masked, not shrunk
        S = SparseMatrix.from_scipy(diffusion2d(5, seed=1))
        vals = torch.stack([S.values * (1 + 0.1 * i) for i in range(8)])
        b = t64(rng.standard_normal((8, S.shape[0])))
        return S, vals, b, {"method": "cg", "precond": "jacobi"}
    if kind == "shared_batched_precond":  # one A, 3 x 2 right-hand sides, a per-system Jacobi (masked)
        S = SparseMatrix.from_scipy(diffusion2d(5, seed=2))
        d = S.diagonal().expand(3, S.shape[0]) * torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64)
        b = t64(rng.standard_normal((3, S.shape[0], 2)))
        return S, S.values.clone(), b, {"method": "cg", "precond": Jacobi.from_diagonal(d)}
    if kind == "batched_multi_rhs":  # 4 matrices with 2 right-hand sides each (masked)
        S = SparseMatrix.from_scipy(diffusion2d(5, seed=1))
        vals = torch.stack([S.values * (1 + 0.1 * i) for i in range(4)])
        b = t64(rng.standard_normal((4, S.shape[0], 2)))
        return S, vals, b, {"method": "cg"}
    if kind == "pyg_blocks":  # a block-diagonal PyG-style batch of 8 systems
        mats = [SparseMatrix.from_scipy(diffusion2d(4, seed=s)) for s in range(8)]
        S = SparseMatrix.block_diag(mats)
        b = t64(rng.standard_normal(S.shape[0]))
        return S, S.values.clone(), b, {"method": "cg", "precond": "ic0"}
    raise AssertionError(kind)


def _loss_grads(S, vals, b, kw, backward, **adjoint):
    vals = vals.clone().requires_grad_()
    b = b.clone().requires_grad_()
    x = solve(S.with_values(vals), b, rtol=1e-12, backward=backward, adjoint=adjoint or None, **kw)
    w = torch.linspace(-1, 2, x.numel(), dtype=torch.float64).reshape(x.shape)
    loss = (w * x).sum() + 0.25 * x.square().sum()
    gv, gb = torch.autograd.grad(loss, (vals, b))
    return torch.cat([gv.reshape(-1), gb.reshape(-1)])


@pytest.mark.parametrize("kind", ["shared_spd", "shared_nonsym", "batched", "batched_precond",
                                  "shared_batched_precond", "batched_multi_rhs", "pyg_blocks"])
def test_stochastic_gradient_is_unbiased_and_never_zero(kind):
    """Mean of R draws vs the exact implicit gradient. Tolerance: the error of the mean has expected
    squared norm trace(Cov) / R; we allow 4 times its square root (estimated from the same draws)."""
    S, vals, b, kw = _problem(kind)
    exact = _loss_grads(S, vals, b, kw, "implicit")
    gen, R = _gen(123), 300
    draws = torch.stack([_loss_grads(S, vals, b, kw, "stochastic", sample=0.25, generator=gen) for _ in range(R)])
    assert bool((draws.abs().sum(1) > 0).all()), "a draw returned an all-zero gradient"
    single = float(((draws - exact).norm(dim=1) / exact.norm()).mean())
    assert single > 0.05  # a sample of a quarter of the adjoints is genuinely noisy...
    mean_err = float((draws.mean(0) - exact).norm())
    sd_of_mean = float(draws.var(0).sum().sqrt()) / R**0.5
    assert mean_err < 4 * sd_of_mean, (mean_err, sd_of_mean)  # ...and unbiased
    assert mean_err / float(exact.norm()) < single / 5


def test_stochastic_gradient_samples_exactly_the_requested_right_hand_sides():
    S, vals, b, kw = _problem("shared_spd")
    n = S.shape[0]
    exact_b = _loss_grads(S, vals, b, kw, "implicit")[S.nnz:].reshape(n, 8)
    for sample, s in ((0.25, 2), (3, 3), (1.0, 8)):
        gb = _loss_grads(S, vals, b, kw, "stochastic", sample=sample, generator=_gen(s))[S.nnz:].reshape(n, 8)
        hit = gb.abs().sum(0) > 0
        assert int(hit.sum()) == s
        # the sampled columns are the exact adjoints scaled by N / s (inclusion probability s / N)
        assert torch.allclose(gb[:, hit], exact_b[:, hit] * 8 / s, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", ["batched", "shared_batched_precond", "batched_multi_rhs", "pyg_blocks"])
def test_stochastic_sample_counts_right_hand_sides_in_every_layout(kind):
    """``sample`` = s right-hand sides get an adjoint: exactly s columns of dL/db are nonzero, each N/s
    times the exact one, whatever path (sub-batch, masking) the layout takes."""
    S, vals, b, kw = _problem(kind)
    exact_b = _loss_grads(S, vals, b, kw, "implicit")[vals.numel():]
    gb = _loss_grads(S, vals, b, kw, "stochastic", sample=2, generator=_gen(5))[vals.numel():]
    G = S.blocks.numel() - 1 if S.blocks is not None else 1
    units = {"batched": 8, "shared_batched_precond": 6, "batched_multi_rhs": 8, "pyg_blocks": 8}[kind]
    if kind == "pyg_blocks":
        per_unit = torch.stack([gb[S.blocks[i]:S.blocks[i + 1]].abs().sum() for i in range(G)])
        ex_unit = [exact_b[S.blocks[i]:S.blocks[i + 1]] for i in range(G)]
        got_unit = [gb[S.blocks[i]:S.blocks[i + 1]] for i in range(G)]
    else:
        n = S.shape[0]
        k = b.reshape(b.shape[0], n, -1).shape[-1]
        gcols = gb.reshape(b.shape[0], n, k).permute(0, 2, 1).reshape(-1, n)
        ecols = exact_b.reshape(b.shape[0], n, k).permute(0, 2, 1).reshape(-1, n)
        per_unit = gcols.abs().sum(1)
        ex_unit, got_unit = list(ecols), list(gcols)
    hit = per_unit > 0
    assert len(per_unit) == units and int(hit.sum()) == 2
    for i in hit.nonzero().flatten().tolist():
        assert torch.allclose(got_unit[i], ex_unit[i] * units / 2, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", ["bicgstab", "gmres"])
def test_stochastic_with_full_sample_is_the_implicit_gradient_and_passes_gradchecks(method):
    S = SparseMatrix.from_scipy(convdiff2d(3, peclet=8.0))
    v = S.values.clone().requires_grad_()
    b = torch.randn(9, 3, dtype=torch.float64, generator=_gen(4), requires_grad=True)
    kw = {"method": method, "precond": "ilu0", "rtol": 1e-13}

    def f(v, b):
        return solve(S.with_values(v), b, backward="stochastic", adjoint={"sample": 1.0}, **kw)

    if method == "bicgstab":
        assert gradcheck(f, (v, b), eps=1e-6, atol=1e-6, rtol=1e-5)
    else:  # double backward through the stochastic path
        assert gradgradcheck(f, (v, b), eps=1e-6, atol=1e-5, rtol=1e-4)
    g = torch.randn(9, 3, dtype=torch.float64, generator=_gen(9))
    exact = torch.autograd.grad(solve(S.with_values(v), b, **kw), (v, b), g)
    for sample in (1.0, 9 * 3, 100):  # all right-hand sides, as a fraction or a count (capped)
        x = solve(S.with_values(v), b, backward="stochastic", adjoint={"sample": sample}, **kw)
        for got, ref in zip(torch.autograd.grad(x, (v, b), g), exact):
            assert torch.allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_stochastic_bad_options():
    S = SparseMatrix.from_scipy(diffusion2d(3))
    b = torch.ones(9, 2, dtype=torch.float64)
    for bad, exc, msg in ((0.0, ValueError, "fraction"), (1.5, ValueError, "fraction"), (0, ValueError, "count"),
                          ("half", TypeError, "fraction in"), (True, TypeError, "fraction in")):
        with pytest.raises(exc, match=msg):
            solve(S, b, backward="stochastic", adjoint={"sample": bad})
    with pytest.raises(ValueError, match="iterative method"):
        solve(S, b, method="direct", backward="stochastic")
    with pytest.raises(ValueError, match="applies to backward='stochastic' only"):
        solve(S, b, adjoint={"sample": 0.5})
    # numpy scalars are numbers too; an integer 1 is one right-hand side, 1.0 all of them
    assert AdjointOptions(sample=np.int64(2)).sample_count(8) == 2
    assert AdjointOptions(sample=np.float64(0.5)).sample_count(8) == 4
    assert AdjointOptions(sample=1).sample_count(8) == 1 and AdjointOptions(sample=1.0).sample_count(8) == 8
