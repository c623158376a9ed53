"""``gnn_solver``: a GNN that builds a multigrid hierarchy once per system, used as the preconditioner of CG.

``mode="multigrid"`` (default). At setup, for every level l of a smoothed-aggregation hierarchy
(:mod:`learnsolve.linalg.preconditioners.multigrid`: pyamg's standard aggregation, Galerkin coarse matrices,
symmetric Gauss-Seidel V(1,1)-cycle, dense Cholesky on the coarsest level), the network reads the level's
matrix A_l and its aggregates and returns one weight per stored entry; the prolongator is

    P_l = (I - omega D^{-1} (A_l o W_l)) T_l,    W_l = 1 + g_theta(A_l, aggregates),

with T_l the tentative (piecewise-constant) prolongator and omega = 4 / (3 rho), rho the Gershgorin bound of
D^{-1} A_l. The output layer starts at zero, so an untrained model is classical smoothed aggregation. The
network runs once per level and system (never per iteration); the cycle is SPD whatever W is, so plain CG
applies, and the safeguard (a short PCG race against IC(0), :meth:`LearnedModel.safe_preconditioner_for`)
keeps the promise never to be slower than IC(0) on a system where the hierarchy is poor.

Inputs are algebraic and scale-free (the same on every level, so a model trained on small grids builds the
deeper hierarchies of larger ones): node log(a_ii / mean a_ii) and (sum_j a_ij) / a_ii; entry a_ij /
sqrt(a_ii a_jj), "same aggregate", "diagonal", and the strength |a_ij| / max_{k != i} |a_ik|.

Training minimises, over a batch of systems, ``loss="kappa"``: the mean log of the Lanczos estimate of
kappa(M^{-1} A) from ``kappa_steps`` PCG steps (what bounds CG's iterations over the whole solve, not the
first few), or ``loss="error"``: the mean log A-norm reduction per step of the stationary iteration e <- (I -
M^{-1} A) e over ``error_steps`` steps from ``num_probes`` random errors. Both are differentiated through the
Galerkin products, the Gauss-Seidel sweeps and the coarse Cholesky factorisation.

``loss="pcg"``: the mean log A-norm error reduction per step of ``pcg_steps`` PCG steps from random x* (b = A
x*).

``strength`` chooses the aggregation's strength of connection on every level: "classical" (the symmetric
measure with threshold ``theta``), "evolution" (pyamg's evolution measure,
:func:`learnsolve.linalg.evolution_strong`) or "learned": :class:`StrengthNet`, a small ReLU GNN, one logit
per entry (> 0: strong), trained by binary cross-entropy to predict the evolution measure on every level of
the training hierarchies (the labels aggregate them while it trains), compiled for CPU inference; untrained it
calls every connection strong (classical SA). ``weights=False`` trains the strength network alone (the
prolongator keeps W = 1). Measured status: ``docs/benchmarks/learned-amg.md``.

``mode="fcg"``: the earlier design, a GNN applied in every flexible-CG iteration (:mod:`.gnn_fcg`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from learnsolve.linalg import (
    Multigrid,
    SolveInfo,
    SparseMatrix,
    aggregate,
    build_multigrid,
    condition_estimate,
    evolution_strong,
    node_blocks,
)
from learnsolve.nn.features import diagonal, graph_mean, require_positive_diagonal
from learnsolve.nn.layers import SystemConv, edge_workspace, mlp, pair_hidden

from .base import (
    LearnedModel,
    ProgramModule,
    ProgramSpec,
    check_choice,
    check_int,
    one_system_batch,
    system_matrix,
    system_tensors,
)
from .gnn_fcg import BASES, FCGNet

MODES = ("multigrid", "fcg")
MG_LOSSES = ("pcg", "kappa", "error")
STRENGTHS = ("classical", "learned", "evolution")
EDGE_DIM = 4


def level_features(row: Tensor, col: Tensor, values: Tensor, same: Tensor, n: int,
                   graph: Tensor | None = None, num_graphs: int = 1, dtype: torch.dtype | None = None,
                   d: Tensor | None = None, rowsum: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(node (n, 2), edge (E, 4)) features of one level (see the module doc) in ``dtype`` (default the
    values') from its COO entries and the per-entry "same aggregate" indicator ``same`` (E,) bool; ``d`` =
    diag(A) and ``rowsum`` = A 1 when the caller has them. Plain tensor code (the exported program runs it
    too)."""
    d = diagonal(row, col, values, n) if d is None else d
    rowsum = torch.zeros_like(d).index_add(0, row, values) if rowsum is None else rowsum
    dtype = values.dtype if dtype is None else dtype
    node = torch.stack([torch.log(d / graph_mean(d, graph, num_graphs)), rowsum / d], -1).to(dtype)
    diag = row == col
    off = values.abs().masked_fill(diag, 0.0)
    rmax = torch.zeros_like(d).scatter_reduce(0, row, off, "amax", include_self=True)
    edge = values.new_empty(row.shape[0], EDGE_DIM, dtype=dtype)
    edge[:, 0] = values / torch.sqrt(d.index_select(0, row) * d.index_select(0, col))
    edge[:, 1] = same
    edge[:, 2] = diag
    edge[:, 3] = off / rmax.index_select(0, row).clamp_min(torch.finfo(values.dtype).tiny)
    return node, edge


