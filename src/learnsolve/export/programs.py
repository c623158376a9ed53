"""Compiled programs: the model's network as plain tensor functions of ONE linear system.

Every wrapper maps the tensors of a single system A x = b (CSR order, float64) to the tensors that define
its preconditioner, using the model's own submodules (encoder, message-passing layers, heads) and
re-stating only the few tensor formulas around them that the model evaluates through
:class:`learnsolve.linalg.SparseMatrix` (a diagonal gather, a mean, a triangle mask), which neither
``torch.export`` nor TorchScript can capture (CSR patterns are built with numpy/numba). Every program is
saved, loaded back and checked against the model on two systems of different sizes before it is kept
(:func:`learnsolve.export.model.compile_program`), so a drift between the two formulas cannot go unseen.

Measured with torch 2.13: ``torch.export`` (non-strict, dynamic n and E) captures all three wrappers,
PyG's ``MessagePassing.propagate`` and the boolean masks included; the TorchScript trace fallback also
reproduces the models on other sizes (the traced ``feat.shape[0]`` stays symbolic). unrolled_cg has no
network (K learned scalars) and the surrogates are exported as weights only: no program for them.

Inputs (n unknowns, E stored entries of A, entries in CSR order: sorted by row, then column, no duplicates):

- ``edge_index`` (2, E) int64: row and column of every entry of A (diagonal included);
- ``values`` (E,) float64: the entries; ``feat`` (n, 3) float64: node features (diag(A), coefficient, b)
  as in :func:`learnsolve.data.make_system` (only column 1, the coefficient, is read: ones for a file).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SOFTPLUS_ONE = math.log(math.e - 1.0)


def _diagonal(row: Tensor, col: Tensor, values: Tensor, n: int) -> Tensor:
    """diag(A) (n,) from COO entries (0 where an entry is missing, as SparseMatrix.diagonal)."""
    on = row == col
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(
        0, row, torch.where(on, values, torch.zeros_like(values)))


class NeuralIFProgram(nn.Module):
    """(edge_index, values, feat) -> (row, col, L values) of the factor L on tril(A) (CSR order), M = L L^T."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.encoder, self.convs = model.encoder, model.convs
        self.edge_head, self.diag_head = model.edge_head, model.diag_head

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor):
        n = feat.shape[0]
        r, c = edge_index[0], edge_index[1]
        pdt = self.diag_head[-1].weight.dtype
        d = _diagonal(r, c, values, n)
        sd = torch.sqrt(d)
        e = (values / (sd[r] * sd[c])).unsqueeze(-1).to(pdt)
        dmean = d.sum() / n
        coeff = feat[:, 1].to(d.dtype)
        x = torch.stack([torch.log(d / dmean), torch.log(coeff.abs().clamp_min(1e-12))], -1).to(pdt)
        h = self.encoder(x)
        ei = torch.stack([r, c])
        for conv in self.convs:
            h = conv(h, ei, e)
        low = r >= c
        lr, lc, lv = r[low], c[low], values[low]
        off = lr != lc
        w_diag = self.diag_head(h).view(-1).to(d.dtype)
        e_l = (lv / (sd[lr] * sd[lc])).unsqueeze(-1).to(pdt)
        w_edge = self.edge_head(torch.cat([h[lr], h[lc], e_l], -1)).view(-1).to(d.dtype)
        vals = torch.where(off, lv / sd[lc] * (1.0 + w_edge), (sd * torch.exp(w_diag))[lr])
        return lr, lc, vals


