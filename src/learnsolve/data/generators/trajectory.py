"""Time-dependent systems: trajectories of a semi-discrete nonlinear-mass diffusion.

``trajectory2d`` integrates the method-of-lines ODE

    M(y) dy/dt = -K y,        y(0) = y0,        t in [0, t_final]

on the ``m x m`` cells of :func:`learnsolve.data.generators.structured.diffusion2d`: ``K`` is that
family's SPD 5-point finite-volume stiffness of ``-div(k grad u)`` (``k = exp(GRF)``, Dirichlet
boundary, scaled by the cell area so ``K ~ 1/h^2``), and the state-dependent mass is

    M(y) = diag(1 + a y_i^2) + (beta / 4) (D + W)

with ``W`` the 0/1 adjacency of K's off-diagonal pattern and ``D = diag(deg_i)`` its degree matrix: a
"consistent-mass-like" positive coupling of every cell to its grid neighbours (``beta / 4`` per neighbour,
``beta deg_i / 4`` added to the diagonal). ``D + W`` is a signless graph Laplacian (PSD), and ``M`` is
strictly diagonally dominant with a positive diagonal (``m_ii - sum_j |m_ij| = 1 + a y_i^2 >= 1``), hence
SPD for every ``y``; its eigenvalues lie in ``[1, 1 + a max y^2 + beta deg_max / 2]``.

Time scale: K is not rescaled. At ``m = 8`` its eigenvalues are about ``[18, 2e3]`` (``sigma2 = 0.25``,
``corr_len = 0.2``), so over the default ``t_final = 0.05`` the slowest mode decays by about ``e^{-1}``
(divided by the mass) while the oscillatory parts of the initial condition decay much faster. An
explicit integrator of the learned ODE needs steps ``dt <~ 2.8 / lambda_max(M^{-1} K)``.

Reference: torchdiffeq ``dopri5`` in float64 (rtol 1e-9, atol 1e-11) with ``dy/dt`` from a dense
``torch.linalg.solve`` of ``M(y)`` (exact for these small n; cost O(n^3) per evaluation), output at
``num_times`` equally spaced times in ``[0, t_final]`` (dense output, ``traj[:, 0] = y0``).

``y0``: the right-hand side kind of :func:`learnsolve.data.make_rhs` ("smooth": low-frequency sines,
"random", "point") normalised to ``max |y0| = 1``, so the nonlinearity ``a y^2`` is at most ``a``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data
from torchdiffeq import odeint

from ..system import to_scipy
from .structured import diffusion2d

__all__ = ["GENERATORS", "forced2d", "mass_matrix_values", "trajectory2d"]


def mass_matrix_values(edge_index: Tensor, y: Tensor, a: float, beta: float) -> Tensor:
    """Values of ``M(y) = diag(1 + a y^2) + (beta/4)(D + W)`` on the pattern ``edge_index`` (2, nnz).

    ``y`` (n,) or a batch of graphs stacked (N,) (the pattern is then block diagonal; degrees are
    counted per row, so the formula holds graph by graph). Differentiable in ``y``. Cost O(nnz).
    Every stored entry off the diagonal is a neighbour (weight 1 in ``W``); the pattern must contain
    the diagonal.
    """
    row, col = edge_index[0], edge_index[1]
    on_diag = row == col
    deg = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device).index_add_(
        0, row[~on_diag], torch.ones(int((~on_diag).sum()), dtype=y.dtype, device=y.device))
    diag = 1.0 + a * y[row] ** 2 + 0.25 * beta * deg[row]
    return torch.where(on_diag, diag, torch.full_like(diag, 0.25 * beta))


def _dense(edge_index: Tensor, values: Tensor, n: int) -> Tensor:
    out = values.new_zeros(n, n)
    return out.index_put((edge_index[0], edge_index[1]), values)


def _check(family: str, a: float, beta: float, t_final: float, num_times) -> int:
    if not a >= 0 or not beta >= 0:
        raise ValueError(f"{family}: need a >= 0 and beta >= 0, got a={a}, beta={beta}")
    if not t_final > 0:
        raise ValueError(f"{family}: t_final must be positive, got {t_final}")
    if int(num_times) != num_times or num_times < 2:
        raise ValueError(f"{family}: num_times must be an integer >= 2, got {num_times!r}")
    return int(num_times)


def _trajectory(family: str, m: int, seed: int, rhs: str, sigma2: float, corr_len: float, t_final: float,
                num_times: int, field, params: dict) -> Data:
    """Integrate ``dy/dt = field(ei, Kd, n)(t, y)`` from y0 on diffusion2d's cells and pack the Data (shared
    by the trajectory families; ``params`` are the family's own parameters, between corr_len and t_final)."""
    base = diffusion2d(m, seed=seed, rhs=rhs, sigma2=sigma2, corr_len=corr_len)
    n = int(base.num_nodes)
    scale = float(base.b.abs().max())
    y0 = base.b / (scale if scale > 0 else 1.0)
    ei, K = base.edge_index, base.edge_attr
    f = field(ei, torch.from_numpy(to_scipy(base).toarray()), n)
    t = torch.linspace(0.0, float(t_final), num_times, dtype=torch.float64)
    with torch.no_grad():
        traj = odeint(f, y0, t, method="dopri5", rtol=1e-9, atol=1e-11).T.contiguous()  # (n, T)
    traj[:, 0] = y0  # dense output returns y0 exactly; keep it bitwise
    feat = torch.stack([base.feat[:, 0], base.feat[:, 1], y0], dim=1)
    params = {"m": int(base.params["m"]), "sigma2": float(sigma2), "corr_len": float(corr_len), **params,
              "t_final": float(t_final), "num_times": num_times, "rhs": rhs}
    return Data(edge_index=ei, edge_attr=K, pos=base.pos, y0=y0, traj=traj, t=t.unsqueeze(0), feat=feat,
                num_nodes=n, family=family, params=params, seed=int(seed), symmetric=True)


