"""``lowrank_precond``: a learned diagonal-plus-low-rank SPD preconditioner for PCG.

For each system (graph g of a PyG batch, n_g unknowns) the model builds

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
(:func:`learnsolve.linalg.spectral.condition_estimate`).

Note: M >= D in the Loewner order, so for a fixed D the low-rank term can only lower eigenvalues of
M^{-1} A (Courant-Fischer on x^T A x / x^T M x); it cannot lift the smallest ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnsolve.linalg import Jacobi, LowRankDiagonal, Preconditioner, SparseMatrix, condition_estimate
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
    LearnedModel,
    ProgramModule,
    ProgramSpec,
    check_choice,
    check_int,
    one_system_batch,
    system_matrix,
)

VARIANTS = ("gnn", "fixed")
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
    matrix_type = "lowrank_diag"

    def __init__(self, variant: str = "gnn", rank: int = 4, num_nodes: int | None = None, hidden: int = 16,
                 layers: int = 2, probes: int = 4, cond_weight: float = 0.0, cond_steps: int = 20,
                 init_scale: float = 0.1):
        super().__init__()
        check_choice("lowrank_precond", "variant", variant, VARIANTS)
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
                raise ValueError(f"lowrank_precond: variant 'fixed' needs num_nodes (an integer >= 1, the system "
                                 f"size it is built for), got {num_nodes!r}")
            self.num_nodes = int(num_nodes)
            self.log_d = nn.Parameter(torch.zeros(self.num_nodes))
            self.u = nn.Parameter(init_scale * torch.randn(self.num_nodes, self.rank))
        else:
            self.num_nodes = None
            self.encoder = mlp([3, hidden, hidden])
            self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=1) for _ in range(int(layers)))
            self.head_d = mlp([hidden, hidden, 1])
            self.head_u = mlp([hidden, hidden, self.rank])
            nn.init.zeros_(self.head_d[-1].weight)
            nn.init.zeros_(self.head_d[-1].bias)
            # not zero: the loss is quadratic in U near U = 0, so a zero factor would get no gradient
            with torch.no_grad():
                self.head_u[-1].weight.mul_(init_scale)
                self.head_u[-1].bias.mul_(init_scale)

    # -- the preconditioner --------------------------------------------------------------------------
    def _system(self, batch) -> SparseMatrix:
        A = system_matrix(batch)
        require_positive_diagonal(A.diagonal(), "lowrank_precond")
        return A

    def factor_arrays(self, row: Tensor, col: Tensor, values: Tensor, coeff: Tensor, graph: Tensor | None = None,
                      num_graphs: int = 1) -> tuple[Tensor, Tensor]:
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
            U = torch.sqrt(dmean / graph_size(graph, num_graphs, d)).unsqueeze(-1) * self.u.to(dt).repeat(copies, 1)
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
        if self.variant == "fixed":
            sizes = torch.bincount(red.segment, minlength=red.G).tolist() if red.segment is not None else [A.shape[0]]
            bad = [(g, s) for g, s in enumerate(sizes) if s != self.num_nodes]
            if bad:
                g, s = bad[0]
                raise ValueError(f"lowrank_precond (variant 'fixed') was built for num_nodes={self.num_nodes}, "
                                 f"but graph {g} of the batch has {s} nodes; use variant 'gnn' for other sizes")
        return self.factor_arrays(A.pattern.row.long(), A.pattern.col.long(), A.values,
                                  node_coefficient(batch, A.values), red.segment, red.G)

    def preconditioner_for(self, batch) -> LowRankDiagonal:
        """M^{-1} (linear, SPD, symmetric) on canonical (1, N, k) blocks of this batch's block-diagonal A."""
        return self._precond(batch, self._system(batch))

    def fallback_for(self, batch) -> Jacobi:
        """Jacobi, M = diag(A): the classical method this model extends (its D starts at diag(A)); the safeguard's
        reference and the fallback where it rejects the learned M."""
        return Jacobi(self._system(batch))

    def _precond(self, batch, A: SparseMatrix) -> LowRankDiagonal:
        D, U = self.factors(batch, A)
        red = A.reducer()
        return LowRankDiagonal(D, U, segment=red.segment, num_blocks=red.G)

    def export_program(self) -> ProgramSpec:
        def reference(data, _inputs):
            return self.factors(one_system_batch(data))

        return ProgramSpec(_FactorsProgram(self), reference=reference,
                           outputs=["D (n,) float64 > 0", f"U (n, {self.rank}) float64: M = D + U U^T"])

    # -- training and solving ------------------------------------------------------------------------
    def training_loss(self, batch) -> tuple[Tensor, dict]:
        A = self._system(batch)
        M = self._precond(batch, A)
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
