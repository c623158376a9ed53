"""Structured-grid PDE systems: finite differences and cell-centred finite volumes on the unit square/cube.

Every generator has the signature ``NAME(m=32, *, seed=0, rhs="random", <family parameters>, f=None,
reference=True)`` and returns :func:`learnsolve.data.make_system` of the discretised operator: a PyG ``Data``
with A, b, the reference solution x (sparse direct solve; not computed with ``reference=False``), ``pos``
(n, d), the local coefficient and metadata.

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

from collections.abc import Callable, Sequence

import numpy as np
import scipy.fft
import scipy.sparse as sp
from torch_geometric.data import Data

from ..system import make_rhs, make_system

__all__ = [
    "ANISOTROPIC_STENCILS",
    "GENERATORS",
    "anisotropic2d",
    "anisotropic_stencil",
    "anisotropy_tensor",
    "convdiff2d",
    "diffusion2d",
    "diffusion3d",
    "draw_log_uniform",
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


def _poisson(m: int, d: int, seed: int, rhs: str, f: PosFn | None, family: str, reference: bool) -> Data:
    m = _check_m(m, family)
    rng = np.random.default_rng(seed)
    pos, _ = _node_pos(m, d)
    A = poisson_matrix(m, d)
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "rhs": _rhs_label(rhs, f)}
    return make_system(A, b, pos=pos, coeff=1.0, family=family, params=params, seed=seed, symmetric=True,
                       reference=reference)


def poisson2d(m: int = 32, *, seed: int = 0, rhs: str = "random", f: PosFn | None = None,
              reference: bool = True) -> Data:
    """Poisson equation ``-Δu = f`` on the unit square, ``u = 0`` on the boundary.

    Discretisation: the 5-point finite-difference stencil on the ``m x m`` interior nodes
    ``((i+1) h, (j+1) h)``, ``h = 1 / (m + 1)``; ``n = m^2``. A is scaled by ``1/h^2`` (diagonal
    ``4/h^2``, neighbours ``-1/h^2``) so that ``b = f`` at the nodes. SPD M-matrix; second-order accurate.

    Parameters: ``m`` nodes per direction; ``seed`` and ``rhs``/``f`` choose the right-hand side.
    ``coeff`` (the local coefficient feature) is 1.
    """
    return _poisson(m, 2, seed, rhs, f, "poisson2d", reference)


def poisson3d(m: int = 16, *, seed: int = 0, rhs: str = "random", f: PosFn | None = None,
              reference: bool = True) -> Data:
    """Poisson equation ``-Δu = f`` on the unit cube, ``u = 0`` on the boundary.

    Discretisation: the 7-point finite-difference stencil on the ``m^3`` interior nodes,
    ``h = 1 / (m + 1)``, A scaled by ``1/h^2`` (diagonal ``6/h^2``, neighbours ``-1/h^2``), ``b = f`` at
    the nodes. SPD M-matrix; second-order accurate. ``coeff`` is 1.
    """
    return _poisson(m, 3, seed, rhs, f, "poisson3d", reference)


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
        raise ValueError(f"gaussian_random_field: need sigma2 >= 0 and corr_len > 0, got {sigma2}, "
                         f"{corr_len}")
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
               f: PosFn | None, family: str, reference: bool) -> Data:
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
                       symmetric=True, reference=reference)


def diffusion2d(m: int = 32, *, seed: int = 0, rhs: str = "random", sigma2: float = 1.0,
                corr_len: float = 0.1, k_fn: PosFn | None = None, f: PosFn | None = None,
                reference: bool = True) -> Data:
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

    Args:
        m: cells per side (n = m^2 unknowns).
        seed: seed of the coefficient field and the right-hand side: the system is a function of its
            arguments.
        rhs: ``"random"``, ``"smooth"`` or ``"point"`` (see ``make_rhs``); ignored when ``f`` is given.
        sigma2: variance of log k.
        corr_len: correlation length of log k (unit square).
        k_fn: a positive coefficient function of the cell centres, instead of the random field.
        f: a source function of the cell centres, instead of ``rhs``.
        reference: compute the reference solution x by a sparse direct solve.

    Returns:
        A PyG ``Data`` system (see ``make_system``), ``family="diffusion2d"``.

    Raises:
        ValueError: a non-positive ``m``, a bad ``rhs`` kind, or a ``k_fn`` that is not positive.

    Example:
        ```python
        from learnsolve.data.generators import GENERATORS

        data = GENERATORS["diffusion2d"](16, seed=0, sigma2=1.0)  # 256 unknowns
        ```
    """
    return _diffusion(m, 2, seed, rhs, sigma2, corr_len, k_fn, f, "diffusion2d", reference)