def trajectory2d(m: int = 8, *, seed: int = 0, rhs: str = "smooth", sigma2: float = 0.25,
                 corr_len: float = 0.2, a: float = 1.0, beta: float = 0.5, t_final: float = 0.05,
                 num_times: int = 16) -> Data:
    """One trajectory of ``M(y) dy/dt = -K y`` on an ``m x m`` grid (see the module docstring).

    Parameters: ``m`` cells per direction (``n = m^2``); ``seed`` draws the coefficient field, then
    ``y0`` (the same stream as :func:`diffusion2d`, so K equals ``diffusion2d(m, seed, sigma2=,
    corr_len=)``'s matrix); ``rhs`` the kind of ``y0``; ``sigma2``, ``corr_len`` of ``log k``; ``a >= 0``
    the strength of the state-dependent mass; ``beta >= 0`` the neighbour coupling; ``t_final > 0``;
    ``num_times >= 2`` output times.

    Returns a PyG ``Data`` with ``edge_index`` (2, nnz), ``edge_attr`` (nnz,) K's values, ``pos`` (n, 2),
    ``y0`` (n,), ``traj`` (n, T) (``traj[:, j] = y(t_j)``), ``t`` (1, T) (so a PyG batch holds (G, T)),
    ``feat`` (n, 3) = (diag K, k, y0), ``num_nodes``, ``family="trajectory2d"``, ``params``, ``seed``,
    ``symmetric=True``. There is no ``b``/``x``: this is not a linear system A x = b.
    Cost: one sparse factorisation for K's family plus the dopri5 integration (well under 1 s at m = 8).
    """
    num_times = _check("trajectory2d", a, beta, t_final, num_times)

    def field(ei, Kd, n):
        def f(t: Tensor, y: Tensor) -> Tensor:
            return torch.linalg.solve(_dense(ei, mass_matrix_values(ei, y, a, beta), n), -(Kd @ y))
        return f

    return _trajectory("trajectory2d", m, seed, rhs, sigma2, corr_len, t_final, num_times, field,
                       {"a": float(a), "beta": float(beta)})


def forced2d(m: int = 8, *, seed: int = 0, rhs: str = "smooth", sigma2: float = 0.25, corr_len: float = 0.2,
             a: float = 1.0, beta: float = 0.5, stiffness: float = 0.005, t_final: float = 3.0,
             num_times: int = 16) -> Data:
    """One trajectory of the brief's form ``A(y) dy/dt = f(t, y)`` with the external force ``f = -y + sin(t)``
    (every component) and the state-dependent SPD system matrix

        A(y) = M(y) + stiffness K,

    ``M(y)`` the mass of :func:`trajectory2d` and ``K`` diffusion2d's stiffness on the same cells
    (``stiffness`` 0.005 makes its off-diagonal entries, about -0.3 at m = 8, comparable to M's 0.125: a real
    coupling). A(y) is SPD for every y (M is, K is PSD). Same fields as :func:`trajectory2d` (``edge_attr``:
    K's values, the pattern A lives on), ``family="forced2d"``; the reference is dopri5 (rtol 1e-9, atol
    1e-11) with a dense solve. Time scale: the eigenvalues of A(y) lie in about [1, 5], so the default
    ``t_final = 3`` covers the decay of y0 and the forced oscillation."""
    if not stiffness >= 0:
        raise ValueError(f"forced2d: stiffness must be >= 0, got {stiffness}")
    num_times = _check("forced2d", a, beta, t_final, num_times)

    def field(ei, Kd, n):
        def f(t: Tensor, y: Tensor) -> Tensor:
            A = _dense(ei, mass_matrix_values(ei, y, a, beta), n) + stiffness * Kd
            return torch.linalg.solve(A, -y + torch.sin(t))
        return f

    return _trajectory("forced2d", m, seed, rhs, sigma2, corr_len, t_final, num_times, field,
                       {"a": float(a), "beta": float(beta), "stiffness": float(stiffness)})


GENERATORS = {"trajectory2d": trajectory2d, "forced2d": forced2d}
