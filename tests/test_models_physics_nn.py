"""physics_nn: a learned discretisation A(theta), b(theta) fit to solutions through the implicit solve."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import nn
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS
from learnsolve.linalg import solve
from learnsolve.models.physics_nn import PhysicsNN, assemble, build_stencil

from .conftest import adam_losses, loss_directional_derivative


def _batch(seeds, m=8, family="diffusion2d"):
    return Batch.from_data_list([GENERATORS[family](m, seed=s) for s in seeds])


def _exact_fv(st, m: int, dim: int):
    """The generator's finite-volume coefficients (``_fv_diffusion``), from k and the grid indices alone.

    t_ij = 2 k_i k_j / (k_i + k_j) / h^2 across every interior face; beta_i = 2 k_i / h^2 for every face of
    cell i on the domain boundary (cell index 0 or m - 1 along an axis), h = 1 / m."""
    h = 1.0 / m
    ri, cj = st.row[st.off], st.col[st.off]
    k = st.k
    t = 2.0 * k[ri] * k[cj] / (k[ri] + k[cj]) / h**2
    local = torch.arange(k.numel()) - torch.repeat_interleave(torch.arange(st.G) * m**dim, m**dim)
    idx = np.stack(np.unravel_index(local.numpy(), (m,) * dim), 1)
    faces = torch.from_numpy(((idx == 0).sum(1) + (idx == m - 1).sum(1)).astype(np.float64))
    return t, 2.0 * k / h**2 * faces


class _Exact(nn.Module):
    """Stands in for an MLP: returns softplus^{-1} of a known function of its input features."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, z):
        y = self.fn(z)
        return torch.log(torch.expm1(y)).unsqueeze(1)  # softplus^{-1}; -inf where y = 0 (softplus(-inf) = 0)


@pytest.mark.parametrize("family,m,dim", [("diffusion2d", 6, 2), ("diffusion3d", 3, 3)])
def test_exact_transmissibilities_reproduce_the_data_matrix(family, m, dim):
    b = _batch([0, 1], m, family)
    st = build_stencil(b)
    t, beta = _exact_fv(st, m, dim)
    A = st.A.values
    vals = assemble(st, t, beta)
    assert float((vals - A).abs().max()) <= 1e-12 * float(A.abs().max())
    # the eps shift is the only other change: diag += eps * mean diag
    shifted = assemble(st, t, beta, eps=1e-8)
    assert float((shifted - vals).abs().max()) <= 2e-8 * float(A.abs().max())

    # the model's own parameterisation contains the truth: with the scale priors, the networks need only
    # produce sech((log k_i - log k_j) / 2) (harmonic / geometric mean) and 2 * (2 dim - deg_i)
    model = PhysicsNN(eps=0.0, rtol=1e-12).double()
    model.edge_net = _Exact(lambda z: 1.0 / torch.cosh(0.5 * (z[:, 0] - z[:, 1])))
    model.boundary_net = _Exact(lambda z: 2.0 * z[:, 1])
    A_theta, b_theta, _ = model.system(b)
    assert float((A_theta.values - A).abs().max()) <= 1e-12 * float(A.abs().max())
    assert torch.equal(b_theta, b.b)  # c is zero-initialised
    loss, _ = model.training_loss(b)
    assert loss.item() < 1e-20
    assert float(model.metrics(b)["coef_rel_error"]) < 1e-14


def test_random_net_assembles_symmetric_spd_m_matrix_and_solves_it():
    torch.manual_seed(3)
    model = PhysicsNN(hidden=16, layers=2).double()
    with torch.no_grad():  # a random network, far from the initialisation (c included)
        for p in model.parameters():
            p.add_(0.7 * torch.randn_like(p))
    b = Batch.from_data_list([GENERATORS["diffusion2d"](5, seed=10), GENERATORS["diffusion2d"](6, seed=11)])
    A, bt, st = model.system(b)
    D = A.to_dense().detach()
    n0 = 25
    assert torch.equal(D, D.T)
    assert float(D[:n0, n0:].abs().max()) == 0.0  # block diagonal: the graphs stay independent
    assert float(torch.linalg.eigvalsh(D).min()) > 0
    off = D - torch.diag(torch.diagonal(D))
    assert float(off.max()) <= 0.0 and bool((torch.diagonal(D) >= -off.sum(1)).all())  # diagonally dominant
    assert not torch.equal(bt, b.b)

    # x(theta) against scipy's sparse direct solve of the same assembled system; metrics by hand
    x_ref = spla.spsolve(sp.csc_matrix(D.numpy()), bt.detach().numpy())
    x, *_ = model._predict(b)
    assert np.allclose(x.detach().numpy(), x_ref, rtol=0, atol=1e-7 * np.abs(x_ref).max())
    met = model.metrics(b)
    D0 = st.A.to_dense()
    xs = [(x.detach()[s], b.x[s]) for s in (slice(0, n0), slice(n0, None))]
    rel = np.mean([float((xi - xr).norm() / xr.norm()) for xi, xr in xs])
    blocks = [(slice(0, n0), slice(0, n0)), (slice(n0, None), slice(n0, None))]
    coef = np.mean([float((D[blk] - D0[blk]).norm() / D0[blk].norm()) for blk in blocks])
    assert float(met["rel_error"]) == pytest.approx(rel, rel=1e-9)
    assert float(met["coef_rel_error"]) == pytest.approx(coef, rel=1e-12)
    # the scale-free error is the least-squares fit alpha * A(theta) ~ A: never above the plain one
    assert float(met["coef_rel_error_scaled"]) <= float(met["coef_rel_error"]) + 1e-15