def diffusion3d(m: int = 16, *, seed: int = 0, rhs: str = "random", sigma2: float = 1.0,
                corr_len: float = 0.1, k_fn: PosFn | None = None, f: PosFn | None = None,
                reference: bool = True) -> Data:
    """Variable-coefficient diffusion ``-div(k grad u) = f`` on the unit cube, ``u = 0`` on the boundary.

    As :func:`diffusion2d` in three dimensions: ``k = exp(GRF)`` (or ``k_fn``) per cell on ``m^3`` cells
    of width ``h = 1/m``; 7-point cell-centred finite volumes with harmonic face averages and the
    half-cell Dirichlet treatment at the boundary; SPD M-matrix; ``coeff`` is k per cell.
    """
    return _diffusion(m, 3, seed, rhs, sigma2, corr_len, k_fn, f, "diffusion3d", reference)


# ------------------------------------------------------------------------------------------- anisotropic


def anisotropy_tensor(epsilon: float, theta: float) -> np.ndarray:
    """``K = R(theta) diag(1, epsilon) R(theta)^T`` (2 x 2)."""
    c, s = np.cos(theta), np.sin(theta)
    R = np.array([[c, -s], [s, c]])
    return R @ np.diag([1.0, epsilon]) @ R.T


ANISOTROPIC_STENCILS = ("fd", "fe")


def _draw_theta(theta: float | str, rng: np.random.Generator) -> tuple[float, bool]:
    """``theta`` as given, or uniform in ``[0, pi)`` for ``"random"``; returns (value, drawn)."""
    if isinstance(theta, str):
        if theta != "random":
            raise ValueError(f"anisotropic2d: theta must be a number (radians) or 'random', got {theta!r}")
        return float(rng.uniform(0.0, np.pi)), True
    try:
        value = float(theta)
    except (TypeError, ValueError):
        value = np.nan
    if not np.isfinite(value):
        raise ValueError(f"anisotropic2d: theta must be a finite number (radians) or 'random', got {theta!r}")
    return value, False


