"""Compiled sparse triangular solves, differentiable w.r.t. the factor's values and the right-hand side:

    y = T^{-1} x:   grad_x = T^{-T} g,   grad_T[e] = -(T^{-T} g)[row_e] * y[col_e]   (O(nnz))

One kernel (``_kernels.csr_trsv``) serves IC(0), MIC(0), ILU(0) and learned ``L L^T`` factors, so time
comparisons between them are fair; ``_ldlt_solve`` is the no-grad fast path of ``L L^T`` solves.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _kernels
from .preconditioner import FactorizationError
from .sparse import CSRPattern, SparseMatrix, edge_products


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
