"""learnsolve.data: PDE linear-system generators, Matrix Market I/O and benchmark suites.

Every system is a PyG ``Data`` built by :func:`make_system` (see ``system.py`` for the fields).
"""

from .system import FEATURES, RHS_KINDS, make_rhs, make_system, to_scipy

__all__ = ["FEATURES", "RHS_KINDS", "make_rhs", "make_system", "to_scipy"]
