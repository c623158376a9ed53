"""Registry of linear-system generators: ``GENERATORS[name](size, seed=..., rhs=..., **params) -> Data``."""

from .fem import GENERATORS as _FEM
from .structured import GENERATORS as _STRUCTURED
from .trajectory import GENERATORS as _TRAJECTORY

GENERATORS = {**_STRUCTURED, **_FEM, **_TRAJECTORY}

__all__ = ["GENERATORS"]
