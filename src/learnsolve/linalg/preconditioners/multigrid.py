"""Smoothed-aggregation multigrid in torch, differentiable w.r.t. the prolongators' smoothing weights.

The parts of a learned coarse space (``gnn_solver``), each usable on its own:

- :func:`aggregate`: pyamg's standard aggregation of the strength graph of A (aggregates never cross the
  diagonal blocks of a PyG batch; numbered block by block);
- :func:`tentative`: the piecewise-constant prolongator T (n, nc), columns scaled to unit norm;
- :func:`smoothed_prolongator`: P = (I - omega D^{-1} (A o W)) T, with W per-entry weights (W = 1: classical
  smoothed aggregation, omega = 4 / (3 rho), rho a power-iteration estimate of rho(D^{-1} A));
- :func:`spgemm` / :func:`galerkin`: sparse products whose values are differentiable (index pairs, O(work)
  memory) or, without autograd, scipy's compiled product;
- :class:`Multigrid`: the symmetric V(1,1)-cycle (forward Gauss-Seidel before, backward after each coarse
  correction, dense Cholesky on the coarsest level) as an SPD :class:`Preconditioner` for CG;
- :func:`build_multigrid`: the hierarchy from A and a per-level weight function.

The V-cycle is SPD for SPD A: the error propagation (I - U^{-1} A)(I - P A_c^{-1} P^T A)(I - L^{-1} A) with
U = L^T is self-adjoint in the A inner product and a contraction (Gauss-Seidel converges for SPD A), whatever
the prolongators' values, as long as every coarse matrix P^T A P is nonsingular.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch
from torch import Tensor

from ..operators.layout import block_sum
from ..operators.sparse import CSRPattern, SparseMatrix
from .base import FactorizationError, Preconditioner
from .triangular import _tri_solve


def _one_matrix(A: SparseMatrix, name: str) -> None:
    if not isinstance(A, SparseMatrix):
        raise TypeError(f"{name}: A must be a SparseMatrix, got {type(A).__name__}")
    if A.batch_size is not None:
        raise ValueError(f"{name}: A must hold one value set (a block-diagonal PyG matrix is one), got a "
                         f"batch of {A.batch_size}")
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"{name}: A must be square, got {A.shape}")


def node_blocks(A: SparseMatrix) -> Tensor:
    """(n,) int64 diagonal block of every row of A (zeros when A has no block structure)."""
    n = A.shape[0]
    if A.blocks is None:
        return torch.zeros(n, dtype=torch.int64, device=A.device)
    sizes = (A.blocks[1:] - A.blocks[:-1]).long()
    return torch.repeat_interleave(torch.arange(sizes.numel(), device=A.device), sizes)


def strength_graph(A: SparseMatrix, strong: Tensor):
    """The symmetric scipy strength graph of A's entries flagged ``strong`` (nnz,) bool (diagonal entries are
    kept whatever their flag; an edge is strong when it is flagged in either direction)."""
    import scipy.sparse as sp

    n = A.shape[0]
    row, col = A.pattern.row.long().cpu().numpy(), A.pattern.col.long().cpu().numpy()
    keep = strong.detach().cpu().numpy().astype(bool) | (row == col)
    C = sp.csr_matrix((np.ones(int(keep.sum())), (row[keep], col[keep])), shape=(n, n))
    return (C + C.T).tocsr()


def evolution_strong(A: SparseMatrix, epsilon: float = 4.0, k: int = 2) -> Tensor:
    """(nnz,) bool: the entries of A that pyamg's evolution strength of connection (Olson, Schroder and
    Tuminaro 2010; ``k`` steps of the D^{-1} A evolution of the constant, drop tolerance ``epsilon``) keeps as
    strong. It follows the strong direction of a rotated anisotropy and the channels of a high-contrast field,
    where the symmetric measure |a_ij| >= theta sqrt(a_ii a_jj) does not; it costs about ten times the rest of
    a level's setup (the learned strength of ``gnn_solver`` is trained to predict it)."""
    import pyamg

    _one_matrix(A, "evolution_strong")
    S = A.detach().to_scipy().tocsr().astype(np.float64)
    S.sort_indices()
    C = pyamg.strength.evolution_strength_of_connection(S, B=np.ones((S.shape[0], 1)), epsilon=float(epsilon),
                                                        k=int(k), proj_type="l2").tocsr()
    C.data[:] = 1.0
    # A's entries numbered 1..nnz in CSR order (A's pattern is sorted like S's), masked by C's pattern
    tag = S.copy()
    tag.data = np.arange(1, S.nnz + 1, dtype=np.float64)
    hit = tag.multiply(C).tocsr()
    flags = np.zeros(S.nnz, dtype=bool)
    flags[hit.data[hit.data > 0].astype(np.int64) - 1] = True
    return torch.from_numpy(flags).to(A.device)


