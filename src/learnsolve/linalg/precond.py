"""Preconditioners with an explicit transpose.

Every preconditioner applies ``M^{-1}`` (``apply``) and ``M^{-T}`` (``apply_transpose``) to canonical
(B, n, k) blocks; ``.T`` is the transposed preconditioner used by adjoint solves. Triangular solves
(IC(0), ILU(0), learned ``L L^T`` factors) share one compiled CSR kernel (``_kernels.csr_trsv``) and
are differentiable w.r.t. the factor's values and the right-hand side:

    y = T^{-1} x:   grad_x = T^{-T} g,   grad_T[e] = -(T^{-T} g)[row_e] * y[col_e]   (O(nnz))
"""

from __future__ import annotations

import abc

import numpy as np
import torch
from torch import Tensor

from . import _kernels
from .operator import DenseOperator, LinearOperator, as_operator
from .sparse import CSRPattern, SparseMatrix, edge_products


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


# ------------------------------------------------------------------------------------------------
# triangular solves
# ------------------------------------------------------------------------------------------------

def _np_pattern(pattern: CSRPattern):
    if "np" not in pattern._cache:
        pattern._cache["np"] = (pattern.crow.cpu().numpy(), pattern.col.cpu().numpy())
    return pattern._cache["np"]


def _fold_rhs(Bv: int, X: Tensor) -> Tensor:
    """Right-hand sides (Bx, n, k) as a C-contiguous (B, n, k') block matching Bv value sets."""
    Bx, n, k = X.shape
    if Bv == 1 and Bx > 1:
        return X.detach().permute(1, 0, 2).reshape(1, n, Bx * k).contiguous()
    if Bv > 1 and Bx == 1:
        return X.detach().expand(Bv, n, k).contiguous()
    return X.detach().contiguous()


def _unfold_rhs(Y: Tensor, Bv: int, Bx: int, k: int) -> Tensor:
    if Bv == 1 and Bx > 1:
        return Y.reshape(Y.shape[1], Bx, k).permute(1, 0, 2)
    return Y


def _trsv_raw(mat: SparseMatrix, vals2d: Tensor, X: Tensor, lower: bool, unit: bool) -> Tensor:
    Bv, Bx = vals2d.shape[0], X.shape[0]
    n, k = X.shape[1], X.shape[2]
    if X.device.type != "cpu":
        # GPU: dense fallback (cuSPARSE triangular solves are future work); O(n^2) memory.
        T = mat.with_values(vals2d).to_dense()
        if unit:
            T = T.tril(-1) if lower else T.triu(1)
            T = T + torch.eye(n, dtype=T.dtype, device=T.device)
        else:
            T = T.tril() if lower else T.triu()
        return torch.linalg.solve_triangular(T, X, upper=not lower, unitriangular=unit)
    indptr, indices = _np_pattern(mat.pattern)
    data = vals2d.detach().contiguous().numpy()
    bn = _fold_rhs(Bv, X).numpy()
    out = np.empty_like(bn)
    bad = _kernels.csr_trsv(indptr, indices, data, bn, lower, unit, out)
    if bad >= 0:
        raise FactorizationError(f"triangular factor has a zero or missing diagonal in row {bad}", int(bad))
    return _unfold_rhs(torch.from_numpy(out), Bv, Bx, k)


def _ldlt_solve(f, X: Tensor) -> Tensor:
    """(L L^T)^{-1} X from ``_kernels.ldlt_factor``'s output: U^{-1} (dinv2 * (U^{-T} X)), both unit solves."""
    lip, lix, lval, uip, uix, uval, dinv2, _ = f
    Bv, Bx, k = lval.shape[0], X.shape[0], X.shape[2]
    bn = _fold_rhs(Bv, X).numpy()
    out = np.empty_like(bn)
    if bn.shape[0] * bn.shape[2] == 1:
        # one right-hand side: call the compiled loops directly (a compiled wrapper slows them down)
        b1, o1 = bn[0, :, 0], out[0, :, 0]
        _kernels.trsv_unit_lower(lip, lix, lval[0], dinv2[0, :0], b1, o1)
        _kernels.trsv_unit_upper(uip, uix, uval[0], dinv2[0], o1, o1)
    else:
        _kernels.csr_trsv_unit(lip, lix, lval, dinv2[:, :0], bn, True, out)
        _kernels.csr_trsv_unit(uip, uix, uval, dinv2, out, False, out)
    return _unfold_rhs(torch.from_numpy(out), Bv, Bx, k)


