"""learnsolve.linalg: the differentiable solver core (no Lightning, Hydra or PyG).

Public API:

- operators: :class:`SparseMatrix` (batched CSR, O(nnz) gradients), :class:`LinearOperator`,
  :class:`DenseOperator`, :class:`MatrixFreeOperator`, :func:`as_operator`
- Krylov methods returning ``(x, SolveInfo)``: :func:`cg`, :func:`fcg`, :func:`minres`,
  :func:`bicgstab`, :func:`gmres`
- the differentiable solve: :func:`solve` (implicit / unrolled / truncated / stochastic backward)
- Hessian-vector products by double backward through solves: :func:`hvp`
- preconditioners with transposes: :class:`Jacobi`, :class:`IC0`, :class:`MIC0`, :class:`ILU0`, :class:`LLT`,
  :class:`LowRankDiagonal`, :class:`AMG`, :class:`FunctionPreconditioner`,
  :func:`make_preconditioner`, :func:`triangular_solve`
- smoothed-aggregation multigrid with differentiable prolongators and Galerkin products (the learned coarse
  spaces of gnn_solver): :func:`build_multigrid` -> :class:`Multigrid` (an SPD V-cycle), :func:`aggregate`,
  :func:`node_blocks`, :func:`evolution_strong`, :func:`from_pyamg` (a pyamg hierarchy in the compiled cycle);
  the parts are in :mod:`learnsolve.linalg.preconditioners.multigrid`
- a coarse-corrected (balancing) preconditioner on subdomains: :class:`CoarseCorrected`, :func:`subdomains`
- direct factorisations: :class:`DenseLU`, :class:`SparseLU`
- diagnostics: :func:`record_solves` (every solve's SolveInfo in a block), :func:`override_backward` (every
  solve of a block differentiated another way)
- a few entries of x for diagonally dominant A in time independent of n: :func:`local_solve`
- spectral estimates from CG's Lanczos coefficients (differentiable, no n x n eigensolve):
  :func:`condition_estimate`, :func:`extreme_eigenvalues`, :func:`lanczos_tridiagonal`
- the setup-time safeguard for learned preconditioners (a short PCG race against a classical fallback, per
  system of a block-diagonal batch): :func:`safeguard` -> :class:`SafeguardResult`
"""

from .differentiable.derivatives import hvp
from .differentiable.local import LocalInfo, local_solve
from .differentiable.monitor import SolveRecorder, override_backward, record_solves
from .differentiable.solve import AdjointOptions, ConvergenceError, ConvergenceWarning, solve
from .operators.base import DenseOperator, LinearOperator, MatrixFreeOperator
from .operators.convert import as_operator
from .operators.sparse import CSRPattern, SparseMatrix
from .preconditioners.amg import AMG
from .preconditioners.base import FactorizationError, FunctionPreconditioner, Preconditioner
from .preconditioners.classical import IC0, ILU0, LLT, MIC0, Jacobi, LowRankDiagonal, make_preconditioner
from .preconditioners.deflation import CoarseCorrected, subdomains
from .preconditioners.multigrid import (
    Multigrid,
    aggregate,
    build_multigrid,
    evolution_strong,
    from_pyamg,
    node_blocks,
)
from .preconditioners.safeguard import SafeguardResult, fastest_factor, safeguard
from .preconditioners.triangular import triangular_solve
from .solvers.direct import DenseLU, SingularMatrixError, SparseLU, factorize
from .solvers.krylov import SolveInfo, bicgstab, cg, default_rtol, fcg, gmres, minres
from .solvers.spectral import condition_estimate, extreme_eigenvalues, lanczos_tridiagonal

__all__ = [
    "AMG",
    "IC0",
    "ILU0",
    "LLT",
    "MIC0",
    "AdjointOptions",
    "CSRPattern",
    "CoarseCorrected",
    "ConvergenceError",
    "ConvergenceWarning",
    "DenseLU",
    "DenseOperator",
    "FactorizationError",
    "FunctionPreconditioner",
    "Jacobi",
    "LinearOperator",
    "LocalInfo",
    "LowRankDiagonal",
    "MatrixFreeOperator",
    "Multigrid",
    "Preconditioner",
    "SafeguardResult",
    "SingularMatrixError",
    "SolveInfo",
    "SolveRecorder",
    "SparseLU",
    "SparseMatrix",
    "aggregate",
    "as_operator",
    "bicgstab",
    "build_multigrid",
    "cg",
    "condition_estimate",
    "default_rtol",
    "evolution_strong",
    "extreme_eigenvalues",
    "factorize",
    "fastest_factor",
    "fcg",
    "from_pyamg",
    "gmres",
    "hvp",
    "lanczos_tridiagonal",
    "local_solve",
    "make_preconditioner",
    "minres",
    "node_blocks",
    "override_backward",
    "record_solves",
    "safeguard",
    "solve",
    "subdomains",
    "triangular_solve",
]
