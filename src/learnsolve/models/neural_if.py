"""``neural_if``: a learned incomplete factorisation M = L L^T for PCG (NeuralIF, Häusner et al. 2024,
adapted), optionally as a learned CORRECTION of a classical factor (PreCorrector, ICML 2025).

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

import time

import torch
from torch import Tensor, nn

from learnsolve.linalg import IC0, LLT, MIC0, SparseMatrix, condition_estimate, fastest_factor
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
BASES = ("none", "ic0", "mic0", "auto")
ARCHS = ("gnn", "light")


class LightIFNet(nn.Module):
    r"""neural_if's light network: one ReLU per entry and layer, narrow channels, node-level updates.

    With node inputs x_i (N, 3) and per-entry inputs e_ij = a_ij / sqrt(a_ii a_jj) and, on the factor's
    strictly lower entries, b_ij = B_ij / sqrt(a_ii) (B the base factor):

    .. math::
        h_i = \mathrm{relu}(W_0 x_i + c_0), \qquad
        s_i = \sum_{j \in N(i)} \mathrm{relu}(P h_i + Q h_j + r e_{ij} + c), \qquad
        h_i \leftarrow h_i + \mathrm{relu}(U [h_i, s_i] + u)

    per layer (the row's diagonal entry among N(i)), then w_ij = v . relu(F h_i + G h_j + f e_ij + g b_ij +
    f_0) + v_0 for i > j and w_ii = d . h_i + d_0; v, v_0, d, d_0 start at zero (the untrained factor is the
    base). Per entry and layer: C multiply-adds and one ReLU (SystemConv: an edge MLP of 2C + 1 -> C -> C with
    GELU); O(N C^2) at the nodes. :mod:`._if_kernel` runs the same arithmetic compiled for inference.
    """

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        C = hidden
        self.encoder = nn.Linear(3, C)
        self.msg = nn.ModuleList(nn.Linear(2 * C + 1, C) for _ in range(layers))
        self.upd = nn.ModuleList(nn.Linear(2 * C, C) for _ in range(layers))
        self.head = nn.Linear(2 * C + 2, C)
        self.head_out = nn.Linear(C, 1)
        self.diag_out = nn.Linear(C, 1)
        for lin in (self.head_out, self.diag_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        # the compiled kernel's node buffers, reused while the system size stays the same
        self._work: dict = {}

    @staticmethod
    def _pair(lin: nn.Linear, h: Tensor, i: Tensor, j: Tensor, edge: Tensor) -> Tensor:
        C = h.shape[-1]
        W = lin.weight
        return torch.relu((h @ W[:, :C].T + lin.bias)[i] + (h @ W[:, C:2 * C].T)[j] + edge @ W[:, 2 * C:].T)

    def forward(self, node: Tensor, edge: Tensor, row: Tensor, col: Tensor, lrow: Tensor, lcol: Tensor,
                ledge: Tensor) -> tuple[Tensor, Tensor]:
        """node (N, 3), edge (E, 1) on A's entries (row, col), ledge (E_o, 2) on the strictly lower ones
        (lrow, lcol) -> (w_diag (N,), w_off (E_o,))."""
        h = torch.relu(self.encoder(node))
        for msg, upd in zip(self.msg, self.upd):
            s = h.new_zeros(h.shape).index_add(0, row, self._pair(msg, h, row, col, edge))
            h = h + torch.relu(upd(torch.cat([h, s], -1)))
        w_off = self.head_out(self._pair(self.head, h, lrow, lcol, ledge)).view(-1)
        return self.diag_out(h).view(-1), w_off

    def compiled_factor(self, crow, col, val, coeff, graph, num_graphs: int, base, out, w_diag,
                        lptr=None) -> None:
        """The factor's values on tril(A) into ``out`` and w_ii into ``w_diag`` by
        :func:`._if_kernel.light_factor` (numpy arrays; ``base`` empty for the Gauss-Seidel base), the network
        in the parameters' dtype."""
        from ._if_kernel import light_factor, pack_weights

        def arr(t: Tensor):
            return t.detach().contiguous().numpy()

        C, dt = self.encoder.out_features, self.encoder.weight.dtype
        none = torch.zeros(0, C, 2 * C + 1, dtype=dt)
        msg_w = torch.stack([m.weight for m in self.msg]) if len(self.msg) else none
        msg_b = torch.stack([m.bias for m in self.msg]) if len(self.msg) else none[:, :, 0]
        upd_w = torch.stack([m.weight for m in self.upd]) if len(self.upd) else none[:, :, :2 * C]
        upd_b = torch.stack([m.bias for m in self.upd]) if len(self.upd) else none[:, :, 0]
        weights = pack_weights(arr(self.encoder.weight), arr(self.encoder.bias), arr(msg_w), arr(msg_b),
                               arr(upd_w), arr(upd_b), arr(self.head.weight), arr(self.head.bias),
                               arr(self.head_out.weight).reshape(-1), float(self.head_out.bias),
                               arr(self.diag_out.weight).reshape(-1), float(self.diag_out.bias))
        light_factor(crow, col, val, coeff, graph, num_graphs, base, weights, out, w_diag, self._work, lptr)


