"""Registry of linear-system generators: ``GENERATORS[name](size, seed=..., rhs=..., **params) -> Data``.

:func:`poisson_matrix` gives the Poisson matrix alone (scipy CSR, no reference solve), for large sizes.
"""

from .fem import GENERATORS as _FEM
from .structured import GENERATORS as _STRUCTURED
from .structured import poisson_matrix
from .trajectory import GENERATORS as _TRAJECTORY

GENERATORS = {**_STRUCTURED, **_FEM, **_TRAJECTORY}
# whether a family's matrices are symmetric (then SPD: CG-type solvers and SPD-only models apply); the
# nonsymmetric ones need GMRES / BiCGStab
SYMMETRIC: dict[str, bool] = {name: name not in ("convdiff2d",) for name in GENERATORS}

__all__ = ["GENERATORS", "SYMMETRIC", "poisson_matrix"]
