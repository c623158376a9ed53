"""Finite-element generators: P1 Poisson on unstructured Delaunay meshes and 2-D linear elasticity.

Both assemble every element matrix at once with numpy broadcasting (no Python loop over elements)
and build the global matrix with a single COO -> CSR conversion (duplicates summed). Everything is
deterministic given ``seed``: one ``numpy.random.default_rng(seed)`` stream is consumed in a fixed
order (domain / mesh, then coefficient field, then right-hand side).

Right-hand sides (``rhs`` in :data:`learnsolve.data.RHS_KINDS`): ``random`` and ``smooth`` give the
nodal values of a source ``f`` (from :func:`learnsolve.data.make_rhs`), turned into the load vector
by the vertex (lumped) quadrature ``b_i = f(x_i) * |patch(i)| / 3``, i.e. ``b = M_L f``; ``point``
gives unit Dirac sources at random unknowns, whose exact P1 load is ``b = e_i``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.spatial import Delaunay, cKDTree
from torch_geometric.data import Data

from ..system import make_rhs, make_system

DOMAINS = ("random", "square")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _random_field(xy: np.ndarray, rng: np.random.Generator, sigma2: float, corr_len: float,
                  num_features: int = 64) -> np.ndarray:
    """Smooth zero-mean random field with variance ``sigma2`` at points ``xy`` (N, 2).

    Random Fourier features ``g(x) = sqrt(2 sigma2 / K) sum_j cos(w_j . x + phi_j)``,
    ``w_j ~ N(0, I / corr_len^2)``, ``phi_j ~ U(0, 2 pi)``: approximately the Gaussian field with
    squared-exponential covariance ``sigma2 exp(-|x - y|^2 / (2 corr_len^2))``. Cost O(N K).
    The random draws do not depend on ``xy`` (the same field can be evaluated anywhere).
    """
    w = rng.standard_normal((num_features, 2)) / corr_len
    phi = rng.uniform(0.0, 2.0 * np.pi, num_features)
    if sigma2 == 0.0:
        return np.zeros(len(xy))
    return np.sqrt(2.0 * sigma2 / num_features) * np.cos(xy @ w.T + phi).sum(axis=1)


def _signed_areas(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Signed areas (T,) of triangles ``tri`` (T, 3); positive for counter-clockwise vertices."""
    p0, p1, p2 = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    d1, d2 = p1 - p0, p2 - p0
    return 0.5 * (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0])