class GNNSolver(LearnedModel):
    """See the module doc. Args: ``hidden`` channels, ``layers`` message-passing layers (>= 0), ``mode``
    ("multigrid" | "fcg"), ``loss`` (multigrid: "kappa" | "pcg" | "error"; fcg: "log_residual" | "energy";
    None: the mode's first), ``theta`` the aggregation's strength threshold, ``coarse_size`` the largest
    coarsest level per system (dense Cholesky), ``kappa_steps`` / ``error_steps`` / ``num_probes`` the losses'
    lengths, ``first_level`` the first level whose prolongator is learned (finer ones are classical),
    ``size_factor``: levels with more than ``size_factor`` times the unknowns (per system) of the largest
    level seen in training keep the classical prolongator (the network is not extrapolated; 0 trained: every
    level learned); ``unroll_steps``, ``truncation``, ``base``: the fcg mode's options; ``strength``
    ("classical" | "evolution" | "learned"), ``strength_hidden`` / ``strength_layers`` (the strength network),
    ``pcg_steps`` (``loss="pcg"``), ``weights`` (learn the prolongator weights; False: the strength network
    alone); ``size_factor=None``: no size guard."""

    kind = "preconditioner"  # multigrid: a learned preconditioner of CG; the fcg mode is a learned "solver"
    requires_spd = True
    is_linear = True  # multigrid: a fixed SPD V-cycle per system (plain CG); the fcg mode sets False
    # The race against IC(0) on the right-hand side alone, 3 steps: a V-cycle step costs several IC(0) steps,
    # and 3 steps made the same decisions as the default 6 steps x 2 probes (held-out diffusion2d 256^2,
    # poisson2d 128^2, fem_poisson, elasticity2d: accepted; anisotropic2d 64^2 and 256^2: rejected) at a third
    # of the cost (15.7 vs 45.3 ms at diffusion2d 256^2, classical hierarchy).
    safeguard_options: ClassVar[dict] = {"steps": 3, "probes": 1}

    def __init__(self, hidden: int = 8, layers: int = 1, mode: str = "multigrid", loss: str | None = None,
                 theta: float = 0.0, coarse_size: int = 16, kappa_steps: int = 30, error_steps: int = 4,
                 num_probes: int = 4, first_level: int = 0, size_factor: float | None = 2.0,
                 unroll_steps: int = 8, truncation: int = 1, base: str = "jacobi",
                 strength: str = "classical", strength_hidden: int = 8, strength_layers: int = 1,
                 pcg_steps: int = 8, weights: bool = True):
        super().__init__()
        check_choice("gnn_solver", "mode", mode, MODES)
        # checked in both modes: a typo is never silently ignored
        check_choice("gnn_solver", "base", base, BASES)
        self.mode = mode
        hidden, layers = (check_int("gnn_solver", "hidden", hidden, 1),
                          check_int("gnn_solver", "layers", layers, 0))
        if mode == "fcg":
            self.kind, self.is_linear = "solver", False
            self.fcg = FCGNet(hidden, layers, unroll_steps, truncation, loss or "log_residual", base)
            return
        loss = loss or "kappa"
        check_choice("gnn_solver", "loss", loss, MG_LOSSES)
        check_choice("gnn_solver", "strength", strength, STRENGTHS)
        self.strength = strength
        self._strength_losses: list[Tensor] = []  # the strength network's BCE per level of the last hierarchy
        self.pcg_steps = check_int("gnn_solver", "pcg_steps", pcg_steps, 1)
        self.learn_weights = bool(weights)
        if not self.learn_weights and strength != "learned":
            raise ValueError(f"gnn_solver: weights=false leaves nothing to train with strength={strength!r}; "
                             "use strength=learned (train the strength network alone) or weights=true")
        if not 0.0 <= float(theta) < 1.0:
            raise ValueError(f"gnn_solver: theta must be in [0, 1), got {theta!r}")
        self.loss_kind, self.theta = loss, float(theta)
        self.coarse_size = check_int("gnn_solver", "coarse_size", coarse_size, 1)
        self.kappa_steps = check_int("gnn_solver", "kappa_steps", kappa_steps, 2)
        self.error_steps = check_int("gnn_solver", "error_steps", error_steps, 1)
        self.num_probes = check_int("gnn_solver", "num_probes", num_probes, 1)
        self.first_level = check_int("gnn_solver", "first_level", first_level, 0)
        if size_factor is not None and not float(size_factor) > 0:
            raise ValueError("gnn_solver: size_factor must be > 0 or null (no size guard), got "
                             f"{size_factor!r}")
        self.size_factor = None if size_factor is None else float(size_factor)
        # the largest level (unknowns per system) the network was trained on; saved with the weights
        self.register_buffer("trained_level_size", torch.zeros((), dtype=torch.float64))
        self.encoder = mlp([2, hidden, hidden])
        self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=EDGE_DIM) for _ in range(layers))
        self.head = mlp([2 * hidden + EDGE_DIM, hidden, 1])  # g_ij from [h_i, h_j, e_ij]
        nn.init.zeros_(self.head[-1].weight)  # untrained: classical smoothed aggregation
        nn.init.zeros_(self.head[-1].bias)
        if strength == "learned":
            self.strength_net = StrengthNet(check_int("gnn_solver", "strength_hidden", strength_hidden, 1),
                                            check_int("gnn_solver", "strength_layers", strength_layers, 0))

    # -- the learned prolongator weights: plain tensor code shared with the exported program ---------------
    def entry_weights(self, row: Tensor, col: Tensor, values: Tensor, same: Tensor, n: int,
                      graph: Tensor | None = None, num_graphs: int = 1, d: Tensor | None = None,
                      rowsum: Tensor | None = None) -> Tensor:
        """W = 1 + tanh(g) / 2 (E,) for one level given by its COO entries (CSR order) and the "same
        aggregate" indicator (``d``, ``rowsum``: see :func:`level_features`)."""
        pdt = self.head[-1].weight.dtype
        node, edge = level_features(row, col, values, same, n, graph, num_graphs, pdt, d, rowsum)
        h = self.encoder(node)
        ei = torch.stack([row, col])
        work = edge_workspace(h, row.shape[0], h.shape[-1])
        for conv in self.convs:
            h = conv(h, ei, edge, work)
        g = self.head[2](pair_hidden(self.head[0], self.head[1], h, row, col, edge, work)).view(-1)
        return 1.0 + 0.5 * torch.tanh(g.to(values.dtype))  # bounded: W in (0.5, 1.5)

    def _level_weights(self, A: SparseMatrix, agg: Tensor, level: int) -> Tensor | None:
        if level < self.first_level or not self.learn_weights:
            return None  # a classical prolongator on the finest levels (the network's cost is per entry)
        G = 1 if A.blocks is None else A.blocks.numel() - 1
        per_system = A.shape[0] / G
        if self.training and torch.is_grad_enabled():
            self.trained_level_size.fill_(max(float(self.trained_level_size), per_system))
        elif self.size_factor is not None and 0 < float(self.trained_level_size) \
                and per_system > self.size_factor * float(self.trained_level_size):
            # larger than any level it was trained on: the classical prolongator (see the class doc)
            return None
        elif not torch.is_grad_enabled() and self._weights_are_one():
            return None  # the output layer is zero (untrained): W = 1 exactly, no need to run the network
        row, col = A.pattern.row.long(), A.pattern.col.long()
        ar, ac = agg.index_select(0, row), agg.index_select(0, col)
        same = (ar == ac) & (ar >= 0)
        graph = None if G == 1 else node_blocks(A)
        # not detached: a coarse level's A depends on the finer levels' weights, and the gradient must see
        # that (a detach here made the V-cycle's gradient w.r.t. the network 0.6% wrong in the trained default
        # model, found by the training-gradient check; 7e-9 without it)
        rowsum = A.mv(torch.ones(1, A.shape[0], 1, dtype=A.dtype, device=A.device)).view(-1)
        return self.entry_weights(row, col, A.values, same, A.shape[0], graph, G, A.diagonal(), rowsum)

    def _weights_are_one(self) -> bool:
        """True when the weight network's output layer is exactly zero, so that W = 1 + tanh(0) / 2 = 1
        everywhere."""
        last = self.head[-1]
        return not bool(last.weight.any()) and not bool(last.bias.any())

    def hierarchy(self, batch, A: SparseMatrix | None = None) -> Multigrid:
        """The learned V-cycle of the batch's block-diagonal A (differentiable w.r.t. the parameters)."""
        A = system_matrix(batch) if A is None else A
        require_positive_diagonal(A.diagonal(), "gnn_solver")
        if not A.is_symmetric(rtol=1e-10):
            raise ValueError("gnn_solver needs a symmetric (SPD) matrix: its V-cycle preconditions CG; use "
                             "an SPD family (not convdiff2d)")
        self._strength_losses = []
        return build_multigrid(A, self._level_weights, theta=self.theta, coarse_size=self.coarse_size,
                               strength=None if self.strength == "classical" else self._level_strength)

    def _level_strength(self, A: SparseMatrix, level: int) -> Tensor:
        """The strong entries (nnz,) bool of level ``level``'s aggregation: pyamg's evolution measure
        (``strength="evolution"``, and the training target of the learned one), or the strength network's
        prediction. In training the evolution labels aggregate (teacher forcing) and the network's
        binary cross-entropy against them is collected for :meth:`training_loss`."""
        if self.strength == "evolution":
            return evolution_strong(A)
        net: StrengthNet = self.strength_net
        if self.training and torch.is_grad_enabled():
            target = evolution_strong(A)
            logits = net(A.detach())
            off = A.pattern.row != A.pattern.col
            self._strength_losses.append(nn.functional.binary_cross_entropy_with_logits(
                logits[off], target[off].to(logits.dtype)))
            return target
        with torch.no_grad():
            return net(A.detach()) > 0

    def preconditioner_for(self, batch):
        """The learned V-cycle (multigrid) or the nonlinear per-iteration map (fcg)."""
        if self.mode == "fcg":
            return self.fcg.preconditioner_for(batch)
        return self.hierarchy(batch)

    # -- training and solving ----------------------------------------------------------------------------
    def classical_start(self) -> str | None:
        if self.mode == "fcg":
            return f"{self.fcg.base}-preconditioned flexible CG"
        agg = ("" if self.strength == "classical" else
               ", its strength network untrained: every connection strong" if self.strength == "learned" else
               ", evolution strength")
        return (f"classical smoothed aggregation (theta {self.theta:g}, coarsest level <= {self.coarse_size}"
                f"{agg})")

    def training_loss(self, batch) -> tuple[Tensor, dict]:
        if self.mode == "fcg":
            return self.fcg.training_loss(batch)
        A = system_matrix(batch)
        M = self.hierarchy(batch, A)
        logs = {"levels": float(M.num_levels)}
        extra = A.values.new_zeros(())
        # no graph kept on the module (it is deep-copied)
        taken, self._strength_losses = self._strength_losses, []
        if taken:
            extra = torch.stack(taken).mean()
            logs["strength_bce"] = float(extra.detach())
        if not self.learn_weights:
            return extra, logs
        if self.loss_kind == "pcg":
            rate = self._pcg_rate(A, M)
            logs["pcg_rate"] = float(torch.exp(rate.detach()).mean())
            return rate.mean() + extra, logs
        if self.loss_kind == "kappa":
            log_kappa = torch.log(condition_estimate(A, M=M, steps=self.kappa_steps).clamp_min(1.0))
            logs["log_kappa"] = float(log_kappa.detach().mean())
            return log_kappa.mean() + extra, logs
        red = A.reducer()
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
        E = torch.randn(1, A.shape[0], self.num_probes, generator=g, dtype=A.dtype)
        e0 = red.dot(E, A.mv(E))
        for _ in range(self.error_steps):
            E = E - M.apply(A.mv(E))
        rate = 0.5 * torch.log(red.dot(E, A.mv(E)).clamp_min(1e-300) / e0) / self.error_steps
        logs["error_rate"] = float(torch.exp(rate.detach()).mean())
        return rate.mean() + extra, logs

    def _pcg_rate(self, A: SparseMatrix, M: Multigrid) -> Tensor:
        """Per system and probe, the mean log A-norm error reduction per step of ``pcg_steps`` PCG steps with
        M from x0 = 0 on A x = b, b = A x* for ``num_probes`` random x*: what CG's iteration count follows
        (unlike kappa, it rewards clustered spectra with a few outliers, which CG removes in a few steps)."""
        red = A.reducer()
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
        xs = torch.randn(1, A.shape[0], self.num_probes, generator=g, dtype=A.dtype)
        r = A.mv(xs)
        e0 = red.dot(xs, r)
        x = torch.zeros_like(xs)
        z = M.apply(r)
        p, rz = z, red.dot(r, z)
        tiny = torch.finfo(A.dtype).tiny
        for _ in range(self.pcg_steps):
            q = A.mv(p)
            alpha = rz / red.dot(p, q).clamp_min(tiny)
            x = x + red.expand(alpha) * p
            r = r - red.expand(alpha) * q
            z = M.apply(r)
            rz_new = red.dot(r, z)
            p = z + red.expand(rz_new / rz.clamp_min(tiny)) * p
            rz = rz_new
        e = xs - x
        return 0.5 * torch.log(red.dot(e, A.mv(e)).clamp_min(1e-300) / e0) / self.pcg_steps

    @torch.no_grad()
    def solve(self, batch, rtol: float = 1e-6, maxiter: int = 2000,
              safeguard: bool = True) -> tuple[Tensor, SolveInfo]:
        if self.mode == "fcg":
            return self.fcg.solve(batch, rtol, maxiter)
        return super().solve(batch, rtol, maxiter, safeguard)

    # -- export ------------------------------------------------------------------------------------------
    def matrix_export_reason(self, name: str | None = None) -> str | None:
        name = name or type(self).__name__
        if self.mode == "fcg":
            return f"{name} is a nonlinear preconditioner (z = f(r)); it cannot be written as a fixed matrix"
        return (f"{name} is a learned multigrid hierarchy (prolongators, coarse matrices, Gauss-Seidel "
                "smoothing), not one matrix M: exported as weights, config and the program of its "
                "prolongator weights")

    def export_program(self) -> ProgramSpec:
        """fcg: one application z = f(r). multigrid: the finest level's prolongator weights W (E,) from the
        system and the per-entry "same aggregate" indicator of pyamg's standard aggregation."""
        if self.mode == "fcg":
            return self.fcg.export_program()

        def inputs(data, _seed: int) -> tuple:
            A = system_matrix(one_system_batch(data))
            agg, _ = aggregate(A, self.theta)
            r, c = A.pattern.row.long(), A.pattern.col.long()
            same = ((agg[r] == agg[c]) & (agg[r] >= 0)).to(torch.float64)
            return (*system_tensors(data), same)

        def reference(data, inputs: tuple) -> tuple:
            ei, values = inputs[0], inputs[1]
            return (self.entry_weights(ei[0], ei[1], values, inputs[3] > 0.5, int(data.num_nodes)),)

        extra = [("same (E,) float64: 1 where the entry's row and column are in the same aggregate of "
                  "learnsolve.linalg.preconditioners.multigrid.aggregate(A, theta) (pyamg standard "
                  "aggregation), else 0")]
        w = ("w (E,) float64: the finest level's prolongator weights; P = (I - omega D^-1 (A o W)) T with T "
             "the tentative prolongator and omega = 4 / (3 rho) "
             "(learnsolve.linalg.preconditioners.multigrid.smoothed_prolongator)")
        return ProgramSpec(_WeightsProgram(self), inputs=inputs, reference=reference, extra_inputs=extra,
                           outputs=[w])