class _TriSolve(torch.autograd.Function):
    @staticmethod
    def forward(mat: SparseMatrix, vals2d: Tensor, X: Tensor, lower: bool, unit: bool) -> Tensor:
        return _trsv_raw(mat, vals2d, X, lower, unit)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mat, vals2d, X, lower, unit = inputs
        ctx.mat, ctx.lower, ctx.unit, ctx.bx = mat, lower, unit, X.shape[0]
        ctx.save_for_backward(vals2d, output)

    @staticmethod
    def backward(ctx, G):
        vals2d, Y = ctx.saved_tensors
        mat, lower, unit = ctx.mat, ctx.lower, ctx.unit
        patT, perm = mat.pattern.transpose()
        matT = SparseMatrix(patT, vals2d.index_select(1, perm))
        GX = _tri_solve(matT, matT._vals2d, G, not lower, unit)
        gv = None
        if ctx.needs_input_grad[1]:
            r, c = mat.pattern.row, mat.pattern.col
            used = (c < r) if lower else (c > r)
            if not unit:
                used = used | (c == r)
            gv = -edge_products(mat.pattern, GX, Y) * used.to(GX.dtype)
            if gv.shape[0] != vals2d.shape[0]:
                gv = gv.sum(0, keepdim=True)
        if GX.shape[0] != ctx.bx:
            GX = GX.sum(0, keepdim=True)
        return None, gv, GX, None, None


def _tri_solve(mat: SparseMatrix, vals2d: Tensor, X: Tensor, lower: bool, unit: bool) -> Tensor:
    if torch.is_grad_enabled() and (vals2d.requires_grad or X.requires_grad):
        return _TriSolve.apply(mat, vals2d, X, lower, unit)
    return _trsv_raw(mat, vals2d, X, lower, unit)


def triangular_solve(T: SparseMatrix, b: Tensor, lower: bool = True, unit_diagonal: bool = False) -> Tensor:
    """Solve ``T y = b`` with the triangle of T (entries on the other side are ignored).

    b: (n,), (n, k) or batched like :meth:`SparseMatrix.matvec`. Differentiable w.r.t. T's values and b.
    Cost: O(nnz) per right-hand side (compiled, sequential in the row dimension).
    """
    from ._layout import canonicalize

    X, layout = canonicalize(b, T.shape[0], T.batch_size, None)
    return layout.unpack(_tri_solve(T, T._vals2d, X, lower, unit_diagonal))


# ------------------------------------------------------------------------------------------------
# concrete preconditioners
# ------------------------------------------------------------------------------------------------

def _as_sparse(op: LinearOperator, what: str) -> SparseMatrix:
    if isinstance(op, SparseMatrix):
        return op
    if isinstance(op, DenseOperator):
        return SparseMatrix.from_dense(op.A)
    raise TypeError(f"{what} needs an explicit matrix (SparseMatrix or dense tensor), got {type(op).__name__}")


