"""``lowrank_precond``: a learned low-rank correction of a preconditioner, on the inverse side (default) or
the forward side.

``side="inverse"`` (default): a learned coarse space corrects a classical B (``base``: IC(0) default, MIC(0),
Jacobi) where it is weak, at the small eigenvalues of B^{-1} A:

    M^{-1} = Q + (I - Q A) B^{-1} (I - A Q),     Q = Z (Z^T A Z)^{-1} Z^T,     Z = diag(w) S,

with S the 0/1 indicator of subdomains of about 9^``levels`` unknowns (repeated aggregation of A's graph) and
w > 0 one weight per unknown (:class:`learnsolve.linalg.CoarseCorrected`, SPD by construction; rank(Z) =
number of subdomains). ``variant="gnn"``: w_i = softplus(g(h_i) + log(e - 1)) from the node embeddings below
(g starts at zero: the untrained model is B with Nicolaides' piecewise-constant coarse space);
``variant="fixed"``: w = exp(l), l a parameter per unknown for one size. Loss: the mean log Lanczos
kappa(M^{-1} A) from ``cond_steps`` PCG steps (``loss="kappa"``), or the probe residual below
(``loss="probe"``).

``side="forward"`` (the original design, kept as an option): for each system (graph g of a PyG batch, n_g
unknowns) the model builds

    M_g = D_g + U_g U_g^T,      D_g = diag(d) > 0 (n_g), U_g (n_g, r)

and PCG applies M_g^{-1} with the Woodbury identity

    M_g^{-1} v = D_g^{-1} v - D_g^{-1} U_g C_g^{-1} U_g^T D_g^{-1} v,     C_g = I_r + U_g^T D_g^{-1} U_g,

so M^{-1} is linear, symmetric and positive definite (C_g >= I) for any parameters: plain CG applies.
M^{-1} is :class:`learnsolve.linalg.LowRankDiagonal` with one block per graph (``segment``): the r x r
matrices C_g are assembled for all graphs at once with a segment sum of the per-node outer products
u_i u_i^T / d_i; an application costs O(N r k) for k right-hand sides plus O(G r^3) for the small solves.
No n x n matrix is ever formed.

Variants:

- ``"gnn"`` (default): node embeddings h_i from :class:`~learnsolve.nn.layers.SystemConv` layers on A's
  graph (node features log(a_ii / mean_g a_ii), log|coefficient|, (sum_j a_ij) / a_ii; edge features
  a_ij / sqrt(a_ii a_jj)) give d_i = a_ii softplus(w_d(h_i) + log(e - 1)) and U_i = sqrt(a_ii / n_g) w_U(h_i).
  Scale-covariant (A -> cA gives M -> cM) and size-agnostic; w_d starts at zero, so the untrained model
  is Jacobi plus a small low-rank term.
- ``"fixed"``: free parameters for one size n = ``num_nodes``: d_i = mean_g(a_ii) exp(l_i),
  U_i = sqrt(mean_g(a_ii) / n) u_i, with l = 0 and small random u at initialisation.

Loss: the probe residual mean_{g, probes} ||A M^{-1} z - z||^2 / ||z||^2 over ``probes`` fresh standard
normal vectors z per graph (an unbiased estimate of ||A M^{-1} - I||_F^2 / n_g), plus
``cond_weight`` * mean_g log kappa(M^{-1} A) from ``cond_steps`` Lanczos (PCG) steps
(:func:`learnsolve.linalg.solvers.spectral.condition_estimate`).

Note: M >= D in the Loewner order, so for a fixed D the forward low-rank term can only lower eigenvalues of
M^{-1} A (Courant-Fischer on x^T A x / x^T M x); it cannot lift the smallest ones (measured: it ended at
Jacobi's iterations). The inverse side lifts them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnsolve.linalg import (
    IC0,
    MIC0,
    CoarseCorrected,
    Jacobi,
    LowRankDiagonal,
    Preconditioner,
    SparseMatrix,
    condition_estimate,
    subdomains,
)
from learnsolve.nn.features import (
    diagonal,
    graph_mean,
    graph_size,
    node_coefficient,
    require_positive_diagonal,
    system_features,
)
from learnsolve.nn.layers import SystemConv, mlp

from .base import (
    BASE_TITLES,
    LearnedModel,
    ProgramModule,
    ProgramSpec,
    check_choice,
    check_int,
    one_system_batch,
    system_matrix,
)

VARIANTS = ("gnn", "fixed")
SIDES = ("inverse", "forward")
BASES = ("ic0", "mic0", "jacobi")
LOSSES = ("kappa", "probe")
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1


def probe_residual(A: SparseMatrix, M: Preconditioner, Z: Tensor) -> Tensor:
    """Per graph mean over probes of ||A M^{-1} z - z||^2 / ||z||^2: Z (1, N, p) -> (G,). Cost p SpMVs."""
    red = A.reducer()
    E = A.mv(M.apply(Z)) - Z
    return (red.dot(E, E) / red.dot(Z, Z)).mean(-1).view(-1)


class LowRankPreconditioner(LearnedModel):
    """Learned M = D + U U^T per system, applied by Woodbury inside PCG.

    Args: ``variant`` "gnn" | "fixed"; ``rank`` r >= 1; ``num_nodes`` (fixed variant only: the one
    system size it serves); ``hidden``, ``layers`` (gnn variant: width and number of SystemConv layers);
    ``probes`` >= 1 random vectors per graph in the loss; ``cond_weight`` >= 0 and ``cond_steps`` >= 2 for
    the optional log-condition term; ``init_scale`` > 0 the size of the initial low-rank factor.
    """

    kind = "preconditioner"
    requires_spd = True
    is_linear = True
    # per instance: "lowrank_diag" on the forward side; the inverse side has no one-matrix form
    matrix_type = None

    def __init__(self, variant: str = "gnn", rank: int = 4, num_nodes: int | None = None, hidden: int = 16,
                 layers: int = 2, probes: int = 4, cond_weight: float = 0.0, cond_steps: int = 60,
                 init_scale: float = 0.1, side: str = "inverse", base: str = "ic0", levels: int = 2,
                 loss: str = "kappa"):
        super().__init__()
        check_choice("lowrank_precond", "variant", variant, VARIANTS)
        check_choice("lowrank_precond", "side", side, SIDES)
        check_choice("lowrank_precond", "base", base, BASES)
        check_choice("lowrank_precond", "loss", loss, LOSSES)
        self.side, self.base, self.loss_kind = side, base, loss
        self.levels = check_int("lowrank_precond", "levels", levels, 1)
        if side == "forward":
            self.matrix_type = "lowrank_diag"
        for name, val, lo in (("rank", rank, 1), ("probes", probes, 1), ("cond_steps", cond_steps, 2),
                              ("hidden", hidden, 1), ("layers", layers, 0)):
            check_int("lowrank_precond", name, val, lo)
        if not cond_weight >= 0:
            raise ValueError(f"lowrank_precond: cond_weight must be >= 0, got {cond_weight!r}")
        if not init_scale > 0:
            raise ValueError(f"lowrank_precond: init_scale must be > 0, got {init_scale!r}")
        self.variant, self.rank = variant, int(rank)
        self.probes, self.cond_weight, self.cond_steps = int(probes), float(cond_weight), int(cond_steps)
        if variant == "fixed":
            if num_nodes is None or int(num_nodes) != num_nodes or num_nodes < 1:
                raise ValueError("lowrank_precond: variant 'fixed' needs num_nodes (an integer >= 1, the "
                                 f"system size it is built for), got {num_nodes!r}")
            self.num_nodes = int(num_nodes)
            self.log_d = nn.Parameter(torch.zeros(self.num_nodes))  # inverse side: log w
            if side == "forward":
                self.u = nn.Parameter(init_scale * torch.randn(self.num_nodes, self.rank))
        else:
            self.num_nodes = None
            self.encoder = mlp([3, hidden, hidden])
            self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=1) for _ in range(int(layers)))
            self.head_d = mlp([hidden, hidden, 1])  # inverse side: the coarse-space weights w
            nn.init.zeros_(self.head_d[-1].weight)
            nn.init.zeros_(self.head_d[-1].bias)
            if side == "forward":  # (no unused parameters on the inverse side: DDP requires it)
                self.head_u = mlp([hidden, hidden, self.rank])
                # not zero: the loss is quadratic in U near U = 0, so a zero factor would get no gradient
                with torch.no_grad():
                    self.head_u[-1].weight.mul_(init_scale)
                    self.head_u[-1].bias.mul_(init_scale)

    # -- the preconditioner --------------------------------------------------------------------------
    def _system(self, batch) -> SparseMatrix:
        A = system_matrix(batch)
        require_positive_diagonal(A.diagonal(), "lowrank_precond")
        return A

    def factor_arrays(self, row: Tensor, col: Tensor, values: Tensor, coeff: Tensor,
                      graph: Tensor | None = None, num_graphs: int = 1) -> tuple[Tensor, Tensor]:
        """(D (N,), U (N, r)) in the values' dtype from A's COO entries in CSR order (row, col, values (E,),
        coefficient (N,); ``graph`` (N,) graph of each node, None for one system). Plain tensor code: the
        batched :meth:`factors` and the exported program both run it. The fixed variant needs graphs of
        ``num_nodes`` nodes (checked by :meth:`factors`)."""
        dt = values.dtype
        if self.variant == "fixed":
            d = diagonal(row, col, values, coeff.shape[0])
            dmean = graph_mean(d, graph, num_graphs)
            copies = d.shape[0] // self.num_nodes
            D = dmean * torch.exp(self.log_d).to(dt).repeat(copies)
            U = (torch.sqrt(dmean / graph_size(graph, num_graphs, d)).unsqueeze(-1)
                 * self.u.to(dt).repeat(copies, 1))
            return D, U
        pdt = self.head_d[-1].weight.dtype
        f = system_features(row, col, values, coeff, graph, num_graphs, rowsum=True)
        h = self.encoder(f.node.to(pdt))
        ei, edge = torch.stack([row, col]), f.edge.to(pdt)
        for conv in self.convs:
            h = conv(h, ei, edge)
        D = f.diag * F.softplus(self.head_d(h).view(-1).to(dt) + _SOFTPLUS_ONE)
        U = torch.sqrt(f.diag / graph_size(graph, num_graphs, f.diag)).unsqueeze(-1) * self.head_u(h).to(dt)
        return D, U

    def factors(self, batch, A: SparseMatrix | None = None) -> tuple[Tensor, Tensor]:
        """(D (N,), U (N, r)) in the system dtype for every graph of the batch."""
        A = self._system(batch) if A is None else A
        red = A.reducer()
        self._check_sizes(A)
        return self.factor_arrays(A.pattern.row.long(), A.pattern.col.long(), A.values,
                                  node_coefficient(batch, A.values), red.segment, red.G)

    def preconditioner_for(self, batch) -> LowRankDiagonal:
        """M^{-1} (linear, SPD, symmetric) on canonical (1, N, k) blocks of this batch's block-diagonal A."""
        return self._precond(batch, self._system(batch))

    def fallback_for(self, batch) -> Preconditioner:
        """Forward side: Jacobi, M = diag(A), the classical method it extends (its D starts at diag(A));
        inverse side: IC(0) (:meth:`LearnedModel.fallback_for`). The safeguard's reference and the fallback
        where it rejects M."""
        if self.side == "inverse":
            return super().fallback_for(batch)
        return Jacobi(self._system(batch))

    def base_preconditioner(self, A: SparseMatrix) -> Preconditioner:
        """B of the inverse side (IC(0) / MIC(0) with an automatic shift where they break down, or Jacobi)."""
        if self.base == "jacobi":
            return Jacobi(A)
        return (IC0 if self.base == "ic0" else MIC0)(A, shift="auto")

    def _check_sizes(self, A: SparseMatrix) -> None:
        """The fixed variant serves graphs of ``num_nodes`` nodes only: ValueError naming the first other
        one."""
        if self.variant != "fixed":
            return
        red = A.reducer()
        sizes = (torch.bincount(red.segment, minlength=red.G).tolist() if red.segment is not None
                 else [A.shape[0]])
        bad = [(g, s) for g, s in enumerate(sizes) if s != self.num_nodes]
        if bad:
            g, s = bad[0]
            raise ValueError(f"lowrank_precond (variant 'fixed') was built for num_nodes={self.num_nodes}, "
                             f"but graph {g} of the batch has {s} nodes; use variant 'gnn' for other sizes")

    def coarse_weights(self, batch, A: SparseMatrix) -> Tensor:
        """w (N,) > 0, the learned weights of the coarse space Z = diag(w) S (inverse side)."""
        red = A.reducer()
        if self.variant == "fixed":
            self._check_sizes(A)
            return torch.exp(self.log_d).to(A.dtype).repeat(A.shape[0] // self.num_nodes)
        row, col = A.pattern.row.long(), A.pattern.col.long()
        f = system_features(row, col, A.values, node_coefficient(batch, A.values), red.segment, red.G,
                            rowsum=True)
        pdt = self.head_d[-1].weight.dtype
        h = self.encoder(f.node.to(pdt))
        ei, edge = torch.stack([row, col]), f.edge.to(pdt)
        for conv in self.convs:
            h = conv(h, ei, edge)
        return F.softplus(self.head_d(h).view(-1).to(A.dtype) + _SOFTPLUS_ONE)

    def _precond(self, batch, A: SparseMatrix) -> Preconditioner:
        if self.side == "inverse":
            sub, m = subdomains(A, self.levels)
            return CoarseCorrected(A, self.base_preconditioner(A), sub, m, self.coarse_weights(batch, A))
        D, U = self.factors(batch, A)
        red = A.reducer()
        return LowRankDiagonal(D, U, segment=red.segment, num_blocks=red.G)

    def export_program(self) -> ProgramSpec | str:
        if self.side == "inverse":
            return ("lowrank_precond (side inverse) has no compiled program yet: its coarse space needs the "
                    "aggregation (pyamg) at setup; exported as weights and config only")

        def reference(data, _inputs):
            return self.factors(one_system_batch(data))

        return ProgramSpec(_FactorsProgram(self), reference=reference,
                           outputs=["D (n,) float64 > 0", f"U (n, {self.rank}) float64: M = D + U U^T"])

    # -- training and solving ------------------------------------------------------------------------
    def classical_start(self) -> str | None:
        if self.side == "inverse" and self.variant == "gnn":
            return f"{BASE_TITLES.get(self.base, self.base)} with Nicolaides' piecewise-constant coarse space"
        # forward side / fixed variant: a random low-rank term at the start, not a classical method
        return None

    def training_loss(self, batch) -> tuple[Tensor, dict]:
        A = self._system(batch)
        M = self._precond(batch, A)
        if self.side == "inverse" and self.loss_kind == "kappa":
            log_kappa = torch.log(condition_estimate(A, M=M, steps=self.cond_steps).clamp_min(1.0)).mean()
            return log_kappa, {"log_kappa": float(log_kappa.detach())}
        Z = torch.randn(1, A.shape[0], self.probes, dtype=A.dtype, device=A.device)  # fresh probes every call
        probe = probe_residual(A, M, Z).mean()
        logs = {"probe_residual": float(probe.detach())}
        loss = probe
        if self.cond_weight > 0:
            log_kappa = torch.log(condition_estimate(A, M=M, steps=self.cond_steps)).mean()
            loss = loss + self.cond_weight * log_kappa
            logs["log_kappa"] = float(log_kappa.detach())
        return loss, logs


class _FactorsProgram(ProgramModule):
    """(edge_index, values, feat) -> (D, U): :meth:`LowRankPreconditioner.factor_arrays` on one system."""

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor):
        return self.model.factor_arrays(edge_index[0], edge_index[1], values, feat[:, 1])