class NeuralIF(LearnedModel):
    """Learned sparse factor L on tril(A) and M = L L^T for PCG.

    Args: ``hidden`` channels, ``layers`` message-passing layers (>= 0), ``loss`` ("data" | "probe" |
    "inverse"), ``num_probes`` Gaussian probes per graph for the probe losses, ``diag_reg`` >= 0 weight of the
    log-diagonal penalty, ``base`` ("none" | "ic0" | "mic0" | "auto": the faster of MIC(0) and IC(0) per
    system, :func:`learnsolve.linalg.fastest_factor`) the classical factor the network corrects, ``arch``
    ("gnn": :class:`learnsolve.nn.SystemConv` layers; "light": :class:`LightIFNet`, compiled on the CPU at
    inference).

    The safeguard falls back to the faster of MIC(0) and IC(0) (:meth:`LearnedModel.fallback_for`,
    :func:`learnsolve.linalg.fastest_factor`), reusing the MIC(0) base: MIC(0) where it neither breaks down
    nor has tiny pivots (outside M-matrices it can be far worse than IC(0): 383 vs 107 iterations on 1138_bus
    with a shift), else a short race of the two.
    """

    kind = "preconditioner"
    requires_spd = True  # M = L L^T is SPD, but PCG also needs A SPD
    is_linear = True
    matrix_type = "llt"

    def __init__(self, hidden: int = 16, layers: int = 3, loss: str = "data", num_probes: int = 4,
                 diag_reg: float = 0.0, base: str = "none", arch: str = "gnn"):
        super().__init__()
        check_choice("neural_if", "loss", loss, LOSSES)
        check_choice("neural_if", "base", base, BASES)
        check_choice("neural_if", "arch", arch, ARCHS)
        self.base, self.arch = base, arch
        extra = 0 if base == "none" else 1  # base-factor features: one per node, one per factor entry
        hidden, layers = (check_int("neural_if", "hidden", hidden, 1),
                          check_int("neural_if", "layers", layers, 0))
        if not float(diag_reg) >= 0.0:
            raise ValueError(f"neural_if: diag_reg must be >= 0, got {diag_reg}")
        self.loss_kind, self.diag_reg = loss, float(diag_reg)
        self.num_probes = check_int("neural_if", "num_probes", num_probes, 1)
        if arch == "light":
            self.net = LightIFNet(hidden, layers)
            return
        self.encoder = mlp([2 + extra, hidden, hidden])
        self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=1) for _ in range(layers))
        # w_ij from [h_i, h_j, e_ij (, B_ij)], i > j
        self.edge_head = mlp([2 * hidden + 1 + extra, hidden, 1])
        self.diag_head = mlp([hidden, hidden, 1])  # w_ii from h_i
        for head in (self.edge_head, self.diag_head):
            # zero output layer: the untrained factor is the base factor
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    # -- the factor ----------------------------------------------------------------------------------
    def factor_entries(self, row: Tensor, col: Tensor, values: Tensor, coeff: Tensor,
                       graph: Tensor | None = None, num_graphs: int = 1,
                       base_values: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The factor from A's COO entries in CSR order (row, col, values (E,), coefficient (N,); ``graph``
        (N,) graph of each node, None for one system; ``base_values`` (E_L,) the base factor B on the entries
        of tril(A) in A's order, None for the Gauss-Seidel base): (row, col, values) of L on the entries of
        tril(A), in A's order (so in tril(A)'s CSR order), and the (N,) diagonal outputs w_ii. Plain tensor
        code: the batched :meth:`factor` and the exported program both run it. Cost O(nnz(A) hidden^2)."""
        f = system_features(row, col, values, coeff, graph, num_graphs)
        sd = torch.sqrt(f.diag)
        low = row >= col
        lr, lc, lv = row[low], col[low], values[low]
        off = lr != lc
        lr_o, lc_o = lr[off], lc[off]
        # the base B on tril(A): the Gauss-Seidel factor unless one is given
        base = torch.where(off, lv / sd[lc], sd[lr]) if base_values is None else base_values.to(values.dtype)
        if self.arch == "light":
            pdt = self.net.encoder.weight.dtype
            bdiag = torch.zeros_like(sd).index_add(0, lr[~off], base[~off])
            node = torch.cat([f.node,
                              torch.log((bdiag * bdiag / f.diag).clamp_min(1e-300)).unsqueeze(-1)], -1)
            ledge = torch.stack([f.edge[low][off][:, 0], base[off] / sd[lr_o]], -1)
            w_diag, w_off = self.net(node.to(pdt), f.edge.to(pdt), row, col, lr_o, lc_o, ledge.to(pdt))
            w_diag, w_off = w_diag.to(values.dtype), w_off.to(values.dtype)
            vals = base * torch.exp(w_diag)[lr]
            return lr, lc, vals.masked_scatter(off, base[off] + lv[off] / sd[lc_o] * w_off), w_diag
        pdt = self.diag_head[-1].weight.dtype
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
        """The base factor B on tril(A) (detached; IC(0) / MIC(0) retried with a diagonal shift where it
        breaks down), or None for the Gauss-Seidel base (computed inside :meth:`factor_entries`). Built anew
        on every call (so a timed setup includes it); the safeguard's fallback reuses the last one."""
        if self.base == "none":
            return None
        t0 = time.perf_counter()
        if self.base == "auto":
            P = fastest_factor(A)
        else:
            P = (IC0 if self.base == "ic0" else MIC0)(A, shift="auto")
        self.__dict__["_base_cache"] = (A, P)
        self.__dict__["base_seconds"] = time.perf_counter() - t0
        return P.L

    def _base_preconditioner(self, A: SparseMatrix):
        """The IC(0) / MIC(0) object of the last :meth:`base_factor` when it was of A, else a new one."""
        if self.base == "none":
            return None
        cached = self.__dict__.get("_base_cache")
        if cached is None or cached[0] is not A:
            self.base_factor(A)
        return self.__dict__["_base_cache"][1]

    def reusable_mic0(self, A: SparseMatrix):
        return self._base_preconditioner(A) if self.base == "mic0" else None

    def fallback_for(self, batch):
        """base="auto": the base itself (already the faster of MIC(0) and IC(0) per system); else
        :meth:`LearnedModel.fallback_for` (reusing a MIC(0) base)."""
        if self.base == "auto":
            return self._base_preconditioner(system_matrix(batch))
        return super().fallback_for(batch)

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
        if (self.arch == "light" and not torch.is_grad_enabled() and A.values.device.type == "cpu"
                and A.values.ndim == 1):
            return (A, *self._compiled_factor(A, node_coefficient(batch, A.values), red, B))
        _, _, vals, w_diag = self.factor_entries(A.pattern.row.long(), A.pattern.col.long(), A.values,
                                                 node_coefficient(batch, A.values), red.segment, red.G,
                                                 None if B is None else B.values)
        return A, A.tril().with_values(vals), w_diag

    def _compiled_factor(self, A: SparseMatrix, coeff: Tensor, red,
                         B: SparseMatrix | None) -> tuple[SparseMatrix, Tensor]:
        """(L, w_diag) by the compiled kernel: the light network's inference path (CPU, no autograd)."""
        import numpy as np

        Lpat = A.tril()
        out = np.empty(Lpat.nnz)
        w_diag = np.empty(A.shape[0])
        graph = (torch.zeros(A.shape[0], dtype=torch.long) if red.segment is None else red.segment).numpy()

        def idx(t: Tensor):
            return np.asarray(t.numpy(), dtype=np.int64)  # no copy where the pattern is int64 already

        self.net.compiled_factor(idx(A.pattern.crow), idx(A.pattern.col),
                                 A.values.detach().to(torch.float64).numpy(),
                                 coeff.detach().to(torch.float64).numpy(), graph, int(red.G),
                                 np.zeros(0) if B is None else B.values.detach().to(torch.float64).numpy(),
                                 out, w_diag, idx(Lpat.pattern.crow))
        return Lpat.with_values(torch.from_numpy(out).to(A.dtype)), torch.from_numpy(w_diag).to(A.dtype)

    def preconditioner_for(self, batch) -> LLT:
        """M^{-1} = L^{-T} L^{-1} on canonical (1, N, 1) blocks of the batch's block-diagonal A (linear,
        SPD)."""
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

        title = BASE_TITLES.get(self.base, self.base)
        how = ("learnsolve.linalg.fastest_factor(A).L, the faster of MIC(0) and IC(0)"
               if self.base == "auto" else f"learnsolve.linalg.{title}(A, shift='auto').L")
        return ProgramSpec(_CorrectionProgram(self), reference=reference, outputs=outputs, inputs=inputs,
                           extra_inputs=[(f"base (E,) float64: the base factor of A ({how}) on A's lower "
                                          "entries, in the input's order, 0 on the upper ones")])

    # -- training ------------------------------------------------------------------------------------
    def classical_start(self) -> str | None:
        if self.base == "auto":
            return "MIC(0) or IC(0) factor (the faster, per system)"
        return ("symmetric Gauss-Seidel factor" if self.base == "none"
                else f"{BASE_TITLES.get(self.base, self.base)} factor")

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
                raise ValueError("neural_if: loss='data' needs the reference solution batch.x; use "
                                 "loss='probe'")
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
