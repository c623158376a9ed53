"""``neural_ode``: a learned state-dependent system matrix inside a neural ODE.

``form="forced"`` (the brief's form; the config default, data ``forced2d``): the network predicts the system
matrix A_theta(y) from the state, on the problem's sparsity pattern, and the model integrates

    A_theta(y) dy/dt = f(t, y) = -y + sin(t),        y(0) = y0,

each right-hand-side evaluation being one differentiable CG solve with A_theta(y) (the same network and SPD
construction as M_theta below). ``form="mass"`` (class default): for a trajectory family (``trajectory2d``:
``M(y) dy/dt = -K y`` with K known), the model learns the mass and integrates

    dy/dt = M_theta(y)^{-1} (-K y),         y(0) = y0,

where ``M_theta(y)`` is a sparse SPD matrix assembled on K's pattern by two small MLPs:

    m_ij = phi(y_i, y_j, k_ij / sqrt(k_ii k_jj)) + phi(y_j, y_i, k_ij / sqrt(k_ii k_jj))     (i != j)
    m_ii = sum_{j != i} |m_ij| + softplus(psi(y_i, log coeff_i)) + eps

(``coeff`` = the local diffusion coefficient, column 1 of ``feat``). ``m_ij = m_ji`` exactly (the edge
feature is symmetric and the sum is symmetrised), and strict diagonal dominance with a positive diagonal
makes ``M_theta`` SPD for every ``y`` and every parameter value. The output layer of ``phi`` starts at
zero and ``psi``'s bias at ``softplus^{-1}(1 - eps)``, so an untrained model is ``M_theta = I`` (plain
linear diffusion ``dy/dt = -K y``).

Every right-hand-side evaluation is one differentiable sparse solve of the block-diagonal batch
(``learnsolve.linalg.solve``, Jacobi-preconditioned CG, implicit backward: one adjoint CG solve and an
O(nnz) gradient of M's values). The trajectory comes from ``torchdiffeq.odeint`` (backpropagation through
the integrator, memory O(steps N)) or ``odeint_adjoint`` (``adjoint=True``: the continuous adjoint ODE
integrated backwards, memory O(N), gradient exact up to the integrator's error).

Fixed-step methods ("euler", "midpoint", "rk4") split every output interval into ``ceil(1 / step_size)``
equal steps (``step_size`` is a fraction of the output spacing), so outputs land on the grid (no
interpolation). Adaptive methods ("dopri5", "bosh3") use ``ode_rtol``/``ode_atol``.

Loss: mean over graphs of ``||Y - Y*||_F^2 / ||Y*||_F^2`` over all nodes and output times of the graph.
Cost per training step: ``4 ceil(1/step_size) (T - 1)`` mass assemblies and CG solves (rk4) forward,
as many adjoint solves backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from learnsolve.linalg import Jacobi, SparseMatrix, solve
from learnsolve.nn.features import edge_features, log_coefficient, node_coefficient
from learnsolve.nn.layers import mlp

from .base import LearnedModel, check_choice, check_int

FIXED_METHODS = ("euler", "midpoint", "rk4")
FORMS = ("mass", "forced")
FAMILY = {"mass": "trajectory2d", "forced": "forced2d"}  # the data family each form integrates
ADAPTIVE_METHODS = ("dopri5", "bosh3")


@dataclass
class MassContext:
    """What the mass network needs from a batch, computed once per trajectory (no parameters inside).

    ``K``: the block-diagonal stiffness (detached); ``row``/``col`` (nnz,) its pattern; ``off`` (E,) and
    ``diag`` (N,) positions of off-diagonal and diagonal entries in the value array; ``khat`` (E, 1)
    normalised off-diagonal entries; ``logc`` (N, 1) log coefficient; ``batch`` (N,) graph of each node.
    """

    K: SparseMatrix
    row: Tensor
    col: Tensor
    off: Tensor
    diag: Tensor
    khat: Tensor
    logc: Tensor
    batch: Tensor
    num_graphs: int


def _grid(substeps: int):
    """torchdiffeq grid constructor: every interval of t cut into ``substeps`` equal steps."""

    def construct(func, y0, t):
        frac = torch.arange(substeps, dtype=t.dtype, device=t.device) / substeps
        inner = (t[:-1, None] + (t[1:] - t[:-1])[:, None] * frac).reshape(-1)
        return torch.cat([inner, t[-1:]])

    return construct


class NeuralODE(LearnedModel):
    """Neural ODE with a learned sparse SPD mass matrix (see the module docstring).

    Args:
        hidden: width of the MLPs; layers: hidden layers of each MLP (>= 1).
        method: torchdiffeq method, fixed-step ("euler", "midpoint", "rk4") or adaptive ("dopri5", "bosh3").
        step_size: fixed-step size as a fraction of the output spacing, in (0, 1].
        adjoint: use ``odeint_adjoint`` (continuous adjoint) instead of backpropagating through the steps.
        solver_rtol: relative tolerance of the inner CG solve with M_theta (per graph).
        eps: floor added to the diagonal of M_theta (strict diagonal dominance).
        ode_rtol: relative tolerance of adaptive methods.
        ode_atol: absolute tolerance of adaptive methods.
    """

    kind = "surrogate"
    requires_spd = True  # K and M_theta are SPD; M_theta is solved with CG

    def __init__(self, hidden: int = 16, layers: int = 2, method: str = "rk4", step_size: float = 0.25,
                 adjoint: bool = False, solver_rtol: float = 1e-8, eps: float = 1e-3, ode_rtol: float = 1e-6,
                 ode_atol: float = 1e-8, form: str = "mass"):
        super().__init__()
        check_choice("neural_ode", "method", method, FIXED_METHODS + ADAPTIVE_METHODS)
        check_choice("neural_ode", "form", form, FORMS)
        self.form = form
        hidden, layers = (check_int("neural_ode", "hidden", hidden, 1),
                          check_int("neural_ode", "layers", layers, 1))
        if not 0 < step_size <= 1:
            raise ValueError("neural_ode: step_size is a fraction of the output spacing in (0, 1], got "
                             f"{step_size}")
        if not 0 < solver_rtol < 1:
            raise ValueError(f"neural_ode: solver_rtol must be in (0, 1), got {solver_rtol}")
        if not 0 < eps < 1:
            raise ValueError(f"neural_ode: eps must be in (0, 1), got {eps}")
        if not (ode_rtol > 0 and ode_atol > 0):
            raise ValueError(f"neural_ode: ode_rtol and ode_atol must be positive, got {ode_rtol}, "
                             f"{ode_atol}")
        self.method, self.adjoint = method, bool(adjoint)
        self.step_size, self.solver_rtol, self.eps = float(step_size), float(solver_rtol), float(eps)
        self.ode_rtol, self.ode_atol = float(ode_rtol), float(ode_atol)
        self.edge_mlp = mlp([3] + [hidden] * layers + [1])
        self.node_mlp = mlp([2] + [hidden] * layers + [1])
        # start at M_theta = I: no coupling, softplus(bias) + eps = 1
        nn.init.zeros_(self.edge_mlp[-1].weight)
        nn.init.zeros_(self.edge_mlp[-1].bias)
        nn.init.zeros_(self.node_mlp[-1].weight)
        nn.init.constant_(self.node_mlp[-1].bias, math.log(math.expm1(1.0 - self.eps)))

    # -- the mass matrix -------------------------------------------------------------------------------
    def context(self, batch) -> MassContext:
        """Check the batch and gather the parameter-free inputs of the mass network."""
        for name in ("y0", "traj", "t"):
            if getattr(batch, name, None) is None:
                raise ValueError(f"neural_ode needs trajectory data (fields y0, traj, t), the batch has no "
                                 f"{name!r}: use a trajectory family (data=trajectory2d)")
        fam = getattr(batch, "family", None)
        families = set(fam) if isinstance(fam, (list, tuple)) else {fam}
        other = {f for f in families if f in FAMILY.values() and f != FAMILY[self.form]}
        if other:
            raise ValueError(f"neural_ode (form {self.form!r}) integrates {FAMILY[self.form]} trajectories, "
                             f"the batch holds {min(other)}: use "
                             f"form={next(k for k, v in FAMILY.items() if v in other)!r} or "
                             f"data={FAMILY[self.form]}")
        K = SparseMatrix.from_pyg(batch).detach()
        row, col = K.pattern.row.long(), K.pattern.col.long()
        dpos = K.pattern.diag_positions()
        if bool((dpos < 0).any()):
            raise ValueError("neural_ode needs K's diagonal in the sparsity pattern (the mass lives on it)")
        d = K.diagonal()
        if bool((d <= 0).any()):
            raise ValueError("neural_ode needs an SPD stiffness K (positive diagonal); got a non-positive "
                             "k_ii")
        off = (row != col).nonzero().squeeze(1)
        pdt = self.node_mlp[-1].weight.dtype
        khat = edge_features(row[off], col[off], K.values[off], d).to(pdt)
        logc = log_coefficient(node_coefficient(batch, d)).unsqueeze(-1).to(pdt)
        n = d.shape[0]
        gid = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros(n, dtype=torch.long)
        G = int(getattr(batch, "num_graphs", 1) or 1)
        return MassContext(K, row, col, off, dpos, khat, logc, gid.to(d.device).long(), G)

    def offdiag_values(self, y: Tensor, ctx: MassContext) -> Tensor:
        """m_ij (E,) at K's off-diagonal entries: the symmetrised edge MLP, in the parameter dtype."""
        pdt = ctx.khat.dtype
        yp = y.to(pdt).unsqueeze(-1)
        yi, yj = yp[ctx.row[ctx.off]], yp[ctx.col[ctx.off]]
        # phi(a, b) + phi(b, a) is bitwise symmetric (addition commutes) and khat_ij == khat_ji
        return (self.edge_mlp(torch.cat([yi, yj, ctx.khat], -1))
                + self.edge_mlp(torch.cat([yj, yi, ctx.khat], -1))).view(-1)

    def node_values(self, y: Tensor, ctx: MassContext) -> Tensor:
        """The positive diagonal excess (N,) ``softplus(psi(y_i, log coeff_i)) + eps``, parameter dtype."""
        yp = y.to(ctx.logc.dtype).unsqueeze(-1)
        return F.softplus(self.node_mlp(torch.cat([yp, ctx.logc], -1)).view(-1)) + self.eps

    def mass_values(self, y: Tensor, ctx: MassContext) -> Tensor:
        """Values (nnz,) of M_theta(y) on K's pattern, in y's dtype: off-diagonal ``m_ij``, diagonal
        ``sum_j |m_ij| + node_values``. Cost O(nnz hidden^2)."""
        m_off = self.offdiag_values(y, ctx)
        excess = self.node_values(y, ctx)
        m_diag = excess.new_zeros(excess.shape).index_add(0, ctx.row[ctx.off], m_off.abs()) + excess
        vals = y.new_zeros(ctx.K.nnz)
        return vals.index_copy(0, ctx.off, m_off.to(y.dtype)).index_copy(0, ctx.diag, m_diag.to(y.dtype))

    def mass(self, y: Tensor, ctx: MassContext) -> SparseMatrix:
        """M_theta(y) as a block-diagonal SparseMatrix (one SPD block per graph)."""
        return ctx.K.with_values(self.mass_values(y, ctx))

    # -- the ODE ---------------------------------------------------------------------------------------
    def vector_field(self, ctx: MassContext):
        """``f(t, y) = M_theta(y)^{-1} (-K y)`` for stacked states y (N,) of the batch.

        Each call is one CG solve to ``solver_rtol`` (per graph), warm-started from the previous call's
        solution (consecutive stages are close, so it saves iterations). The starting guess only
        changes the iteration count: the implicit gradient does not depend on it.
        """
        last: list[Tensor] = []

        def f(t: Tensor, y: Tensor) -> Tensor:
            M = self.mass(y, ctx)
            # the preconditioner does not change the solution: build it from detached values
            P = Jacobi.from_diagonal(M.diagonal().detach())
            rhs = -(ctx.K @ y) if self.form == "mass" else torch.sin(t).to(y.dtype) - y
            x = solve(M, rhs, method="cg", precond=P, rtol=self.solver_rtol, backward="implicit",
                      x0=last[0] if last else None)
            last[:] = [x.detach()]
            return x

        return f

    def _times(self, batch) -> Tensor:
        t = batch.t
        if t.ndim == 1:
            t = t.unsqueeze(0)
        if not torch.equal(t, t[:1].expand_as(t)):
            raise ValueError("neural_ode: all graphs of a batch must share the output times (rows of batch.t "
                             "differ); generate them with the same t_final and num_times")
        t = t[0]
        if t.numel() < 2 or not bool((t[1:] > t[:-1]).all()):
            raise ValueError("neural_ode: the output times must be strictly increasing, at least 2 of them")
        return t

    def trajectory(self, batch, ctx: MassContext | None = None) -> Tensor:
        """Predicted states (N, T) at the batch's output times, from ``batch.y0``."""
        ctx = self.context(batch) if ctx is None else ctx
        t = self._times(batch).to(ctx.K.dtype)
        y0 = batch.y0.to(ctx.K.dtype)
        f = self.vector_field(ctx)
        if self.method in FIXED_METHODS:
            kw = {"method": self.method,
                  "options": {"grid_constructor": _grid(math.ceil(1.0 / self.step_size - 1e-9))}}
        else:
            kw = {"method": self.method, "rtol": self.ode_rtol, "atol": self.ode_atol}
        if self.adjoint:
            Y = odeint_adjoint(f, y0, t,
                               adjoint_params=tuple(p for p in self.parameters() if p.requires_grad), **kw)
        else:
            Y = odeint(f, y0, t, **kw)
        return Y.T  # (T, N) -> (N, T)

    # -- training and evaluation -----------------------------------------------------------------------
    def _per_graph(self, sq: Tensor, ctx: MassContext) -> Tensor:
        return sq.new_zeros(ctx.num_graphs).index_add(0, ctx.batch, sq)

    def _errors(self, batch) -> tuple[Tensor, Tensor, Tensor]:
        """Per graph (G,): ||Y - Y*||^2, ||Y*||^2 over all times, and the final-time relative error."""
        ctx = self.context(batch)
        Y = self.trajectory(batch, ctx)
        ref = batch.traj.to(Y.dtype)
        if ref.shape != Y.shape:
            raise ValueError(f"neural_ode: batch.traj has shape {tuple(ref.shape)}, expected "
                             f"{tuple(Y.shape)}")
        E = Y - ref
        err2 = self._per_graph((E * E).sum(1), ctx)
        ref2 = self._per_graph((ref * ref).sum(1), ctx)
        fin = torch.sqrt(self._per_graph(E[:, -1] ** 2, ctx)
                         / self._per_graph(ref[:, -1] ** 2, ctx).clamp_min(1e-300))
        return err2, ref2.clamp_min(1e-300), fin

    def training_loss(self, batch) -> tuple[Tensor, dict]:
        err2, ref2, fin = self._errors(batch)
        rel2 = err2 / ref2
        loss = rel2.mean()
        return loss, {"traj_rel_error": float(torch.sqrt(rel2.detach()).mean()),
                      "final_rel_error": float(fin.detach().mean())}

    @torch.no_grad()
    def metrics(self, batch) -> dict[str, Tensor]:
        """Means over graphs of ``||Y - Y*||_F / ||Y*||_F`` (all times) and of the final-time relative
        error."""
        err2, ref2, fin = self._errors(batch)
        return {"traj_rel_error": torch.sqrt(err2 / ref2).mean(), "final_rel_error": fin.mean()}