class Jacobi(Preconditioner):
    """M = diag(A). Cost: one elementwise product. Differentiable w.r.t. A's diagonal."""

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
    w.r.t. L's values (learned factors)."""

    symmetric = True

    def __init__(self, L: SparseMatrix):
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
        # inference tensors have no version counter (they are only writable inside inference_mode)
        key = (id(v), v.data_ptr(), None if v.is_inference() else v._version)
        if self._ldlt is None or self._ldlt[0] != key:
            indptr, indices = _np_pattern(self.L.pattern)
            f = _kernels.ldlt_factor(indptr, indices, self.L._vals2d.detach().contiguous().numpy())
            self._ldlt = (key, f if f[-1] < 0 else None)
        return self._ldlt[1]

    def apply(self, R):
        vals = self.L._vals2d
        if (R.device.type == "cpu" and vals.device.type == "cpu" and R.dtype == vals.dtype
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
    """

    def __init__(self, A: LinearOperator, shift: float | str = 0.0):
        S = _as_sparse(A, "IC(0)").detach()
        low = S.tril()
        indptr, indices = _np_pattern(low.pattern)
        base = low._vals2d.cpu().numpy()
        pos = low.pattern.diag_positions().cpu().numpy()
        shifts = [0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0] if shift == "auto" else [float(shift)]
        for s in shifts:
            data = base.copy()
            if s:
                data[:, pos[pos >= 0]] *= 1.0 + s
            L, info = _kernels.ic0(indptr, indices, np.ascontiguousarray(data))
            if int(info.max()) < 0:
                break
        else:
            row = int(info[info >= 0].min())
            raise FactorizationError(
                f"IC(0) broke down at row {row} (non-positive pivot{'' if shift == 0 else f', shift {s}'}): "
                "A may not be SPD; pass shift='auto' (or a float) to factor A + shift*diag(A), "
                "or use ilu0/jacobi", row)
        self.shift = s
        vals = torch.from_numpy(L).to(S.device)
        vals = vals if S.batch_size is not None else vals[0]
        super().__init__(low.with_values(vals))
        if S.device.type == "cpu":
            self._ldlt_factor()  # the fast path's factor, built at setup rather than on the first apply


class ILU0(Preconditioner):
    """Zero-fill incomplete LU, M = L U on A's pattern (L unit lower). apply_transpose uses U^T L^T."""

    def __init__(self, A: LinearOperator):
        S = _as_sparse(A, "ILU(0)").detach()
        indptr, indices = _np_pattern(S.pattern)
        LU, info = _kernels.ilu0(indptr, indices, np.ascontiguousarray(S._vals2d.cpu().numpy()))
        if int(info.max()) >= 0:
            row = int(info[info >= 0].min())
            raise FactorizationError(f"ILU(0) broke down: zero or missing pivot in row {row}", row)
        vals = torch.from_numpy(LU).to(S.device)
        self.LU = S.with_values(vals if S.batch_size is not None else vals[0])
        self.LUT = self.LU.T

    def apply(self, R):
        Y = _tri_solve(self.LU, self.LU._vals2d, R, True, True)
        return _tri_solve(self.LU, self.LU._vals2d, Y, False, False)

    def apply_transpose(self, R):
        # M^T = U^T L^T: U^T is the lower triangle (with diagonal) of LU^T, L^T its unit upper part.
        Y = _tri_solve(self.LUT, self.LUT._vals2d, R, True, False)
        return _tri_solve(self.LUT, self.LUT._vals2d, Y, False, True)


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
                raise ValueError(f"LowRankDiagonal: segment must have shape ({n},), got {tuple(segment.shape)}")
            if num_blocks is None:
                num_blocks = int(segment.max()) + 1 if n else 0
        self.segment, self.G = segment, 1 if segment is None else int(num_blocks)
        self.Dinv = (1.0 / self.D).unsqueeze(-1)  # (B, n, 1)
        r = self.U.shape[-1]
        eye = torch.eye(r, dtype=self.U.dtype, device=self.U.device)
        DU = self.Dinv * self.U
        if segment is None:
            self.C = (eye + self.V.mT @ DU).unsqueeze(1)  # (B, 1, r, r)
        else:
            self.C = eye + self._blocksum(self.V.unsqueeze(-1) * DU.unsqueeze(-2))  # (B, G, r, r)

    def _blocksum(self, X: Tensor) -> Tensor:
        """Sum over the rows of each block: (B, n, r, k) -> (B, G, r, k)."""
        return X.new_zeros(X.shape[0], self.G, *X.shape[2:]).index_add(1, self.segment, X)

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


class AMG(Preconditioner):
    """Algebraic multigrid V-cycle from pyamg (baseline; CPU, float64, not differentiable).

    kind: "sa" (smoothed aggregation) or "rs" (Ruge-Stueben). For nonsymmetric A,
    ``apply_transpose`` is the exact transpose M^{-T} of the V-cycle: the same hierarchy transposed
    (A_l^T, P_l := R_l^T, R_l := P_l^T) with transposed, swapped smoothers (Gauss-Seidel / SOR
    sweeps; other smoothers fall back to a second hierarchy built on A^T, a preconditioner for A^T
    that is not exactly M^{-T})."""

    def __init__(self, A: LinearOperator, kind: str = "sa", **kwargs):
        import pyamg

        if kind not in ("sa", "rs"):
            raise ValueError(f"AMG kind must be 'sa' or 'rs', got {kind!r}")
        self.S = _as_sparse(A, "AMG").detach()
        self.kind, self.kwargs = kind, kwargs
        self.symmetric = self.S.is_symmetric(rtol=1e-12)
        self._pyamg = pyamg
        self._ml = self._build(self.S)
        self._mlT = None

    def _make(self):
        return (self._pyamg.smoothed_aggregation_solver if self.kind == "sa"
                else self._pyamg.ruge_stuben_solver)

    def _build(self, S: SparseMatrix):
        B = S.batch_size or 1
        self._hier = [self._make()(S.to_scipy(i if S.batch_size is not None else None).astype(np.float64),
                                   **self.kwargs) for i in range(B)]
        return [ml.aspreconditioner() for ml in self._hier]

    def _build_transposed(self):
        import inspect

        from pyamg.multilevel import MultilevelSolver
        from pyamg.relaxation.smoothing import change_smoothers

        defaults = inspect.signature(self._make()).parameters
        pre = _transpose_smoother(self.kwargs.get("postsmoother", defaults["postsmoother"].default))
        post = _transpose_smoother(self.kwargs.get("presmoother", defaults["presmoother"].default))
        if pre is _NOT_TRANSPOSABLE or post is _NOT_TRANSPOSABLE:
            return self._build_on(self.S.T)
        out = []
        for ml in self._hier:
            levels = []
            for i, lv in enumerate(ml.levels):
                t = MultilevelSolver.Level()
                t.A = lv.A.T.asformat(lv.A.format)
                if i < len(ml.levels) - 1:
                    t.P, t.R = lv.R.T.asformat(lv.R.format), lv.P.T.asformat(lv.P.format)
                levels.append(t)
            mlT = MultilevelSolver(levels, coarse_solver=self.kwargs.get("coarse_solver", "pinv"))
            change_smoothers(mlT, presmoother=pre, postsmoother=post)
            out.append(mlT.aspreconditioner())
        return out

    def _build_on(self, S: SparseMatrix):
        B = S.batch_size or 1
        return [self._make()(S.to_scipy(i if S.batch_size is not None else None).astype(np.float64),
                             **self.kwargs).aspreconditioner() for i in range(B)]

    def _run(self, mls, R):
        Rn = R.detach().cpu().to(torch.float64).numpy()
        out = np.empty_like(Rn)
        for b in range(Rn.shape[0]):
            P = mls[b if len(mls) > 1 else 0]
            for c in range(Rn.shape[2]):
                out[b, :, c] = P.matvec(np.ascontiguousarray(Rn[b, :, c]))
        return torch.from_numpy(out).to(dtype=R.dtype, device=R.device)

    def apply(self, R):
        return self._run(self._ml, R)

    def apply_transpose(self, R):
        if self.symmetric:
            return self.apply(R)
        if self._mlT is None:
            self._mlT = self._build_transposed()
        return self._run(self._mlT, R)


_NOT_TRANSPOSABLE = object()


def _transpose_smoother(spec):
    """pyamg smoother spec whose sweep on A^T is the transpose of ``spec``'s sweep on A.

    (D + L)^{-T} = (D + L^T)^{-1}: a forward Gauss-Seidel / SOR sweep on A transposes to a backward
    sweep on A^T and vice versa; a symmetric sweep stays symmetric. Other smoothers: _NOT_TRANSPOSABLE.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        name, opts = spec, {}
    elif isinstance(spec, tuple) and len(spec) in (1, 2):
        name, opts = spec[0], dict(spec[1]) if len(spec) == 2 else {}
    else:
        return _NOT_TRANSPOSABLE
    flip = {"forward": "backward", "backward": "forward", "symmetric": "symmetric"}
    if name not in ("gauss_seidel", "block_gauss_seidel", "sor") or "Dinv" in opts \
            or opts.get("sweep", "forward") not in flip:
        return _NOT_TRANSPOSABLE
    opts["sweep"] = flip[opts.get("sweep", "forward")]
    return (name, opts)


PRECONDITIONERS = {
    "jacobi": Jacobi,
    "ic0": IC0,
    "ilu0": ILU0,
    "amg": AMG,
    "amg_sa": lambda A, **kw: AMG(A, kind="sa", **kw),
    "amg_rs": lambda A, **kw: AMG(A, kind="rs", **kw),
}


def make_preconditioner(name: str, A: LinearOperator, **kwargs) -> Preconditioner:
    """Build a named preconditioner (jacobi, ic0, ilu0, amg, amg_sa, amg_rs) for A (values detached)."""
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
