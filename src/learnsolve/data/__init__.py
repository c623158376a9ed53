"""learnsolve.data: PDE linear-system generators, cached datasets, Matrix Market I/O, benchmark suites.

Every system is a PyG ``Data`` built by :func:`make_system` (see ``system.py`` for the fields);
``learnsolve.linalg.SparseMatrix.from_pyg(data_or_batch)`` turns it into an operator.
"""

from .dataset import CacheError, LinearSystemDataset, config_hash
from .generators import GENERATORS
from .mtx import MatrixMarketError, load_system, read_matrix_market, write_matrix_market
from .suites import (
    SUITES,
    GeneratedSuite,
    MatrixMarketSuite,
    PyamgSuite,
    Suite,
    SuiteConfigError,
    SuiteError,
    generated_suite,
    load_suite,
    matrix_market_suite,
    pyamg_suite,
)
from .system import FEATURES, RHS_KINDS, make_rhs, make_system, to_scipy

__all__ = [
    "FEATURES",
    "GENERATORS",
    "RHS_KINDS",
    "SUITES",
    "CacheError",
    "GeneratedSuite",
    "LinearSystemDataset",
    "MatrixMarketError",
    "MatrixMarketSuite",
    "PyamgSuite",
    "Suite",
    "SuiteConfigError",
    "SuiteError",
    "config_hash",
    "generated_suite",
    "load_suite",
    "load_system",
    "make_rhs",
    "make_system",
    "matrix_market_suite",
    "pyamg_suite",
    "read_matrix_market",
    "to_scipy",
    "write_matrix_market",
]
