"""A coarse-corrected (balancing / deflated) preconditioner on subdomains: lifts the small eigenvalues of
B^{-1} A.

:func:`subdomains` groups the unknowns of every system into subdomains of about ``9^levels`` unknowns
(repeated aggregation of A's graph, :func:`learnsolve.linalg.preconditioners.multigrid.aggregate`; subdomains
never cross the systems of a block-diagonal PyG batch). With Z = diag(w) S (S the 0/1 subdomain indicator, w >
0 per unknown: w = 1 is Nicolaides' piecewise-constant coarse space) and Q = Z (Z^T A Z)^{-1} Z^T,

    M^{-1} = Q + (I - Q A) B^{-1} (I - A Q)

(the balancing form) is symmetric positive definite for SPD A and SPD B^{-1}: on the A-orthogonal complement
of range(Z) it acts as B^{-1}, on range(Z) it solves exactly, so the smooth modes that make B-PCG slow (IC(0),
MIC(0), Jacobi) are removed. An application costs B^{-1} + 2 SpMVs + O(n) + a dense solve with the m x m
coarse matrix (m = number of subdomains of the batch); it is differentiable w.r.t. w (learned coarse spaces,
``lowrank_precond``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators.sparse import SparseMatrix
from .base import FactorizationError, Preconditioner
from .multigrid import aggregate, galerkin, tentative


def subdomains(A: SparseMatrix, levels: int = 2, theta: float = 0.0) -> tuple[Tensor, int]:
    """(subdomain of every unknown (n,) int64, -1 for none; number of subdomains m) by ``levels`` rounds of
    aggregation (each groups about 9 neighbouring unknowns on a 5-point grid). Numbered system by system."""
    if int(levels) < 1:
        raise ValueError(f"subdomains: levels must be >= 1, got {levels}")
    with torch.no_grad():
        cur, sub = A.detach(), None
        for _ in range(int(levels)):
            agg, ptr = aggregate(cur, theta)
            nc = int(ptr[-1])
            sub = agg if sub is None else torch.where(sub >= 0, agg.index_select(0, sub.clamp_min(0)), sub)
            if nc <= 1 or nc == cur.shape[0]:
                break
            coarse = galerkin(cur, tentative(agg, nc, cur.dtype))
            coarse._blocks = ptr
            cur = coarse
    return sub, int(sub.max()) + 1 if sub.numel() and int(sub.max()) >= 0 else 0


class CoarseCorrected(Preconditioner):
    """M^{-1} = Q + (I - Q A) B^{-1} (I - A Q) with Q = Z (Z^T A Z)^{-1} Z^T, Z = diag(w) S (see the module
    doc).

    A: the SPD :class:`SparseMatrix` (one value set); base: B^{-1} (a symmetric :class:`Preconditioner`);
    subdomain (n,) int64 (-1: no subdomain) and m from :func:`subdomains`; weights w (n,) > 0 or None
    (ones)."""

    symmetric = True

    def __init__(self, A: SparseMatrix, base: Preconditioner, subdomain: Tensor, m: int,
                 weights: Tensor | None = None):
        if A.batch_size is not None:
            raise ValueError("CoarseCorrected: A must hold one value set (a block-diagonal batch is one)")
        if subdomain.shape != (A.shape[0],):
            raise ValueError(f"CoarseCorrected: subdomain must have shape ({A.shape[0]},), got "
                             f"{tuple(subdomain.shape)}")
        self.A, self.base, self.m = A, base, int(m)
        on = subdomain >= 0
        self.idx = on.nonzero().squeeze(1)
        self.sub = subdomain.index_select(0, self.idx)
        w = torch.ones(A.shape[0], dtype=A.dtype, device=A.device) if weights is None else weights.to(A.dtype)
        self.w = w.index_select(0, self.idx)
        row, col = A.pattern.row.long(), A.pattern.col.long()
        ok = on.index_select(0, row) & on.index_select(0, col)
        r, c = row[ok], col[ok]
        wf = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device).index_put((self.idx,), self.w)
        vals = A.values[ok] * wf.index_select(0, r) * wf.index_select(0, c)
        Ac = A.values.new_zeros(self.m, self.m).index_put((subdomain[r], subdomain[c]), vals, accumulate=True)
        Lc, info = torch.linalg.cholesky_ex(Ac)
        if int(info) != 0:
            raise FactorizationError(f"CoarseCorrected: the {self.m} x {self.m} coarse matrix Z^T A Z is not "
                                     f"positive definite (column {int(info) - 1}); A must be SPD and every "
                                     "weight > 0", 0)
        self.Lc = Lc

    def _q(self, R: Tensor) -> Tensor:
        """Q R for canonical (B, n, k) blocks."""
        B, _, k = R.shape
        y = R.new_zeros(self.m, B * k).index_add(
            0, self.sub,
            self.w.unsqueeze(-1) * R.index_select(1, self.idx).permute(1, 0, 2).reshape(-1, B * k))
        c = torch.cholesky_solve(y, self.Lc)  # (m, B k)
        out = torch.zeros_like(R)
        zc = (self.w.unsqueeze(-1) * c.index_select(0, self.sub)).reshape(-1, B, k).permute(1, 0, 2)
        return out.index_copy(1, self.idx, zc)

    def apply(self, R: Tensor) -> Tensor:
        R = R.to(self.A.dtype)  # e.g. scipy's LinearOperator probes its matvec with int8 zeros
        QR = self._q(R)
        Z = self.base.apply(R - self.A.mv(QR))
        return QR + Z - self._q(self.A.mv(Z))


__all__ = ["CoarseCorrected", "subdomains"]