def _p1_gradients(points: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Areas (T,) and gradients (T, 3, 2) of the barycentric coordinates of CCW triangles:
    ``grad lambda_i = (y_{i+1} - y_{i+2}, x_{i+2} - x_{i+1}) / (2 |T|)`` (indices mod 3)."""
    p = points[tri]  # (T, 3, 2)
    area = _signed_areas(points, tri)
    nxt, prv = p[:, [1, 2, 0]], p[:, [2, 0, 1]]
    grad = (np.stack([nxt[..., 1] - prv[..., 1], prv[..., 0] - nxt[..., 0]], axis=-1)
            / (2.0 * area[:, None, None]))
    return area, grad


def _assemble(local: np.ndarray, dofs: np.ndarray, n: int) -> sp.csr_matrix:
    """Sum element matrices ``local`` (T, d, d) with global dof numbers ``dofs`` (T, d): one COO -> CSR."""
    d = dofs.shape[1]
    rows = np.broadcast_to(dofs[:, :, None], (len(dofs), d, d)).ravel()
    cols = np.broadcast_to(dofs[:, None, :], (len(dofs), d, d)).ravel()
    A = sp.coo_matrix((local.ravel(), (rows, cols)), shape=(n, n)).tocsr()
    A.sum_duplicates()
    A.sort_indices()
    return A


def _vertex_average(values: np.ndarray, area: np.ndarray, tri: np.ndarray,
                    n: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted average to the vertices of per-element ``values``, and the patch areas / 3."""
    w = np.repeat(area / 3.0, 3)
    mass = np.bincount(tri.ravel(), weights=w, minlength=n)
    avg = (np.bincount(tri.ravel(), weights=w * np.repeat(values, 3), minlength=n)
           / np.where(mass > 0, mass, 1))
    return avg, mass


def _load(rhs: str, pos: np.ndarray, lumped_mass: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Load vector for a named right-hand side (see the module docstring)."""
    f = make_rhs(rhs, pos, rng)
    return f if rhs == "point" else lumped_mass * f


def _name(fn: Callable | None) -> str | None:
    return None if fn is None else getattr(fn, "__name__", type(fn).__name__)


# --------------------------------------------------------------------------------------------------
# unstructured meshes
# --------------------------------------------------------------------------------------------------
class Mesh(NamedTuple):
    """A triangle mesh: ``points`` (V, 2), CCW ``triangles`` (T, 3) int64, ``boundary`` (V,) bool
    (vertices on a boundary edge, i.e. an edge of exactly one triangle), ``polygon`` (B, 2) the
    domain's boundary polygon (CCW), ``h`` the target mesh size."""

    points: np.ndarray
    triangles: np.ndarray
    boundary: np.ndarray
    polygon: np.ndarray
    h: float


def _star_polygon(rng: np.random.Generator, num_modes: int = 4) -> Callable[[np.ndarray], np.ndarray]:
    """Random star-shaped domain around (0.5, 0.5): ``r(theta) = 0.5 (1 + sum_k a_k cos(k theta + phi_k))``
    with ``|a_k| <= 0.3 / k`` (so ``0.19 <= r <= 0.81``); returns ``theta -> r(theta)``."""
    k = np.arange(1, num_modes + 1)
    a = rng.uniform(-0.3, 0.3, num_modes) / k
    ph = rng.uniform(0.0, 2.0 * np.pi, num_modes)
    return lambda t: 0.5 * (1.0 + np.cos(np.multiply.outer(t, k) + ph) @ a)


def _inside_star(q: np.ndarray, poly: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Signed test for polygons star-shaped w.r.t. ``center`` with vertices at increasing angles:
    the cross product of the boundary segment in ``q``'s angular sector with ``q`` (>0 inside, 0 on)."""
    ang = np.mod(np.arctan2(*(poly - center).T[::-1]), 2 * np.pi)
    aq = np.mod(np.arctan2(*(q - center).T[::-1]), 2 * np.pi)
    order = np.argsort(ang)
    ang_sorted = ang[order]
    j = (np.searchsorted(ang_sorted, aq, side="right") - 1) % len(poly)
    a, b = poly[order[j]], poly[order[(j + 1) % len(poly)]]
    ab, aq_ = b - a, q - a
    return ab[:, 0] * aq_[:, 1] - ab[:, 1] * aq_[:, 0]


def make_mesh(size: int = 400, *, seed: int = 0, domain: str = "random",
              rng: np.random.Generator | None = None) -> Mesh:
    """Unstructured Delaunay mesh with about ``size`` vertices.

    - ``domain="square"``: the unit square; ``m = round(sqrt(size))`` points per side (``h = 1/(m-1)``),
      boundary points equally spaced on the edges, interior points of the ``m x m`` lattice jittered by
      ``U(-0.2 h, 0.2 h)`` in each coordinate (quasi-uniform, unstructured).
    - ``domain="random"``: a random star-shaped domain (see ``_star_polygon``); the boundary curve is
      sampled at arc-length spacing ``h``, the interior by a jittered lattice of spacing ``h`` keeping
      the points farther than ``0.6 h`` from the boundary points; ``h`` solves
      ``area / h^2 + perimeter / h = size``.

    ``scipy.spatial.Delaunay`` triangulates the convex hull; triangles with their centroid or an edge
    midpoint outside a non-convex domain (the slivers spanning its concavities) and triangles of
    (near) zero area (``< 1e-10 h^2``) are removed, vertices left in no triangle are dropped, and all
    triangles are oriented counter-clockwise. ``rng`` overrides ``seed``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    if size < 9:
        raise ValueError(f"size must be >= 9, got {size}")
    rng = np.random.default_rng(seed) if rng is None else rng
    center = np.array([0.5, 0.5])
    if domain == "square":
        m = max(3, round(float(np.sqrt(size))))
        h = 1.0 / (m - 1)
        g = np.linspace(0.0, 1.0, m)
        X, Y = np.meshgrid(g, g, indexing="ij")
        pts = np.stack([X.ravel(), Y.ravel()], axis=1)
        interior = (pts > 0).all(1) & (pts < 1).all(1)
        pts[interior] += rng.uniform(-0.2 * h, 0.2 * h, (int(interior.sum()), 2))
        polygon = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    else:
        radius = _star_polygon(rng)
        t = np.linspace(0.0, 2 * np.pi, 4097)
        curve = center + radius(t)[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)
        seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        perim = arc[-1]
        area = 0.5 * np.sum(curve[:-1, 0] * curve[1:, 1] - curve[1:, 0] * curve[:-1, 1])
        h = 2.0 * area / (-perim + np.sqrt(perim**2 + 4.0 * area * size))
        nb = max(8, int(np.ceil(perim / h)))
        tb = np.interp(np.arange(nb) * perim / nb, arc, t)
        polygon = center + radius(tb)[:, None] * np.stack([np.cos(tb), np.sin(tb)], axis=1)
        g = np.arange(-0.5 * h, 1.0 + 0.5 * h, h)
        X, Y = np.meshgrid(g, g, indexing="ij")
        lat = np.stack([X.ravel(), Y.ravel()], axis=1) + rng.uniform(-0.2 * h, 0.2 * h, (X.size, 2))
        dist, _ = cKDTree(polygon).query(lat)
        lat = lat[(_inside_star(lat, polygon, center) > 0) & (dist > 0.6 * h)]
        pts = np.concatenate([polygon, lat])

    tri = Delaunay(pts).simplices.astype(np.int64)
    area = _signed_areas(pts, tri)
    tri[area < 0] = tri[area < 0][:, [0, 2, 1]]
    keep = np.abs(area) > 1e-10 * h * h
    if domain == "random":
        p = pts[tri]
        tol = -1e-9 * h
        keep &= _inside_star(p.mean(1), polygon, center) > 0
        for i, j in ((0, 1), (1, 2), (2, 0)):
            keep &= _inside_star(0.5 * (p[:, i] + p[:, j]), polygon, center) > tol
    tri = tri[keep]
    used = np.zeros(len(pts), dtype=bool)
    used[tri.ravel()] = True
    renum = np.cumsum(used) - 1
    pts, tri = pts[used], renum[tri]

    # boundary vertices: endpoints of edges that belong to exactly one triangle
    edges = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = np.zeros(len(pts), dtype=bool)
    boundary[uniq[counts == 1].ravel()] = True
    return Mesh(pts, tri, boundary, polygon, float(h))


# --------------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------------
def fem_poisson(size: int = 400, *, seed: int = 0, rhs: str = "random", domain: str = "random",
                coeff_sigma2: float = 1.0, f: Callable[[np.ndarray], np.ndarray] | None = None,
                k_fn: Callable[[np.ndarray], np.ndarray] | None = None, corr_len: float = 0.2,
                reference: bool = True) -> Data:
    """P1 finite elements for ``-div(k grad u) = f`` in Omega, ``u = 0`` on the boundary of Omega.

    Mesh: :func:`make_mesh` (``domain="random"``: a random star-shaped polygon; ``"square"``: the
    unit square), about ``size`` vertices, unstructured Delaunay triangulation.

    Coefficient: piecewise constant per triangle, ``k_T = k_fn(centroids)`` when given, else
    ``k_T = exp(g(centroid_T))`` with ``g`` a smooth Gaussian random field of variance
    ``coeff_sigma2`` and correlation length ``corr_len`` (random Fourier features). The centroid rule
    is exact for piecewise-constant k and O(h^2) for smooth k.

    Discretisation: ``A_ij = sum_T k_T |T| grad phi_i . grad phi_j`` (exact for P1 with constant
    k_T); load by the vertex (lumped) quadrature ``b_i = f(x_i) |patch(i)| / 3`` (second order on
    smooth f); ``f(xy)`` (callable on (n, 2) coordinates) overrides ``rhs``. Homogeneous Dirichlet
    boundary conditions are imposed by elimination: the unknowns are the interior vertices, so A is
    symmetric positive definite (n x n, about 7 nonzeros per row).

    Returns a :func:`make_system` ``Data`` with ``pos`` the coordinates of the interior vertices and
    ``coeff`` the area-weighted average of k over each vertex's patch. ``reference=False`` skips the
    reference solve (no ``x``).
    """
    rng = np.random.default_rng(seed)
    mesh = make_mesh(size, domain=domain, rng=rng)
    pts, tri = mesh.points, mesh.triangles
    area, grad = _p1_gradients(pts, tri)
    centroids = pts[tri].mean(axis=1)
    field = _random_field(centroids, rng, coeff_sigma2, corr_len)  # drawn even with k_fn: fixed stream
    k = np.asarray(k_fn(centroids), dtype=np.float64).reshape(-1) if k_fn is not None else np.exp(field)
    if k.shape != (len(tri),) or not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise ValueError("fem_poisson: the coefficient k must be finite and positive at every centroid")

    local = (k * area)[:, None, None] * np.einsum("tid,tjd->tij", grad, grad)
    A = _assemble(local, tri, len(pts))
    kv, mass = _vertex_average(k, area, tri, len(pts))
    free = np.flatnonzero(~mesh.boundary)
    A = A[free][:, free]
    pos = pts[free]
    if f is not None:
        b = mass[free] * np.asarray(f(pos), dtype=np.float64).reshape(-1)
    else:
        b = _load(rhs, pos, mass[free], rng)
    params = {"size": size, "rhs": rhs, "domain": domain, "coeff_sigma2": coeff_sigma2,
              "corr_len": corr_len, "f": _name(f), "k_fn": _name(k_fn)}
    return make_system(A, b, pos=pos, coeff=kv[free], family="fem_poisson", params=params, seed=seed,
                       symmetric=True, reference=reference)


def _elasticity_D(nu: float) -> np.ndarray:
    """Plane-strain elasticity matrix for E = 1 (Voigt order xx, yy, xy with engineering shear)."""
    c = 1.0 / ((1.0 + nu) * (1.0 - 2.0 * nu))
    return c * np.array([[1.0 - nu, nu, 0.0], [nu, 1.0 - nu, 0.0], [0.0, 0.0, 0.5 - nu]])


def _square_mesh(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ((m+1)^2, 2), node ``j (m+1) + i`` at ``(i/m, j/m)``, and the 2 m^2 CCW triangles that
    split each square along its (0,0)-(1,1) diagonal."""
    g = np.linspace(0.0, 1.0, m + 1)
    X, Y = np.meshgrid(g, g, indexing="xy")
    nodes = np.stack([X.ravel(), Y.ravel()], axis=1)
    idx = np.arange((m + 1) ** 2).reshape(m + 1, m + 1)
    p00, p10, p01, p11 = (idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(),
                          idx[1:, 1:].ravel())
    return nodes, np.concatenate([np.stack([p00, p10, p11], 1), np.stack([p00, p11, p01], 1)])


def stiffness_without_bc(m: int = 16, *, seed: int = 0, nu: float = 0.3, E_sigma2: float = 1.0,
                         corr_len: float = 0.2, rng: np.random.Generator | None = None
                         ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Full (singular) plane-strain P1 stiffness matrix on the unit square, no boundary condition.

    Mesh: ``m x m`` squares, each split into two triangles along its (0,0)-(1,1) diagonal;
    ``(m+1)^2`` nodes numbered ``j (m+1) + i`` at ``(i/m, j/m)``. Unknowns interleaved:
    dof ``2 p`` is ``u_x`` and ``2 p + 1`` is ``u_y`` of node ``p``. Element stiffness
    ``K_T = E_T |T| B_T^T D B_T`` with the constant strain-displacement matrix ``B_T`` (3 x 6) and
    the plane-strain ``D(nu)`` (see ``_elasticity_D``); ``E_T = exp(g(centroid_T))`` is lognormal,
    ``g`` a smooth Gaussian field of variance ``E_sigma2`` (correlation length ``corr_len``).
    The null space is spanned by the rigid-body modes (1, 0), (0, 1) and (-y, x).

    Returns ``(K, nodes (V, 2), E (T,))``. ``rng`` overrides ``seed``.
    """
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if not -1.0 < nu < 0.5:
        raise ValueError(f"Poisson ratio nu must lie in (-1, 0.5), got {nu}")
    rng = np.random.default_rng(seed) if rng is None else rng
    nodes, tri = _square_mesh(m)
    area, grad = _p1_gradients(nodes, tri)
    E = np.exp(_random_field(nodes[tri].mean(axis=1), rng, E_sigma2, corr_len))

    T = len(tri)
    B = np.zeros((T, 3, 6))
    B[:, 0, 0::2] = grad[..., 0]
    B[:, 1, 1::2] = grad[..., 1]
    B[:, 2, 0::2] = grad[..., 1]
    B[:, 2, 1::2] = grad[..., 0]
    local = (E * area)[:, None, None] * np.einsum("tai,ab,tbj->tij", B, _elasticity_D(nu), B)
    dofs = np.stack([2 * tri, 2 * tri + 1], axis=-1).reshape(T, 6)
    K = _assemble(local, dofs, 2 * len(nodes))
    return K, nodes, E


def elasticity2d(m: int = 16, *, seed: int = 0, rhs: str = "random", nu: float = 0.3, E_sigma2: float = 1.0,
                 clamp: bool = True, corr_len: float = 0.2, reference: bool = True) -> Data:
    """Plane-strain linear elasticity ``-div sigma(u) = f`` on the unit square, P1 elements.

    ``sigma = E/(1+nu) (eps + nu/(1-2nu) tr(eps) I)``, ``eps = (grad u + grad u^T)/2``; see
    :func:`stiffness_without_bc` for the mesh, the numbering (2 unknowns per node, interleaved
    ``(u_x, u_y)``) and the lognormal Young's modulus per element. Free (traction-free) boundaries
    except, when ``clamp=True``, the left edge ``x = 0`` where ``u = 0`` is imposed by eliminating its
    dofs: A is symmetric positive definite, ``n = 2 m (m+1)``. The load is a body force from ``rhs``
    (nodal values of each component, lumped quadrature; see the module docstring).

    ``clamp=False`` returns the full stiffness matrix (``n = 2 (m+1)^2``), which is singular (the 3
    rigid-body modes span its null space); the right-hand side is then ``b = 0`` with reference
    solution ``x = 0`` (a sparse direct solve would fail). ``pos`` repeats each node's coordinates
    for its two unknowns; ``coeff`` is E averaged (area-weighted) to the nodes. ``reference=False`` skips
    the reference solve of the clamped system (no ``x``).
    """
    rng = np.random.default_rng(seed)
    K, nodes, E = stiffness_without_bc(m, nu=nu, E_sigma2=E_sigma2, corr_len=corr_len, rng=rng)
    _, tri = _square_mesh(m)
    area = _signed_areas(nodes, tri)
    Ev, mass = _vertex_average(E, area, tri, len(nodes))
    pos_all = np.repeat(nodes, 2, axis=0)
    coeff_all = np.repeat(Ev, 2)
    params = {"m": m, "rhs": rhs, "nu": nu, "E_sigma2": E_sigma2, "clamp": clamp, "corr_len": corr_len}
    if not clamp:
        zero = np.zeros(K.shape[0])
        return make_system(K, zero, pos=pos_all, coeff=coeff_all, family="elasticity2d", params=params,
                           seed=seed, x=zero, symmetric=True)
    free = np.flatnonzero(np.repeat(nodes[:, 0] > 0, 2))
    A = K[free][:, free]
    pos = pos_all[free]
    b = _load(rhs, pos, np.repeat(mass, 2)[free], rng)
    return make_system(A, b, pos=pos, coeff=coeff_all[free], family="elasticity2d", params=params, seed=seed,
                       symmetric=True, reference=reference)


GENERATORS = {"fem_poisson": fem_poisson, "elasticity2d": elasticity2d}

__all__ = ["DOMAINS", "GENERATORS", "Mesh", "elasticity2d", "fem_poisson", "make_mesh",
           "stiffness_without_bc"]
