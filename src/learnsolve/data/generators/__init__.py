"""Registry of linear-system generators: ``GENERATORS[name](size, seed=..., rhs=..., **params) -> Data``.

``size`` is the grid side for the grid families (:mod:`.structured`: poisson2d/3d, diffusion2d/3d,
anisotropic2d, convdiff2d; :mod:`.heterogeneous`: lognormal2d, channels2d; elasticity2d; the trajectory
families), the number of vertices for fem_poisson and the number of nodes (= unknowns) for graph_laplacian
(:mod:`.graphs`). All but the trajectory families (trajectory2d, forced2d: ODE trajectories, not A x = b)
take ``reference=False`` to skip the reference solve.
:func:`poisson_matrix` gives the Poisson matrix alone (scipy CSR, no reference solve), for large sizes.
"""

from .fem import GENERATORS as _FEM
from .graphs import GENERATORS as _GRAPHS
from .heterogeneous import GENERATORS as _HETEROGENEOUS
from .structured import GENERATORS as _STRUCTURED
from .structured import poisson_matrix
from .trajectory import GENERATORS as _TRAJECTORY

GENERATORS = {**_STRUCTURED, **_HETEROGENEOUS, **_FEM, **_GRAPHS, **_TRAJECTORY}
# whether a family's matrices are symmetric (then SPD: CG-type solvers and SPD-only models apply); the
# nonsymmetric ones need GMRES / BiCGStab
SYMMETRIC: dict[str, bool] = {name: name not in ("convdiff2d",) for name in GENERATORS}

__all__ = ["GENERATORS", "SYMMETRIC", "poisson_matrix"]