class LowRankProgram(nn.Module):
    """(edge_index, values, feat) -> (D (n,), U (n, r)) with M = D + U U^T (variant "gnn" or "fixed")."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.variant = model.variant
        if self.variant == "fixed":
            self.log_d, self.u = model.log_d, model.u
        else:
            self.encoder, self.convs = model.encoder, model.convs
            self.head_d, self.head_u = model.head_d, model.head_u

    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor):
        n = feat.shape[0]
        r, c = edge_index[0], edge_index[1]
        d = _diagonal(r, c, values, n)
        dmean = d.sum() / n
        if self.variant == "fixed":
            D = dmean * torch.exp(self.log_d).to(d.dtype)
            U = torch.sqrt(dmean / n) * self.u.to(d.dtype)
            return D, U
        pdt = self.head_d[-1].weight.dtype
        e = (values / torch.sqrt(d[r] * d[c])).unsqueeze(-1).to(pdt)
        coeff = feat[:, 1].to(d.dtype)
        rowsum = torch.zeros_like(d).index_add(0, r, values)
        x = torch.stack([torch.log(d / dmean), torch.log(coeff.abs().clamp_min(1e-12)), rowsum / d], -1).to(pdt)
        h = self.encoder(x)
        ei = torch.stack([r, c])
        for conv in self.convs:
            h = conv(h, ei, e)
        D = d * F.softplus(self.head_d(h).view(-1).to(d.dtype) + _SOFTPLUS_ONE)
        U = torch.sqrt(d / n).unsqueeze(-1) * self.head_u(h).to(d.dtype)
        return D, U


class GNNSolverProgram(nn.Module):
    """One application of gnn_solver's nonlinear preconditioner: z = P r + rms(P r) g(features).

    Inputs (edge_index, values, feat, r) with base "jacobi" (P r = r / diag(A), computed inside), or
    (edge_index, values, feat, r, pr) with base "ic0", where ``pr`` = P r is the IC(0) solve done by the
    caller (learnsolve.linalg.IC0(A, shift="auto")), which no exporter can capture (a numba kernel)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.base = model.base
        self.encoder, self.convs, self.head = model.encoder, model.convs, model.head

    def _z(self, edge_index: Tensor, values: Tensor, feat: Tensor, r: Tensor, pr: Tensor) -> Tensor:
        n = feat.shape[0]
        row, col = edge_index[0], edge_index[1]
        d = _diagonal(row, col, values, n)
        pdt = self.head[-1].weight.dtype
        e = (values / torch.sqrt(d[row] * d[col])).unsqueeze(-1).to(pdt)
        dmean = d.sum() / n
        coeff = feat[:, 1].to(d.dtype)
        static = torch.stack([torch.log(d / dmean), torch.log(coeff.abs().clamp_min(1e-12))], -1).to(pdt)

        def rms(v: Tensor) -> Tensor:
            s = torch.sqrt((v * v).sum() / n)
            return torch.where(s > 0, s, torch.ones_like(s))

        sj = rms(pr)
        x = torch.cat([(r / rms(r)).unsqueeze(-1).to(pdt), (pr / sj).unsqueeze(-1).to(pdt), static], -1)
        h = self.encoder(x)
        ei = torch.stack([row, col])
        for conv in self.convs:
            h = conv(h, ei, e)
        w = self.head(h).view(-1).to(r.dtype)
        return pr + sj * w


class GNNJacobiProgram(GNNSolverProgram):
    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor, r: Tensor) -> Tensor:
        d = _diagonal(edge_index[0], edge_index[1], values, feat.shape[0])
        return self._z(edge_index, values, feat, r, r / d)


class GNNBaseInputProgram(GNNSolverProgram):
    def forward(self, edge_index: Tensor, values: Tensor, feat: Tensor, r: Tensor, pr: Tensor) -> Tensor:
        return self._z(edge_index, values, feat, r, pr)


# ------------------------------------------------------------------------------------------------
# which program for which model, and how to check it against the model
# ------------------------------------------------------------------------------------------------

_SYSTEM_INPUTS = [
    ("edge_index (2, E) int64: row and column of every stored entry of A, in CSR order (sorted by row, then "
    "column, no duplicates), diagonal included"),
    "values (E,) float64: the entries of A",
    ("feat (n, 3) float64: node features (diag(A), coefficient, b) as learnsolve.data.make_system builds them; "
    "only column 1, the coefficient, is read (ones for a matrix file)"),
]


@dataclass
class ProgramSpec:
    """How to compile and check one model's program.

    ``wrapper``: the nn.Module to compile; ``inputs(data, seed)``: its input tuple for one system;
    ``reference(model, data, inputs)``: the same quantities computed by the model itself;
    ``canonical(outputs, data)``: program outputs in the reference's form (for comparison);
    ``dynamic``: whether n and E may vary (False: the model serves one size); ``describe``: for config.json.
    """

    wrapper: nn.Module
    inputs: Callable
    reference: Callable
    canonical: Callable
    dynamic: bool
    describe: dict
    extra_inputs: int = 0  # vectors of length n after (edge_index, values, feat)


def _system_tensors(data) -> tuple[Tensor, Tensor, Tensor]:
    return (data.edge_index.long().contiguous(), data.edge_attr.to(torch.float64).contiguous(),
            data.feat.to(torch.float64).contiguous())


def _batch(data):
    from torch_geometric.data import Batch

    return Batch.from_data_list([data])


def _dense_factor(outputs, data) -> tuple[Tensor]:
    lr, lc, vals = outputs
    n = int(data.num_nodes)
    L = torch.zeros(n, n, dtype=vals.dtype)
    L[lr.long(), lc.long()] = vals
    return (L,)


def _neural_if_reference(model, data, _inputs):
    return (model.factor(_batch(data))[1].to_dense(),)


def _lowrank_reference(model, data, _inputs):
    return tuple(model.factors(_batch(data)))


