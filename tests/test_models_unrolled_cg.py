"""unrolled_cg: K (P)CG steps with learned step/direction scalings, then plain CG to the tolerance."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import SparseMatrix, cg
from learnsolve.models.unrolled_cg import UnrolledCG, unrolled_cg, unrolled_loss

from .conftest import adam_losses


def _batch(specs, reference=True):
    return Batch.from_data_list([GENERATORS["diffusion2d"](m, seed=s, reference=reference) for m, s in specs])


def _canonical(batch):
    A = SparseMatrix.from_pyg(batch)
    return A, batch.b.view(1, -1, 1), batch.x.view(1, -1, 1)


@pytest.mark.parametrize("precond", ["none", "jacobi"])
def test_untrained_model_is_plain_cg_after_k_steps(precond):
    batch = _batch([(6, 0), (8, 1), (5, 2)])
    model = UnrolledCG(steps=5, precond=precond).double()
    X, _, taken, _ = model.iterate(*model._system(batch))
    x_ref, info = cg(SparseMatrix.from_pyg(batch), batch.b, M=None if precond == "none" else "jacobi",
                     rtol=0.0, maxiter=5)
    assert info.iterations.tolist() == [5, 5, 5] and taken.view(-1).tolist() == [5, 5, 5]
    assert torch.allclose(X.view(-1), x_ref, rtol=0, atol=1e-10 * float(x_ref.abs().max()))


@pytest.mark.parametrize("kind", ["energy", "residual"])
def test_gradcheck_loss_wrt_s_and_t(kind):
    batch = _batch([(3, 0), (4, 1)])
    A, Bm, xs = _canonical(batch)
    d = A.diagonal().view(1, -1, 1)
    g = torch.Generator().manual_seed(0)
    # a generic point (at s = t = 0 the energy gradient vanishes: see the optimality test)
    s = (0.2 * torch.randn(4, generator=g, dtype=torch.float64)).requires_grad_(True)
    t = (0.2 * torch.randn(4, generator=g, dtype=torch.float64)).requires_grad_(True)

    def f(s, t):
        X, _, _, _ = unrolled_cg(A, Bm, s, t, lambda R: R / d)
        return unrolled_loss(A, Bm, X, kind, xs)[0]

    assert gradcheck(f, (s, t), eps=1e-6, atol=1e-7)


def test_cg_is_optimal_for_the_energy_loss():
    # x_K lies in the Krylov space over which CG minimises the A-norm error: s = t = 0 is a global
    # minimum of the energy loss, so its gradient vanishes there and every perturbation is worse
    batch = _batch([(6, 0), (7, 1)])
    model = UnrolledCG(steps=6, loss="energy").double()
    loss0, _ = model.training_loss(batch)
    loss0.backward()
    scale = 1e-10 * loss0.item()
    assert model.s.grad.abs().max() < scale and model.t.grad.abs().max() < scale
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(5):
            model.s.copy_(0.3 * torch.randn(6, generator=g))
            model.t.copy_(0.3 * torch.randn(6, generator=g))
            assert model.training_loss(batch)[0].item() > loss0.item()


def test_residual_loss_decreases():
    torch.manual_seed(0)
    batch = _batch([(8, s) for s in range(4)])
    model = UnrolledCG(steps=6, loss="residual")
    losses = adam_losses(model, batch, steps=40, lr=3e-2)
    # mean log relative residual after 6 steps: measured -1.71 (plain CG) -> -2.00 (a factor 1.34 smaller)
    assert losses[-1] < losses[0] - 0.2, losses


def test_energy_loss_decreases_back_to_cg_from_a_perturbed_start():
    batch = _batch([(8, s) for s in range(4)])
    model = UnrolledCG(steps=6, loss="energy").double()
    cg_loss = model.training_loss(batch)[0].item()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.s.copy_(0.5 * torch.randn(6, generator=g))
        model.t.copy_(0.5 * torch.randn(6, generator=g))
    losses = adam_losses(model, batch, steps=40, lr=2e-2)
    # measured: 0.196 -> 0.064 (CG: 0.0496)
    assert losses[-1] < 0.8 * losses[0], losses
    assert losses[-1] >= cg_loss * (1 - 1e-12)  # never below the CG optimum


def test_solve_converges_and_counts_learned_plus_cg_iterations():
    torch.manual_seed(0)
    batch = _batch([(6, 0), (8, 1), (5, 2)])
    model = UnrolledCG(steps=5, precond="jacobi").double()
    with torch.no_grad():
        model.s.copy_(0.2 * torch.randn(5))
        model.t.copy_(0.2 * torch.randn(5))
    x, info = model.solve(batch, rtol=1e-8)
    assert bool(info.converged.all())
    assert torch.allclose(x, batch.x, rtol=0, atol=1e-6 * float(batch.x.abs().max()))
    # independent count: the same K steps, then learnsolve's PCG from x_K
    A, Bm, _ = _canonical(batch)
    d = A.diagonal().view(1, -1, 1)
    with torch.no_grad():
        XK, _, taken, _ = unrolled_cg(A, Bm, model.s, model.t, lambda R: R / d, rtol=1e-8)
        _, info_cg = cg(A, Bm.view(-1), lambda R: R / d, x0=XK.view(-1), rtol=1e-8, maxiter=2000)
    assert taken.view(-1).tolist() == [5, 5, 5]
    assert torch.equal(info.iterations, info_cg.iterations + taken.view(-1))
    assert info.residual_history.shape[0] == 5 + info_cg.residual_history.shape[0]


@pytest.mark.parametrize("precond", ["none", "jacobi"])
def test_untrained_solve_is_plain_cg_exactly(precond):
    batch = _batch([(32, 980001), (32, 980002), (24, 980003)])
    model = UnrolledCG(steps=8, precond=precond).double()
    with torch.no_grad():
        x, info = model.solve(batch, rtol=1e-6)
        x_ref, ref = cg(SparseMatrix.from_pyg(batch), batch.b.double(), M=None if precond == "none" else "jacobi",
                        rtol=1e-6)
    # the same recurrence; over ~400 unpreconditioned iterations rounding (another operation order than
    # linalg.cg's) may move a count by 1%
    diff = (info.iterations.view(-1) - ref.iterations.view(-1)).abs().double()
    assert bool((diff <= torch.clamp(0.01 * ref.iterations.view(-1).double(), min=0.0)).all()), (info.iterations, ref)
    assert bool(info.converged.all())
    assert torch.allclose(x, x_ref, rtol=0, atol=1e-5 * float(x_ref.abs().max()))


@pytest.mark.parametrize("steps", [8, pytest.param(16, marks=pytest.mark.slow)])  # K = 8 is the fast twin
def test_trained_k_steps_reach_at_most_07_of_cgs_residual(steps):
    """The fixed-budget layer: after training on the residual loss, K learned steps leave at most 0.7x the
    residual of K Jacobi-PCG steps on every held-out system; the tolerance solve stays within 2% of PCG's
    iterations (restarted at x_K)."""
    torch.manual_seed(0)
    model = UnrolledCG(steps=steps, precond="jacobi").double()
    held = _batch([(32, 990000 + i) for i in range(8)])

    def residual():
        with torch.no_grad():
            A, Bm, M = model._system(held)
            X, *_ = model.iterate(A, Bm, M)
            return unrolled_loss(A, Bm, X, "residual")[1].view(-1)

    r0 = residual()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(250):
        # the residual loss needs no reference solution: the same systems, a third of the generation time
        loss, _ = model.training_loss(_batch([(32, 8 * step + j) for j in range(8)], reference=False))
        opt.zero_grad()
        loss.backward()
        opt.step()
    ratio = residual() / r0
    assert float(ratio.max()) <= 0.7, ratio
    with torch.no_grad():
        _, info = model.solve(held, rtol=1e-6)
        _, ref = cg(SparseMatrix.from_pyg(held), held.b.double(), M="jacobi", rtol=1e-6)
    assert bool(info.converged.all())
    assert float(info.iterations.double().mean()) <= 1.02 * float(ref.iterations.double().mean())


def test_graphs_that_converge_early_are_frozen():
    # an untrained model with more learned steps than CG needs: per-graph counts equal plain CG's,
    # and a graph with b = 0 (r = 0 from the start) stays at x = 0 without NaNs
    batch = _batch([(4, 0), (5, 1)])
    model = UnrolledCG(steps=60).double()
    x, info = model.solve(batch, rtol=1e-8)
    x_ref, ref = cg(SparseMatrix.from_pyg(batch), batch.b, rtol=1e-8)
    assert torch.equal(info.iterations.view(-1), ref.iterations) and bool(info.converged.all())
    assert torch.allclose(x, x_ref, rtol=0, atol=1e-10 * float(x_ref.abs().max()))
    zero = _batch([(4, 0), (5, 1)])
    zero.b = torch.cat([torch.zeros(16, dtype=torch.float64), zero.b[16:]])
    X, _, taken, _ = model.iterate(*model._system(zero))
    assert torch.isfinite(X).all() and X.view(-1)[:16].abs().max() == 0
    assert taken.view(-1)[0] == 0


def test_bad_arguments_and_data():
    with pytest.raises(ValueError, match="unrolled_cg: unknown loss"):
        UnrolledCG(loss="l2")
    with pytest.raises(ValueError, match="unrolled_cg: steps"):
        UnrolledCG(steps=0)
    with pytest.raises(ValueError, match="unrolled_cg: unknown precond"):
        UnrolledCG(precond="ic0")
    batch = _batch([(4, 0)])
    batch.edge_attr = -batch.edge_attr
    with pytest.raises(ValueError, match="unrolled_cg needs a positive diagonal"):
        UnrolledCG().training_loss(batch)
