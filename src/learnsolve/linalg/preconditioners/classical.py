"""Preconditioners with an explicit transpose.

Every preconditioner applies ``M^{-1}`` (``apply``) and ``M^{-T}`` (``apply_transpose``) to canonical
(B, n, k) blocks; ``.T`` is the transposed preconditioner used by adjoint solves. Triangular solves
(IC(0), ILU(0), learned ``L L^T`` factors) share one compiled CSR kernel (``_kernels.csr_trsv``) and
are differentiable w.r.t. the factor's values and the right-hand side:

    y = T^{-1} x:   grad_x = T^{-T} g,   grad_T[e] = -(T^{-T} g)[row_e] * y[col_e]   (O(nnz))
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..kernels import csr as _kernels
from ..kernels import mic as _kernels_mic
from ..operators.base import DenseOperator, LinearOperator
from ..operators.convert import as_operator
from ..operators.layout import block_sum
from ..operators.sparse import SparseMatrix, values_version
from . import triangular
from .amg import AMG
from .base import FactorizationError, FunctionPreconditioner, Preconditioner, _as_sparse
from .triangular import _ldlt_solve, _np_pattern, _tri_solve, triangular_sweeps

# ------------------------------------------------------------------------------------------------
# concrete preconditioners
# ------------------------------------------------------------------------------------------------

class Jacobi(Preconditioner):
    """M = diag(A). Cost: one elementwise product. Differentiable w.r.t. A's diagonal.

    Args:
        A: the operator (anything ``as_operator`` accepts); batched A gives one diagonal per matrix.

    Raises:
        ValueError: a zero diagonal entry (the row is named).
    """

    symmetric = True

    def __init__(self, A):
        self._set_diagonal(as_operator(A).diagonal())

    @classmethod
    def from_diagonal(cls, d: Tensor) -> Jacobi:
        """From the diagonal itself: (n,) or (B, n)."""
        obj = cls.__new__(cls)
        obj._set_diagonal(d)
        return obj

    def _set_diagonal(self, d: Tensor) -> None:
        zero = (d == 0)
        if bool(zero.any()):
            row = int(zero.nonzero()[0, -1])
            raise ValueError(f"Jacobi: A has a zero diagonal entry in row {row}; use ilu0, amg or a shift")
        inv = 1.0 / d
        self.inv_diag = inv.unsqueeze(-1) if inv.ndim == 2 else inv.reshape(1, -1, 1)

    def apply(self, R):
        return R * self.inv_diag


class LLT(Preconditioner):
    """M = L L^T for a lower-triangular sparse factor L (diagonal included and nonzero).

    M^{-1} r = L^{-T} L^{-1} r: two compiled triangular solves, O(nnz(L)) each, differentiable
    w.r.t. L's values (learned factors). Off the CPU the solves are level-scheduled (exact, O(nnz) memory, one
    small step per level); ``sweeps=k`` replaces each by k Jacobi sweeps (k SpMVs, no sequential dependency:
    an approximate but still symmetric positive definite M for GPUs where exact solves serialise)."""

    symmetric = True
    sweeps: int | None = None

    def __init__(self, L: SparseMatrix, sweeps: int | None = None):
        if sweeps is not None and int(sweeps) < 1:
            raise ValueError("sweeps must be a positive number of Jacobi sweeps (or None: exact solves), got "
                             f"{sweeps}")
        self.sweeps = None if sweeps is None else int(sweeps)
        if not isinstance(L, SparseMatrix):
            raise TypeError(f"LLT expects a SparseMatrix factor, got {type(L).__name__}")
        if L.shape[0] != L.shape[1]:
            raise ValueError(f"LLT factor must be square, got {L.shape}")
        self.L = L
        self.LT = L.T
        self._ldlt = None  # (key, ldlt_factor output or None): the no-grad fast path, see apply

    def _ldlt_factor(self):
        """LDL^T form of L L^T (unit factor without its diagonal, 1/L_ii^2), rebuilt when L's values
        change in place; None when L has a zero or missing diagonal (the plain path then reports it)."""
        v = self.L._values
        key = values_version(v)
        if self._ldlt is None or self._ldlt[0] != key:
            indptr, indices = _np_pattern(self.L.pattern)
            f = _kernels.ldlt_factor(indptr, indices, self.L._vals2d.detach().contiguous().numpy())
            self._ldlt = (key, f if f[-1] < 0 else None)
        return self._ldlt[1]

    def apply(self, R):
        vals = self.L._vals2d
        if self.sweeps is not None:
            Y = triangular_sweeps(self.L, vals, R, True, False, self.sweeps)
            return triangular_sweeps(self.LT, self.LT._vals2d, Y, False, False, self.sweeps)
        if (R.device.type == "cpu" and vals.device.type == "cpu" and R.dtype == vals.dtype
                and not triangular.DEVICE_PATH_ON_CPU
                and not (torch.is_grad_enabled() and (vals.requires_grad or R.requires_grad))):
            # nothing to differentiate: L L^T = U^T D^2 U with U^T = L D^{-1} unit lower, so both solves are
            # unit-diagonal (one FMA per row on the dependency chain) and only off-diagonal entries stream
            f = self._ldlt_factor()
            if f is not None:
                return _ldlt_solve(f, R)
        Y = _tri_solve(self.L, self.L._vals2d, R, True, False)
        return _tri_solve(self.LT, self.LT._vals2d, Y, False, False)


class IC0(LLT):
    """Zero-fill incomplete Cholesky of an SPD A: M = L L^T with L on tril(A)'s pattern.

    ``shift``: factor ``A + shift * diag(A)`` instead; ``"auto"`` retries with shifts
    1e-3, 1e-2, ... 10 after a breakdown (Manteuffel's shifted IC). The shift used is ``self.shift``.
    A breakdown that is not retried raises :class:`FactorizationError` naming the row.
    Setup O(nnz * row length), compiled.

    Args:
        A: SPD ``SparseMatrix`` (or an operator convertible to one); values (nnz,) or (B, nnz). Detached.
        shift: diagonal shift factor, or ``"auto"``.
        sweeps: None for exact triangular solves, or k Jacobi sweeps per solve (see :class:`LLT`).

    Raises:
        FactorizationError: a non-positive pivot that no shift removed.
    """

    name = "IC(0)"

    def __init__(self, A: LinearOperator, shift: float | str = 0.0, sweeps: int | None = None):
        S = _as_sparse(A, self.name).detach()
        low = S.tril()
        base = low._vals2d.cpu().numpy()
        pos = low.pattern.diag_positions().cpu().numpy()
        shifts = [0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0] if shift == "auto" else [float(shift)]
        for s in shifts:
            data = base.copy()
            if s:
                data[:, pos[pos >= 0]] *= 1.0 + s
            L, info = self._factor(low, np.ascontiguousarray(data))
            if int(info.max()) < 0:
                break
        else:
            row = int(info[info >= 0].min())
            raise FactorizationError(
                f"{self.name} broke down at row {row} (non-positive "
                f"pivot{'' if shift == 0 else f', shift {s}'}): A may not be SPD; pass shift='auto' (or a "
                "float) to factor A + shift*diag(A), or use ilu0/jacobi", row)
        self.shift = s
        vals = torch.from_numpy(L).to(S.device)
        vals = vals if S.batch_size is not None else vals[0]
        super().__init__(low.with_values(vals), sweeps=sweeps)
        if S.device.type == "cpu" and sweeps is None:
            self._ldlt_factor()  # the fast path's factor, built at setup rather than on the first apply

    @staticmethod
    def _factor(low: SparseMatrix, data: np.ndarray):
        """(L values (B, nnz(low)), info (B,)) of the factor of the lower triangle ``low`` with values
        ``data``."""
        indptr, indices = _np_pattern(low.pattern)
        return _kernels.ic0(indptr, indices, data)


class MIC0(IC0):
    """Modified incomplete Cholesky (MIC(0)) of an SPD A: M = L L^T on tril(A)'s pattern, the same nonzeros as
    IC(0), with every dropped fill-in entry subtracted from the two diagonal entries of its row and column, so
    that ``L L^T 1 = A 1`` (row sums preserved). On diffusion problems this removes IC(0)'s smallest
    eigenvalues: iterations grow like the grid side's square root instead of the grid side (Gustafsson 1978).

    Same ``shift`` / ``"auto"`` breakdown handling as :class:`IC0` (MIC(0) breaks down more often outside
    M-matrices); compiled right-looking factorisation on the upper triangle (``_kernels_mic.ic0_upper``).
    """

    name = "MIC(0)"

    @staticmethod
    def _factor(low: SparseMatrix, data: np.ndarray):
        patT, perm = low.pattern.transpose()  # triu(A): row k of U = L^T is column k of L
        indptr, indices = _np_pattern(patT)
        p = perm.cpu().numpy()
        U, info = _kernels_mic.ic0_upper(indptr, indices, np.ascontiguousarray(data[:, p]), True)
        L = np.empty_like(U)
        L[:, p] = U  # back to tril's CSR order
        return L, info


class ILU0(Preconditioner):
    """Zero-fill incomplete LU, M = L U on A's pattern (L unit lower). apply_transpose uses U^T L^T.
    Factorised on the CPU (compiled) and moved to A's device; ``sweeps`` as for :class:`LLT`."""

    sweeps: int | None = None

    def __init__(self, A: LinearOperator, sweeps: int | None = None):
        if sweeps is not None and int(sweeps) < 1:
            raise ValueError("sweeps must be a positive number of Jacobi sweeps (or None: exact solves), got "
                             f"{sweeps}")
        self.sweeps = None if sweeps is None else int(sweeps)
        S = _as_sparse(A, "ILU(0)").detach()
        indptr, indices = _np_pattern(S.pattern)
        LU, info = _kernels.ilu0(indptr, indices, np.ascontiguousarray(S._vals2d.cpu().numpy()))
        if int(info.max()) >= 0:
            row = int(info[info >= 0].min())
            raise FactorizationError(f"ILU(0) broke down: zero or missing pivot in row {row}", row)
        vals = torch.from_numpy(LU).to(S.device)
        self.LU = S.with_values(vals if S.batch_size is not None else vals[0])
        self.LUT = self.LU.T

    def _solve(self, T: SparseMatrix, X, lower: bool, unit: bool):
        if self.sweeps is not None:
            return triangular_sweeps(T, T._vals2d, X, lower, unit, self.sweeps)
        return _tri_solve(T, T._vals2d, X, lower, unit)

    def apply(self, R):
        return self._solve(self.LU, self._solve(self.LU, R, True, True), False, False)

    def apply_transpose(self, R):
        # M^T = U^T L^T: U^T is the lower triangle (with diagonal) of LU^T, L^T its unit upper part.
        return self._solve(self.LUT, self._solve(self.LUT, R, True, False), False, True)


class LowRankDiagonal(Preconditioner):
    """M = D + U V^T (D diagonal, U, V of rank r), applied with the Woodbury identity

        M^{-1} r = D^{-1} r - D^{-1} U C^{-1} V^T D^{-1} r,      C = I_r + V^T D^{-1} U.

    D: (n,) or (B, n); U, V: (n, r) or (B, n, r). ``V=None`` means V = U (symmetric M; SPD when D > 0,
    since then C >= I). M^{-T} swaps U and V (C -> C^T).

    Block-diagonal M (a PyG batch of G systems): ``segment`` (n,) int64 gives the block of each row, and M is
    D + U_g V_g^T on block g (U_g, V_g the rows of block g), with one r x r matrix C_g per block, assembled
    by a segment sum of the per-row outer products v_i u_i^T / d_i. ``num_blocks`` G (default: from
    ``segment``). No n x n matrix is formed. Setup O(n r^2); apply to k right-hand sides O(n r k + G r^3).
    Differentiable in D, U, V (twice: double backward works).
    """

    def __init__(self, D: Tensor, U: Tensor, V: Tensor | None = None, *, segment: Tensor | None = None,
                 num_blocks: int | None = None):
        if bool((D == 0).any()):
            raise ValueError("LowRankDiagonal: D has zero entries; keep D > 0 (e.g. softplus)")
        self.symmetric = V is None
        V = U if V is None else V
        self.D = D if D.ndim == 2 else D.unsqueeze(0)
        self.U = U if U.ndim == 3 else U.unsqueeze(0)
        self.V = V if V.ndim == 3 else V.unsqueeze(0)
        if self.U.shape != self.V.shape or self.U.shape[:2] != self.D.shape:
            raise ValueError(f"LowRankDiagonal: shapes D {tuple(D.shape)}, U {tuple(U.shape)}, "
                             f"V {tuple(V.shape)} do not match (n,), (n, r), (n, r)")
        n = self.D.shape[1]
        if segment is not None:
            segment = segment.long().to(self.D.device)
            if segment.shape != (n,):
                raise ValueError(f"LowRankDiagonal: segment must have shape ({n},), got "
                                 f"{tuple(segment.shape)}")
            if num_blocks is None:
                num_blocks = int(segment.max()) + 1 if n else 0
        self.G = 1 if segment is None else int(num_blocks)
        # one block: the plain products below, not the (n, r, k) temporaries (at n = 65536, r = 8: 0.3
        # vs 3.4 ms)
        self.segment = segment if self.G > 1 else None
        self.Dinv = (1.0 / self.D).unsqueeze(-1)  # (B, n, 1)
        r = self.U.shape[-1]
        eye = torch.eye(r, dtype=self.U.dtype, device=self.U.device)
        DU = self.Dinv * self.U
        if self.segment is None:
            self.C = (eye + self.V.mT @ DU).unsqueeze(1)  # (B, 1, r, r)
        else:
            self.C = eye + self._blocksum(self.V.unsqueeze(-1) * DU.unsqueeze(-2))  # (B, G, r, r)

    def _blocksum(self, X: Tensor) -> Tensor:
        """Sum over the rows of each block: (B, n, r, k) -> (B, G, r, k)."""
        return block_sum(X, self.segment, self.G)

    def _apply(self, R: Tensor, U: Tensor, V: Tensor, C: Tensor) -> Tensor:
        DR = self.Dinv * R  # (B, n, k)
        if self.segment is None:  # one block: plain matrix products, no (n, r, k) temporary
            Y = torch.linalg.solve(C[:, 0], V.mT @ DR)
            return DR - self.Dinv * (U @ Y)
        W = self._blocksum(V.unsqueeze(-1) * DR.unsqueeze(-2))  # (B, G, r, k): V_g^T D_g^{-1} R_g
        Y = torch.linalg.solve(C, W).index_select(1, self.segment)  # (B, n, r, k): C_g^{-1} W_g per row
        return DR - self.Dinv * (U.unsqueeze(-1) * Y).sum(-2)

    def apply(self, R):
        return self._apply(R, self.U, self.V, self.C)

    def apply_transpose(self, R):
        if self.symmetric:  # M^{-T} = M^{-1} exactly (C is symmetric only up to rounding)
            return self.apply(R)
        return self._apply(R, self.V, self.U, self.C.mT)


PRECONDITIONERS = {
    "jacobi": Jacobi,
    "ic0": IC0,
    "mic0": MIC0,
    "ilu0": ILU0,
    "amg": AMG,
    "amg_sa": lambda A, **kw: AMG(A, kind="sa", **kw),
    "amg_rs": lambda A, **kw: AMG(A, kind="rs", **kw),
}


def make_preconditioner(name: str, A: LinearOperator, **kwargs) -> Preconditioner:
    """Build a named preconditioner for A (values detached: the preconditioner is a constant of the solve).

    Args:
        name: ``"jacobi"``, ``"ic0"``, ``"mic0"``, ``"ilu0"``, ``"amg"``, ``"amg_sa"`` or ``"amg_rs"``.
        A: the operator to precondition.
        **kwargs: passed to the class (e.g. ``shift="auto"`` for IC(0), ``kind=`` for AMG).

    Returns:
        The ``Preconditioner`` (``apply`` and ``apply_transpose`` on (B, n, k) blocks).

    Raises:
        ValueError: an unknown name (the known ones are listed).
        FactorizationError: IC(0) / MIC(0) / ILU(0) broke down.

    Example:
        ```python
        import scipy.sparse as sp
        from learnsolve.linalg import SparseMatrix, cg, make_preconditioner

        A = SparseMatrix.from_scipy(sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(50, 50)))
        M = make_preconditioner("ic0", A)
        ```
    """
    if name not in PRECONDITIONERS:
        raise ValueError(f"unknown preconditioner {name!r}; choose one of {', '.join(PRECONDITIONERS)}")
    if isinstance(A, SparseMatrix):
        A = A.detach()
    elif isinstance(A, DenseOperator):
        A = DenseOperator(A.A.detach())
    return PRECONDITIONERS[name](A, **kwargs)


def resolve_preconditioner(M, op: LinearOperator):
    """None | name | Preconditioner | callable -> None | Preconditioner."""
    if M is None or isinstance(M, Preconditioner):
        return M
    if isinstance(M, str):
        return make_preconditioner(M, op)
    if callable(M):
        return FunctionPreconditioner(M, symmetric=True)
    raise TypeError(f"precond must be None, a name, a Preconditioner or a callable, got {type(M).__name__}")
