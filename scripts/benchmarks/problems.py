"""Configuration (sizes, tolerances) of the benchmark and the problems its sections share.

Problems (from :mod:`learnsolve.data.generators`): the 5-point 2D Poisson matrix
(Dirichlet, :func:`~learnsolve.data.generators.poisson_matrix`, scaled by 1/h^2) on an ``--n`` x ``--n``
grid (n = 1e6 unknowns by default), float64 unless noted; "variable coefficients" means the generator
``diffusion2d`` (cell-centred finite volumes of -div(k grad u), harmonic face averages, Dirichlet at half
a cell) with k = exp(g), g a Gaussian random field of variance 1 and correlation length 1e-3
(:data:`COEFFICIENT`): far below the cell width, so g is white noise and k is an i.i.d. log-normal cell
coefficient, g ~ N(0, 1) per cell; right-hand sides from the generator (i.i.d. normal).
:class:`Problems` builds the shared Poisson matrix once, outside the measured windows;
:func:`diffusion_systems` gives variable-coefficient systems that share one sparsity pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from learnsolve.data.generators import GENERATORS, poisson_matrix
from learnsolve.data.system import to_scipy
from learnsolve.linalg import SparseMatrix

# diffusion2d's log-normal coefficient: correlation length << cell width -> i.i.d. per cell
COEFFICIENT = {"sigma2": 1.0, "corr_len": 1e-3}


@dataclass
class Config:
    """Sizes and tolerances of every section (:func:`benchmarks.linalg.make_config`: full or ``--quick``)."""

    n_side: int
    repeats: int
    min_sample: float
    cg_maxiter: int = 200
    cg_rtol: float = 1e-12
    bwd_grid: int = 300
    bwd_big_maxiter: int = 200
    bwd_rtol: float = 1e-8
    mem_grid: int = 316
    mem_iters: tuple[int, int] = (100, 1000)
    batch: int = 64
    batch_grid: int = 64
    batch_rtol: float = 1e-8
    grad_grid: int = 20
    seed: int = 0


class Problems:
    """Matrices shared between sections (built once, outside the measured windows)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._poisson = None
        self._S = None

    @property
    def poisson(self) -> sp.csr_matrix:
        if self._poisson is None:
            self._poisson = poisson_matrix(self.cfg.n_side)
        return self._poisson

    @property
    def S(self) -> SparseMatrix:
        if self._S is None:
            self._S = SparseMatrix.from_scipy(self.poisson)
        return self._S


def diffusion_systems(m: int, count: int, seed: int) -> tuple[list[sp.csr_matrix], np.ndarray]:
    """``count`` ``diffusion2d`` systems (:data:`COEFFICIENT`; seeds ``seed``, ``seed + 1``, ...), m x m grid.

    Returns (scipy CSR matrices with sorted indices, all with ONE sparsity pattern -- checked --, b of
    shape (count, m^2)).
    """
    data = [GENERATORS["diffusion2d"](m, seed=seed + i, **COEFFICIENT) for i in range(count)]
    mats = [to_scipy(d) for d in data]
    for A in mats:
        A.sort_indices()
        if not (np.array_equal(A.indptr, mats[0].indptr) and np.array_equal(A.indices, mats[0].indices)):
            raise AssertionError("diffusion2d systems of one grid size do not share their sparsity pattern")
    return mats, np.stack([d.b.numpy() for d in data])
