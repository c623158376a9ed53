"""Compiled sparse triangular solves, differentiable w.r.t. the factor's values and the right-hand side:

    y = T^{-1} x:   grad_x = T^{-T} g,   grad_T[e] = -(T^{-T} g)[row_e] * y[col_e]   (O(nnz))

One kernel (``_kernels.csr_trsv``) serves IC(0), MIC(0), ILU(0) and learned ``L L^T`` factors, so time
comparisons between them are fair; ``_ldlt_solve`` is the no-grad fast path of ``L L^T`` solves.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..kernels import csr as _kernels
from ..operators.sparse import CSRPattern, SparseMatrix, edge_products
from .base import FactorizationError


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


#: run the device-independent (level-scheduled) path on the CPU too; tests use it to check that path there
DEVICE_PATH_ON_CPU = False


def _level_schedule(pattern: CSRPattern, lower: bool, device) -> list:
    """Level schedule of a triangular solve, cached per pattern and side: rows in one level depend only on
    rows of earlier levels, so a level is solved by a few vector operations. Returns, per level, (rows, entry
    positions of its off-diagonal entries on the used side, their columns, their row's index within the
    level). Built on the CPU in O(nnz); O(n + nnz) index memory on ``device``."""
    key = ("levels", lower, str(device))
    if key not in pattern._cache:
        indptr, indices = _np_pattern(pattern)
        level = _kernels.trsv_levels(indptr, indices, lower)
        order = np.argsort(level, kind="stable")
        lptr = np.searchsorted(level[order], np.arange(level.max() + 2 if level.size else 1))
        row = pattern.row.cpu().numpy().astype(np.int64)
        col = pattern.col.cpu().numpy().astype(np.int64)
        used = np.flatnonzero((col < row) if lower else (col > row))
        pos_in_level = np.empty(level.size, dtype=np.int64)
        pos_in_level[order] = np.arange(level.size) - lptr[level[order]]
        eorder = used[np.argsort(level[row[used]], kind="stable")]
        eptr = np.searchsorted(level[row[eorder]], np.arange(lptr.size))
        def t(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        pattern._cache[key] = [
            (t(order[lptr[i]:lptr[i + 1]]), t(eorder[eptr[i]:eptr[i + 1]]),
             t(col[eorder[eptr[i]:eptr[i + 1]]]), t(pos_in_level[row[eorder[eptr[i]:eptr[i + 1]]]]))
            for i in range(lptr.size - 1)]
    return pattern._cache[key]


def _trsv_levels(mat: SparseMatrix, vals2d: Tensor, X: Tensor, lower: bool, unit: bool) -> Tensor:
    """Exact triangular solve on any device by level scheduling: per level one gather, one multiply, one
    index_add and one scaled write, all O(rows + entries of the level); no dense n x n tensor."""
    Bv, Bx, n, k = vals2d.shape[0], X.shape[0], X.shape[1], X.shape[2]
    B = max(Bv, Bx)
    Y = torch.empty((B, n, k), dtype=X.dtype, device=X.device)
    Xe = X.expand(B, n, k)
    vals = vals2d.expand(B, -1)
    dinv = None
    if not unit:
        pos = mat.pattern.diag_positions()
        if bool((pos < 0).any()):
            row = int((pos < 0).nonzero()[0, 0])
            raise FactorizationError(f"triangular factor has a zero or missing diagonal in row {row}", row)
        d = vals.index_select(1, pos)
        if bool((d == 0).any()):
            row = int((d == 0).nonzero()[0, 1])
            raise FactorizationError(f"triangular factor has a zero or missing diagonal in row {row}", row)
        dinv = (1.0 / d).unsqueeze(-1)
    for rows, ent, cols, local in _level_schedule(mat.pattern, lower, X.device):
        rhs = Xe.index_select(1, rows)
        if ent.numel():
            prod = vals.index_select(1, ent).unsqueeze(-1) * Y.index_select(1, cols)
            rhs = rhs - torch.zeros_like(rhs).index_add_(1, local, prod)
        Y[:, rows] = rhs if dinv is None else rhs * dinv.index_select(1, rows)
    return Y


def _trsv_raw(mat: SparseMatrix, vals2d: Tensor, X: Tensor, lower: bool, unit: bool) -> Tensor:
    Bv, Bx, k = vals2d.shape[0], X.shape[0], X.shape[2]
    if X.device.type != "cpu" or DEVICE_PATH_ON_CPU:
        return _trsv_levels(mat, vals2d.detach(), X.detach(), lower, unit)
    indptr, indices = _np_pattern(mat.pattern)
    data = vals2d.detach().contiguous().numpy()
    bn = _fold_rhs(Bv, X).numpy()
    out = np.empty_like(bn)
    bad = _kernels.csr_trsv(indptr, indices, data, bn, lower, unit, out)
    if bad >= 0:
        raise FactorizationError(f"triangular factor has a zero or missing diagonal in row {bad}", int(bad))
    return _unfold_rhs(torch.from_numpy(out), Bv, Bx, k)


def triangular_sweeps(mat: SparseMatrix, vals2d: Tensor, X: Tensor, lower: bool, unit: bool,
                      sweeps: int) -> Tensor:
    """Approximate ``T^{-1} X`` by ``sweeps`` Jacobi sweeps, y <- D^{-1} (X - N y) from y = D^{-1} X (N: the
    strictly triangular part): a polynomial in T with ``sweeps`` SpMVs and no sequential dependency, for
    devices where exact triangular solves serialise. The same sweeps on T^T give exactly the transposed map,
    so an ``L L^T`` factor applied this way stays symmetric positive (semi)definite. Differentiable (plain
    torch operations)."""
    pat, idx = mat.pattern.triangle(lower, -1 if lower else 1)
    N = SparseMatrix(pat, vals2d.index_select(1, idx))
    if unit:
        dinv = None
    else:
        pos = mat.pattern.diag_positions()
        dinv = (1.0 / vals2d.index_select(1, pos.clamp_min(0))).unsqueeze(-1)
    Y = X if dinv is None else X * dinv
    for _ in range(int(sweeps)):
        Y = X - N.mv(Y)
        Y = Y if dinv is None else Y * dinv
    return Y


def _ldlt_solve(f, X: Tensor) -> Tensor:
    """(L L^T)^{-1} X from ``_kernels.ldlt_factor``'s output: U^{-1} (dinv2 * (U^{-T} X)), both unit
    solves."""
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
    from ..operators.layout import canonicalize

    X, layout = canonicalize(b, T.shape[0], T.batch_size, None)
    return layout.unpack(_tri_solve(T, T._vals2d, X, lower, unit_diagonal))
