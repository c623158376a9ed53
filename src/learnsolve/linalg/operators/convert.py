"""``as_operator``: what ``solve`` and the Krylov methods accept as A, turned into a
:class:`LinearOperator`."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import DenseOperator, LinearOperator
from .sparse import SparseMatrix


def as_operator(A) -> LinearOperator:
    """Wrap A (LinearOperator, dense tensor, torch sparse tensor, scipy sparse matrix) as an operator."""
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, Tensor):
        if A.layout == torch.strided:
            return DenseOperator(A)
        return SparseMatrix.from_torch(A)
    try:
        import scipy.sparse as sp

        if sp.issparse(A):
            return SparseMatrix.from_scipy(A)
    except ImportError:  # pragma: no cover
        pass
    if callable(A):
        raise TypeError("a bare callable is not an operator: wrap it as MatrixFreeOperator(matvec, shape, "
                        "params)")
    raise TypeError(
        f"A must be a torch.Tensor, a SparseMatrix, a LinearOperator or a scipy sparse matrix, "
        f"got {type(A).__name__}")
