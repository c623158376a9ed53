"""One linear system as a PyG ``Data`` (the single representation above ``linalg``).

Fields (n unknowns, nnz stored entries of A, float64 unless noted):

- ``edge_index`` (2, nnz) int64: row and column of each entry of A (CSR order, sorted, no duplicates)
- ``edge_attr`` (nnz,): the values of A
- ``b`` (n,): right-hand side; ``x`` (n,): reference solution of A x = b (sparse direct solve); absent
  (``data.x is None``) when the generator was called with ``reference=False``
- ``pos`` (n, d): coordinates of the unknowns (grid points, cell centres, mesh vertices)
- ``feat`` (n, F): node features, columns ``FEATURES`` = (diagonal of A, local coefficient, b)
- ``num_nodes`` = n, and metadata: ``family`` (str), ``params`` (dict of generator parameters),
  ``seed`` (int), ``symmetric`` (bool)

``learnsolve.linalg.SparseMatrix.from_pyg``-style conversion: ``SparseMatrix.from_edge_index(
data.edge_index, data.edge_attr, data.num_nodes, batch)``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch_geometric.data import Data

FEATURES = ("diag", "coeff", "b")
RHS_KINDS = ("random", "smooth", "point")


def make_rhs(kind: str, pos: np.ndarray, rng: np.random.Generator, *, num_sources: int = 3) -> np.ndarray:
    """Right-hand side at the unknowns ``pos`` (n, d).

    ``random``: i.i.d. standard normal; ``smooth``: a random combination of low-frequency sines of the
    coordinates; ``point``: ``num_sources`` unit point sources at random unknowns.

    Args:
        kind: one of ``RHS_KINDS``.
        pos: (n, d) coordinates of the unknowns.
        rng: numpy random generator (seeded by the caller).
        num_sources: number of point sources for ``"point"``.

    Returns:
        b, shape (n,).

    Raises:
        ValueError: an unknown ``kind``.
    """
    n = pos.shape[0]
    if kind == "random":
        return rng.standard_normal(n)
    if kind == "smooth":
        lo, hi = pos.min(0), pos.max(0)
        u = (pos - lo) / np.where(hi > lo, hi - lo, 1.0)
        f = np.zeros(n)
        for _ in range(4):
            k = rng.integers(1, 4, size=pos.shape[1])
            f += rng.standard_normal() * np.prod(np.sin(np.pi * k * u), axis=1)
        return f if np.any(f) else np.ones(n)
    if kind == "point":
        f = np.zeros(n)
        f[rng.choice(n, size=min(num_sources, n), replace=False)] = 1.0
        return f
    raise ValueError(f"unknown right-hand side kind {kind!r}; choose one of {', '.join(RHS_KINDS)}")


def make_system(A: sp.spmatrix, b: np.ndarray, *, pos: np.ndarray, coeff: np.ndarray, family: str,
                params: dict, seed: int, x: np.ndarray | None = None, symmetric: bool | None = None,
                reference: bool = True, spd: bool = False) -> Data:
    """Package A, b and the reference solution x.

    ``x`` not given: computed by a sparse direct solve (SuperLU, minimum-degree ordering on ``A^T + A``)
    when ``reference`` is true; with ``reference=False`` no solution is stored (``data.x is None``): the
    factorisation dominates generation at the largest sizes (fill grows like ``n log n`` in 2D, ``n^{4/3}``
    in 3D), and benchmarks only need A and b. ``spd=True`` (the caller guarantees A is SPD) factorises
    without pivoting in SuperLU's symmetric mode, which is stable for SPD matrices and keeps the
    minimum-degree order (much faster than partial pivoting on large graph Laplacians, same residual).
    ``symmetric=None`` measures the symmetry of A.

    Args:
        A: the (n, n) matrix (any scipy sparse format; summed and sorted into CSR).
        b: right-hand side, n values.
        pos: (n, d) coordinates of the unknowns.
        coeff: the PDE coefficient per unknown (or a scalar), stored as a feature.
        family: the generator's name.
        params: the generator's parameters (stored as metadata).
        seed: the seed the system was drawn with.
        x: a known solution, or None.
        symmetric: whether A is symmetric, or None to measure it.
        reference: compute x by a sparse direct solve when it is not given.
        spd: A is known to be SPD (a faster symmetric factorisation for x).

    Returns:
        PyG ``Data`` with ``edge_index`` (2, nnz), ``edge_attr`` (nnz,) (A's values), ``b`` (n,), ``x``
            (n,) or None, ``pos`` (n, d), ``feat`` (n, 3) (diagonal, coefficient, b), ``num_nodes``,
            ``family``, ``params``, ``seed`` and ``symmetric``.

    Raises:
        ValueError: a non-square A.
    """
    A = sp.csr_matrix(A, dtype=np.float64)
    A.sum_duplicates()
    A.sort_indices()
    n = A.shape[0]
    if A.shape != (n, n):
        raise ValueError(f"{family}: A must be square, got {A.shape}")
    b = np.asarray(b, dtype=np.float64).reshape(n)
    if x is None and reference and spd:
        lu = spla.splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                       options={"SymmetricMode": True})
        x = lu.solve(b)
    elif x is None and reference:
        # MMD on A^T + A: about 2x faster than the default COLAMD on these PDE matrices (3D especially)
        x = spla.spsolve(A.tocsc(), b, permc_spec="MMD_AT_PLUS_A")
    if symmetric is None:
        symmetric = bool(abs(A - A.T).max() <= 1e-12 * abs(A).max()) if A.nnz else True
    coo = A.tocoo()
    coeff = np.broadcast_to(np.asarray(coeff, dtype=np.float64).reshape(-1), (n,))
    feat = np.stack([A.diagonal(), coeff, b], axis=1)
    return Data(
        edge_index=torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64)),
        edge_attr=torch.from_numpy(coo.data.copy()),
        b=torch.from_numpy(b.copy()),
        x=None if x is None else torch.from_numpy(np.asarray(x, dtype=np.float64).copy()),
        pos=torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float64)),
        feat=torch.from_numpy(feat),
        num_nodes=n,
        family=family,
        params=dict(params),
        seed=int(seed),
        symmetric=bool(symmetric),
    )


def to_scipy(data: Data) -> sp.csr_matrix:
    """A of a system as a scipy CSR matrix."""
    ei = data.edge_index.cpu().numpy()
    return sp.csr_matrix((data.edge_attr.detach().cpu().numpy(), (ei[0], ei[1])),
                         shape=(data.num_nodes, data.num_nodes))
