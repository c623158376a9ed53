"""``neural_if``: a learned incomplete factorisation M = L L^T for PCG (NeuralIF, Häusner et al. 2024, adapted).

A GNN on the graph of A (one graph of a PyG batch) outputs a lower-triangular factor L on the pattern of
tril(A), diagonal included. With d = diag(A), network outputs w (edge outputs for the strictly lower
entries, node outputs for the diagonal):

    L_ii = sqrt(a_ii) * exp(w_ii)                       (> 0, so L is nonsingular and M = L L^T is SPD)
    L_ij = a_ij / sqrt(a_jj) * (1 + w_ij),   i > j      (entries of tril(A) only: no fill-in)

The output layers start at zero, so the untrained model is L = (D + tril_strict(A)) D^{-1/2}, i.e.
M = (D + Lo) D^{-1} (D + Lo)^T: symmetric Gauss-Seidel (SSOR with omega = 1), SPD for SPD A and
usually better than Jacobi. The network sees only scale-free inputs (node: log(a_ii / mean a_ii),
log coefficient; edge: a_ij / sqrt(a_ii a_jj)), so w is invariant to scaling A and L scales as sqrt(A).

M^{-1} is applied with :class:`learnsolve.linalg.LLT` (two compiled sparse triangular solves, O(nnz(L))
each, differentiable w.r.t. L's values). On a PyG batch tril keeps the diagonal blocks, so every graph
gets its own factor and the graphs of a batch are independent.

Training (per graph, averaged over the graphs of the batch), never a triangular solve:

- ``loss="data"``: ||L L^T x - b||^2 / ||b||^2 with x the reference solution (``batch.x``): M must act
  like A on the solutions the family produces (A x = b).
- ``loss="probe"``: ||L L^T z - A z||^2 / ||A z||^2 for ``num_probes`` Gaussian probes z, averaged over
  the probes: a stochastic estimate of the relative (A-weighted) Frobenius mismatch of M and A.

plus ``diag_reg * mean(w_ii^2)``: a penalty on the log of the diagonal's deviation from sqrt(a_ii), which
keeps the factor's diagonal, and so the conditioning of the triangular solves, near the SSOR start.
Cost of the loss: one GNN pass (O(nnz hidden^2)) and three SpMVs per probe.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from learnsolve.linalg import LLT, SolveInfo, SparseMatrix, cg
from learnsolve.nn.layers import SystemConv, mlp

LOSSES = ("data", "probe")


class NeuralIF(nn.Module):
    """Learned sparse factor L on tril(A) and M = L L^T for PCG.

    Args: ``hidden`` channels, ``layers`` message-passing layers (>= 0), ``loss`` ("data" | "probe"),
    ``num_probes`` Gaussian probes per graph for ``loss="probe"``, ``diag_reg`` >= 0 weight of the
    log-diagonal penalty.
    """

    kind = "preconditioner"
    requires_spd = True  # M = L L^T is SPD, but PCG also needs A SPD

    def __init__(self, hidden: int = 16, layers: int = 3, loss: str = "data", num_probes: int = 4,
                 diag_reg: float = 0.0):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"neural_if: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if int(hidden) < 1:
            raise ValueError(f"neural_if: hidden must be >= 1, got {hidden}")
        if int(layers) < 0:
            raise ValueError(f"neural_if: layers must be >= 0, got {layers}")
        if int(num_probes) < 1:
            raise ValueError(f"neural_if: num_probes must be >= 1, got {num_probes}")
        if not float(diag_reg) >= 0.0:
            raise ValueError(f"neural_if: diag_reg must be >= 0, got {diag_reg}")
        hidden = int(hidden)
        self.loss_kind, self.num_probes, self.diag_reg = loss, int(num_probes), float(diag_reg)
        self.encoder = mlp([2, hidden, hidden])
        self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=1) for _ in range(int(layers)))
        self.edge_head = mlp([2 * hidden + 1, hidden, 1])  # w_ij from [h_i, h_j, e_ij], i > j
        self.diag_head = mlp([hidden, hidden, 1])  # w_ii from h_i
        for head in (self.edge_head, self.diag_head):
            # zero output layer: the untrained factor is the SSOR (symmetric Gauss-Seidel) factor
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    # -- the factor ----------------------------------------------------------------------------------
    def factor(self, batch) -> tuple[SparseMatrix, SparseMatrix, Tensor]:
        """(A, L, w_diag): A block-diagonal (detached), L on tril(A)'s pattern with values differentiable
        w.r.t. the parameters, and the (N,) diagonal outputs w_ii (for the regulariser).

        Cost: O(nnz(A) hidden^2) for the GNN and O(nnz(A)) to assemble L.
        """
        A = SparseMatrix.from_pyg(batch).detach()
        d = A.diagonal()
        if bool((d <= 0).any()):
            i = int((d <= 0).nonzero()[0, 0])
            raise ValueError(f"neural_if needs a positive diagonal (an SPD family); got a_ii = {float(d[i]):g} "
                             f"in row {i}")
        if not A.is_symmetric(rtol=1e-10):
            raise ValueError("neural_if needs a symmetric (SPD) matrix: L L^T approximates A and PCG needs "
                             "A = A^T; use an SPD family (not convdiff2d)")
        red = A.reducer()
        r, c = A.pattern.row.long(), A.pattern.col.long()
        pdt = self.diag_head[-1].weight.dtype
        sd = torch.sqrt(d)
        e = (A.values / (sd[r] * sd[c])).unsqueeze(-1).to(pdt)
        ones = torch.ones(1, d.shape[0], 1, dtype=d.dtype, device=d.device)
        dmean = red.expand(red.dot(d.view(1, -1, 1), ones) / red.dot(ones, ones)).view(-1)
        coeff = batch.feat[:, 1] if hasattr(batch, "feat") else torch.ones_like(d)
        x = torch.stack([torch.log(d / dmean), torch.log(coeff.abs().clamp_min(1e-12))], -1).to(pdt)
        h = self.encoder(x)
        ei = torch.stack([r, c])
        for conv in self.convs:
            h = conv(h, ei, e)

        low = A.tril()
        lr, lc = low.pattern.row.long(), low.pattern.col.long()
        off = lr != lc
        w_diag = self.diag_head(h).view(-1).to(d.dtype)
        # the edge MLP only on the strictly lower entries (the diagonal comes from the node head)
        lr_o, lc_o = lr[off], lc[off]
        e_o = (low.values[off] / (sd[lr_o] * sd[lc_o])).unsqueeze(-1).to(pdt)
        w_off = self.edge_head(torch.cat([h[lr_o], h[lc_o], e_o], -1)).view(-1).to(d.dtype)
        vals = torch.empty_like(low.values)
        vals = vals.masked_scatter(off, low.values[off] / sd[lc_o] * (1.0 + w_off))
        vals = vals.masked_scatter(~off, (sd * torch.exp(w_diag))[lr[~off]])
        return A, low.with_values(vals), w_diag

    def preconditioner(self, batch) -> LLT:
        """M^{-1} = L^{-T} L^{-1} on canonical (1, N, 1) blocks of the batch's block-diagonal A (linear, SPD)."""
        return LLT(self.factor(batch)[1])

    # -- training and solving -------------------------------------------------------------------------
    def training_loss(self, batch) -> tuple[Tensor, dict]:
        A, L, w_diag = self.factor(batch)
        red = A.reducer()
        LT = L.T
        if self.loss_kind == "data":
            if getattr(batch, "x", None) is None:
                raise ValueError("neural_if: loss='data' needs the reference solution batch.x; use loss='probe'")
            X = batch.x.view(1, -1, 1).to(A.dtype)
            T = A.mv(X) if getattr(batch, "b", None) is None else batch.b.view(1, -1, 1).to(A.dtype)
        else:
            X = torch.randn(1, A.shape[0], self.num_probes, dtype=A.dtype, device=A.device)
            T = A.mv(X)
        D = L.mv(LT.mv(X)) - T
        # (1, G, k) per graph and probe; a graph whose target is 0 contributes ||M x||^2 unscaled
        tn = red.dot(T, T)
        rel = red.dot(D, D) / torch.where(tn > 0, tn, torch.ones_like(tn))
        loss = rel.mean()
        if self.diag_reg > 0:
            loss = loss + self.diag_reg * (w_diag * w_diag).mean()
        return loss, {"rel_mismatch": float(rel.detach().sqrt().mean()),
                      "log_diag_rms": float(w_diag.detach().pow(2).mean().sqrt())}

    @torch.no_grad()
    def solve(self, batch, rtol: float = 1e-6, maxiter: int = 2000) -> tuple[Tensor, SolveInfo]:
        """PCG with M = L L^T on every graph of the batch (each graph converges and is counted on its own)."""
        A, L, _ = self.factor(batch)
        return cg(A, batch.b.view(-1).to(A.dtype), LLT(L), rtol=rtol, maxiter=maxiter)
