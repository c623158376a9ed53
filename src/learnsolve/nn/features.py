"""Scale-free input features of the graph of a linear system, shared by every GNN model and its exported
program.

A system A x = b enters a network through its COO entries (``row``, ``col``, ``values``; the diagonal among
them) and the per-node coefficient (column 1 of ``feat``, ones for a bare matrix). With d_i = a_ii and
mean_g the mean over the nodes of node i's graph g (one system of a PyG batch):

    edge e = (i, j):  a_ij / sqrt(a_ii a_jj)                                  (E, 1)
    node i:           log(a_ii / mean_g a_jj),  log |coeff_i|  [, (sum_j a_ij) / a_ii]       (N, 2 or 3)

Both are invariant to A -> c A (c > 0), so a network fed with them sees the same system whatever the units.
Everything here is plain tensor code over COO entries (``index_add``, gathers), with no
:class:`learnsolve.linalg.SparseMatrix`: the same functions run inside the models (a batch of graphs,
``graph`` given) and inside the programs that ``torch.export`` captures (one system, ``graph=None``).
Cost: O(nnz + N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

COEFF_FLOOR = 1e-12  # |coeff| below this is clamped before the log


def node_coefficient(batch, like: Tensor) -> Tensor:
    """The per-node coefficient (N,) of a PyG batch (``feat[:, 1]``), ones when the batch has no ``feat``
    (a bare matrix), in ``like``'s dtype."""
    feat = getattr(batch, "feat", None)
    return torch.ones_like(like) if feat is None else feat[:, 1].to(like.dtype)


def diagonal(row: Tensor, col: Tensor, values: Tensor, n: int) -> Tensor:
    """diag(A) (n,) from COO entries without duplicates (0 where an entry is missing)."""
    on = row == col
    return values.new_zeros(n).index_add(0, row, torch.where(on, values, torch.zeros_like(values)))


def require_positive_diagonal(d: Tensor, name: str) -> None:
    """ValueError naming the model and the first row with a_ii <= 0 (the features and the models divide by
    it)."""
    bad = d <= 0
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} needs a positive diagonal (an SPD family); got a_ii = {float(d[i]):g} in "
                         f"row {i}")


def graph_mean(v: Tensor, graph: Tensor | None = None, num_graphs: int = 1) -> Tensor:
    """(N,) mean of v (N,) over the nodes of each node's graph; ``graph`` (N,) int64 graph of each node
    (None: one graph). A graph's nodes must exist (no empty graph among those indexed)."""
    if graph is None:
        return (v.sum() / v.shape[0]).expand(v.shape[0])
    s = v.new_zeros(num_graphs).index_add(0, graph, v)
    c = v.new_zeros(num_graphs).index_add(0, graph, torch.ones_like(v))
    return (s / c)[graph]


def graph_size(graph: Tensor | None, num_graphs: int, like: Tensor) -> Tensor:
    """(N,) number of nodes of each node's graph, in ``like``'s dtype (``like`` (N,))."""
    if graph is None:
        return torch.full_like(like, like.shape[0])
    return torch.bincount(graph, minlength=num_graphs).to(like.dtype)[graph]


def graph_rms(v: Tensor, graph: Tensor | None = None, num_graphs: int = 1) -> Tensor:
    """(N,) root mean square of v over each node's graph, 1 where it is 0 (a zero vector stays zero when
    divided by it)."""
    s = torch.sqrt(graph_mean(v * v, graph, num_graphs))
    return torch.where(s > 0, s, torch.ones_like(s))


def log_coefficient(coeff: Tensor) -> Tensor:
    """log |coeff| (N,), clamped at COEFF_FLOOR."""
    return torch.log(coeff.abs().clamp_min(COEFF_FLOOR))


def edge_features(row: Tensor, col: Tensor, values: Tensor, d: Tensor) -> Tensor:
    """(E, 1) normalised entries a_ij / sqrt(a_ii a_jj) (1 on the diagonal)."""
    return (values / torch.sqrt(d[row] * d[col])).unsqueeze(-1)


@dataclass
class SystemFeatures:
    """The scale-free inputs of one batch of systems (see the module docstring), in the values' dtype.

    ``diag`` (N,) a_ii; ``diag_mean`` (N,) mean_g a_jj of each node's graph; ``edge`` (E, 1); ``node``
    (N, 2) or (N, 3) with ``rowsum``."""

    diag: Tensor
    diag_mean: Tensor
    edge: Tensor
    node: Tensor


def system_features(row: Tensor, col: Tensor, values: Tensor, coeff: Tensor, graph: Tensor | None = None,
                    num_graphs: int = 1, *, rowsum: bool = False) -> SystemFeatures:
    """Scale-free features of the systems with COO entries (row, col, values) and node coefficients ``coeff``
    (N,); ``graph``/``num_graphs`` as in :func:`graph_mean`. ``rowsum`` adds the node feature
    (sum_j a_ij) / a_ii (1 minus the relative off-diagonal row sum: 0 for a pure Laplacian row)."""
    n = coeff.shape[0]
    d = diagonal(row, col, values, n)
    dmean = graph_mean(d, graph, num_graphs)
    cols = [torch.log(d / dmean), log_coefficient(coeff.to(d.dtype))]
    if rowsum:
        cols.append(torch.zeros_like(d).index_add(0, row, values) / d)
    return SystemFeatures(d, dmean, edge_features(row, col, values, d), torch.stack(cols, -1))


__all__ = [
    "COEFF_FLOOR",
    "SystemFeatures",
    "diagonal",
    "edge_features",
    "graph_mean",
    "graph_rms",
    "graph_size",
    "log_coefficient",
    "node_coefficient",
    "require_positive_diagonal",
    "system_features",
]
