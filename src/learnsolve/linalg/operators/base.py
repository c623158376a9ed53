"""The linear-operator protocol shared by dense, sparse and matrix-free matrices.

Solvers only ever call :meth:`LinearOperator.mv` on canonical ``(B, n, k)`` blocks (see
``_layout``), ask for the transpose (``.T``) for adjoint solves, and ask for the operator's
differentiable parameters (``params`` / ``with_params`` / ``vjp_params``) for implicit
differentiation:

    d/dtheta <u, A(theta) x>  =  vjp_params(u, x)

which is ``u x^T`` for a dense matrix, ``u[row] * x[col]`` on the pattern for a sparse one and a
vector-Jacobian product of the user's matvec for a matrix-free operator. All of them are built from
differentiable torch operations, so a backward pass through them can itself be differentiated.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .layout import Reducer, canonicalize


class LinearOperator(abc.ABC):
    """A (batch of) n x m linear map(s). Abstract; see DenseOperator, SparseMatrix, MatrixFreeOperator."""

    shape: tuple[int, int]
    batch_size: int | None  # None: one matrix; B: a batch of B matrices (values of shape (B, ...))

    # -- structure -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @property
    def blocks(self) -> Tensor | None:
        """``ptr`` (G+1,) of independent diagonal blocks (a PyG batch), or None."""
        return None

    def reducer(self) -> Reducer:
        ptr = self.blocks
        if ptr is None:
            return Reducer()
        cache = getattr(self, "_reducer_cache", None)
        if cache is None:
            sizes = ptr[1:] - ptr[:-1]
            seg = torch.repeat_interleave(torch.arange(len(sizes), device=ptr.device), sizes.long())
            cache = Reducer(seg, len(sizes))
            self._reducer_cache = cache
        return cache

    # -- application -----------------------------------------------------------------------
    @abc.abstractmethod
    def mv(self, X: Tensor) -> Tensor:
        """Apply to a canonical block X of shape (Bx, m, k); returns (max(B, Bx), n, k)."""

    @property
    @abc.abstractmethod
    def T(self) -> LinearOperator:
        """The transposed operator (same parameters, so gradients flow through it)."""

    def matvec(self, x: Tensor) -> Tensor:
        """``A @ x`` for x of shape (m,), (m, k), or batched (B, m) / (B, m, k) like
        torch.linalg.differentiable.solve."""
        X, layout = canonicalize(x, self.shape[1], self.batch_size, None, name="x")
        Y = self.mv(X)
        out = list(layout.shape)
        out[-1 if layout.vector else -2] = self.shape[0]
        return Y.reshape(out)

    def __matmul__(self, x: Tensor) -> Tensor:
        return self.matvec(x)

    # -- parameters (implicit differentiation) ---------------------------------------------
    @abc.abstractmethod
    def params(self) -> tuple[Tensor, ...]:
        """The tensors the operator depends on differentiably."""

    @abc.abstractmethod
    def with_params(self, params: Sequence[Tensor]) -> LinearOperator:
        """The same operator structure with other parameter tensors."""

    @abc.abstractmethod
    def vjp_params(self, U: Tensor, X: Tensor) -> tuple[Tensor | None, ...]:
        """Gradient of ``sum <U, A X>`` w.r.t. each of :meth:`params` (canonical U, X)."""

    def diagonal(self) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not provide its diagonal")

    def __repr__(self) -> str:
        b = "" if self.batch_size is None else f", batch={self.batch_size}"
        return f"{type(self).__name__}(shape={self.shape}{b}, dtype={self.dtype})"


def _sum_to_batch(g: Tensor, batch_size: int | None) -> Tensor:
    """Reduce a (Bx, ...) gradient to the operator's batch layout."""
    if batch_size is None:
        return g.sum(0)
    if g.shape[0] != batch_size:
        return g.sum(0, keepdim=True).expand(batch_size, *g.shape[1:])
    return g


