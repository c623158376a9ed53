"""``gnn_solver``: a GNN as the nonlinear preconditioner of flexible CG.

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

import torch
from torch import Tensor, nn

from learnsolve.linalg import IC0, FunctionPreconditioner, SolveInfo, SparseMatrix, fcg
from learnsolve.nn.layers import SystemConv, mlp

LOSSES = ("log_residual", "energy")
BASES = ("jacobi", "ic0")


class GNNSolver(nn.Module):
    kind = "solver"
    requires_spd = True  # flexible CG

    def __init__(self, hidden: int = 32, layers: int = 3, unroll_steps: int = 8, truncation: int = 1,
                 loss: str = "log_residual", base: str = "jacobi"):
        super().__init__()
        if base not in BASES:
            raise ValueError(f"gnn_solver: unknown base {base!r}; choose one of {', '.join(BASES)}")
        self.base = base
        if loss not in LOSSES:
            raise ValueError(f"gnn_solver: unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        if unroll_steps < 1:
            raise ValueError(f"gnn_solver: unroll_steps must be >= 1, got {unroll_steps}")
        self.unroll_steps, self.truncation, self.loss_kind = int(unroll_steps), int(truncation), loss
        self.encoder = mlp([4, hidden, hidden])
        self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=1) for _ in range(layers))
        self.head = mlp([hidden, hidden, 1])
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    # -- the preconditioner ------------------------------------------------------------------------
    def _context(self, batch):
        A = SparseMatrix.from_pyg(batch).detach()
        red = A.reducer()
        d = A.diagonal()
        if bool((d <= 0).any()):
            raise ValueError("gnn_solver needs a positive diagonal (an SPD family); got a non-positive a_ii")
        r, c = A.pattern.row.long(), A.pattern.col.long()
        pdt = self.head[-1].weight.dtype
        e = (A.values / torch.sqrt(d[r] * d[c])).unsqueeze(-1).to(pdt)
        counts = torch.ones(1, d.shape[0], 1, dtype=d.dtype, device=d.device)
        n_g = red.dot(counts, counts)  # (1, G, 1) nodes per graph
        dmean = red.expand(red.dot(d.view(1, -1, 1), counts) / n_g).view(-1)
        coeff = batch.feat[:, 1] if hasattr(batch, "feat") else torch.ones_like(d)
        static = torch.stack([torch.log(d / dmean), torch.log(coeff.abs().clamp_min(1e-12))], -1).to(pdt)
        return A, red, d, e, n_g, static

    def preconditioner(self, batch):
        """The nonlinear map R -> Z on canonical (1, N, 1) blocks for this batch of systems."""
        A, red, d, e, n_g, static = self._context(batch)
        ei = torch.stack([A.pattern.row.long(), A.pattern.col.long()])
        pdt = static.dtype

        def rms(v: Tensor) -> Tensor:  # per-graph root mean square, expanded to nodes, never 0
            s = red.expand(torch.sqrt(red.dot(v, v) / n_g)).view(-1)
            return torch.where(s > 0, s, torch.ones_like(s))

        base = IC0(A, shift="auto").apply if self.base == "ic0" else None

        def apply(R: Tensor) -> Tensor:
            r = R.view(1, -1, 1)
            pr = r / d.view(1, -1, 1) if base is None else base(r)
            sj = rms(pr)
            x = torch.cat([(r.view(-1) / rms(r)).unsqueeze(-1).to(pdt), (pr.view(-1) / sj).unsqueeze(-1).to(pdt),
                           static], -1)
            h = self.encoder(x)
            for conv in self.convs:
                h = conv(h, ei, e)
            w = self.head(h).view(-1).to(R.dtype)
            return (pr.view(-1) + sj * w).view(1, -1, 1)

        return apply, A, red

    # -- training and solving -------------------------------------------------------------------------
    def training_loss(self, batch) -> tuple[Tensor, dict]:
        M, A, red = self.preconditioner(batch)
        Bm = batch.b.view(1, -1, 1).to(A.dtype)
        x, _ = fcg(A, Bm.view(-1), FunctionPreconditioner(M, linear=False), rtol=0.0, maxiter=self.unroll_steps,
                   truncation=self.truncation)
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
        M, A, _ = self.preconditioner(batch)
        return fcg(A, batch.b.view(-1).to(A.dtype), FunctionPreconditioner(M, linear=False), rtol=rtol,
                   maxiter=maxiter, truncation=self.truncation)