def draw_log_uniform(value: float | Sequence[float], rng: np.random.Generator, *, name: str,
                     family: str) -> tuple[float, tuple[float, float] | None]:
    """A positive parameter given as a number, or drawn as ``exp(U[log lo, log hi])`` from ``rng`` (one draw)
    when given as a range ``[lo, hi]``. Returns (value, (lo, hi) or None); errors name ``family: name``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            lo = hi = np.nan
        if not 0 < lo <= hi < np.inf:
            raise ValueError(f"{family}: {name} as a range must be [lo, hi] with 0 < lo <= hi, got {value!r}")
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), (lo, hi)
    if (isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.number))
            or not 0 < value < np.inf):
        raise ValueError(f"{family}: {name} must be a positive number or a range [lo, hi], got {value!r}")
    return float(value), None


def anisotropic_stencil(epsilon: float, theta: float, stencil: str = "fd") -> dict[tuple[int, int], float]:
    """The 9-point stencil of ``-div(K grad u)``, ``K = anisotropy_tensor(epsilon, theta)``, times ``h^2``.

    Keys are offsets ``(di, dj)`` (``i`` along x, ``j`` along y; ``(0, 0)`` the centre), values the
    coefficients before the division by ``h^2``; see :func:`anisotropic2d` for both formulas.
    """
    if stencil not in ANISOTROPIC_STENCILS:
        raise ValueError(f"anisotropic2d: stencil must be one of {', '.join(ANISOTROPIC_STENCILS)}, got "
                         f"{stencil!r}")
    (a11, a12), (_, a22) = anisotropy_tensor(epsilon, theta)
    if stencil == "fd":
        c, ew, ns, ne, nw = 2.0 * (a11 + a22), -a11, -a22, -a12 / 2, a12 / 2
    else:
        s = a11 + a22
        c, ew, ns, ne, nw = (4.0 * s / 3, (a22 - 2 * a11) / 3, (a11 - 2 * a22) / 3, -s / 6 - a12 / 2,
                             -s / 6 + a12 / 2)
    return {(0, 0): c, (1, 0): ew, (-1, 0): ew, (0, 1): ns, (0, -1): ns,
            (1, 1): ne, (-1, -1): ne, (-1, 1): nw, (1, -1): nw}


def anisotropic2d(m: int = 32, *, seed: int = 0, rhs: str = "random", epsilon: float | Sequence[float] = 0.01,
                  theta: float | str = np.pi / 6, stencil: str = "fd", f: PosFn | None = None,
                  reference: bool = True) -> Data:
    """Rotated anisotropic diffusion ``-div(K grad u) = f`` on the unit square, ``u = 0`` on the boundary.

    ``K = R(theta) diag(1, epsilon) R(theta)^T = [[a11, a12], [a12, a22]]`` is constant: strong diffusion
    along the direction at angle ``theta`` to the x axis, ``epsilon`` times weaker across it.
    ``-div(K grad u) = -(a11 u_xx + 2 a12 u_xy + a22 u_yy)``.

    Random instances: ``theta="random"`` draws ``theta ~ U[0, pi)`` per system (first from the seed's
    rng), ``epsilon=[lo, hi]`` draws ``log epsilon ~ U[log lo, log hi]`` (next); then the right-hand side.
    The drawn values are ``params["theta"]``, ``params["epsilon"]`` (``params["theta_random"]``,
    ``params["epsilon_lo"]`` / ``["epsilon_hi"]`` record how). Fixed values draw nothing, so the defaults
    give the same systems as before these options existed.

    Unknowns: the ``m x m`` interior nodes ``((i+1) h, (j+1) h)``, ``h = 1/(m+1)``; ``n = m^2``; 9-point
    stencils, rows divided by ``h^2`` so that ``b = f`` at the nodes.

    ``stencil="fd"``: the standard finite-difference stencil: central second differences for ``u_xx``,
    ``u_yy`` and the cross difference ``u_xy ≈ (u_NE - u_NW - u_SE + u_SW) / (4 h^2)``; i.e. centre
    ``2 (a11 + a22)``, E/W ``-a11``, N/S ``-a22``, NE/SW ``-a12/2``, NW/SE ``+a12/2`` (times ``1/h^2``).
    Positive definite for every ``epsilon > 0``: with ``D`` the central difference,
    ``|x^T (D_x D_y) x| <= sqrt(x^T T_x x) sqrt(x^T T_y x)`` so ``x^T A x >= a11 p^2 + a22 q^2 - 2|a12| p q
    > 0`` since ``a12^2 < a11 a22``.

    ``stencil="fe"``: bilinear (Q1) finite elements on the square cells of the same grid, ``A = S / h^2``
    with ``S_ij = ∫ K grad phi_j . grad phi_i`` (independent of h in 2D) and the lumped load ``f(x_i) h^2``.
    On one cell, with its corners ordered (0,0), (1,0), (1,1), (0,1) and ``phi_a`` their bilinear basis
    functions, ``[∫ d_x phi_a d_x phi_b] = [[2,-2,-1,1],[-2,2,1,-1],[-1,1,2,-2],[1,-1,-2,2]]/6``,
    ``[∫ d_y phi_a d_y phi_b]`` is the same with x and y swapped, and ``[∫ (d_x phi_a d_y phi_b + d_y phi_a
    d_x phi_b)] = [[1,0,-1,0],[0,-1,0,1],[-1,0,1,0],[0,1,0,-1]]/2``; ``S`` on a cell is ``a11``, ``a22``,
    ``a12`` times these. Summing the four cells around a node gives, with ``s = a11 + a22``: centre
    ``4 s/3``, E/W ``(a22 - 2 a11)/3``, N/S ``(a11 - 2 a22)/3``, NE/SW ``-s/6 - a12/2``, NW/SE
    ``-s/6 + a12/2`` (row sums zero). SPD because ``x^T S x = ∫ K grad u_h . grad u_h >= min(1, epsilon)
    ∫ |grad u_h|^2 > 0`` for the nonzero Q1 function ``u_h`` with nodal values x (zero on the boundary).
    Second-order accurate at the nodes for smooth solutions.

    Neither stencil gives an M-matrix when ``a12 != 0``. Exact zeros (``a12 = 0`` with "fd") are dropped.
    ``coeff`` is 1. Cost: O(n) assembly, plus the sparse direct solve of the reference (``reference=False``
    skips it).
    """
    m = _check_m(m, "anisotropic2d")
    if stencil not in ANISOTROPIC_STENCILS:
        raise ValueError(f"anisotropic2d: stencil must be one of {', '.join(ANISOTROPIC_STENCILS)}, got "
                         f"{stencil!r}")
    rng = np.random.default_rng(seed)
    theta_value, theta_random = _draw_theta(theta, rng)
    eps_value, eps_range = draw_log_uniform(epsilon, rng, name="epsilon", family="anisotropic2d")
    pos, h = _node_pos(m, 2)
    st = anisotropic_stencil(eps_value, theta_value, stencil)
    centre = st.pop((0, 0))
    A = _assemble((m, m), centre / h**2, [(off, v / h**2) for off, v in st.items()])
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "epsilon": eps_value, "theta": theta_value, "stencil": stencil,
              "rhs": _rhs_label(rhs, f)}
    if theta_random:
        params["theta_random"] = True
    if eps_range is not None:
        params["epsilon_lo"], params["epsilon_hi"] = eps_range
    return make_system(A, b, pos=pos, coeff=1.0, family="anisotropic2d", params=params, seed=seed,
                       symmetric=True, reference=reference)


# -------------------------------------------------------------------------------- convection-diffusion


def convdiff2d(m: int = 32, *, seed: int = 0, rhs: str = "random", peclet: float = 10.0,
               angle: float = np.pi / 4, f: PosFn | None = None, reference: bool = True) -> Data:
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
                       symmetric=None, reference=reference)


GENERATORS: dict[str, Callable[..., Data]] = {
    "poisson2d": poisson2d,
    "poisson3d": poisson3d,
    "diffusion2d": diffusion2d,
    "diffusion3d": diffusion3d,
    "anisotropic2d": anisotropic2d,
    "convdiff2d": convdiff2d,
}
