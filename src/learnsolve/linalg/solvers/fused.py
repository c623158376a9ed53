"""The fused CG path: (P)CG on a CPU :class:`SparseMatrix` run by one compiled loop per system
(:mod:`learnsolve.linalg.kernels.cg`), used by ``cg`` / ``solve(method="cg")`` whenever nothing is recorded by
autograd.

When it applies (:func:`fused_cg` returns None otherwise and the torch iteration runs): CPU, float32/float64,
A a :class:`SparseMatrix` (batched, PyG block-diagonal, several right-hand sides), no callback, and the
preconditioner none, :class:`Jacobi` or an ``L L^T`` factor (:class:`IC0`, :class:`MIC0`, a learned
:class:`LLT`). Results are those of the torch iteration (same recurrences, convergence test on the recursive
residual confirmed by the true one with residual replacement, same breakdown messages), except that every
system iterates on its own: a converged system stops instead of being masked until the slowest is done, and
each system gets at most ``maxiter`` iterations of its own.

Exactly symmetric A (checked, O(nnz), cached per values version) is stored as its strictly lower triangle
with 16-bit column offsets where the bandwidth allows, which halves the matrix traffic of every SpMV.

``FUSED_CG = False`` (module attribute) switches the path off, e.g. to compare with the torch iteration.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..kernels import cg as K
from ..kernels import cg_threads as KP
from ..operators.sparse import SparseMatrix, values_version
from ..preconditioners.classical import LLT, Jacobi
from .info import SolveInfo, _Monitor

FUSED_CG = True
# one system of at least PAR_MIN_ROWS rows, none/Jacobi preconditioned, exactly symmetric A: the threads of
# learnsolve.linalg.kernels.cg_threads share it (PAR_THREADS of them, default torch's thread count, at most
# one per PAR_ROWS_PER_THREAD rows)
PAR_MIN_ROWS = 40000
PAR_ROWS_PER_THREAD = 20000
PAR_THREADS: int | None = None

_REASONS = {
    K.NOT_PD: "p^T A p <= 0: A is not positive definite (use minres, bicgstab or gmres)",
    K.PREC_NOT_PD: "r^T M r < 0: the preconditioner is not positive definite",
    K.NONFINITE: "the residual became NaN/Inf",
}
_I64 = np.int64


def _pattern_arrays(A: SparseMatrix) -> dict:
    """Structure-only arrays (cached on the pattern): CSR, strictly-lower CSR with row offsets, diagonal."""
    pat = A.pattern
    if "fused" not in pat._cache:
        n = pat.shape[0]
        crow = pat.crow.cpu().numpy().astype(_I64)
        col = pat.col.cpu().numpy().astype(_I64)
        row = pat.row.cpu().numpy().astype(_I64)
        low = np.flatnonzero(col < row)
        lptr = np.zeros(n + 1, dtype=_I64)
        np.cumsum(np.bincount(row[low], minlength=n), out=lptr[1:])
        delta = row[low] - col[low]
        offdt = np.uint16 if delta.size == 0 or delta.max() < 65536 else np.uint32
        patT, _ = pat.transpose()
        pat._cache["fused"] = {
            "crow": crow, "col": col.astype(np.uint32 if n < 2**32 else np.uint64), "lptr": lptr, "low": low,
            "loff": delta.astype(offdt), "dpos": pat.diag_positions().cpu().numpy(),
            "symmetric_pattern": patT.same_as(pat)}
    return pat._cache["fused"]


def _matrix_arrays(A: SparseMatrix):
    """(indptr, off, vals (V, m), diag (V, n), sym) for the kernels, cached on the pattern for the last values
    seen (the same values tensor behind a new SparseMatrix, as inside solve(), hits the cache)."""
    key = values_version(A._values)
    cached = A.pattern._cache.get("fused_values")
    if cached is not None and cached[0] == key:
        return cached[1]
    src, src_key = getattr(A, "_transpose_of", (None, None))
    # A = S^T (an adjoint solve): S's arrays when S was exactly symmetric at the transpose
    if src is not None:
        cached = src.pattern._cache.get("fused_values")
        if cached is not None and cached[0] == src_key == values_version(src._values) and cached[1][4]:
            return cached[1]
    pa = _pattern_arrays(A)
    v = A._vals2d.detach().numpy()
    dpos = pa["dpos"]
    diag = np.where(dpos >= 0, v[:, np.maximum(dpos, 0)], 0).astype(v.dtype)
    sym = bool(pa["symmetric_pattern"]) and A.is_symmetric(0.0)
    if sym:
        out = (pa["lptr"], pa["loff"], np.ascontiguousarray(v[:, pa["low"]]), diag, True)
    else:
        out = (pa["crow"], pa["col"], np.ascontiguousarray(v), diag, False)
    A.pattern._cache["fused_values"] = (key, out, A._values)  # keeps the tensor alive: its id stays unique
    return out


def _precond_arrays(M, dtype: torch.dtype):
    """((pkind, dinv, lip, lix, lval, uip, uix, uval, dinv2), value sets) or None when M has no fused form."""
    e_i = np.zeros(1, dtype=_I64)
    e_v = np.zeros((1, 1), dtype=np.float64 if dtype == torch.float64 else np.float32)
    if M is None:
        return (0, e_v, e_i, e_i, e_v, e_i, e_i, e_v, e_v), 1
    if type(M) is Jacobi or (isinstance(M, Jacobi) and type(M).apply is Jacobi.apply):
        d = M.inv_diag
        if d.device.type != "cpu" or d.dtype != dtype or d.requires_grad:
            return None
        d = d[..., 0].detach().numpy()
        return (1, np.ascontiguousarray(d), e_i, e_i, e_v, e_i, e_i, e_v, e_v), d.shape[0]
    if isinstance(M, LLT) and type(M).apply is LLT.apply and M.sweeps is None:
        vals = M.L._vals2d
        if vals.device.type != "cpu" or vals.dtype != dtype or vals.requires_grad:
            return None
        f = M._ldlt_factor()
        if f is None:
            return None
        lip, lix, lval, uip, uix, uval, dinv2, _ = f
        c = (lip.astype(_I64), lix.astype(_I64), uip.astype(_I64), uix.astype(_I64))
        return (2, e_v, c[0], c[1], lval, c[2], c[3], uval, dinv2), lval.shape[0]
    return None


def _threads_for(n: int) -> int:
    T = PAR_THREADS if PAR_THREADS is not None else torch.get_num_threads()
    return max(1, min(int(T), n // max(PAR_ROWS_PER_THREAD, 1), 64))


def _cross_entries(A: SparseMatrix, lptr: np.ndarray, loff: np.ndarray, T: int):
    """Row blocks of T threads and, per thread, the stored lower entries crossing into another thread's block
    (:func:`learnsolve.linalg.kernels.cg_threads.cg_block`'s ``bounds, xptr, xr, xc, xp``), cached on the
    pattern."""
    key = ("fused_par", T)
    pat = A.pattern
    if key not in pat._cache:
        n = A.shape[0]
        bounds = np.linspace(0, n, T + 1).round().astype(_I64)
        rows = np.repeat(np.arange(n, dtype=_I64), np.diff(lptr))
        cols = rows - loff.astype(_I64)
        own_r = np.searchsorted(bounds, rows, side="right") - 1
        own_c = np.searchsorted(bounds, cols, side="right") - 1
        cross = np.flatnonzero(own_r != own_c)
        xr, xc, xp, xptr = [], [], [], [0]
        for t in range(T):  # each cross entry twice: once for the block of its row, once for its column's
            a, c = cross[own_r[cross] == t], cross[own_c[cross] == t]
            r_, c_, p_ = (np.concatenate(v) for v in ((rows[a], cols[c]), (cols[a], rows[c]), (a, c)))
            o = np.lexsort((c_, r_))
            xr.append(r_[o])
            xc.append(c_[o])
            xp.append(p_[o])
            xptr.append(xptr[-1] + o.size)
        pat._cache[key] = (bounds, np.asarray(xptr, dtype=_I64),
                           *(np.concatenate(v).astype(_I64) for v in (xr, xc, xp)), rows, cols)
    return pat._cache[key]


# [(pid, workers, ThreadPoolExecutor)]: threads do not survive a fork, so a child builds its own
_POOL: list = []


def _pool(workers: int):
    import os
    from concurrent.futures import ThreadPoolExecutor

    if not _POOL or _POOL[0][0] != os.getpid() or _POOL[0][1] < workers:
        _POOL[:] = [(os.getpid(), workers,
                     ThreadPoolExecutor(max_workers=workers, thread_name_prefix="learnsolve-cg"))]
    return _POOL[0][2]


class _Parallel:
    """One system on T threads (:mod:`learnsolve.linalg.kernels.cg_threads`), called like ``kernels.cg.pcg``
    by :func:`fused_cg`."""

    def __init__(self, A: SparseMatrix, arrays, parrays, T: int):
        indptr, off, vals, diag, _ = arrays
        self.T = T
        *self.cross, rows, cols = _cross_entries(A, indptr, off, T)
        self.pkind = int(parrays[0])
        av = vals[0]
        self.scale = None
        if self.pkind == 1:  # Jacobi folded into the matrix: D^{-1/2} A D^{-1/2}, unit diagonal
            dinv = parrays[1][0]
            self.scale = np.sqrt(dinv)  # s = D^{-1/2}
            av = av * self.scale[rows] * self.scale[cols]
            self.dv = 1.0 / dinv
        else:
            self.dv = np.ones(1, dtype=av.dtype)
        self.mat = (indptr, off, av, diag[0])
        n = A.shape[0]
        self.P, self.S, self.W = (np.zeros(n, dtype=av.dtype) for _ in range(3))
        self.state = np.zeros(3)
        self.part = np.zeros((2, T, 3))

    @staticmethod
    def applies(parrays) -> bool:
        """Whether the preconditioner has a threaded form (none, or Jacobi with a positive diagonal)."""
        return parrays[0] == 0 or (parrays[0] == 1 and bool((parrays[1] > 0).all()))

    def __call__(self, X, R, status, iters, maxiter, tol2, hist, nhist, chunk):
        bounds, xptr, xr, xc, xp = self.cross
        bar = np.zeros(1, dtype=_I64)
        x, r = X[0], R[0]
        if self.scale is not None:  # to the scaled system and back: x^ = D^{1/2} x, r^ = D^{-1/2} r
            x, r = x / self.scale, r * self.scale

        def args(tid):
            return (tid, self.T, bounds, *self.mat, self.pkind, self.dv, xptr, xr, xc, xp, x, r, self.P,
                    self.S, self.W, self.state, status, iters, maxiter, float(tol2[0]), hist[0], nhist, chunk,
                    self.part, bar)

        futures = [_pool(self.T - 1).submit(KP.cg_block, *args(t)) for t in range(1, self.T)]
        try:
            KP.cg_block(*args(0))
        finally:
            for f in futures:
                f.result()
            if self.scale is not None:
                np.multiply(x, self.scale, out=X[0])
                np.divide(r, self.scale, out=R[0])


def _as_preconditioner(M):
    """The Preconditioner behind M (a Preconditioner, its bound ``apply``, or anything else -> None)."""
    from ..preconditioners.base import Preconditioner

    if M is None or isinstance(M, Preconditioner):
        return M, True
    owner = getattr(M, "__self__", None)
    if isinstance(owner, Preconditioner) and getattr(M, "__name__", "") == "apply":
        return owner, True
    return None, False


class _Columns:
    """One system per column of an (S, n) array (the per-task kernel
    :func:`learnsolve.linalg.kernels.cg.pcg`)."""

    def __init__(self, B: int, n: int, k: int):
        self.B, self.n, self.k = B, n, k

    def pack(self, T: Tensor, dtype) -> np.ndarray:
        B, n, k = self.B, self.n, self.k
        return np.ascontiguousarray(T.detach().expand(B, n, k).permute(0, 2, 1).reshape(B * k, n).numpy(),
                                    dtype=dtype)

    def unpack(self, A: np.ndarray) -> Tensor:
        X = torch.from_numpy(A).reshape(self.B, self.k, self.n).permute(0, 2, 1)
        return X if self.k == 1 else X.contiguous()

    def copy_rows(self, dst: np.ndarray, src: np.ndarray, b: int, j: int, r0: int, r1: int) -> None:
        c = b * self.k + j
        dst[c, r0:r1] = src[c, r0:r1]


def fused_cg(op, Bm: Tensor, M, X0: Tensor | None, rtol: float, atol: float, maxiter: int, callback=None):
    """Run CG through the compiled kernels; (X, SolveInfo) or None when the path does not apply."""
    if not FUSED_CG or callback is not None or not isinstance(op, SparseMatrix):
        return None
    P, known = _as_preconditioner(M)
    dtype = op.dtype
    if (not known or op.device.type != "cpu" or Bm.device.type != "cpu"
            or dtype not in (torch.float32, torch.float64)):
        return None
    if Bm.dtype != dtype or (X0 is not None and X0.dtype != dtype):
        return None
    if torch.is_grad_enabled() and (op._values.requires_grad or Bm.requires_grad
                                    or (X0 is not None and X0.requires_grad)):
        return None
    pre = _precond_arrays(P, dtype)
    if pre is None:
        return None
    parrays, Vp = pre
    indptr, off, vals, diag, sym = _matrix_arrays(op)
    n, Va = op.shape[0], vals.shape[0]
    Bx, _, k = Bm.shape
    B = max(Bx, Va, Vp)
    if Bx not in (1, B) or Va not in (1, B) or Vp not in (1, B):
        return None
    npd = vals.dtype
    blocks = op.blocks
    ptr = np.array([0, n], dtype=_I64) if blocks is None else blocks.cpu().numpy().astype(_I64)
    G = ptr.size - 1
    shape = (B, G, k)
    nsys = B * G * k
    red = op.reducer()
    Rt0 = Bm if X0 is None else Bm - op.mv(X0)
    mon = _Monitor("cg", red.norm(Rt0).expand(shape), red.norm(Bm).expand(shape), rtol, atol, maxiter)
    tol2 = np.square(mon.tol.reshape(-1).double().numpy())
    status = np.where(mon.converged.reshape(-1).numpy(), K.CONVERGED, K.FRESH).astype(_I64)
    lay = _Columns(B, n, k)
    b_i, g_i, j_i = (a.reshape(-1)
                     for a in np.meshgrid(np.arange(B), np.arange(G), np.arange(k), indexing="ij"))
    zero = np.zeros_like(b_i)
    tasks = ((b_i * k + j_i).astype(_I64), ptr[g_i], ptr[g_i + 1], (b_i if Va > 1 else zero).astype(_I64),
             (b_i if Vp > 1 else zero).astype(_I64))
    X = lay.pack(torch.zeros_like(Bm) if X0 is None else X0, npd).copy()
    R = lay.pack(Rt0, npd).copy()
    T = _threads_for(n) if nsys == 1 and sym and n >= PAR_MIN_ROWS and _Parallel.applies(parrays) else 1
    par = _Parallel(op, (indptr, off, vals, diag, sym), parrays, T) if T > 1 else None
    # the one-system-per-thread kernel's work vectors (the threaded kernel keeps its own)
    Pv, Q = (np.zeros_like(X), np.zeros_like(X)) if par is None else (X[:, :0], X[:, :0])
    Z = np.zeros_like(X) if parrays[0] == 2 else np.zeros((1, 1), dtype=npd)
    rz, beta = np.zeros(nsys), np.zeros(nsys)
    iters, nhist = np.zeros(nsys, dtype=_I64), np.zeros(nsys, dtype=_I64)
    chunk = int(max(16, min(maxiter, (1 << 22) // nsys)))
    hist = np.empty((nsys, chunk + 1))
    last = mon.hist[0].reshape(-1).double().numpy().copy()
    rows = [last.copy()]
    confirmed = status == K.CONVERGED
    while True:
        while bool(np.isin(status, (K.FRESH, K.ACTIVE)).any()):
            if par is not None:
                par(X, R, status, iters, maxiter, tol2, hist, nhist, chunk)
            else:
                K.pcg(indptr, off, vals, diag, sym, *parrays, *tasks, X, R, Pv, Q, Z, tol2, rz, beta,
                      status, iters, maxiter, hist, nhist, chunk)
            h = int(nhist.max())
            if h:
                idx = np.minimum(np.arange(1, h + 1)[None, :], np.maximum(nhist, 1)[:, None])
                block = np.take_along_axis(hist, idx, axis=1)
                block[nhist == 0] = last[nhist == 0, None]
                rows.extend(block.T)
                last = block[:, -1].copy()
        newly = (status == K.CONVERGED) & ~confirmed
        if not newly.any():
            break
        # confirm on the true residual (one SpMV); re-open a drifted system from it, or stop it as stagnated
        Rtrue = Bm - op.mv(lay.unpack(X))
        _sync_monitor(mon, status, shape)
        mon.hist = [torch.from_numpy(last).to(dtype).reshape(shape)]
        reopen = mon.confirm(red.norm(Rtrue).expand(shape),
                             torch.from_numpy(newly).reshape(shape)).reshape(-1).numpy()
        last = mon.hist[-1].reshape(-1).double().numpy().copy()
        rows[-1] = last.copy()
        confirmed = confirmed | newly
        status[newly & ~mon.converged.reshape(-1).numpy() & ~reopen] = K.STAGNATED
        if reopen.any():
            Rn = lay.pack(Rtrue, npd)
            for s_ in np.flatnonzero(reopen):  # systems in (b, g, j) order
                b, g, j = s_ // (G * k), (s_ // k) % G, s_ % k
                lay.copy_rows(R, Rn, int(b), int(j), int(ptr[g]), int(ptr[g + 1]))
            status[reopen] = K.FRESH
            confirmed[reopen] = False
    hist_t = torch.from_numpy(np.stack(rows)).to(dtype).reshape(len(rows), *shape)
    reason = mon.reason
    for code in (K.NOT_PD, K.PREC_NOT_PD, K.NONFINITE):
        if reason is None and bool((status == code).any()):
            reason = _REASONS[code]
    info = SolveInfo("cg", torch.from_numpy(iters).reshape(shape),
                     torch.from_numpy(status == K.CONVERGED).reshape(shape), hist_t, mon.bnorm, rtol, atol,
                     reason, torch.from_numpy(np.isin(status, _BROKEN)).reshape(shape))
    return lay.unpack(X), info


_BROKEN = (K.NOT_PD, K.PREC_NOT_PD, K.NONFINITE, K.STAGNATED)


def _sync_monitor(mon, status: np.ndarray, shape) -> None:
    """Set the monitor's flags from the kernel's statuses (for :meth:`_Monitor.confirm`)."""
    conv = torch.from_numpy(status == K.CONVERGED).reshape(shape)
    mon.converged = conv
    mon.active = torch.zeros_like(conv)
    mon.broken = torch.from_numpy(np.isin(status, _BROKEN)).reshape(shape)
