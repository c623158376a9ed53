"""Registry of linear-system generators: ``GENERATORS[name](size, seed=..., rhs=..., **params) -> Data``."""

from .fem import GENERATORS as _FEM
from .structured import GENERATORS as _STRUCTURED

GENERATORS = {**_STRUCTURED, **_FEM}

__all__ = ["GENERATORS"]
