"""neural_ode and its data family trajectory2d: the data satisfy M(y) dy/dt = -K y, the model's mass
assembly + CG solve + integrator reproduce them with the true mass, and its gradients (backprop through
rk4 and the continuous adjoint) match finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from learnsolve.data import GENERATORS, to_scipy
from learnsolve.data.generators.trajectory import mass_matrix_values, trajectory2d
from learnsolve.models.neural_ode import NeuralODE
from learnsolve.training import LinearSystemDataModule

from .conftest import loss_directional_derivative, perturb_output_layers


def _batch(seeds, m=4, **params):
    return Batch.from_data_list([trajectory2d(m, seed=s, **params) for s in seeds])


def _true_mass_dense(data, y: np.ndarray, a: float, beta: float) -> np.ndarray:
    """diag(1 + a y^2) + beta/4 (D + W) from K's off-diagonal pattern (numpy, independent of the package)."""
    W = (to_scipy(data).toarray() != 0).astype(float)
    np.fill_diagonal(W, 0.0)
    return np.diag(1.0 + a * y**2) + 0.25 * beta * (np.diag(W.sum(1)) + W)


def _model(seed: int = 0, scale: float = 0.3, **kw) -> NeuralODE:
    """A float64 model with generic weights: seeded init, and the zero-initialised output layers perturbed
    (so the gradient of every parameter is non-trivial)."""
    torch.manual_seed(seed)
    model = NeuralODE(**kw).double()
    return perturb_output_layers(model, (model.edge_mlp[-1], model.node_mlp[-1]), seed, scale)


class TrueMassODE(NeuralODE):
    """The model's own assembly with the true mass plugged in: the edge MLP is the constant beta/8 (so
    m_ij = beta/4) and the diagonal excess is 1 + a y^2, hence m_ii = beta deg_i / 4 + 1 + a y_i^2."""

    def __init__(self, a: float, beta: float, **kw):
        super().__init__(**kw)
        self.a = a
        with torch.no_grad():
            self.edge_mlp[-1].weight.zero_()
            self.edge_mlp[-1].bias.fill_(beta / 8)

    def node_values(self, y, ctx):
        return 1.0 + self.a * y.to(ctx.logc.dtype) ** 2


# ------------------------------------------------------------------------------------------------ data


def test_trajectory2d_fields_shapes_determinism():
    d = trajectory2d(5, seed=7, num_times=6)
    n, T = 25, 6
    assert d.family == "trajectory2d" and d.symmetric and d.num_nodes == n
    assert d.y0.shape == (n,) and d.traj.shape == (n, T) and d.t.shape == (1, T) and d.feat.shape == (n, 3)
    assert d.pos.shape == (n, 2) and d.edge_index.shape[1] == d.edge_attr.shape[0]
    assert not hasattr(d, "b") or d.b is None  # not a linear system: no fake b/x
    assert torch.equal(d.traj[:, 0], d.y0) and float(d.y0.abs().max()) == pytest.approx(1.0)
    assert torch.allclose(d.t[0], torch.linspace(0, 0.05, T, dtype=torch.float64))
    # K is exactly diffusion2d's matrix for the same seed and field parameters
    base = GENERATORS["diffusion2d"](5, seed=7, rhs="smooth", sigma2=0.25, corr_len=0.2)
    assert torch.equal(d.edge_index, base.edge_index) and torch.equal(d.edge_attr, base.edge_attr)
    assert torch.equal(d.feat[:, :2], base.feat[:, :2]) and torch.equal(d.feat[:, 2], d.y0)
    # deterministic per seed, different across seeds; the solution decays (SPD K, SPD M)
    again = trajectory2d(5, seed=7, num_times=6)
    assert torch.equal(again.traj, d.traj) and torch.equal(again.edge_attr, d.edge_attr)
    assert not torch.allclose(trajectory2d(5, seed=8, num_times=6).traj, d.traj)
    norms = d.traj.norm(dim=0)
    assert bool((norms[1:] < norms[:-1]).all()) and float(norms[-1] / norms[0]) < 0.8
    with pytest.raises(ValueError, match="num_times"):
        trajectory2d(4, num_times=1)


@pytest.mark.parametrize("a, beta", [(1.0, 0.5), (2.0, 1.0)])
def test_trajectory2d_satisfies_the_ode(a, beta):
    """Central differences of the stored trajectory vs M_true(y)^{-1} (-K y) from an independent dense build."""
    T, tf = 401, 0.05
    d = trajectory2d(6, seed=3, a=a, beta=beta, t_final=tf, num_times=T)
    K = to_scipy(d).toarray()
    Y = d.traj.numpy()
    dt = tf / (T - 1)
    for j in (40, 150, 300):  # away from t = 0, where the rough part of y0 decays on a faster scale
        fd = (Y[:, j + 1] - Y[:, j - 1]) / (2 * dt)
        rhs = np.linalg.solve(_true_mass_dense(d, Y[:, j], a, beta), -K @ Y[:, j])
        assert np.linalg.norm(fd - rhs) < 1e-2 * np.linalg.norm(rhs), (j, np.linalg.norm(fd - rhs))
    # and the package's mass values agree with the independent dense build
    y = d.traj[:, 10]
    vals = mass_matrix_values(d.edge_index, y, a, beta)
    dense = torch.zeros(36, 36, dtype=torch.float64).index_put((d.edge_index[0], d.edge_index[1]), vals)
    assert np.allclose(dense.numpy(), _true_mass_dense(d, y.numpy(), a, beta), atol=1e-14)