class StrengthNet(nn.Module):
    """The learned strength of connection: one logit per stored entry of a level's matrix (> 0: strong), from
    the level's algebraic features (:func:`level_features` without the aggregate indicator), ``layers``
    message-passing layers and a per-entry head, ReLU activations. The output bias starts at +4: untrained,
    every connection is strong, pyamg's standard aggregation with theta = 0 (classical smoothed aggregation).

    Inference on the CPU runs compiled (:mod:`._strength_kernel`: features, layers and head fused over the CSR
    rows, float64): 586,756 entries (rotated anisotropy, 256^2), hidden 8, one layer, one thread: see
    ``docs/benchmarks/learned-amg.md`` for the measured times; the torch path (training, other devices)
    computes the same logits."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.encoder = mlp([2, hidden, hidden], nn.ReLU)
        self.convs = nn.ModuleList(SystemConv(hidden, edge_dim=EDGE_DIM, act=nn.ReLU) for _ in range(layers))
        self.head = mlp([2 * hidden + EDGE_DIM, hidden, 1], nn.ReLU)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.constant_(self.head[-1].bias, 4.0)

    def forward(self, A: SparseMatrix) -> Tensor:
        if A.device.type == "cpu" and not torch.is_grad_enabled() and A.batch_size is None \
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            return self.compiled(A)
        return self.reference(A)

    def reference(self, A: SparseMatrix) -> Tensor:
        """The logits by torch operations (differentiable)."""
        row, col = A.pattern.row.long(), A.pattern.col.long()
        n = A.shape[0]
        G = 1 if A.blocks is None else A.blocks.numel() - 1
        graph = None if G == 1 else node_blocks(A)
        pdt = self.head[-1].weight.dtype
        node, edge = level_features(row, col, A.values, torch.zeros_like(row, dtype=torch.bool), n, graph,
                                    G, pdt)
        h = self.encoder(node)
        ei = torch.stack([row, col])
        work = edge_workspace(h, row.shape[0], h.shape[-1])
        for conv in self.convs:
            h = conv(h, ei, edge, work)
        return self.head[2](pair_hidden(self.head[0], self.head[1], h, row, col, edge, work)).view(-1)

    def compiled(self, A: SparseMatrix) -> Tensor:
        """The logits by the compiled kernel (CPU, no autograd), float64."""
        from ._strength_kernel import strength_logits

        def f64(t: Tensor):
            return t.detach().to(torch.float64).contiguous().numpy()

        def stack(get, shape):
            return np.stack([f64(get(c)) for c in self.convs]) if len(self.convs) else np.zeros((0, *shape))

        C = self.encoder[0].out_features
        F = 2 * C + EDGE_DIM
        G = 1 if A.blocks is None else A.blocks.numel() - 1
        out = np.empty(A.nnz)
        strength_logits(
            A.pattern.crow.cpu().numpy().astype(np.int64), A.pattern.col.cpu().numpy().astype(np.int64),
            f64(A.values), node_blocks(A).cpu().numpy(), G,
            f64(self.encoder[0].weight), f64(self.encoder[0].bias), f64(self.encoder[2].weight),
            f64(self.encoder[2].bias),
            stack(lambda c: c.phi[0].weight, (C, F)), stack(lambda c: c.phi[0].bias, (C,)),
            stack(lambda c: c.phi[2].weight, (C, C)), stack(lambda c: c.phi[2].bias, (C,)),
            stack(lambda c: c.psi[0].weight, (C, 2 * C)), stack(lambda c: c.psi[0].bias, (C,)),
            stack(lambda c: c.psi[2].weight, (C, C)), stack(lambda c: c.psi[2].bias, (C,)),
            f64(self.head[0].weight), f64(self.head[0].bias), f64(self.head[2].weight).reshape(-1),
            float(self.head[2].bias), out)
        return torch.from_numpy(out)


class _WeightsProgram(ProgramModule):
    """(edge_index, values, feat, same) -> W: :meth:`GNNSolver.entry_weights` of the finest level."""

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor, same: Tensor) -> Tensor:
        return self.model.entry_weights(edge_index[0], edge_index[1], values, same > 0.5, feat.shape[0])