def aggregate(A: SparseMatrix, theta: float = 0.0, strong: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(agg, blocks): the aggregate of every node (n,) int64 (-1: a node with no strong connection, left out
    of the coarse space), and the coarse block pointer (G + 1,) (aggregates of block g are numbered before
    those of block g + 1). pyamg's standard aggregation of the symmetric strength graph |a_ij| >= theta
    sqrt(|a_ii a_jj|), or, with ``strong`` (nnz,) bool, of the entries it flags (:func:`strength_graph`;
    ``theta`` is then unused)."""
    import pyamg

    _one_matrix(A, "aggregate")
    if not 0.0 <= float(theta) < 1.0:
        raise ValueError(f"aggregate: theta must be in [0, 1), got {theta}")
    if strong is not None:
        if strong.shape != (A.nnz,):
            raise ValueError(f"aggregate: strong must have one flag per stored entry ({A.nnz},), got "
                             f"{tuple(strong.shape)}")
        C = strength_graph(A, strong)
    else:
        C = pyamg.strength.symmetric_strength_of_connection(A.to_scipy().astype(np.float64), float(theta))
    agg_op = pyamg.aggregation.standard_aggregation(C.tocsr())[0].tocsr()
    rows = np.diff(agg_op.indptr)
    agg = np.full(A.shape[0], -1, dtype=np.int64)
    agg[rows > 0] = agg_op.indices
    nc = agg_op.shape[1]
    node_block = node_blocks(A).cpu().numpy()
    G = 1 if A.blocks is None else A.blocks.numel() - 1
    # number the nonempty aggregates block by block (pyamg's third pass appends aggregates after all others;
    # with no strong connection at all it returns one empty aggregate)
    on = agg >= 0
    used = np.bincount(agg[on], minlength=nc) > 0
    block_of = np.zeros(nc, dtype=np.int64)
    block_of[agg[on]] = node_block[on]
    ids = np.flatnonzero(used)
    order = ids[np.lexsort((ids, block_of[ids]))]
    new = np.full(nc, -1, dtype=np.int64)
    new[order] = np.arange(order.size)
    agg[on] = new[agg[on]]
    ptr = np.zeros(G + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(block_of[ids], minlength=G))
    return torch.from_numpy(agg).to(A.device), torch.from_numpy(ptr).to(A.device)


def tentative(agg: Tensor, nc: int, dtype=torch.float64) -> SparseMatrix:
    """The (n, nc) tentative prolongator: T[i, agg[i]] = 1 / sqrt(|aggregate|) (rows of unaggregated nodes
    empty)."""
    on = agg >= 0
    cols = agg[on]
    size = torch.bincount(cols, minlength=nc).to(dtype)
    crow = torch.zeros(agg.numel() + 1, dtype=torch.int64, device=agg.device)
    crow[1:] = torch.cumsum(on.long(), 0)
    return SparseMatrix(CSRPattern(crow, cols, (agg.numel(), nc)), size.rsqrt().index_select(0, cols))


def gershgorin_radius(A: SparseMatrix) -> Tensor:
    """max_i sum_j |a_ij| / a_ii: an upper bound of rho(D^{-1} A) (0-d; differentiable, so a coarse level's
    omega follows its learned matrix)."""
    v = A.values
    rows = torch.zeros(A.shape[0], dtype=v.dtype, device=v.device).index_add(0, A.pattern.row.long(), v.abs())
    return (rows / A.diagonal()).max()


def spectral_radius(A: SparseMatrix, steps: int = 12) -> Tensor:
    """rho(D^{-1} A) of each diagonal block of an SPD A with a positive diagonal ((G,), one per system of a
    PyG batch), estimated by ``steps`` power iterations on D^{-1/2} A D^{-1/2} from a fixed start (the same
    for a system in any batch), as Rayleigh quotients (lower bounds that converge from below; differentiable
    w.r.t. A's values, and deterministic). Cost: ``steps`` SpMVs."""
    s = A.diagonal().rsqrt()
    seg = node_blocks(A)
    G = 1 if A.blocks is None else A.blocks.numel() - 1
    lengths = None if A.blocks is None else (A.blocks[1:] - A.blocks[:-1]).long()

    def dots(u, v):
        return torch.dot(u, v).view(1) if G == 1 else block_sum((u * v).view(1, -1), seg, G, lengths).view(-1)

    # a fixed standard normal start indexed by the row's place in its own system (so a system gets the same
    # estimate in any batch, e.g. on every DDP rank layout)
    first = torch.zeros(A.shape[0], dtype=torch.int64, device=A.device) if A.blocks is None else \
        A.blocks[:-1].long().index_select(0, seg)
    local = torch.arange(A.shape[0], device=A.device) - first
    start = torch.randn(int(local.max()) + 1 if local.numel() else 0, dtype=A.dtype,
                        generator=torch.Generator().manual_seed(0))
    x = start.to(A.device).index_select(0, local)
    lam = x.new_zeros(G)
    for _ in range(int(steps)):
        y = s * A.mv((s * x).view(1, -1, 1)).view(-1)
        lam = dots(x, y) / dots(x, x)
        x = y / dots(y, y).sqrt().index_select(0, seg)
    return lam


def smoothed_prolongator(A: SparseMatrix, T: SparseMatrix, weights: Tensor | None = None,
                         omega: float | Tensor | None = None) -> SparseMatrix:
    """P = S T with S = I - omega D^{-1} (A o W) on A's pattern (``weights`` W (nnz,), None: ones; ``omega``
    default 4 / (3 rho), rho = :func:`spectral_radius` of D^{-1} A, per diagonal block). Differentiable w.r.t.
    ``weights`` (and A).

    The Gershgorin bound max_i sum_j |a_ij| / a_ii (:func:`gershgorin_radius`) is exact for the finest level
    of a diffusion matrix but overestimates rho on Galerkin coarse levels: omega then shrinks level by level
    and the iterations grew with the depth (classical hierarchy, held-out diffusion2d 64^2 / 256^2 / 1024^2: 9
    / 13 / 17 PCG iterations with it, 8 / 10 / 11 with the power estimate)."""
    d = A.diagonal()
    row, col = A.pattern.row.long(), A.pattern.col.long()
    if omega is None:  # per system of a block-diagonal batch
        omega = (4.0 / (3.0 * spectral_radius(A))).index_select(0, node_blocks(A)).index_select(0, row)
    s = A.values / d.index_select(0, row)
    if weights is not None:
        s = s * weights.to(s.dtype)
    s = (row == col).to(s.dtype) - omega * s
    return spgemm(A.with_values(s), T)


def _from_scipy(Z, dtype: torch.dtype) -> SparseMatrix:
    Z.sort_indices()
    crow = torch.from_numpy(Z.indptr.astype(np.int64))
    col = torch.from_numpy(Z.indices.astype(np.int64))
    return SparseMatrix(CSRPattern(crow, col, Z.shape), torch.from_numpy(Z.data).to(dtype))


def _spgemm_scipy(X: SparseMatrix, Y: SparseMatrix) -> SparseMatrix:
    return _from_scipy((X.to_scipy() @ Y.to_scipy()).tocsr(), X.dtype).to(X.device)


def spgemm(X: SparseMatrix, Y: SparseMatrix) -> SparseMatrix:
    """Z = X Y for one-value-set sparse matrices. With autograd on X's or Y's values: every product
    x_ik y_kj is formed and summed into Z's entries (memory O(sum_k nnz(X[:, k]) nnz(Y[k, :]))), so Z's values
    are differentiable; otherwise scipy's compiled product (exact zeros dropped; same values)."""
    if X.batch_size is not None or Y.batch_size is not None:
        raise ValueError("spgemm: X and Y must hold one value set each")
    if X.shape[1] != Y.shape[0]:
        raise ValueError(f"spgemm: shapes {X.shape} and {Y.shape} do not chain")
    if not (torch.is_grad_enabled() and (X.values.requires_grad or Y.values.requires_grad)) \
            and X.device.type == "cpu":
        return _spgemm_scipy(X, Y)
    xr, xc = X.pattern.row.long(), X.pattern.col.long()
    ycrow, ycol = Y.pattern.crow.long(), Y.pattern.col.long()
    start = ycrow.index_select(0, xc)
    cnt = ycrow.index_select(0, xc + 1) - start
    e = torch.repeat_interleave(torch.arange(xc.numel(), device=X.device), cnt)
    first = torch.cumsum(cnt, 0) - cnt
    f = start.index_select(0, e) + torch.arange(e.numel(), device=X.device) - first.index_select(0, e)
    m = Y.shape[1]
    key = xr.index_select(0, e) * m + ycol.index_select(0, f)
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    vals = X.values.new_zeros(uniq.numel()).index_add(
        0, inv, X.values.index_select(0, e) * Y.values.index_select(0, f))
    rows = uniq // m
    crow = torch.zeros(X.shape[0] + 1, dtype=torch.int64, device=X.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=X.shape[0]), 0)
    return SparseMatrix(CSRPattern(crow, uniq % m, (X.shape[0], m)), vals)


def galerkin(A: SparseMatrix, P: SparseMatrix) -> SparseMatrix:
    """The coarse matrix P^T A P (differentiable like :func:`spgemm`)."""
    if not (torch.is_grad_enabled() and (A.values.requires_grad or P.values.requires_grad)) \
            and A.device.type == "cpu":
        Ps = P.to_scipy()
        return _from_scipy((Ps.T.tocsr() @ (A.to_scipy() @ Ps)).tocsr(), A.dtype)
    return spgemm(P.T, spgemm(A, P))


class Multigrid(Preconditioner):
    """The symmetric V(1,1)-cycle of a hierarchy (SPD for SPD A: see the module doc).

    ``levels``: [(A_0, P_0), ..., (A_{L-1}, P_{L-1})] fine to coarse with P_l (n_l, n_{l+1}); ``coarse``: A_L,
    solved by a dense Cholesky factorisation (shifted by 1e-12 trace / n if it is numerically singular).
    Applies to canonical (B, n_0, k) blocks; differentiable w.r.t. every matrix's values."""

    symmetric = True

    def __init__(self, levels: list[tuple[SparseMatrix, SparseMatrix]], coarse: SparseMatrix):
        self.levels = list(levels)
        self._torch_levels = None  # (A, P, P^T, tril(A), triu(A)) per level, for the differentiable path
        self.coarse = coarse
        Ad = coarse.to_dense()
        Lc, info = torch.linalg.cholesky_ex(Ad)
        if int(info) != 0:
            shift = 1e-12 * Ad.diagonal().sum() / max(Ad.shape[0], 1)
            Lc, info = torch.linalg.cholesky_ex(
                Ad + shift * torch.eye(Ad.shape[0], dtype=Ad.dtype, device=Ad.device))
            if int(info) != 0:
                raise FactorizationError(f"multigrid: the coarsest matrix ({Ad.shape[0]} unknowns) is not "
                                         f"positive definite (Cholesky failed at column {int(info) - 1}); A "
                                         "must be SPD", 0)
        self.Lc = Lc
        self._requires_grad = Lc.requires_grad or any(P.values.requires_grad or A.values.requires_grad
                                                      for A, P in levels)
        self._flat = None

    @property
    def num_levels(self) -> int:
        return len(self.levels) + 1

    def sizes(self) -> list[int]:
        return [lv[0].shape[0] for lv in self.levels] + [self.coarse.shape[0]]

    def _cycle(self, level: int, R: Tensor) -> Tensor:
        if level == len(self.levels):
            k = R.shape[2]
            Z = torch.cholesky_solve(R[0], self.Lc) if k else R[0]
            return Z.unsqueeze(0)
        if self._torch_levels is None:
            self._torch_levels = [(A, P, P.T, A.tril(), A.triu()) for A, P in self.levels]
        A, P, PT, low, up = self._torch_levels[level]
        X = _tri_solve(low, low._vals2d, R, True, False)
        X = X + P.mv(self._cycle(level + 1, PT.mv(R - A.mv(X))))
        return X + _tri_solve(up, up._vals2d, R - A.mv(X), False, False)

    def _stacked(self):
        """The hierarchy as the global CSR arrays of :func:`_kernels_mg.vcycle` (built once, detached)."""
        if self._flat is None:
            sizes = self.sizes()
            off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            aptr, aidx, aval, adiag, dinv = [np.zeros(1, np.int64)], [], [], [], []
            pptr, pidx, pval = [np.zeros(1, np.int64)], [], []
            for lv, (A, P) in enumerate(self.levels):
                for mat, ptr, idx, val, shift in ((A, aptr, aidx, aval, off[lv]),
                                                  (P, pptr, pidx, pval, off[lv + 1])):
                    crow = mat.pattern.crow.cpu().numpy().astype(np.int64)
                    ptr.append(crow[1:] + ptr[-1][-1])
                    idx.append(mat.pattern.col.cpu().numpy().astype(np.int64) + shift)
                    val.append(mat.values.detach().cpu().numpy())
                dinv.append(1.0 / A.diagonal().detach().cpu().numpy())
                adiag.append(A.pattern.diag_positions().cpu().numpy() + aptr[-2][-1])  # global positions
            nc = sizes[-1]
            pptr.append(np.full(nc, pptr[-1][-1], np.int64))
            aptr.append(np.full(nc, aptr[-1][-1], np.int64))
            dt = self.Lc.detach().cpu().numpy().dtype
            cat = (lambda xs, dtype:
                   np.ascontiguousarray(np.concatenate(xs) if xs else np.zeros(0, dtype), dtype))
            # int32 column indices where they fit (less memory traffic)
            it = np.int32 if off[-1] < 2**31 - 1 else np.int64
            self._flat = (off, cat(aptr, np.int64), cat(aidx, it), cat(aval, dt), cat(adiag, np.int64),
                          cat(dinv, dt), cat(pptr, np.int64), cat(pidx, it), cat(pval, dt),
                          np.ascontiguousarray(self.Lc.detach().cpu().numpy()), int(off[-1]))
        return self._flat

    def _apply_compiled(self, R: Tensor) -> Tensor:
        from ..kernels import multigrid as _kernels_mg

        off, aptr, aidx, aval, adiag, dinv, pptr, pidx, pval, lc, total = self._stacked()
        Rn = R.detach().to(self.Lc.dtype).numpy()
        out = np.empty_like(Rn)
        b, x = np.empty(total, lc.dtype), np.empty(total, lc.dtype)
        for i in range(Rn.shape[0]):
            for c in range(Rn.shape[2]):
                o = np.empty(Rn.shape[1], lc.dtype)
                _kernels_mg.vcycle(off, aptr, aidx, aval, adiag, dinv, pptr, pidx, pval, lc,
                                   np.ascontiguousarray(Rn[i, :, c]), o, b, x)
                out[i, :, c] = o
        return torch.from_numpy(out).to(R.dtype)

    def apply(self, R: Tensor) -> Tensor:
        B, n, k = R.shape
        if R.device.type == "cpu" and self.Lc.device.type == "cpu" and not (
                torch.is_grad_enabled() and (R.requires_grad or self._requires_grad)):
            return self._apply_compiled(R)
        if B == 1:
            return self._cycle(0, R)
        X = R.permute(1, 0, 2).reshape(1, n, B * k)
        return self._cycle(0, X).reshape(n, B, k).permute(1, 0, 2)


def from_pyamg(ml, dtype: torch.dtype = torch.float64) -> Multigrid:
    """A pyamg hierarchy (``pyamg.multilevel.MultilevelSolver``: smoothed aggregation, Ruge-Stueben, ...) as a
    :class:`Multigrid`: its matrices A_l and prolongators P_l, run by the compiled symmetric V(1,1)-cycle
    (Gauss-Seidel, dense Cholesky on the coarsest level) instead of pyamg's Python cycle. The restriction is
    P_l^T (pyamg's R_l of a symmetric hierarchy), so the cycle is SPD for SPD A whatever pyamg's smoother
    settings were."""
    levels = getattr(ml, "levels", None)
    if not levels:
        raise TypeError(f"from_pyamg: expected a pyamg MultilevelSolver, got {type(ml).__name__}")
    mats, pros = [levels[0].A.tocsr()], []
    rows = np.arange(levels[0].A.shape[0])  # the unknowns of level l kept so far
    for lv, nxt in pairwise(levels):
        # pyamg can leave a coarse unknown whose prolongator column is zero (an emptied aggregate: its
        # Galerkin row and column are zero): drop it; P^T A P of the others is unchanged and stays definite
        keep = np.flatnonzero(nxt.A.diagonal() > 0)
        if keep.size == 0:
            break
        pros.append(lv.P.tocsr()[rows][:, keep])
        mats.append(nxt.A.tocsr()[keep][:, keep])
        rows = keep
    mats_t = [SparseMatrix.from_scipy(m, dtype=dtype) for m in mats]
    pros_t = [SparseMatrix.from_scipy(q, dtype=dtype) for q in pros]
    return Multigrid(list(zip(mats_t[:-1], pros_t, strict=True)), mats_t[-1])


WeightFn = Callable[[SparseMatrix, Tensor, int], Tensor | None]


StrengthFn = Callable[[SparseMatrix, int], Tensor | None]


def build_multigrid(A: SparseMatrix, weights: WeightFn | None = None, *, theta: float = 0.0,
                    coarse_size: int = 256, max_levels: int = 12,
                    strength: StrengthFn | None = None) -> Multigrid:
    """The smoothed-aggregation hierarchy of A as a :class:`Multigrid`.

    ``weights(A_l, agg_l, l)``: per-entry smoothing weights W (nnz(A_l),) of level l's prolongator, or None
    (classical), given the level's matrix and its aggregates (:func:`aggregate`);
    ``theta``: strength threshold of the aggregation (a level where it would keep more than half the unknowns
    is aggregated with theta = 0 instead); ``strength(A_l, l)``: the strong entries (nnz(A_l),) bool of level
    l's aggregation instead (None: the theta rule; a level they coarsen by less than 3x is aggregated with
    theta = 0); coarsening stops when a level has at most ``coarse_size`` unknowns per diagonal block, after
    ``max_levels`` levels, or when aggregation stalls (fewer than 10% fewer unknowns). A must be SPD with a
    positive diagonal (one value set; a PyG block-diagonal batch is fine)."""
    _one_matrix(A, "build_multigrid")
    if int(coarse_size) < 1 or int(max_levels) < 1:
        raise ValueError(f"build_multigrid: coarse_size and max_levels must be >= 1, got {coarse_size}, "
                         f"{max_levels}")
    if not bool((A.diagonal() > 0).all()):
        raise ValueError("build_multigrid: A must have a positive diagonal (an SPD matrix)")
    G = 1 if A.blocks is None else A.blocks.numel() - 1
    levels: list[tuple[SparseMatrix, SparseMatrix]] = []
    cur = A
    while len(levels) + 1 < int(max_levels) and cur.shape[0] > int(coarse_size) * G:
        flags = None if strength is None else strength(cur, len(levels))
        agg, ptr = aggregate(cur, theta, flags)
        nc = int(ptr[-1])
        if (theta > 0 and (nc == 0 or nc > 0.5 * cur.shape[0])) or \
                (flags is not None and (nc == 0 or nc > 0.35 * cur.shape[0])):
            # few or no strong connections (the coarsening would stall and leave a large dense coarsest level;
            # a learned strength that coarsened by less than 3x once stalled at 10k unknowns, a 14 s coarse
            # factorisation): aggregate all neighbours on this level
            agg, ptr = aggregate(cur, 0.0)
            nc = int(ptr[-1])
        if nc == 0 or nc > 0.9 * cur.shape[0]:
            break
        w = None if weights is None else weights(cur, agg, len(levels))
        P = smoothed_prolongator(cur, tentative(agg, nc, cur.dtype), w)
        coarse = galerkin(cur, P)
        coarse._blocks = ptr
        levels.append((cur, P))
        cur = coarse
    return Multigrid(levels, cur)


__all__ = ["Multigrid", "aggregate", "build_multigrid", "evolution_strong", "from_pyamg", "galerkin",
           "gershgorin_radius", "node_blocks", "smoothed_prolongator", "spectral_radius", "spgemm",
           "strength_graph", "tentative"]
