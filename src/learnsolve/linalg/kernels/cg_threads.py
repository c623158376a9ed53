"""One large (P)CG system on several cores: one start of the threads per call, one reduction point per
iteration.

The iteration is the Chronopoulos-Gear form of PCG (Chronopoulos and Gear 1989): with u = M r and w = A u,

    beta_i = gamma_i / gamma_{i-1},  alpha_i = gamma_i / (delta_i - beta_i gamma_i / alpha_{i-1})
    p <- u + beta p,  s <- w + beta s,  x <- x + alpha p,  r <- r - alpha s,  u = M r,  w = A u
    gamma = (r, u),  delta = (w, u),  ||r||^2

so every inner product of an iteration comes from the ONE sweep that also applies the step and the SpMV, and
the threads meet once per iteration (delta_i - beta_i gamma_i / alpha_{i-1} is p^T A p in exact arithmetic;
its rounding drift is what the caller's true-residual confirmation guards).

Jacobi preconditioning is folded into the matrix (``pkind = 1``): the caller passes D^{-1/2} A D^{-1/2} (unit
diagonal, ``diag`` unused) and the scaled vectors r^ = D^{-1/2} r, x^ = D^{1/2} x; plain CG on the scaled
system is Jacobi-PCG on the original, gamma = r^T D^{-1} r = ||r^||^2, and the stopping test uses ||r||^2 =
sum d_i r^_i^2 (``dv`` = d). This saves the diagonal stream and the 1/d scaling of every gathered entry.

Layout: A exactly symmetric, stored as its strictly lower triangle (``indptr``, ``off`` = i - j, ``vals``)
plus ``diag``, as in :mod:`.cg`; the sweep gathers the lower part of row i from u_j (j < i, already
updated in this sweep) and scatters a_ij u_i into w_j, and keeps w_{i-1} in a register. Threads own contiguous
row blocks ``bounds[t]..bounds[t+1]``; an entry whose column lies in an earlier block ("cross" entry) is
skipped by the sweep and applied after the first barrier by both owners, each to its own rows (``xr``, ``xc``,
``xp`` list, per thread, the cross entries touching its rows), so no two threads write one place. Partial sums
are written per thread and combined in thread order by every thread: results are
bitwise identical from run to run for a given thread count.

Threads: the caller starts ``T - 1`` Python threads on :func:`cg_block` (``nogil``) and runs ``tid = 0``
itself; they synchronise through a spin barrier on an int64 counter (atomic add / load, LLVM intrinsics),
yielding the core after a short spin (on an oversubscribed machine a waiting thread gives way to the one it
waits for).

Measured on 2 cores (float64, 5-point Poisson, time per iteration against the one-thread kernel of :mod:`.cg`,
interleaved, ``python scripts/bench_linalg.py --only threads``): 0.57-0.72x at 64^2 and 0.45-0.54x at 1000^2
on a quiet machine; 0.96-1.25x at 181^2 (diffusion2d) in an earlier interleaved run (hence
``fused.PAR_MIN_ROWS = 40000``). A
single-thread sweep costs about 5-7 ns per row; signed indices cost 1.5x (a wrap-around test per access),
int32 row pointers and a separate sub-diagonal array gave no measurable gain.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cg import ACTIVE, CONVERGED, FRESH, MAXITER, NONFINITE, NOT_PD, PREC_NOT_PD

__all__ = ["cg_block"]

U = np.uint64

SPIN = 4000  # busy-wait iterations before each yield


@intrinsic
def _atomic_add(typingctx, arr, val):
    """arr[0] += val atomically (sequentially consistent); returns the old value."""
    sig = types.int64(arr, val)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [ir.Constant(ir.IntType(64), 0)])
        return builder.atomic_rmw("add", ptr, args[1], "seq_cst")

    return sig, codegen


@intrinsic
def _atomic_load(typingctx, arr):
    """arr[0] read atomically (acquire)."""
    sig = types.int64(arr)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [ir.Constant(ir.IntType(64), 0)])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _sched_yield(typingctx):
    """libc's sched_yield(): give the core to another runnable thread (declared by name: the kernels stay
    cacheable)."""
    sig = types.int32()

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []),
                                            "sched_yield")
        return builder.call(fn, [])

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _barrier(bar, k, T):
    """The k-th barrier (k = 1, 2, ...) of T threads on the counter bar[0] (never reset within a call)."""
    _atomic_add(bar, np.int64(1))
    target = k * T
    spins = 0
    while _atomic_load(bar) < target:
        spins += 1
        if spins >= SPIN:
            _sched_yield()
            spins = 0


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _sweep(setup, al, be, r0, r1, indptr, off, av, dg, pkind, dv, X, R, P, S, W):
    """One Chronopoulos-Gear sweep over rows [r0, r1): returns (||r||^2, (r, u), (w, u)) partials.

    Indices are unsigned (a signed index costs a wrap-around test per access: 1.5x slower, measured)."""
    rr = 0.0
    gam = 0.0
    de = 0.0
    prev = 0.0
    lo = U(r0)
    for i in range(r0, r1):
        iu = U(i)
        ro = R[iu]
        if not setup:
            pi = ro + be * P[iu]
            P[iu] = pi
            si = W[iu] + be * S[iu]
            S[iu] = si
            X[iu] += al * pi
            ro -= al * si
            R[iu] = ro
        ui = ro
        rr += ro * ro * dv[iu] if pkind == 1 else ro * ro
        gam += ro * ui
        di = ui if pkind == 1 else dg[iu] * ui
        acc = 0.0
        for jj in range(indptr[iu], indptr[iu + U(1)]):
            ju = U(jj)
            d = U(off[ju])
            j = iu - d
            if j < lo:
                continue  # a cross entry: applied after the barrier
            a = av[ju]
            acc += a * R[j]
            if d == U(1):
                prev += a * ui
            else:
                W[j] += a * ui
        if i > r0:
            W[iu - U(1)] = prev
        prev = di + acc
        de += ui * (di + 2.0 * acc)
    if r1 > r0:
        W[U(r1 - 1)] = prev
    return rr, gam, de


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _cross(R, W, rows, cols, pos, av):
    """W[rows] += a * u[cols] for the listed cross entries (rows owned by the caller); returns sum a u_r
    u_c."""
    de = 0.0
    for e in range(rows.shape[0]):
        i = rows[e]
        j = cols[e]
        a = av[pos[e]]
        ui = R[i]
        uj = R[j]
        W[i] += a * uj
        de += a * ui * uj
    return de


@numba.njit(cache=True, nogil=True)
def cg_block(tid, T, bounds, indptr, off, av, dg, pkind, dv, xptr, xr, xc, xp,
             X, R, P, S, W, state, status, iters, maxit, tol2, hist, nhist, chunk, part, bar):
    """Thread ``tid``'s part of at most ``chunk`` iterations (see the module docstring).

    ``xptr`` (T + 1,) delimits thread t's cross entries ``xr`` (its rows), ``xc`` (the other end), ``xp``
    (their positions in ``av``); every cross entry is listed twice, once for each owner. ``state`` = [gamma,
    alpha, beta] carried between calls, ``status`` / ``iters`` / ``nhist`` (1,) and ``hist`` (chunk + 1,)
    written by thread 0, ``part`` (2, T, 3) the per-thread partial sums, ``bar`` (1,) the barrier counter
    (zero at the call).
    """
    r0, r1 = bounds[tid], bounds[tid + 1]
    e0, e1 = xptr[tid], xptr[tid + 1]
    k = 0
    st = status[0]
    gam, al, be = state[0], state[1], state[2]
    it = iters[0]
    h = 0
    setup = st == FRESH
    while True:
        if not setup and (h >= chunk or it >= maxit):
            break
        rr, g, de = _sweep(setup, al, be, r0, r1, indptr, off, av, dg, pkind, dv, X, R, P, S, W)
        k += 1
        _barrier(bar, k, T)
        de += _cross(R, W, xr[e0:e1], xc[e0:e1], xp[e0:e1], av) if e1 > e0 else 0.0
        # two sets of partials, alternating: a set is rewritten two barriers after it was read
        q = (k >> 1) & 1
        part[q, tid, 0] = rr
        part[q, tid, 1] = g
        part[q, tid, 2] = de
        k += 1
        _barrier(bar, k, T)
        rr = 0.0
        g = 0.0
        de = 0.0
        for t in range(T):  # fixed order: the same sums on every thread, every run
            rr += part[q, t, 0]
            g += part[q, t, 1]
            de += part[q, t, 2]
        if setup:
            setup = False
            if g < 0.0:
                st = PREC_NOT_PD
                break
            if not de > 0.0:
                st = NONFINITE if np.isnan(de) else NOT_PD
                break
            gam, al, be = g, g / de, 0.0
            st = ACTIVE
            continue
        it += 1
        h += 1
        if tid == 0:
            hist[h] = np.sqrt(rr)
        if not np.isfinite(rr):
            st = NONFINITE
            break
        if rr <= tol2:
            st = CONVERGED
            break
        if g < 0.0:
            st = PREC_NOT_PD
            break
        be = g / gam
        den = de - be * g / al
        if not den > 0.0:
            st = NONFINITE if np.isnan(den) else NOT_PD
            break
        al = g / den
        gam = g
    if st == ACTIVE and it >= maxit:
        st = MAXITER
    if tid == 0:
        status[0] = st
        iters[0] = it
        nhist[0] = h
        state[0], state[1], state[2] = gam, al, be
