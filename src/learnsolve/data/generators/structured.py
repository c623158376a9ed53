"""Structured-grid PDE systems: finite differences and cell-centred finite volumes on the unit square/cube.

Every generator has the signature ``NAME(m=32, *, seed=0, rhs="random", <family parameters>, f=None)`` and
returns :func:`learnsolve.data.make_system` of the discretised operator: a PyG ``Data`` with A, b, the
reference solution x (sparse direct solve), ``pos`` (n, d), the local coefficient and metadata.

Conventions shared by all generators:

- unknowns are numbered lexicographically with the LAST axis fastest (``numpy`` C order of an array
  indexed ``[i, j(, l)]`` with ``i`` along x, ``j`` along y, ``l`` along z);
- the operator is scaled so that ``b`` holds the source ``f`` at the unknowns (no ``h^2`` factors in b);
- Dirichlet data are homogeneous: boundary values are eliminated, so only interior unknowns remain;
- ``rhs`` chooses the right-hand side through :func:`learnsolve.data.make_rhs` ("random", "smooth",
  "point"); an explicit ``f`` callable ``f(pos) -> (n,)`` overrides it (manufactured solutions);
- the generator is deterministic given ``seed``: one ``np.random.default_rng(seed)`` draws the random
  coefficient first, then the right-hand side.

Assembly is vectorised (one slice per stencil offset, no Python loop over cells).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.fft
import scipy.sparse as sp
from torch_geometric.data import Data

from ..system import make_rhs, make_system

__all__ = [
    "GENERATORS",
    "anisotropic2d",
    "anisotropy_tensor",
    "convdiff2d",
    "diffusion2d",
    "diffusion3d",
    "gaussian_random_field",
    "poisson2d",
    "poisson3d",
    "poisson_matrix",
]

PosFn = Callable[[np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------- helpers


def _assemble(shape: tuple[int, ...], diag: np.ndarray | float,
              offdiag: list[tuple[tuple[int, ...], np.ndarray | float]]) -> sp.csr_matrix:
    """Sparse matrix of a stencil on a grid of unknowns with homogeneous Dirichlet boundary.

    ``diag``: the diagonal (scalar or array of ``shape``). ``offdiag``: ``(offset, values)`` pairs;
    ``values[cell]`` is the coupling of ``cell`` to ``cell + offset``. Couplings to neighbours outside
    the grid are dropped (their values are zero by the Dirichlet condition). Exact zeros are removed.
    """
    n = int(np.prod(shape))
    idx = np.arange(n).reshape(shape)
    rows, cols, vals = [idx.ravel()], [idx.ravel()], [np.broadcast_to(np.asarray(diag, float), shape).ravel()]
    for off, val in offdiag:
        src = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip(off, shape))
        dst = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip(off, shape))
        rows.append(idx[src].ravel())
        cols.append(idx[dst].ravel())
        vals.append(np.broadcast_to(np.asarray(val, float), shape)[src].ravel())
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    A.eliminate_zeros()
    return A


def _unit(d: int, axis: int, sign: int = 1) -> tuple[int, ...]:
    return tuple(sign if a == axis else 0 for a in range(d))


def _node_pos(m: int, d: int) -> tuple[np.ndarray, float]:
    """Interior nodes ``(i + 1) h`` of the finite-difference grid, ``h = 1 / (m + 1)``; returns (pos, h)."""
    h = 1.0 / (m + 1)
    x = h * np.arange(1, m + 1)
    grids = np.meshgrid(*([x] * d), indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1), h


def _cell_pos(m: int, d: int) -> tuple[np.ndarray, float]:
    """Cell centres ``(i + 1/2) h`` of the finite-volume grid, ``h = 1 / m``; returns (pos, h)."""
    h = 1.0 / m
    x = h * (np.arange(m) + 0.5)
    grids = np.meshgrid(*([x] * d), indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1), h


def _rhs(rhs: str, f: PosFn | None, pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if f is not None:
        return np.asarray(f(pos), dtype=np.float64).reshape(pos.shape[0])
    return make_rhs(rhs, pos, rng)


def _check_m(m: int, family: str) -> int:
    if int(m) != m or m < 1:
        raise ValueError(f"{family}: grid size m must be a positive integer, got {m!r}")
    return int(m)


def _rhs_label(rhs: str, f: PosFn | None) -> str:
    return "custom" if f is not None else rhs


# ------------------------------------------------------------------------------------------------ Poisson


def poisson_matrix(m: int, d: int = 2) -> sp.csr_matrix:
    """The matrix A of :func:`poisson2d` (``d = 2``) / :func:`poisson3d` (``d = 3``) alone, as scipy CSR.

    The ``(2d+1)``-point finite-difference Laplacian on the ``m^d`` interior nodes of the unit square/cube,
    ``h = 1 / (m + 1)``, scaled by ``1/h^2`` (diagonal ``2d/h^2``, neighbours ``-1/h^2``), homogeneous
    Dirichlet boundary; float64, canonical CSR (sorted indices). No right-hand side and no reference solve,
    so it is cheap at any size (benchmarks use ``m = 1000``: ``n = 1e6``). Same matrix as
    ``to_scipy(poisson2d(m))``, entry for entry.
    """
    m = _check_m(m, f"poisson{d}d")
    h = 1.0 / (m + 1)
    offdiag = [(_unit(d, a, s), -1.0 / h**2) for a in range(d) for s in (1, -1)]
    A = _assemble((m,) * d, 2.0 * d / h**2, offdiag)
    A.sum_duplicates()
    A.sort_indices()
    return A


def _poisson(m: int, d: int, seed: int, rhs: str, f: PosFn | None, family: str) -> Data:
    m = _check_m(m, family)
    rng = np.random.default_rng(seed)
    pos, _ = _node_pos(m, d)
    A = poisson_matrix(m, d)
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "rhs": _rhs_label(rhs, f)}
    return make_system(A, b, pos=pos, coeff=1.0, family=family, params=params, seed=seed, symmetric=True)


def poisson2d(m: int = 32, *, seed: int = 0, rhs: str = "random", f: PosFn | None = None) -> Data:
    """Poisson equation ``-Δu = f`` on the unit square, ``u = 0`` on the boundary.

    Discretisation: the 5-point finite-difference stencil on the ``m x m`` interior nodes
    ``((i+1) h, (j+1) h)``, ``h = 1 / (m + 1)``; ``n = m^2``. A is scaled by ``1/h^2`` (diagonal
    ``4/h^2``, neighbours ``-1/h^2``) so that ``b = f`` at the nodes. SPD M-matrix; second-order accurate.

    Parameters: ``m`` nodes per direction; ``seed`` and ``rhs``/``f`` choose the right-hand side.
    ``coeff`` (the local coefficient feature) is 1.
    """
    return _poisson(m, 2, seed, rhs, f, "poisson2d")


def poisson3d(m: int = 16, *, seed: int = 0, rhs: str = "random", f: PosFn | None = None) -> Data:
    """Poisson equation ``-Δu = f`` on the unit cube, ``u = 0`` on the boundary.

    Discretisation: the 7-point finite-difference stencil on the ``m^3`` interior nodes,
    ``h = 1 / (m + 1)``, A scaled by ``1/h^2`` (diagonal ``6/h^2``, neighbours ``-1/h^2``), ``b = f`` at
    the nodes. SPD M-matrix; second-order accurate. ``coeff`` is 1.
    """
    return _poisson(m, 3, seed, rhs, f, "poisson3d")


# ------------------------------------------------------------------------------- Gaussian random fields


def gaussian_random_field(shape: int | tuple[int, ...], sigma2: float, corr_len: float,
                          rng: np.random.Generator, *, spacing: float | tuple[float, ...] | None = None,
                          pad: bool = True) -> np.ndarray:
    """Stationary Gaussian random field with squared-exponential covariance, sampled by FFT.

    Target covariance ``C(r) = sigma2 * exp(-|r|^2 / (2 corr_len^2))`` (so the correlation at distance
    ``corr_len`` is ``exp(-1/2) ≈ 0.61``); its spectral density is ``S(κ) ∝ exp(-(|κ| corr_len)^2 / 2)``
    in angular wavenumbers ``κ = 2π fftfreq``.

    Sampling (spectral / circulant method): white noise ``z`` on a periodic grid is filtered,
    ``g = ifft(s * fft(z))`` with ``s = sqrt(S)`` normalised so that ``mean(s^2) = sigma2``. The filter is
    even in κ, so ``g`` is real, and its covariance is the circulant matrix with eigenvalues ``s^2``:
    every point has variance exactly ``sigma2`` (analytic normalisation, no per-sample rescaling) and the
    mean is zero in expectation (the sample mean is not removed). To suppress the wrap-around
    correlation of the periodic grid, the field is generated on a grid padded by ``4 corr_len`` per
    axis (``pad=True``) and cropped.

    Parameters: ``shape`` of the grid (int for 1D); ``sigma2 >= 0`` variance; ``corr_len > 0``;
    ``rng`` a numpy Generator; ``spacing`` grid spacing per axis (default ``1 / shape[a]``: the cell
    centres of the unit cube). Returns an array of ``shape``. Cost: O(N log N) for N padded points.
    """
    shape = (shape,) if np.isscalar(shape) else tuple(int(s) for s in shape)
    d = len(shape)
    if sigma2 < 0 or not corr_len > 0:
        raise ValueError(f"gaussian_random_field: need sigma2 >= 0 and corr_len > 0, got {sigma2}, {corr_len}")
    if spacing is None:
        spacing = tuple(1.0 / s for s in shape)
    elif np.isscalar(spacing):
        spacing = (float(spacing),) * d
    full = tuple(scipy.fft.next_fast_len(s + (int(np.ceil(4 * corr_len / dx)) if pad else 0))
                 for s, dx in zip(shape, spacing))
    kappa2 = np.zeros(full)
    for a, (s, dx) in enumerate(zip(full, spacing)):
        k = 2 * np.pi * np.fft.fftfreq(s, d=dx)
        kappa2 = kappa2 + (k**2).reshape([-1 if b == a else 1 for b in range(d)])
    S = np.exp(-0.5 * kappa2 * corr_len**2)
    filt = np.sqrt(S * (sigma2 / S.mean()))
    z = rng.standard_normal(full)
    g = scipy.fft.ifftn(filt * scipy.fft.fftn(z)).real
    return np.ascontiguousarray(g[tuple(slice(0, s) for s in shape)])


# ---------------------------------------------------------------------------------------------- diffusion


def _fv_diffusion(k: np.ndarray, h: float) -> sp.csr_matrix:
    """Cell-centred finite volumes for ``-div(k grad u)`` with cell values ``k`` (any dimension).

    Interior face between cells P and N: transmissibility ``2 k_P k_N / (k_P + k_N) / h^2`` (harmonic
    mean: the exact flux of 1D layered media). Boundary face: ``u = 0`` at distance ``h/2`` with the
    cell's own ``k``, transmissibility ``2 k_P / h^2``. Divided by the cell volume, so ``b = f``.
    """
    d, shape = k.ndim, k.shape
    diag = np.zeros(shape)
    offdiag = []
    for a in range(d):
        lo = tuple(slice(0, -1) if b == a else slice(None) for b in range(d))
        hi = tuple(slice(1, None) if b == a else slice(None) for b in range(d))
        kl, kr = k[lo], k[hi]
        t = 2.0 * kl * kr / (kl + kr) / h**2
        diag[lo] += t
        diag[hi] += t
        plus, minus = np.zeros(shape), np.zeros(shape)
        plus[lo] = -t
        minus[hi] = -t
        offdiag += [(_unit(d, a, 1), plus), (_unit(d, a, -1), minus)]
        for end in (0, -1):
            face = tuple(end if b == a else slice(None) for b in range(d))
            diag[face] += 2.0 * k[face] / h**2
    return _assemble(shape, diag, offdiag)


def _diffusion(m: int, d: int, seed: int, rhs: str, sigma2: float, corr_len: float, k_fn: PosFn | None,
               f: PosFn | None, family: str) -> Data:
    m = _check_m(m, family)
    rng = np.random.default_rng(seed)
    pos, h = _cell_pos(m, d)
    if k_fn is not None:
        k = np.asarray(k_fn(pos), dtype=np.float64).reshape((m,) * d)
        if not np.all(k > 0):
            raise ValueError(f"{family}: the coefficient k_fn must be positive at every cell centre")
    else:
        k = np.exp(gaussian_random_field((m,) * d, sigma2, corr_len, rng))
    A = _fv_diffusion(k, h)
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "sigma2": float(sigma2), "corr_len": float(corr_len), "rhs": _rhs_label(rhs, f)}
    if k_fn is not None:
        params["k_fn"] = getattr(k_fn, "__name__", "custom")
    return make_system(A, b, pos=pos, coeff=k.ravel(), family=family, params=params, seed=seed,
                       symmetric=True)


def diffusion2d(m: int = 32, *, seed: int = 0, rhs: str = "random", sigma2: float = 1.0,
                corr_len: float = 0.1, k_fn: PosFn | None = None, f: PosFn | None = None) -> Data:
    """Variable-coefficient diffusion ``-div(k grad u) = f`` on the unit square, ``u = 0`` on the boundary.

    Coefficient: ``k = exp(g)`` with ``g`` a zero-mean Gaussian random field of variance ``sigma2`` and
    correlation length ``corr_len`` (:func:`gaussian_random_field`, squared-exponential covariance),
    sampled per cell; or ``k = k_fn(cell centres)`` when a positive function ``k_fn(pos) -> (n,)`` is
    given (manufactured solutions).

    Discretisation: cell-centred finite volumes on ``m x m`` cells of width ``h = 1/m``; unknowns at the
    cell centres (``pos``), ``n = m^2``; 5-point stencil with harmonic averaging of k at interior faces,
    and at boundary faces the Dirichlet value at distance ``h/2`` with the cell's own k. Rows are divided
    by the cell area, so ``b = f`` at the centres. SPD M-matrix; second-order accurate for smooth k.
    ``coeff`` is k per cell.
    """
    return _diffusion(m, 2, seed, rhs, sigma2, corr_len, k_fn, f, "diffusion2d")


def diffusion3d(m: int = 16, *, seed: int = 0, rhs: str = "random", sigma2: float = 1.0,
                corr_len: float = 0.1, k_fn: PosFn | None = None, f: PosFn | None = None) -> Data:
    """Variable-coefficient diffusion ``-div(k grad u) = f`` on the unit cube, ``u = 0`` on the boundary.

    As :func:`diffusion2d` in three dimensions: ``k = exp(GRF)`` (or ``k_fn``) per cell on ``m^3`` cells
    of width ``h = 1/m``; 7-point cell-centred finite volumes with harmonic face averages and the
    half-cell Dirichlet treatment at the boundary; SPD M-matrix; ``coeff`` is k per cell.
    """
    return _diffusion(m, 3, seed, rhs, sigma2, corr_len, k_fn, f, "diffusion3d")


# ------------------------------------------------------------------------------------------- anisotropic


def anisotropy_tensor(epsilon: float, theta: float) -> np.ndarray:
    """``K = R(theta) diag(1, epsilon) R(theta)^T`` (2 x 2)."""
    c, s = np.cos(theta), np.sin(theta)
    R = np.array([[c, -s], [s, c]])
    return R @ np.diag([1.0, epsilon]) @ R.T


def anisotropic2d(m: int = 32, *, seed: int = 0, rhs: str = "random", epsilon: float = 0.01,
                  theta: float = np.pi / 6, f: PosFn | None = None) -> Data:
    """Rotated anisotropic diffusion ``-div(K grad u) = f`` on the unit square, ``u = 0`` on the boundary.

    ``K = R(theta) diag(1, epsilon) R(theta)^T = [[a11, a12], [a12, a22]]`` is constant: strong diffusion
    along the direction at angle ``theta`` to the x axis, ``epsilon`` times weaker across it.
    ``-div(K grad u) = -(a11 u_xx + 2 a12 u_xy + a22 u_yy)``.

    Discretisation: the standard 9-point finite-difference stencil on the ``m x m`` interior nodes,
    ``h = 1/(m+1)``: central second differences for ``u_xx``, ``u_yy`` and the cross difference
    ``u_xy ≈ (u_NE - u_NW - u_SE + u_SW) / (4 h^2)``; i.e. centre ``2 (a11 + a22)/h^2``, E/W ``-a11/h^2``,
    N/S ``-a22/h^2``, NE/SW ``-a12/(2h^2)``, NW/SE ``+a12/(2h^2)``. Second-order accurate.

    Symmetric, and positive definite for every ``epsilon > 0``: with ``D`` the central difference,
    ``|x^T (D_x D_y) x| <= sqrt(x^T T_x x) sqrt(x^T T_y x)`` so ``x^T A x >= a11 p^2 + a22 q^2 - 2|a12| p q
    > 0`` since ``a12^2 < a11 a22``. Not an M-matrix when ``a12 != 0``. ``coeff`` is 1.
    """
    m = _check_m(m, "anisotropic2d")
    if not epsilon > 0:
        raise ValueError(f"anisotropic2d: epsilon must be positive, got {epsilon}")
    rng = np.random.default_rng(seed)
    pos, h = _node_pos(m, 2)
    (a11, a12), (_, a22) = anisotropy_tensor(epsilon, theta)
    h2 = h**2
    offdiag = [((1, 0), -a11 / h2), ((-1, 0), -a11 / h2), ((0, 1), -a22 / h2), ((0, -1), -a22 / h2),
               ((1, 1), -a12 / (2 * h2)), ((-1, -1), -a12 / (2 * h2)),
               ((1, -1), a12 / (2 * h2)), ((-1, 1), a12 / (2 * h2))]
    A = _assemble((m, m), 2.0 * (a11 + a22) / h2, offdiag)
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "epsilon": float(epsilon), "theta": float(theta), "rhs": _rhs_label(rhs, f)}
    return make_system(A, b, pos=pos, coeff=1.0, family="anisotropic2d", params=params, seed=seed,
                       symmetric=True)


# -------------------------------------------------------------------------------- convection-diffusion


def convdiff2d(m: int = 32, *, seed: int = 0, rhs: str = "random", peclet: float = 10.0,
               angle: float = np.pi / 4, f: PosFn | None = None) -> Data:
    """Convection-diffusion ``-Δu + w · grad u = f`` on the unit square, ``u = 0`` on the boundary.

    Constant velocity ``w = peclet * (cos(angle), sin(angle))``: with unit diffusivity and unit domain
    length, ``|w|`` is the global Peclet number.

    Discretisation: 5-point central differences for ``-Δu`` and first-order UPWIND differences for the
    convection term on the ``m x m`` interior nodes, ``h = 1/(m+1)``: for ``w_x > 0``,
    ``w_x (u_P - u_W)/h``; for ``w_x < 0``, ``w_x (u_E - u_P)/h`` (likewise in y). Diagonal
    ``4/h^2 + (|w_x| + |w_y|)/h``, off-diagonals ``-1/h^2 - max(±w, 0)/h <= 0``: a NONSYMMETRIC,
    weakly diagonally dominant irreducible M-matrix for every ``peclet >= 0`` (no spurious oscillations).
    First-order accurate (the upwinding adds numerical diffusion ``|w| h / 2``). ``coeff`` is 1.
    """
    m = _check_m(m, "convdiff2d")
    rng = np.random.default_rng(seed)
    pos, h = _node_pos(m, 2)
    w = peclet * np.array([np.cos(angle), np.sin(angle)])
    h2 = h**2
    offdiag = []
    for a in range(2):
        wp, wm = max(w[a], 0.0), min(w[a], 0.0)
        offdiag += [(_unit(2, a, -1), -1.0 / h2 - wp / h), (_unit(2, a, 1), -1.0 / h2 + wm / h)]
    A = _assemble((m, m), 4.0 / h2 + np.abs(w).sum() / h, offdiag)
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "peclet": float(peclet), "angle": float(angle), "rhs": _rhs_label(rhs, f)}
    return make_system(A, b, pos=pos, coeff=1.0, family="convdiff2d", params=params, seed=seed,
                       symmetric=None)


GENERATORS: dict[str, Callable[..., Data]] = {
    "poisson2d": poisson2d,
    "poisson3d": poisson3d,
    "diffusion2d": diffusion2d,
    "diffusion3d": diffusion3d,
    "anisotropic2d": anisotropic2d,
    "convdiff2d": convdiff2d,
}