def test_batching_two_trajectories():
    b = _batch([0, 1], m=4, num_times=7)
    assert b.t.shape == (2, 7) and b.traj.shape == (32, 7) and b.y0.shape == (32,) and b.feat.shape == (32, 3)
    assert torch.equal(b.traj[16:], trajectory2d(4, seed=1, num_times=7).traj)


def test_datamodule_builds_caches_and_batches_trajectories(tmp_path):
    kw = {"family": "trajectory2d", "size": 4, "num_train": 3, "num_val": 1, "num_test": 1, "batch_size": 2,
          "rhs": "smooth", "params": {"num_times": 5, "t_final": 0.02}, "data_dir": str(tmp_path), "progress": False}
    dm = LinearSystemDataModule(**kw)
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 2 and batch.t.shape == (2, 5) and batch.traj.shape == (32, 5)
    ref = trajectory2d(4, seed=int(batch.seed[0]), num_times=5, t_final=0.02)
    assert torch.equal(batch.traj[:16], ref.traj)
    out = NeuralODE(hidden=4, layers=1).metrics(batch)
    assert set(out) == {"traj_rel_error", "final_rel_error"} and all(torch.isfinite(v) for v in out.values())
    dm2 = LinearSystemDataModule(**kw)  # reload from the cache: identical data
    dm2.setup()
    assert torch.equal(dm2.datasets["train"][0].traj, dm.datasets["train"][0].traj)


# ----------------------------------------------------------------------------------------------- model


def test_mass_is_symmetric_positive_definite_for_random_parameters():
    b = _batch([0, 1], m=4, num_times=3)
    model = _model(scale=2.0, hidden=8, layers=2)
    ctx = model.context(b)
    y = 3.0 * torch.randn(32, dtype=torch.float64)
    Md = model.mass(y, ctx).to_dense().detach()
    assert torch.equal(Md, Md.T)
    assert torch.equal(Md[:16, 16:], torch.zeros(16, 16, dtype=torch.float64))  # block diagonal
    assert float(torch.linalg.eigvalsh(Md).min()) >= model.eps * (1 - 1e-12)
    # an untrained model is M = I
    Mi = NeuralODE().mass(y, NeuralODE().context(b)).to_dense()
    assert torch.allclose(Mi, torch.eye(32, dtype=torch.float64), atol=1e-6)


def test_true_mass_reproduces_the_data_trajectory():
    """Assembly (dominance diagonal) + block-diagonal CG solve + rk4 with M_theta = M_true gives the dopri5 data."""
    a, beta = 1.0, 0.5
    b = _batch([0, 1, 2], m=8, a=a, beta=beta)  # the default family: n = 64, T = 16
    model = TrueMassODE(a, beta, step_size=0.25).double()
    ctx = model.context(b)
    y = b.traj[:, 5]
    assert torch.allclose(model.mass_values(y, ctx), mass_matrix_values(b.edge_index, y, a, beta), atol=1e-14)
    out = model.metrics(b)
    assert float(out["traj_rel_error"]) < 2e-4 and float(out["final_rel_error"]) < 2e-4, out
    # the untrained model (M = I) is far off: the mass matters
    assert float(NeuralODE().double().metrics(b)["traj_rel_error"]) > 0.1


def test_vector_field_gradcheck():
    """f(y) = M_theta(y)^{-1} (-K y): implicit-differentiated CG solve + mass assembly, w.r.t. y."""
    b = _batch([0], m=3, num_times=3)
    model = _model(hidden=4, layers=1, solver_rtol=1e-13)
    f = model.vector_field(model.context(b))
    y = (0.5 * torch.randn(9, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: f(torch.zeros((), dtype=torch.float64), v), (y,), eps=1e-6,
                                    atol=1e-6, rtol=1e-5)


# backprop through rk4 is the exact gradient of the discrete loss (limited by CG's rtol and the FD step);
# the continuous adjoint differs from it by the integrator's error (measured 4e-8 here)
@pytest.mark.parametrize("adjoint, tol", [(False, 1e-6), (True, 1e-5)])
def test_loss_gradient_matches_central_difference(adjoint, tol):
    b = _batch([0, 1], m=4, num_times=4, t_final=0.01)
    model = _model(hidden=6, layers=1, step_size=0.25, adjoint=adjoint, solver_rtol=1e-13)
    fd, dd = loss_directional_derivative(model, b)
    assert abs(dd) > 1e-6 and abs(fd - dd) <= tol * abs(dd), (fd, dd)


def test_loss_decreases():
    torch.manual_seed(0)
    b = _batch([0, 1], m=4, num_times=5, t_final=0.02)
    model = NeuralODE(hidden=16, layers=2, step_size=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    first = float(model.training_loss(b)[0].detach())
    for _ in range(25):
        loss, _ = model.training_loss(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(model.training_loss(b)[0].detach())
    assert last < 0.3 * first, (first, last)


def test_validation_errors():
    for kw, word in (({"method": "leapfrog"}, "method"), ({"step_size": 0.0}, "step_size"),
                     ({"hidden": 0}, "hidden"), ({"solver_rtol": 2.0}, "solver_rtol")):
        with pytest.raises(ValueError, match=f"neural_ode.*{word}"):
            NeuralODE(**kw)
    model = NeuralODE(hidden=4, layers=1)
    assert model.kind == "surrogate"
    with pytest.raises(ValueError, match="neural_ode needs trajectory data"):
        model.training_loss(Batch.from_data_list([GENERATORS["diffusion2d"](4, seed=0)]))
    mixed = Batch.from_data_list([trajectory2d(3, seed=0, num_times=4, t_final=0.01),
                                  trajectory2d(3, seed=1, num_times=4, t_final=0.02)])
    with pytest.raises(ValueError, match="share the output times"):
        model.metrics(mixed)