class DenseOperator(LinearOperator):
    """A dense (n, m) or (B, n, m) tensor."""

    def __init__(self, A: Tensor):
        if A.ndim not in (2, 3):
            raise ValueError(f"a dense A must have shape (n, m) or (B, n, m), got {tuple(A.shape)}")
        self.A = A
        self.shape = (A.shape[-2], A.shape[-1])
        self.batch_size = None if A.ndim == 2 else A.shape[0]

    @property
    def dtype(self):
        return self.A.dtype

    @property
    def device(self):
        return self.A.device

    def mv(self, X: Tensor) -> Tensor:
        return torch.matmul(self.A, X)

    @property
    def T(self) -> DenseOperator:
        return DenseOperator(self.A.mT)

    def params(self):
        return (self.A,)

    def with_params(self, params):
        (A,) = params
        return DenseOperator(A)

    def vjp_params(self, U, X):
        return (_sum_to_batch(U @ X.mT, self.batch_size),)

    def diagonal(self):
        return torch.diagonal(self.A, dim1=-2, dim2=-1)


class MatrixFreeOperator(LinearOperator):
    """An operator given by ``matvec(X, *params)`` on canonical blocks X of shape (B, m, k).

    The transpose is applied with ``rmatvec(X, *params)`` when given, otherwise by a vector-Jacobian
    product of ``matvec`` (exact for a linear map, one extra autograd pass per application).
    ``params`` are the tensors A depends on; gradients w.r.t. them come from a vjp of ``matvec``.
    ``matvec`` must be linear in X and built from differentiable torch operations.
    """

    def __init__(
        self,
        matvec: Callable[..., Tensor],
        shape: tuple[int, int] | int,
        params: Sequence[Tensor] = (),
        rmatvec: Callable[..., Tensor] | None = None,
        *,
        batch_size: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        diagonal: Callable[..., Tensor] | None = None,
    ):
        if not callable(matvec):
            raise TypeError("matvec must be callable as matvec(X, *params)")
        self._matvec = matvec
        self._rmatvec = rmatvec
        self._diag = diagonal
        self.shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
        self._params = tuple(params)
        self.batch_size = batch_size
        ref = self._params[0] if self._params else None
        self._dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
        self._device = torch.device(device) if device is not None else (
            ref.device if ref is not None else torch.device("cpu")
        )

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    def mv(self, X):
        return self._matvec(X, *self._params)

    def _vjp_matvec(self, Y: Tensor, *params: Tensor) -> Tensor:
        """A^T Y as the vjp of the (linear) matvec; torch.func keeps the outer graph intact, so the
        result stays differentiable w.r.t. Y and params for double backward."""
        B = max(self.batch_size or 1, Y.shape[0])
        Z = torch.zeros(B, self.shape[1], Y.shape[2], dtype=Y.dtype, device=Y.device)
        _, vjp_fn = torch.func.vjp(lambda Z_: self._matvec(Z_, *params), Z)
        (g,) = vjp_fn(Y)
        return g

    @property
    def T(self) -> MatrixFreeOperator:
        fwd, rev = self._matvec, self._rmatvec
        rm = rev if rev is not None else self._vjp_matvec
        op = MatrixFreeOperator(rm, (self.shape[1], self.shape[0]), self._params, fwd,
                                batch_size=self.batch_size, dtype=self._dtype, device=self._device,
                                diagonal=self._diag)
        return op

    def params(self):
        return self._params

    def with_params(self, params):
        op = MatrixFreeOperator(self._matvec, self.shape, params, self._rmatvec, batch_size=self.batch_size,
                                dtype=self._dtype, device=self._device, diagonal=self._diag)
        return op

    def vjp_params(self, U, X):
        # torch.func.vjp differentiates w.r.t. the params only: X and U (which themselves depend on
        # the params through the solve) are constants at this level, yet the result stays
        # differentiable w.r.t. them at the outer level (double backward). Plain autograd.grad
        # would walk back through X's solve node and recurse.
        idx = [i for i, p in enumerate(self._params) if p.requires_grad]
        out: list[Tensor | None] = [None] * len(self._params)
        if not idx:
            return tuple(out)

        def f(*ps):
            full = list(self._params)
            for i, p in zip(idx, ps):
                full[i] = p
            return self._matvec(X, *full)

        _, vjp_fn = torch.func.vjp(f, *[self._params[i] for i in idx])
        for i, g in zip(idx, vjp_fn(U)):
            out[i] = g
        return tuple(out)

    def diagonal(self):
        if self._diag is None:
            raise NotImplementedError(
                "this MatrixFreeOperator has no diagonal: pass diagonal=callable(*params) to use Jacobi")
        return self._diag(*self._params)
