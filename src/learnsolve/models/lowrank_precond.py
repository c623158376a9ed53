"""``lowrank_precond``: a learned diagonal-plus-low-rank SPD preconditioner for PCG.

For each system (graph g of a PyG batch, n_g unknowns) the model builds

    M_g = D_g + U_g U_g^T,      D_g = diag(d) > 0 (n_g), U_g (n_g, r)

and PCG applies M_g^{-1} with the Woodbury identity

    M_g^{-1} v = D_g^{-1} v - D_g^{-1} U_g C_g^{-1} U_g^T D_g^{-1} v,     C_g = I_r + U_g^T D_g^{-1} U_g,

so M^{-1} is linear, symmetric and positive definite (C_g >= I) for any parameters: plain CG applies.
The r x r matrices C_g are assembled for all graphs at once with a segment sum of the per-node outer
products u_i u_i^T / d_i and factored by a batched Cholesky; an application costs O(N r k) for k
right-hand sides plus O(G r^2 k) for the small solves. No n x n matrix is ever formed.

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

from learnsolve.linalg import Preconditioner, SolveInfo, SparseMatrix, cg, condition_estimate
from learnsolve.nn.layers import SystemConv, mlp

VARIANTS = ("gnn", "fixed")
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1


class BlockLowRankPreconditioner(Preconditioner):
    """M^{-1} for M = D + U U^T on each diagonal block, by Woodbury (see the module docstring).

    ``D`` (N,) > 0, ``U`` (N, r); ``segment`` (N,) int64 block of each row (sorted, as in a PyG batch)
    or None for one block; ``num_blocks`` G. Applies to canonical blocks (Bx, N, k). Setup: O(N r^2)
    + a (G, r, r) Cholesky; apply: O(N r k + G r^2 k). Differentiable w.r.t. D and U. Symmetric.
    """

    symmetric = True

    def __init__(self, D: Tensor, U: Tensor, segment: Tensor | None = None, num_blocks: int = 1):
        if D.ndim != 1 or U.ndim != 2 or U.shape[0] != D.shape[0]:
            raise ValueError(f"BlockLowRankPreconditioner: D must be (N,) and U (N, r), got {tuple(D.shape)} "
                             f"and {tuple(U.shape)}")
        if not bool((D > 0).all()):
            raise ValueError("BlockLowRankPreconditioner: D must be positive (M = D + U U^T SPD)")
        N, r = U.shape
        if segment is None:
            segment, num_blocks = torch.zeros(N, dtype=torch.int64, device=D.device), 1
        self.segment, self.G = segment.long(), int(num_blocks)
        self.Dinv = 1.0 / D
        self.U = U
        outer = (U * self.Dinv.unsqueeze(-1)).unsqueeze(-1) * U.unsqueeze(-2)  # (N, r, r): u_i u_i^T / d_i
        C = torch.eye(r, dtype=U.dtype, device=U.device).expand(self.G, r, r)
        C = C.index_add(0, self.segment, outer)
        self.L = torch.linalg.cholesky(C)  # C >= I: never fails for finite D, U

    def apply(self, R: Tensor) -> Tensor:
        Bx, N, k = R.shape
        DR = R * self.Dinv.view(1, -1, 1)
        # W_g = U_g^T D_g^{-1} R_g: (Bx, G, r, k) by a segment sum of per-node rank-one terms
        W = R.new_zeros(Bx, self.G, self.U.shape[1], k).index_add(1, self.segment,
                                                                   self.U.view(1, N, -1, 1) * DR.unsqueeze(2))
        Y = torch.cholesky_solve(W, self.L.expand(Bx, *self.L.shape))
        corr = (self.U.view(1, N, -1, 1) * Y.index_select(1, self.segment)).sum(2)  # (Bx, N, k): U_g Y_g
        return DR - self.Dinv.view(1, -1, 1) * corr


def probe_residual(A: SparseMatrix, M: Preconditioner, Z: Tensor) -> Tensor:
    """Per graph mean over probes of ||A M^{-1} z - z||^2 / ||z||^2: Z (1, N, p) -> (G,). Cost p SpMVs."""
    red = A.reducer()
    E = A.mv(M.apply(Z)) - Z
    return (red.dot(E, E) / red.dot(Z, Z)).mean(-1).view(-1)


class LowRankPreconditioner(nn.Module):
    """Learned M = D + U U^T per system, applied by Woodbury inside PCG.

    Args: ``variant`` "gnn" | "fixed"; ``rank`` r >= 1; ``num_nodes`` (fixed variant only: the one
    system size it serves); ``hidden``, ``layers`` (gnn variant: width and number of SystemConv layers);
    ``probes`` >= 1 random vectors per graph in the loss; ``cond_weight`` >= 0 and ``cond_steps`` >= 2 for
    the optional log-condition term; ``init_scale`` > 0 the size of the initial low-rank factor.
    """

    kind = "preconditioner"
    requires_spd = True

    def __init__(self, variant: str = "gnn", rank: int = 4, num_nodes: int | None = None, hidden: int = 16,
                 layers: int = 2, probes: int = 4, cond_weight: float = 0.0, cond_steps: int = 20,
                 init_scale: float = 0.1):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"lowrank_precond: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        for name, val, lo in (("rank", rank, 1), ("probes", probes, 1), ("cond_steps", cond_steps, 2),
                              ("hidden", hidden, 1), ("layers", layers, 0)):
            if int(val) != val or val < lo:
                raise ValueError(f"lowrank_precond: {name} must be an integer >= {lo}, got {val!r}")
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
    def _system(self, batch):
        A = SparseMatrix.from_pyg(batch).detach()
        d = A.diagonal()
        if bool((d <= 0).any()):
            raise ValueError("lowrank_precond needs a positive diagonal (an SPD family); got a non-positive a_ii")
        return A, d

    def factors(self, batch, A: SparseMatrix | None = None) -> tuple[Tensor, Tensor]:
        """(D (N,), U (N, r)) in the system dtype for every graph of the batch."""
        if A is None:
            A, d = self._system(batch)
        else:
            d = A.diagonal()
        red = A.reducer()
        ones = torch.ones(1, d.shape[0], 1, dtype=d.dtype, device=d.device)
        n_g = red.dot(ones, ones)  # (1, G, 1) nodes per graph
        dmean = red.expand(red.dot(d.view(1, -1, 1), ones) / n_g).view(-1)
        n_node = red.expand(n_g).view(-1)
        if self.variant == "fixed":
            sizes = (n_g.view(-1)).to(torch.int64).tolist()
            bad = [(g, s) for g, s in enumerate(sizes) if s != self.num_nodes]
            if bad:
                g, s = bad[0]
                raise ValueError(f"lowrank_precond (variant 'fixed') was built for num_nodes={self.num_nodes}, "
                                 f"but graph {g} of the batch has {s} nodes; use variant 'gnn' for other sizes")
            G = len(sizes)
            D = dmean * torch.exp(self.log_d).to(d.dtype).repeat(G)
            U = torch.sqrt(dmean / n_node).unsqueeze(-1) * self.u.to(d.dtype).repeat(G, 1)
            return D, U
        h_d, h_u = self._embed(batch, A, d, dmean)
        D = d * F.softplus(h_d.to(d.dtype) + _SOFTPLUS_ONE)
        U = torch.sqrt(d / n_node).unsqueeze(-1) * h_u.to(d.dtype)
        return D, U

    def _embed(self, batch, A: SparseMatrix, d: Tensor, dmean: Tensor):
        pdt = self.head_d[-1].weight.dtype
        r, c = A.pattern.row.long(), A.pattern.col.long()
        e = (A.values / torch.sqrt(d[r] * d[c])).unsqueeze(-1).to(pdt)
        coeff = batch.feat[:, 1] if getattr(batch, "feat", None) is not None else torch.ones_like(d)
        rowsum = torch.zeros_like(d).index_add(0, r, A.values)
        x = torch.stack([torch.log(d / dmean), torch.log(coeff.to(d.dtype).abs().clamp_min(1e-12)), rowsum / d],
                        -1).to(pdt)
        h = self.encoder(x)
        ei = torch.stack([r, c])
        for conv in self.convs:
            h = conv(h, ei, e)
        return self.head_d(h).view(-1), self.head_u(h)

    def preconditioner(self, batch) -> BlockLowRankPreconditioner:
        """M^{-1} (linear, SPD, symmetric) on canonical (1, N, k) blocks of this batch's block-diagonal A."""
        A, _ = self._system(batch)
        return self._precond(batch, A)

    def _precond(self, batch, A: SparseMatrix) -> BlockLowRankPreconditioner:
        D, U = self.factors(batch, A)
        red = A.reducer()
        return BlockLowRankPreconditioner(D, U, red.segment, red.G)

    # -- training and solving ------------------------------------------------------------------------
    def training_loss(self, batch) -> tuple[Tensor, dict]:
        A, _ = self._system(batch)
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

    @torch.no_grad()
    def solve(self, batch, rtol: float = 1e-6, maxiter: int = 2000) -> tuple[Tensor, SolveInfo]:
        """PCG with the learned M on every graph of the batch."""
        A, _ = self._system(batch)
        return cg(A, batch.b.view(-1).to(A.dtype), self._precond(batch, A), rtol=rtol, maxiter=maxiter)