def test_implicit_gradient_matches_central_finite_difference():
    torch.manual_seed(0)
    model = PhysicsNN(hidden=8, layers=2, rtol=1e-13, eps=1e-8).double()
    b = _batch([0, 1], m=5)
    fd, dd = loss_directional_derivative(model, b)
    assert abs(dd) > 1e-3
    assert dd == pytest.approx(fd, rel=1e-7)  # measured agreement: ~1e-9


def test_gradcheck_assembled_coefficients_to_loss():
    b = _batch([2], m=4)
    st = build_stencil(b)
    t0, beta0 = _exact_fv(st, 4, 2)
    torch.manual_seed(1)
    # a perturbed discretisation (loss > 0); inputs: transmissibilities, boundary terms, log-scale of b
    t = (t0 * (1 + 0.3 * torch.rand_like(t0))).requires_grad_()
    beta = (beta0 + 5.0).requires_grad_()
    c = (0.1 * torch.randn(16, dtype=torch.float64)).requires_grad_()

    def loss(t, beta, c):
        A = st.A.with_values(assemble(st, t, beta, 1e-8))
        x = solve(A, b.b * torch.exp(c), method="cg", precond="jacobi", rtol=1e-14, backward="implicit")
        return ((x - b.x) ** 2).sum() / (b.x**2).sum()

    assert loss(t, beta, c).item() > 1e-3
    assert torch.autograd.gradcheck(loss, (t, beta, c), eps=1e-6, atol=1e-7, rtol=1e-4)


def test_loss_decreases_and_learns_the_discretisation():
    torch.manual_seed(0)
    model = PhysicsNN(hidden=32, layers=2)
    train, val = _batch(range(4)), _batch(range(100, 102))
    before = {k: float(v) for k, v in model.metrics(val).items()}
    losses = adam_losses(model, train, steps=40, lr=1e-2)
    after = {k: float(v) for k, v in model.metrics(val).items()}
    print("physics_nn before", before, "after", after, "loss", losses[0], "->", losses[-1])
    assert losses[-1] < 0.1 * losses[0], losses
    assert after["rel_error"] < 0.5 * before["rel_error"]  # on systems it did not train on
    assert after["coef_rel_error_scaled"] < 0.8 * before["coef_rel_error_scaled"]


@pytest.mark.parametrize("form", ["spd", "general"])
def test_dense_variant_trains_and_checks_sizes(form):
    torch.manual_seed(0)
    train = _batch(range(4), m=4)
    model = PhysicsNN(variant="dense", num_nodes=16, dense_form=form)
    A, _, A_data = model.dense_system(train)
    assert A.shape == (4, 16, 16)
    assert torch.equal(A_data[1], build_stencil(train[1]).A.to_dense())
    if form == "spd":
        assert float(torch.linalg.eigvalsh(A.detach()).min()) > 0
    losses = adam_losses(model, train, steps=30, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    assert set(model.metrics(train)) == {"rel_error", "coef_rel_error", "coef_rel_error_scaled"}
    with pytest.raises(ValueError, match=r"physics_nn \(dense\).*num_nodes=16.*25"):
        model.training_loss(_batch([0], m=5))


def test_argument_and_data_errors():
    with pytest.raises(ValueError, match="physics_nn.*GiB"):
        PhysicsNN(variant="dense", num_nodes=4097)
    with pytest.raises(ValueError, match="physics_nn.*num_nodes"):
        PhysicsNN(variant="dense")
    for bad in ({"variant": "mlp"}, {"dense_form": "lu"}, {"hidden": 0}, {"layers": 0}, {"rtol": 0.0},
                {"eps": -1.0}, {"on_fail": "skip"}):
        with pytest.raises(ValueError, match="physics_nn"):
            PhysicsNN(**bad)
    model = PhysicsNN(hidden=4, layers=1)
    b = _batch([0], m=4)
    b.feat[3, 1] = -1.0
    with pytest.raises(ValueError, match="physics_nn.*positive"):
        model.training_loss(b)
    b = _batch([0], m=4)
    del b.x
    with pytest.raises(ValueError, match="physics_nn.*x"):
        model.training_loss(b)
