"""The preconditioner protocol: :class:`Preconditioner` (``apply`` M^{-1}, ``apply_transpose`` M^{-T} on
canonical (B, n, k) blocks, ``.T``), :class:`FunctionPreconditioner` for callables,
:class:`FactorizationError`."""

from __future__ import annotations

import abc

from torch import Tensor

from ..operators.base import DenseOperator, LinearOperator
from ..operators.sparse import SparseMatrix


class FactorizationError(RuntimeError):
    """An incomplete factorisation broke down (zero or negative pivot)."""

    def __init__(self, message: str, row: int):
        super().__init__(message)
        self.row = row


class Preconditioner(abc.ABC):
    """Applies M^{-1} and M^{-T} to canonical blocks (B, n, k)."""

    linear: bool = True
    symmetric: bool = False

    @abc.abstractmethod
    def apply(self, R: Tensor) -> Tensor: ...

    def apply_transpose(self, R: Tensor) -> Tensor:
        if self.symmetric:
            return self.apply(R)
        raise NotImplementedError(f"{type(self).__name__} has no transpose")

    @property
    def T(self) -> Preconditioner:
        return self if self.symmetric else _Transposed(self)

    def __call__(self, R: Tensor) -> Tensor:
        return self.apply(R)


class _Transposed(Preconditioner):
    def __init__(self, p: Preconditioner):
        self.p = p
        self.linear = p.linear

    def apply(self, R):
        return self.p.apply_transpose(R)

    def apply_transpose(self, R):
        return self.p.apply(R)

    @property
    def T(self):
        return self.p


class FunctionPreconditioner(Preconditioner):
    """Wraps a callable on canonical blocks; ``transpose`` (optional) applies M^{-T}.

    ``symmetric=True`` declares M^{-T} = M^{-1}. ``linear=False`` marks a nonlinear map (a network):
    use it with ``fcg`` or ``gmres`` (flexible), not with ``cg``.
    """

    def __init__(self, fn, transpose=None, *, symmetric: bool = False, linear: bool = True):
        self.fn, self.fnT = fn, transpose
        self.symmetric, self.linear = symmetric, linear

    def apply(self, R):
        return self.fn(R)

    def apply_transpose(self, R):
        if self.fnT is not None:
            return self.fnT(R)
        return super().apply_transpose(R)


def _as_sparse(op: LinearOperator, what: str) -> SparseMatrix:
    if isinstance(op, SparseMatrix):
        return op
    if isinstance(op, DenseOperator):
        return SparseMatrix.from_dense(op.A)
    raise TypeError(f"{what} needs an explicit matrix (SparseMatrix or dense tensor), got "
                    f"{type(op).__name__}")