def _residual(data, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(int(data.num_nodes), generator=g, dtype=torch.float64)


def _ic0_apply(data, r: Tensor) -> Tensor:
    from learnsolve.linalg import IC0, SparseMatrix

    A = SparseMatrix.from_pyg(_batch(data)).detach()
    return IC0(A, shift="auto").apply(r.view(1, -1, 1)).view(-1)


def _gnn_reference(model, data, inputs):
    apply, _, _ = model.preconditioner(_batch(data))
    return (apply(inputs[3].view(1, -1, 1)).view(-1),)


def program_spec(model: nn.Module) -> ProgramSpec | str:
    """The program of ``model``, or the reason why it has none."""
    from learnsolve.models import GNNSolver, LowRankPreconditioner, NeuralIF, UnrolledCG

    if isinstance(model, NeuralIF):
        return ProgramSpec(
            NeuralIFProgram(model), lambda data, seed: _system_tensors(data), _neural_if_reference,
            _dense_factor, True,
            {"inputs": _SYSTEM_INPUTS,
             "outputs": ["row (nnz_L,) int64", "col (nnz_L,) int64",
                         "values (nnz_L,) float64: the factor L on tril(A), in the input's order; M = L L^T"]})
    if isinstance(model, LowRankPreconditioner):
        fixed = model.variant == "fixed"
        return ProgramSpec(
            LowRankProgram(model), lambda data, seed: _system_tensors(data), _lowrank_reference,
            lambda out, data: tuple(out), not fixed,
            {"inputs": _SYSTEM_INPUTS + ([f"n must equal num_nodes = {model.num_nodes} (variant 'fixed')"]
                                         if fixed else []),
             "outputs": ["D (n,) float64 > 0", f"U (n, {model.rank}) float64: M = D + U U^T"]})
    if isinstance(model, GNNSolver):
        if model.base == "ic0":
            wrapper = GNNBaseInputProgram(model)

            def inputs(data, seed):
                r = _residual(data, seed)
                return (*_system_tensors(data), r, _ic0_apply(data, r))

            extra, more = 2, ["r (n,) float64: the residual", ("pr (n,) float64: P r, the IC(0) preconditioner "
                              "applied to r (learnsolve.linalg.IC0(A, shift='auto')), computed by the caller")]
        else:
            wrapper = GNNJacobiProgram(model)

            def inputs(data, seed):
                return (*_system_tensors(data), _residual(data, seed))

            extra, more = 1, ["r (n,) float64: the residual"]
        return ProgramSpec(
            wrapper, inputs, _gnn_reference, lambda out, data: tuple(out), True,
            {"inputs": _SYSTEM_INPUTS + more,
             "outputs": [("z (n,) float64: one application z = f(r) of the nonlinear preconditioner (use it "
                         "inside flexible CG / FGMRES, not plain CG)")]}, extra)
    if isinstance(model, UnrolledCG):
        return ("unrolled_cg has no network to compile: its learned parameters are the K step scalings "
                "exp(s_k) and direction scalings exp(t_k) (tensors s and t in model.safetensors) of plain (P)CG")
    kind = getattr(model, "kind", "?")
    return (f"{type(model).__name__} is a {kind} model: exported as weights and config only (rebuild it with "
            "learnsolve.export.load_model)")


def example_system(rows: int, cols: int, seed: int):
    """A variable-coefficient 5-point diffusion system on a rows x cols grid (SPD, Dirichlet), as a PyG Data."""
    import numpy as np
    import scipy.sparse as sp

    from learnsolve.data import make_system

    rng = np.random.default_rng(seed)
    n = rows * cols
    k = np.exp(rng.standard_normal(n))
    idx = np.arange(n).reshape(rows, cols)
    pairs = [(idx[:, :-1].ravel(), idx[:, 1:].ravel()), (idx[:-1, :].ravel(), idx[1:, :].ravel())]
    i = np.concatenate([p[0] for p in pairs])
    j = np.concatenate([p[1] for p in pairs])
    t = 2 * k[i] * k[j] / (k[i] + k[j])
    off = sp.coo_matrix((-t, (i, j)), shape=(n, n))
    A = (off + off.T).tocsr()
    A = (A + sp.diags(-np.asarray(A.sum(axis=1)).ravel() + k)).tocsr()  # diagonally dominant: SPD
    pos = np.stack(np.meshgrid(np.arange(rows) / rows, np.arange(cols) / cols, indexing="ij"), -1).reshape(n, 2)
    return make_system(A, rng.standard_normal(n), pos=pos, coeff=k, family="export_check", params={}, seed=seed,
                       x=np.zeros(n))


def check_systems(spec: ProgramSpec, model: nn.Module):
    """(trace example, check system of another size): (5 x 6, 7 x 9) grids, or two grids of the fixed size."""
    n = getattr(model, "num_nodes", None)
    if spec.dynamic or n is None:
        return example_system(5, 6, 1), example_system(7, 9, 2)
    rows = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    return example_system(rows, n // rows, 1), example_system(rows, n // rows, 2)


def compare(got: tuple, ref: tuple, float64: bool) -> float | None:
    """Largest relative deviation of ``got`` from ``ref`` when above tolerance (1e-10 when the network runs in
    float64, 1e-5 in float32), else None."""
    tol = 1e-10 if float64 else 1e-5
    worst = 0.0
    if len(got) != len(ref):
        return float("inf")
    for a, b in zip(got, ref):
        a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
        if a.shape != b.shape:
            return float("inf")
        scale = float(b.abs().max()) if b.numel() else 0.0
        dev = float((a - b).abs().max()) / max(scale, 1e-300) if b.numel() else 0.0
        worst = max(worst, dev)
    return worst if not worst <= tol else None
