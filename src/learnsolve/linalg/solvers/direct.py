"""Direct solvers whose factorisation serves both A x = b and the adjoint A^T y = g.

``DenseLU``: torch.linalg.lu_factor once, lu_solve(adjoint=True) for A^T (any device).
``SparseLU``: scipy SuperLU (splu) per matrix of the batch, ``solve(trans="T")`` for A^T (CPU).
Factorising costs O(n^3) dense, and fill-dependent sparse; each later solve is one pair of
triangular solves with the factors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..operators.base import DenseOperator, LinearOperator
from ..operators.sparse import SparseMatrix


class SingularMatrixError(RuntimeError):
    """The direct factorisation found A (numerically) singular."""


class DenseLU:
    def __init__(self, A: Tensor):
        A3 = A.detach() if A.ndim == 3 else A.detach().unsqueeze(0)
        self.LU, self.piv, info = torch.linalg.lu_factor_ex(A3)
        if bool((info > 0).any()):
            bad = int((info > 0).nonzero()[0, 0])
            raise SingularMatrixError(f"dense LU: matrix {bad} of the batch is exactly singular "
                                      f"(zero pivot {int(info[bad])})")

    def solve(self, Bm: Tensor, transpose: bool = False) -> Tensor:
        LU, piv = self.LU, self.piv
        if LU.shape[0] == 1 and Bm.shape[0] > 1:
            LU, piv = LU.expand(Bm.shape[0], *LU.shape[1:]), piv.expand(Bm.shape[0], -1)
        return torch.linalg.lu_solve(LU, piv, Bm, adjoint=transpose)


class SparseLU:
    def __init__(self, A: SparseMatrix):
        import scipy.sparse.linalg as spla

        self.B = A.batch_size or 1
        self.lus = []
        for i in range(self.B):
            m = A.to_scipy(i if A.batch_size is not None else None).tocsc().astype(np.float64)
            try:
                self.lus.append(spla.splu(m))
            except RuntimeError as e:  # "Factor is exactly singular"
                raise SingularMatrixError(f"sparse LU of matrix {i} of the batch failed: {e}") from None
        self.dtype, self.device = A.dtype, A.device

    def solve(self, Bm: Tensor, transpose: bool = False) -> Tensor:
        Bn = Bm.detach().cpu().to(torch.float64).numpy()
        out = np.empty_like(Bn)
        for b in range(Bn.shape[0]):
            lu = self.lus[b if self.B > 1 else 0]
            out[b] = lu.solve(np.ascontiguousarray(Bn[b]), trans="T" if transpose else "N")
        return torch.from_numpy(out).to(dtype=Bm.dtype, device=Bm.device)


def factorize(op: LinearOperator):
    """Factor an explicit matrix once for ``method="direct"``: the factor solves with A and with A^T.

    Args:
        op: a ``DenseOperator`` (LU, batched) or a ``SparseMatrix`` (SuperLU per matrix).

    Returns:
        ``DenseLU`` or ``SparseLU``.

    Raises:
        TypeError: a matrix-free operator (cannot be factored).
        SingularMatrixError: A is singular.
    """
    if isinstance(op, DenseOperator):
        return DenseLU(op.A)
    if isinstance(op, SparseMatrix):
        return SparseLU(op)
    raise TypeError(f"method='direct' needs an explicit matrix, got {type(op).__name__}; "
                    "use an iterative method for matrix-free operators")
