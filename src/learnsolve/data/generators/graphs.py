"""Weighted graph Laplacians of random Delaunay graphs (the unstructured family of Luz et al., ICML 2020).

``graph_laplacian(n)`` has exactly ``n`` unknowns, one per random point of the unit square; the matrix is
the weighted graph Laplacian with lognormal edge weights and Dirichlet rows on a boundary layer, so it is
symmetric positive definite. It follows the conventions of :mod:`.structured` (signature ``NAME(size, *,
seed=0, rhs="random", <parameters>, f=None, reference=True)``, one ``np.random.default_rng(seed)``
drawing the points and weights first, then the right-hand side; assembly vectorised).

Generation time of one system in seconds, without / with the reference solve (SuperLU, symmetric mode),
measured 2026-12-07 on 2 CPU cores with ``python -m learnsolve.data.timing --reference-max-n 2000000``
(without: best of 2 runs):

===============  ==============  ==============  ================
generator        n = 4,096       n = 65,536      n = 1,048,576
===============  ==============  ==============  ================
graph_laplacian  0.018 / 0.028   0.47 / 0.79     13.6 / 34.2
===============  ==============  ==============  ================

The Delaunay triangulation (qhull) is most of the time without the reference: 10-12 s at 1M points
(sorting the points into strips first made it about 1.5x faster than on unsorted points).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.spatial import Delaunay
from torch_geometric.data import Data

from ..system import RHS_KINDS, make_rhs, make_system
from .structured import PosFn

__all__ = ["GENERATORS", "delaunay_edges", "graph_laplacian"]


def delaunay_edges(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges ``(i, j)``, ``i < j``, of the Delaunay triangulation of ``points`` (n, 2), sorted by (i, j),
    and the convex-hull vertices. Returns ``(i (E,), j (E,), hull (H,))``. Cost: O(n log n) (qhull)."""
    tri = Delaunay(points)
    indptr, indices = tri.vertex_neighbor_vertices
    n = len(points)
    G = sp.csr_matrix((np.ones(len(indices), dtype=np.int8), indices, indptr), shape=(n, n))
    U = sp.triu(G, k=1, format="csr")
    U.sort_indices()
    rows = np.repeat(np.arange(n), np.diff(U.indptr))
    return rows, U.indices.astype(np.int64), np.unique(tri.convex_hull)


def graph_laplacian(n: int = 1024, *, seed: int = 0, rhs: str = "random", sigma2: float = 1.0,
                    f: PosFn | None = None, reference: bool = True) -> Data:
    """Lognormal-weighted Laplacian of a random Delaunay graph, Dirichlet rows on the boundary layer.

    Graph: ``n`` points uniform in the unit square, numbered in strips (x in ``[s/q, (s+1)/q)``,
    ``q = ceil(sqrt(n))``, by increasing y within a strip: the analogue of the grids' numbering, local
    enough for incomplete factorisations), and the edges of their Delaunay triangulation
    (``scipy.spatial.Delaunay``; about ``3 n`` edges, 7 nonzeros per row). Each edge gets the weight
    ``w_ij = exp(sqrt(sigma2) z_ij)``, ``z_ij ~ N(0, 1)`` i.i.d. (drawn in (i, j) order); ``L = D - W``
    with ``D = diag(sum_j w_ij)``.

    Boundary layer: the points within one mean spacing ``1/sqrt(n)`` of the square's boundary, together
    with the convex-hull vertices (about ``4 sqrt(n)`` points; never empty). A strip of width one spacing is
    what a grid's boundary nodes are, so the problem is a Dirichlet problem on the square (smallest
    eigenvalue of order ``1/n``, condition number of order ``n`` as for the 5-point Laplacian); the hull
    vertices alone (``O(log n)`` of them) would leave a nearly pure-Neumann graph. Its rows are Dirichlet
    rows: ``A_ii = D_ii`` (the weighted degree, so the scale matches the neighbouring rows) and no
    off-diagonal entries; the columns of the boundary points are removed from the other rows, keeping A
    symmetric. So ``A = P^T [[L_II, 0], [0, D_BB]] P``: interior rows away from the layer have zero row
    sums, rows next to it have row sum equal to their weight into the layer. ``L_II`` is an irreducibly
    diagonally dominant M-matrix (the Delaunay graph is connected and the layer is not empty), so A is SPD.
    A point in no triangle (only for exactly repeated points) is a Dirichlet row with ``A_ii = 1``.

    Right-hand side: ``b = f`` at the interior points (``rhs`` kinds of :func:`make_rhs` drawn over the
    interior points only, or ``f(pos)``) and ``b = 0`` on the layer (homogeneous Dirichlet data), so
    ``x = 0`` there. A is a graph operator, not scaled by a mesh size.

    ``pos`` the points (n, 2); ``coeff`` the mean weight of each point's edges (1 where it has none);
    ``params``: n, sigma2, num_boundary (layer size), rhs. Cost: O(n log n) (the triangulation dominates)
    plus the reference solve (``reference=False`` skips it; about n^1.5 flops for 2D-like graphs).
    """
    if isinstance(n, bool) or int(n) != n or n < 4:
        raise ValueError(f"graph_laplacian: n (the number of nodes) must be an integer >= 4, got {n!r}")
    if not 0 <= sigma2 < np.inf:
        raise ValueError("graph_laplacian: sigma2 (the variance of log w) must be finite and >= 0, got "
                         f"{sigma2!r}")
    if f is None and rhs not in RHS_KINDS:
        raise ValueError(f"graph_laplacian: unknown right-hand side kind rhs={rhs!r}; choose one of "
                         f"{', '.join(RHS_KINDS)}")
    n = int(n)
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 2))
    q = int(np.ceil(np.sqrt(n)))
    pts = pts[np.lexsort((pts[:, 1], np.minimum(np.floor(pts[:, 0] * q), q - 1)))]
    i, j, hull = delaunay_edges(pts)
    w = np.exp(np.sqrt(sigma2) * rng.standard_normal(len(i)))

    deg = np.bincount(i, weights=w, minlength=n) + np.bincount(j, weights=w, minlength=n)
    num_edges = np.bincount(i, minlength=n) + np.bincount(j, minlength=n)
    spacing = 1.0 / np.sqrt(n)
    boundary = (np.minimum(pts, 1.0 - pts).min(axis=1) < spacing) | (num_edges == 0)
    boundary[hull] = True
    diag = np.where(num_edges > 0, deg, 1.0)
    keep = ~boundary[i] & ~boundary[j]
    rows = np.concatenate([i[keep], j[keep], np.arange(n)])
    cols = np.concatenate([j[keep], i[keep], np.arange(n)])
    vals = np.concatenate([-w[keep], -w[keep], diag])
    A = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))

    b = np.zeros(n)
    interior = np.flatnonzero(~boundary)
    if f is not None:
        b[interior] = np.asarray(f(pts), dtype=np.float64).reshape(n)[interior]
    elif len(interior):
        b[interior] = make_rhs(rhs, pts[interior], rng)
    coeff = np.where(num_edges > 0, deg / np.maximum(num_edges, 1), 1.0)
    params = {"n": n, "sigma2": float(sigma2), "num_boundary": int(boundary.sum()),
              "rhs": "custom" if f is not None else rhs}
    return make_system(A, b, pos=pts, coeff=coeff, family="graph_laplacian", params=params, seed=seed,
                       symmetric=True, reference=reference, spd=True)


GENERATORS = {"graph_laplacian": graph_laplacian}
