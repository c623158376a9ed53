"""``gnn_solver`` with ``mode="fcg"``: a GNN as the nonlinear preconditioner of flexible CG (the network runs
in every iteration; the default mode, a learned multigrid built once per system, is in :mod:`.gnn_solver`).

For a residual r of a system A x = b (one graph of a PyG batch), the network returns the direction

    z = P r + rms(P r) * g_theta(features(r, A, b))

with P a classical base preconditioner (``base="jacobi"``: P = D^{-1}; ``base="ic0"``: P = (L L^T)^{-1}
of IC(0), auto-shifted on breakdown, applied with the compiled triangular solves), node features
(r / rms(r), P r / rms(P r), log(a_ii / mean a_ii), log coefficient) and edge features
a_ij / sqrt(a_ii a_jj), so the map is invariant to the scale of A and of r. The output layer starts at
zero: an untrained model is P-preconditioned flexible CG (with a linear SPD P that is PCG). Flexible CG
tolerates a preconditioner that changes with r, so the solve still converges to any tolerance.

Training unrolls ``unroll_steps`` FCG iterations from x0 = 0 and minimises the mean over graphs of
log(||b - A x_K|| / ||b||) (``loss="log_residual"``) or of the relative A-norm error
||x_K - x*||_A^2 / ||x*||_A^2 (``loss="energy"``, needs the reference solution ``x``).

Measured limitation: the loss improves the first K steps, not the whole solve. With ``base="ic0"``
(32x32 diffusion2d, 200 Adam steps) the 8-step loss fell while the held-out iterations to 1e-6 rose
from 31.1 (= IC(0)-PCG, the untrained model) to 48.6; starting the unrolled window at a random
later phase of the solve did not fix it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from learnsolve.linalg import IC0, FunctionPreconditioner, SolveInfo, SparseMatrix, fcg
from learnsolve.nn.features import graph_rms, node_coefficient, require_positive_diagonal, system_features
from learnsolve.nn.layers import SystemConv, mlp

from .base import (
    ProgramModule,
    ProgramSpec,
    check_choice,
    check_int,
    one_system_batch,
    system_matrix,
    system_tensors,
)

LOSSES = ("log_residual", "energy")
BASES = ("jacobi", "ic0")


@dataclass
class Context:
    """What the network needs of a batch of systems, computed once per solve (no parameters inside):
    ``diag`` (N,), ``edge_index`` (2, E), ``edge`` (E, 1) and ``static`` (N, 2) features in the parameter
    dtype, ``graph`` (N,) graph of each node (None: one system) and ``num_graphs``."""

    diag: Tensor
    edge_index: Tensor
    edge: Tensor
    static: Tensor
    graph: Tensor | None
    num_graphs: int


class FCGNet(nn.Module):
    """The network and the flexible-CG solve of ``gnn_solver`` in ``mode="fcg"`` (see the module doc)."""

    def __init__(self, hidden: int = 32, layers: int = 3, unroll_steps: int = 8, truncation: int = 1,
                 loss: str = "log_residual", base: str = "jacobi"):
        super().__init__()
        check_choice("gnn_solver", "base", base, BASES)
        check_choice("gnn_solver", "loss", loss, LOSSES)
        self.base, self.loss_kind = base, loss
        self.unroll_steps = check_int("gnn_solver", "unroll_steps", unroll_steps, 1)
        self.truncation = int(truncation)
        self.encoder = mlp([4, hidden, hidden])
        self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=1) for _ in range(layers))
        self.head = mlp([hidden, hidden, 1])
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    # -- the preconditioner: plain tensor code shared with the exported program -------------------------
    def context(self, row: Tensor, col: Tensor, values: Tensor, coeff: Tensor, graph: Tensor | None = None,
                num_graphs: int = 1) -> Context:
        """The parameter-free inputs from A's COO entries (CSR order) and the node coefficients (N,)."""
        pdt = self.head[-1].weight.dtype
        f = system_features(row, col, values, coeff, graph, num_graphs)
        return Context(f.diag, torch.stack([row, col]), f.edge.to(pdt), f.node.to(pdt), graph, num_graphs)

    def direction(self, ctx: Context, r: Tensor, pr: Tensor) -> Tensor:
        """z = P r + rms(P r) g(features) (N,) for a residual r (N,) and its base-preconditioned P r (N,)."""
        pdt = ctx.static.dtype
        sj = graph_rms(pr, ctx.graph, ctx.num_graphs)
        x = torch.cat([(r / graph_rms(r, ctx.graph, ctx.num_graphs)).unsqueeze(-1).to(pdt),
                       (pr / sj).unsqueeze(-1).to(pdt), ctx.static], -1)
        h = self.encoder(x)
        for conv in self.convs:
            h = conv(h, ctx.edge_index, ctx.edge)
        return pr + sj * self.head(h).view(-1).to(r.dtype)

    def _setup(self, batch) -> tuple[SparseMatrix, FunctionPreconditioner]:
        A = system_matrix(batch)
        require_positive_diagonal(A.diagonal(), "gnn_solver")
        red = A.reducer()
        ctx = self.context(A.pattern.row.long(), A.pattern.col.long(), A.values,
                           node_coefficient(batch, A.values), red.segment, red.G)
        base = IC0(A, shift="auto").apply if self.base == "ic0" else None

        def apply(R: Tensor) -> Tensor:
            r = R.reshape(-1)
            pr = r / ctx.diag if base is None else base(R.reshape(1, -1, 1)).reshape(-1)
            return self.direction(ctx, r, pr).view(1, -1, 1)

        return A, FunctionPreconditioner(apply, linear=False)

    def preconditioner_for(self, batch) -> FunctionPreconditioner:
        """The nonlinear map R -> Z on canonical (1, N, 1) blocks for this batch of systems (flexible CG)."""
        return self._setup(batch)[1]

    def export_program(self) -> ProgramSpec:
        """One application z = f(r): inputs (system, r) with base "jacobi", (system, r, P r) with base "ic0"
        (the IC(0) solve is a compiled kernel no exporter captures: the caller computes it)."""
        def residual(data, seed: int) -> Tensor:
            g = torch.Generator().manual_seed(seed)
            return torch.randn(int(data.num_nodes), generator=g, dtype=torch.float64)

        def inputs(data, seed: int) -> tuple:
            r = residual(data, seed)
            if self.base == "jacobi":
                return (*system_tensors(data), r)
            A = system_matrix(one_system_batch(data))
            return (*system_tensors(data), r, IC0(A, shift="auto").apply(r.view(1, -1, 1)).view(-1))

        def reference(data, inputs: tuple) -> tuple:
            return (self.preconditioner_for(one_system_batch(data)).apply(inputs[3].view(1, -1, 1)).view(-1),)

        extra = ["r (n,) float64: the residual"]
        if self.base == "ic0":
            extra.append("pr (n,) float64: P r, the IC(0) preconditioner applied to r "
                         "(learnsolve.linalg.IC0(A, shift='auto')), computed by the caller")
        module = _JacobiProgram(self) if self.base == "jacobi" else _BaseInputProgram(self)
        z = ("z (n,) float64: one application z = f(r) of the nonlinear preconditioner (use it inside "
             "flexible CG / FGMRES, not plain CG)")
        return ProgramSpec(module, inputs=inputs, reference=reference, extra_inputs=extra, outputs=[z])

    # -- training and solving -------------------------------------------------------------------------
    def training_loss(self, batch) -> tuple[Tensor, dict]:
        A, M = self._setup(batch)
        red = A.reducer()
        Bm = batch.b.view(1, -1, 1).to(A.dtype)
        x, _ = fcg(A, Bm.view(-1), M, rtol=0.0, maxiter=self.unroll_steps, truncation=self.truncation)
        X = x.view(1, -1, 1)
        bn = red.norm(Bm)
        rel = red.norm(Bm - A.mv(X)) / bn
        if self.loss_kind == "log_residual":
            loss = torch.log(rel.clamp_min(1e-30)).mean()
        else:
            E = X - batch.x.view(1, -1, 1)
            xs = batch.x.view(1, -1, 1)
            loss = (red.dot(E, A.mv(E)) / red.dot(xs, A.mv(xs))).mean()
        return loss, {"rel_residual": float(rel.detach().mean())}

    @torch.no_grad()
    def solve(self, batch, rtol: float = 1e-6, maxiter: int = 2000) -> tuple[Tensor, SolveInfo]:
        """Flexible CG with the learned preconditioner on every graph of the batch."""
        A, M = self._setup(batch)
        return fcg(A, batch.b.view(-1).to(A.dtype), M, rtol=rtol, maxiter=maxiter, truncation=self.truncation)


class _JacobiProgram(ProgramModule):
    """(edge_index, values, feat, r) -> z with P r = r / diag(A): :meth:`GNNSolver.direction`."""

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor, r: Tensor) -> Tensor:
        ctx = self.model.context(edge_index[0], edge_index[1], values, feat[:, 1])
        return self.model.direction(ctx, r, r / ctx.diag)


class _BaseInputProgram(ProgramModule):
    """(edge_index, values, feat, r, pr) -> z with P r given: :meth:`GNNSolver.direction`."""

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor, r: Tensor, pr: Tensor) -> Tensor:
        ctx = self.model.context(edge_index[0], edge_index[1], values, feat[:, 1])
        return self.model.direction(ctx, r, pr)
