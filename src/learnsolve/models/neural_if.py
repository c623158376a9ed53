"""``neural_if``: a learned incomplete factorisation M = L L^T for PCG (NeuralIF, Häusner et al. 2024, adapted),
optionally as a learned CORRECTION of a classical factor (PreCorrector, ICML 2025).

A GNN on the graph of A (one graph of a PyG batch) outputs a lower-triangular factor L on the pattern of
tril(A), diagonal included. With d = diag(A), a base factor B on the same pattern and network outputs w (edge
outputs for the strictly lower entries, node outputs for the diagonal):

    L_ii = B_ii * exp(w_ii)                             (> 0, so L is nonsingular and M = L L^T is SPD)
    L_ij = B_ij + a_ij / sqrt(a_jj) * w_ij,   i > j     (entries of tril(A) only: no fill-in)

``base="none"``: B is the symmetric Gauss-Seidel factor (B_ii = sqrt(a_ii), B_ij = a_ij / sqrt(a_jj)), the
original NeuralIF; ``base="ic0"`` / ``"mic0"``: B is the IC(0) / MIC(0) factor of A (computed at setup by the
compiled kernels, not differentiated; shifted where it breaks down). The output layers start at zero, so the
untrained model IS its base: M = B B^T. The network sees only scale-free inputs (node: log(a_ii / mean a_ii),
log coefficient and, with a base, log(B_ii^2 / a_ii); edge: a_ij / sqrt(a_ii a_jj) and, for the factor's
entries, B_ij / sqrt(a_ii)), so w is invariant to scaling A and L scales as sqrt(A).

M^{-1} is applied with :class:`learnsolve.linalg.LLT` (two compiled sparse triangular solves, O(nnz(L))
each, differentiable w.r.t. L's values). On a PyG batch tril keeps the diagonal blocks, so every graph
gets its own factor and the graphs of a batch are independent.

Training (per graph, averaged over the graphs of the batch), never a triangular solve:

- ``loss="data"``: ||L L^T x - b||^2 / ||b||^2 with x the reference solution (``batch.x``): M must act
  like A on the solutions the family produces (A x = b).
- ``loss="probe"``: ||L L^T z - A z||^2 / ||A z||^2 for ``num_probes`` Gaussian probes z, averaged over
  the probes: a stochastic estimate of the relative (A-weighted) Frobenius mismatch of M and A.
- ``loss="inverse"``: ||z - M^{-1} A z||^2 / ||z||^2 for ``num_probes`` Gaussian probes z: the Frobenius norm
  of I - M^{-1} A, the operator PCG works with (two differentiable triangular solves per probe).
- ``loss="kappa"``: log of the Lanczos estimate of kappa(M^{-1} A) from ``num_probes`` x 5 PCG steps on a
  Gaussian start vector per graph (differentiable through the triangular solves; what PCG's iteration count
  depends on).

plus ``diag_reg * mean(w_ii^2)``: a penalty on the log of the diagonal's deviation from sqrt(a_ii), which
keeps the factor's diagonal, and so the conditioning of the triangular solves, near the SSOR start.
Cost of the loss: one GNN pass (O(nnz hidden^2)) and three SpMVs per probe.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from learnsolve.linalg import IC0, LLT, MIC0, SparseMatrix, condition_estimate
from learnsolve.nn.features import node_coefficient, require_positive_diagonal, system_features
from learnsolve.nn.layers import SystemConv, edge_workspace, mlp, pair_hidden

from .base import (
    BASE_TITLES,
    LearnedModel,
    ProgramModule,
    ProgramSpec,
    check_choice,
    check_int,
    one_system_batch,
    system_matrix,
    system_tensors,
)

LOSSES = ("data", "probe", "inverse", "kappa")
BASES = ("none", "ic0", "mic0")


class NeuralIF(LearnedModel):
    """Learned sparse factor L on tril(A) and M = L L^T for PCG.

    Args: ``hidden`` channels, ``layers`` message-passing layers (>= 0), ``loss`` ("data" | "probe" |
    "inverse"), ``num_probes`` Gaussian probes per graph for the probe losses, ``diag_reg`` >= 0 weight of the
    log-diagonal penalty, ``base`` ("none" | "ic0" | "mic0") the classical factor the network corrects.

    The safeguard falls back to IC(0) (:meth:`LearnedModel.fallback_for`) whatever the base, not to MIC(0):
    outside M-matrices MIC(0) can be far worse than IC(0) (383 vs 107 iterations on 1138_bus, 119 vs 36 on
    bcsstk03), and the promise is never worse than IC(0).
    """

    kind = "preconditioner"
    requires_spd = True  # M = L L^T is SPD, but PCG also needs A SPD
    is_linear = True
    matrix_type = "llt"

    def __init__(self, hidden: int = 16, layers: int = 3, loss: str = "data", num_probes: int = 4,
                 diag_reg: float = 0.0, base: str = "none"):
        super().__init__()
        check_choice("neural_if", "loss", loss, LOSSES)
        check_choice("neural_if", "base", base, BASES)
        self.base = base
        extra = 0 if base == "none" else 1  # base-factor features: one per node, one per factor entry
        hidden, layers = check_int("neural_if", "hidden", hidden, 1), check_int("neural_if", "layers", layers, 0)
        if not float(diag_reg) >= 0.0:
            raise ValueError(f"neural_if: diag_reg must be >= 0, got {diag_reg}")
        self.loss_kind, self.diag_reg = loss, float(diag_reg)
        self.num_probes = check_int("neural_if", "num_probes", num_probes, 1)
        self.encoder = mlp([2 + extra, hidden, hidden])
        self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=1) for _ in range(layers))
        self.edge_head = mlp([2 * hidden + 1 + extra, hidden, 1])  # w_ij from [h_i, h_j, e_ij (, B_ij)], i > j
        self.diag_head = mlp([hidden, hidden, 1])  # w_ii from h_i
        for head in (self.edge_head, self.diag_head):
            # zero output layer: the untrained factor is the base factor
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    # -- the factor ----------------------------------------------------------------------------------
    def factor_entries(self, row: Tensor, col: Tensor, values: Tensor, coeff: Tensor, graph: Tensor | None = None,
                       num_graphs: int = 1, base_values: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The factor from A's COO entries in CSR order (row, col, values (E,), coefficient (N,); ``graph`` (N,)
        graph of each node, None for one system; ``base_values`` (E_L,) the base factor B on the entries of
        tril(A) in A's order, None for the Gauss-Seidel base): (row, col, values) of L on the entries of tril(A),
        in A's order (so in tril(A)'s CSR order), and the (N,) diagonal outputs w_ii. Plain tensor code: the
        batched :meth:`factor` and the exported program both run it. Cost O(nnz(A) hidden^2)."""
        pdt = self.diag_head[-1].weight.dtype
        f = system_features(row, col, values, coeff, graph, num_graphs)
        sd = torch.sqrt(f.diag)
        low = row >= col
        lr, lc, lv = row[low], col[low], values[low]
        off = lr != lc
        lr_o, lc_o = lr[off], lc[off]
        # the base B on tril(A): the Gauss-Seidel factor unless one is given
        base = torch.where(off, lv / sd[lc], sd[lr]) if base_values is None else base_values.to(values.dtype)
        node = f.node
        if self.base != "none":
            bdiag = torch.zeros_like(sd).index_add(0, lr[~off], base[~off])
            node = torch.cat([node, torch.log((bdiag * bdiag / f.diag).clamp_min(1e-300)).unsqueeze(-1)], -1)
        h = self.encoder(node.to(pdt))
        ei = torch.stack([row, col])
        edge = f.edge.to(pdt)
        work = edge_workspace(h, row.shape[0], h.shape[-1])  # reused by every layer (inference only)
        for conv in self.convs:
            h = conv(h, ei, edge, work)
        le = edge[low][off]
        if self.base != "none":
            le = torch.cat([le, (base[off] / sd[lr_o]).unsqueeze(-1).to(pdt)], -1)
        w_diag = self.diag_head(h).view(-1).to(values.dtype)
        # the edge MLP only on the strictly lower entries (the diagonal comes from the node head)
        hidden = pair_hidden(self.edge_head[0], self.edge_head[1], h, lr_o, lc_o, le, work)
        w_off = self.edge_head[2](hidden).view(-1).to(values.dtype)
        vals = base * torch.exp(w_diag)[lr]
        vals = vals.masked_scatter(off, base[off] + lv[off] / sd[lc_o] * w_off)
        return lr, lc, vals, w_diag

    def base_factor(self, A: SparseMatrix) -> SparseMatrix | None:
        """The base factor B on tril(A) (detached; IC(0) / MIC(0) retried with a diagonal shift where it breaks
        down), or None for the Gauss-Seidel base (computed inside :meth:`factor_entries`)."""
        if self.base == "none":
            return None
        cls = IC0 if self.base == "ic0" else MIC0
        return cls(A, shift="auto").L

    def factor(self, batch) -> tuple[SparseMatrix, SparseMatrix, Tensor]:
        """(A, L, w_diag): A block-diagonal (detached), L on tril(A)'s pattern with values differentiable
        w.r.t. the parameters, and the (N,) diagonal outputs w_ii (for the regulariser).

        Cost: O(nnz(A) hidden^2) for the GNN and O(nnz(A)) to assemble L.
        """
        A = system_matrix(batch)
        require_positive_diagonal(A.diagonal(), "neural_if")
        if not A.is_symmetric(rtol=1e-10):
            raise ValueError("neural_if needs a symmetric (SPD) matrix: L L^T approximates A and PCG needs "
                             "A = A^T; use an SPD family (not convdiff2d)")
        red = A.reducer()
        B = self.base_factor(A)
        _, _, vals, w_diag = self.factor_entries(A.pattern.row.long(), A.pattern.col.long(), A.values,
                                                 node_coefficient(batch, A.values), red.segment, red.G,
                                                 None if B is None else B.values)
        return A, A.tril().with_values(vals), w_diag

    def preconditioner_for(self, batch) -> LLT:
        """M^{-1} = L^{-T} L^{-1} on canonical (1, N, 1) blocks of the batch's block-diagonal A (linear, SPD)."""
        return LLT(self.factor(batch)[1])

    def export_program(self) -> ProgramSpec:
        def reference(data, _inputs):
            L = self.factor(one_system_batch(data))[1]
            return L.pattern.row.long(), L.pattern.col.long(), L.values

        outputs = ["row (nnz_L,) int64", "col (nnz_L,) int64",
                   "values (nnz_L,) float64: the factor L on tril(A), in the input's order; M = L L^T"]
        if self.base == "none":
            return ProgramSpec(_FactorProgram(self), reference=reference, outputs=outputs)

        def inputs(data, _seed):
            edge_index, values, feat = system_tensors(data)
            A = system_matrix(one_system_batch(data))
            full = torch.zeros_like(values)
            full[edge_index[0] >= edge_index[1]] = self.base_factor(A).values.to(values.dtype)
            return edge_index, values, feat, full

        return ProgramSpec(_CorrectionProgram(self), reference=reference, outputs=outputs, inputs=inputs,
                           extra_inputs=[(f"base (E,) float64: the {BASE_TITLES.get(self.base, self.base)} factor of A (e.g. "
                                         f"learnsolve.linalg.{BASE_TITLES.get(self.base, self.base)}(A, shift='auto').L) on A's lower "
                                         "entries, in the input's order, 0 on the upper ones")])

    # -- training ------------------------------------------------------------------------------------
    def classical_start(self) -> str | None:
        return "symmetric Gauss-Seidel factor" if self.base == "none" else f"{BASE_TITLES.get(self.base, self.base)} factor"

    def training_loss(self, batch) -> tuple[Tensor, dict]:
        A, L, w_diag = self.factor(batch)
        red = A.reducer()
        LT = L.T
        if self.loss_kind == "kappa":
            steps = 5 * self.num_probes
            log_kappa = torch.log(condition_estimate(A, M=LLT(L), steps=steps).clamp_min(1.0))
            loss = log_kappa.mean()
            if self.diag_reg > 0:
                loss = loss + self.diag_reg * (w_diag * w_diag).mean()
            return loss, {"log_kappa": float(log_kappa.detach().mean()),
                          "log_diag_rms": float(w_diag.detach().pow(2).mean().sqrt())}
        if self.loss_kind == "data":
            if getattr(batch, "x", None) is None:
                raise ValueError("neural_if: loss='data' needs the reference solution batch.x; use loss='probe'")
            X = batch.x.view(1, -1, 1).to(A.dtype)
            T = A.mv(X) if getattr(batch, "b", None) is None else batch.b.view(1, -1, 1).to(A.dtype)
        elif self.loss_kind == "probe":
            X = torch.randn(1, A.shape[0], self.num_probes, dtype=A.dtype, device=A.device)
            T = A.mv(X)
        if self.loss_kind == "inverse":  # ||z - M^{-1} A z||^2 / ||z||^2: relative to the probe itself
            T = torch.randn(1, A.shape[0], self.num_probes, dtype=A.dtype, device=A.device)
            D = LLT(L).apply(A.mv(T)) - T
        else:
            D = L.mv(LT.mv(X)) - T
        # (1, G, k) per graph and probe; a graph whose target is 0 contributes ||M x||^2 unscaled
        tn = red.dot(T, T)
        rel = red.dot(D, D) / torch.where(tn > 0, tn, torch.ones_like(tn))
        loss = rel.mean()
        if self.diag_reg > 0:
            loss = loss + self.diag_reg * (w_diag * w_diag).mean()
        return loss, {"rel_mismatch": float(rel.detach().sqrt().mean()),
                      "log_diag_rms": float(w_diag.detach().pow(2).mean().sqrt())}


class _FactorProgram(ProgramModule):
    """(edge_index, values, feat) -> (row, col, values) of L on tril(A): :meth:`NeuralIF.factor_entries`."""

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor):
        lr, lc, vals, _ = self.model.factor_entries(edge_index[0], edge_index[1], values, feat[:, 1])
        return lr, lc, vals


class _CorrectionProgram(ProgramModule):
    """(edge_index, values, feat, base) -> (row, col, values) of L = base + correction on tril(A)."""

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor, base: Tensor):
        lower = edge_index[0] >= edge_index[1]
        lr, lc, vals, _ = self.model.factor_entries(edge_index[0], edge_index[1], values, feat[:, 1],
                                                    base_values=base[lower])
        return lr, lc, vals
