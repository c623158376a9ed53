"""Rough and high-contrast diffusion on the unit square: cell-centred finite volumes on ``m x m`` cells.

Both generators solve ``-div(k grad u) = f`` in the unit square, ``u = 0`` on its boundary, with a cell-wise
constant coefficient ``k`` and the discretisation of :func:`learnsolve.data.generators.structured.diffusion2d`
(5-point stencil, harmonic face averages, half-cell Dirichlet faces, rows divided by the cell area so that
``b = f`` at the cell centres): SPD M-matrices, ``n = m^2``, about 5 nonzeros per row. They follow the
conventions of :mod:`.structured` (signature ``NAME(m, *, seed=0, rhs="random", <parameters>, f=None,
reference=True)``, one ``np.random.default_rng(seed)`` drawing the coefficient first, then the right-hand
side; ``coeff`` is k per cell).

These are the coefficient fields on which classical heuristics are mis-specified and learned components
have won (see ``notes/where-learning-wins.md``): i.i.d. lognormal cells (no smoothness for MIC(0) or
aggregation to exploit) and binary high-contrast channels and inclusions (one small eigenvalue per
connected high-conductivity region).

Generation time of one system in seconds, without / with the reference solve (SuperLU), measured
2026-12-07 on 2 CPU cores with ``python -m learnsolve.data.timing --reference-max-n 2000000`` (without: best
of 2 runs; the first run of a process at m = 1024 costs about 1 s more). anisotropic2d (in
:mod:`.structured`) with data=hard's parameters (random theta and epsilon, ``stencil="fe"``) for comparison:

==============  ==============  ==============  ===============
generator       m = 64          m = 256         m = 1024
==============  ==============  ==============  ===============
lognormal2d     0.001 / 0.013   0.023 / 0.33    0.25 / 9.4
channels2d      0.001 / 0.007   0.009 / 0.23    0.21 / 9.1
anisotropic2d   0.002 / 0.014   0.016 / 0.36    0.37 / 13.3
==============  ==============  ==============  ===============

At m = 1024 the reference solve is about 97% of the time: benchmarks at that size pass ``reference=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch_geometric.data import Data

from ..system import make_system
from .structured import (
    PosFn,
    _cell_pos,
    _check_m,
    _fv_diffusion,
    _rhs,
    _rhs_label,
    draw_log_uniform,
    gaussian_random_field,
)

__all__ = ["GENERATORS", "channel_field", "channels2d", "lognormal2d"]


def lognormal2d(m: int = 32, *, seed: int = 0, rhs: str = "random", sigma2: float = 4.0,
                corr_len: float = 0.0, f: PosFn | None = None, reference: bool = True) -> Data:
    """Diffusion with a rough lognormal coefficient: ``k = exp(g)``, ``g`` Gaussian with variance ``sigma2``.

    ``corr_len = 0`` (default): ``g = sqrt(sigma2) z`` with ``z ~ N(0, 1)`` i.i.d. per cell (the
    per-cell lognormal fields of Greenfeld et al. 2019 and Luz et al. 2020; at ``sigma2 = 4`` neighbouring
    cells differ by a factor ``exp(2 sqrt(2) |N(0,1)|)``: median 6.7, 99th percentile about 1500).
    ``corr_len > 0``: ``g`` is the smooth field of :func:`gaussian_random_field` with that correlation
    length (squared-exponential covariance), so at ``sigma2 = 1, corr_len = 0.1`` the coefficient has the
    distribution of :func:`diffusion2d`'s default (the two do not draw the same numbers from a seed).

    Discretisation: as :func:`diffusion2d` (cell-centred finite volumes, ``h = 1/m``, harmonic face
    averages); ``pos`` the cell centres, ``coeff`` k per cell. ``params``: m, sigma2, corr_len, rhs.
    Cost: O(n) (i.i.d.) or O(n log n) (FFT field) plus the reference solve (``reference=False`` skips it).
    """
    m = _check_m(m, "lognormal2d")
    if not 0 <= sigma2 < np.inf:
        raise ValueError("lognormal2d: sigma2 (the variance of log k) must be finite and >= 0, got "
                         f"{sigma2!r}")
    if not 0 <= corr_len < np.inf:
        raise ValueError(f"lognormal2d: corr_len must be >= 0 (0: i.i.d. cells), got {corr_len!r}")
    rng = np.random.default_rng(seed)
    pos, h = _cell_pos(m, 2)
    if corr_len == 0:
        g = np.sqrt(sigma2) * rng.standard_normal((m, m))
    else:
        g = gaussian_random_field((m, m), sigma2, corr_len, rng)
    k = np.exp(g)
    A = _fv_diffusion(k, h)
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "sigma2": float(sigma2), "corr_len": float(corr_len), "rhs": _rhs_label(rhs, f)}
    return make_system(A, b, pos=pos, coeff=k.ravel(), family="lognormal2d", params=params, seed=seed,
                       symmetric=True, reference=reference, spd=True)


def _count(value, name: str) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0
    if not ok:
        raise ValueError(f"channels2d: {name} must be a non-negative integer, got {value!r}")
    return int(value)


def _interval(lo: float, hi: float, m: int) -> slice:
    """Cells whose centre ``(i + 1/2)/m`` lies in ``[lo, hi]``; at least the cell containing the midpoint."""
    i0 = max(0, int(np.ceil(lo * m - 0.5)))
    i1 = min(m, int(np.floor(hi * m - 0.5)) + 1)
    if i1 <= i0:
        i0 = min(m - 1, max(0, int(0.5 * (lo + hi) * m)))
        i1 = i0 + 1
    return slice(i0, i1)


def channel_field(m: int, rng: np.random.Generator, *, num_channels: int = 4, num_inclusions: int = 8,
                  width: float = 0.04) -> np.ndarray:
    """Boolean ``(m, m)`` mask (``[i, j]``, i along x) of straight channels and inclusions in the unit square.

    The layout is drawn in physical coordinates with a fixed number of draws (so one ``rng`` state gives
    the same layout at every ``m``), then rasterised at the cell centres ``((i + 1/2)/m, (j + 1/2)/m)``:

    - channel c: direction along x or y (prob. 1/2 each), centre line at ``U(0.1, 0.9)``, width
      ``U(0.5, 1.5) * width``; it spans the whole domain (prob. 1/2) or an interval of length
      ``U(0.6, 0.9)`` placed uniformly; a channel narrower than a cell keeps the one row of cells containing
      its centre line;
    - inclusion c: a disc or an axis-aligned square (prob. 1/2 each), centre ``U(0.1, 0.9)^2``, radius /
      half-side ``U(1, 2) * width``; at least the cell containing its centre.

    Draw order: the channels' directions, centres, widths, spanning flags, lengths, starts; then the
    inclusions' shapes, centres, radii. Cost O(num_channels * m + num_inclusions * (width m)^2 + m^2).
    """
    mask = np.zeros((m, m), dtype=bool)
    along_y = rng.integers(0, 2, num_channels).astype(bool)
    centre = rng.uniform(0.1, 0.9, num_channels)
    w = rng.uniform(0.5, 1.5, num_channels) * width
    spans = rng.random(num_channels) < 0.5
    length = rng.uniform(0.6, 0.9, num_channels)
    start = rng.uniform(0.0, 1.0, num_channels) * (1.0 - length)
    for c in range(num_channels):
        a, b = (0.0, 1.0) if spans[c] else (start[c], start[c] + length[c])
        along, across = _interval(a, b, m), _interval(centre[c] - w[c] / 2, centre[c] + w[c] / 2, m)
        mask[(across, along) if along_y[c] else (along, across)] = True
    disc = rng.integers(0, 2, num_inclusions).astype(bool)
    cxy = rng.uniform(0.1, 0.9, (num_inclusions, 2))
    r = rng.uniform(1.0, 2.0, num_inclusions) * width
    x = (np.arange(m) + 0.5) / m
    for c in range(num_inclusions):
        (cx, cy), rc = cxy[c], r[c]
        si, sj = _interval(cx - rc, cx + rc, m), _interval(cy - rc, cy + rc, m)
        if disc[c]:
            inside = (x[si, None] - cx) ** 2 + (x[None, sj] - cy) ** 2 <= rc**2
            mask[si, sj] |= inside
        else:
            mask[si, sj] = True
        mask[min(m - 1, int(cx * m)), min(m - 1, int(cy * m))] = True
    return mask


def channels2d(m: int = 32, *, seed: int = 0, rhs: str = "random", contrast: float | Sequence[float] = 1e6,
               num_channels: int = 4, num_inclusions: int = 8, width: float = 0.04, f: PosFn | None = None,
               reference: bool = True) -> Data:
    """Diffusion with a binary high-contrast coefficient: channels and inclusions in a unit background.

    ``k = contrast`` on the cells of a random layout of ``num_channels`` straight channels (horizontal or
    vertical, spanning the domain or 60-90% of it) and ``num_inclusions`` discs / squares (see
    :func:`channel_field`; sizes scale with ``width``, a fraction of the domain: at ``m = 64`` and the default
    0.04, channels are 1-4 cells wide and inclusions 5-10 cells across), ``k = 1`` elsewhere.
    ``contrast=[lo, hi]`` draws ``log contrast ~ U[log lo, log hi]`` per system (first from the rng; then the
    layout, then the right-hand side); ``params["contrast"]`` is the value used (``contrast_lo`` /
    ``contrast_hi`` the range) and ``params["fraction"]`` the share of high-contrast cells.

    Why hard: after diagonal scaling (Jacobi, IC(0)) every connected high-conductivity region that does
    not touch the boundary leaves one eigenvalue of order ``1/contrast``, its near-constant mode, which a
    coarse space has to capture; a channel that spans the domain carries the boundary value into the
    interior along its length.

    Discretisation: as :func:`diffusion2d` with harmonic face averages (a face between a background and a
    channel cell has transmissibility ``2 contrast / (1 + contrast) / h^2 ≈ 2/h^2``); SPD M-matrix,
    condition number growing like ``contrast * m^2``. ``coeff`` is k per cell.
    Cost: O(n) plus the reference solve (``reference=False`` skips it).
    """
    m = _check_m(m, "channels2d")
    num_channels, num_inclusions = (_count(num_channels, "num_channels"),
                                    _count(num_inclusions, "num_inclusions"))
    if num_channels + num_inclusions < 1:
        raise ValueError("channels2d: num_channels + num_inclusions must be >= 1 (nothing of high contrast), "
                         f"got {num_channels} and {num_inclusions}")
    if not 0 < width <= 0.5:
        raise ValueError(f"channels2d: width (a fraction of the domain) must lie in (0, 0.5], got {width!r}")
    rng = np.random.default_rng(seed)
    value, value_range = draw_log_uniform(contrast, rng, name="contrast", family="channels2d")
    mask = channel_field(m, rng, num_channels=num_channels, num_inclusions=num_inclusions, width=width)
    k = np.where(mask, value, 1.0)
    pos, h = _cell_pos(m, 2)
    A = _fv_diffusion(k, h)
    b = _rhs(rhs, f, pos, rng)
    params = {"m": m, "contrast": value, "num_channels": num_channels, "num_inclusions": num_inclusions,
              "width": float(width), "fraction": float(mask.mean()), "rhs": _rhs_label(rhs, f)}
    if value_range is not None:
        params["contrast_lo"], params["contrast_hi"] = value_range
    return make_system(A, b, pos=pos, coeff=k.ravel(), family="channels2d", params=params, seed=seed,
                       symmetric=True, reference=reference, spd=True)


GENERATORS = {"lognormal2d": lognormal2d, "channels2d": channels2d}
