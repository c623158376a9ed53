"""Compiled inference of neural_if's light network (:class:`learnsolve.models.neural_if.LightIFNet`) and the
assembly of its factor L, in passes over the CSR rows of A with no per-entry intermediate beyond one feature
per entry (no torch imported here).

``light_factor(crow, col, val, coeff, graph, num_graphs, base, weights, out, w_diag, work)`` writes L's values
on tril(A) (in tril(A)'s CSR order) into ``out`` (float64) and the diagonal outputs into ``w_diag``. The
features and the factor are computed in float64, the network in the weights' dtype (float32 for a trained
model), as the torch forward (:meth:`LightIFNet.forward`) does: the two agree to the network dtype's rounding
(the sums run in another order).

The per-entry passes (messages, heads) are ``prange`` loops over rows (independent within a pass: h and s live
in separate buffers); the node-level products are BLAS calls into preallocated buffers. On this machine a
fresh 4 MB buffer cost about 1 ms in page faults on first touch, as much as a layer's arithmetic at 256^2, so
``work`` keeps the node buffers between calls for systems of one size.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange


@numba.njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def _diagonals(crow, col, val, base, lptr, isd, bdiag):
    """isd = 1 / sqrt(diag A); bdiag = the base's diagonal (the last entry of row i of tril(A)), sqrt(a_ii)
    for the Gauss-Seidel base."""
    for i in prange(crow.shape[0] - 1):
        d = 0.0
        for p in range(crow[i], crow[i + 1]):
            if col[p] == i:
                d = val[p]
        s = math.sqrt(d)
        isd[i] = 1.0 / s
        bdiag[i] = base[lptr[i + 1] - 1] if base.shape[0] > 0 else s


@numba.njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def _features(crow, col, val, coeff, graph, gmean, isd, bdiag, x, ef):
    """x (n, 3) the node features, ef (nnz,) a_ij / sqrt(a_ii a_jj)."""
    for i in prange(crow.shape[0] - 1):
        r = isd[i]
        x[i, 0] = -math.log(r * r * gmean[graph[i]])
        c = abs(coeff[i])
        x[i, 1] = 0.0 if c == 1.0 else math.log(max(c, 1e-12))
        x[i, 2] = math.log(max(bdiag[i] * bdiag[i] * r * r, 1e-300))
        for p in range(crow[i], crow[i + 1]):
            ef[p] = val[p] * r * isd[col[p]]


def _inputs(crow, col, val, coeff, graph, num_graphs, base, lptr, x, ef, isd, bdiag):
    _diagonals(crow, col, val, base, lptr, isd, bdiag)
    d = 1.0 / (isd * isd)
    gmean = np.bincount(graph, weights=d, minlength=num_graphs) / np.bincount(graph, minlength=num_graphs)
    _features(crow, col, val, coeff, graph, gmean, isd, bdiag, x, ef)


@numba.njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def _messages(crow, col, ef, AB, bias, we, S, zero):
    """S[i] = sum_j relu(AB[i, :C] + bias + AB[j, C:] + we e_ij) over row i's entries (diagonal included)."""
    n, C = S.shape
    for i in prange(n):
        for c in range(C):
            S[i, c] = zero
        for p in range(crow[i], crow[i + 1]):
            j = col[p]
            e = ef[p]
            for c in range(C):
                S[i, c] += max(AB[i, c] + bias[c] + AB[j, C + c] + we[c] * e, zero)


@numba.njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def _relu_into(T, T2, bias, H, residual, zero):
    """H[i] = H[i] + relu(T[i] + T2[i] + bias) (residual) or relu(T[i] + bias)."""
    n, C = T.shape
    for i in prange(n):
        for c in range(C):
            if residual:
                H[i, c] += max(T[i, c] + T2[i, c] + bias[c], zero)
            else:
                H[i, c] = max(T[i, c] + bias[c], zero)


@numba.njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def _heads(crow, col, val, ef, isd, base, bdiag, lptr, AB, bias, we, wb, v, v0, H, dv, dv0, out, w_diag, eb):
    """The factor on tril(A): L_ij = B_ij + a_ij / sqrt(a_jj) * (v . relu(AB[i, :C] + bias + AB[j, C:]
    + we e_ij + wb b_ij) + v0) (i > j), L_ii = B_ii exp(dv . H[i] + dv0); the Gauss-Seidel base where
    ``base`` is empty."""
    n, C = H.shape
    has_base = base.shape[0] > 0
    for i in prange(n):
        wd = dv0
        for c in range(C):
            wd += dv[c] * H[i, c]
        w_diag[i] = wd
        k = lptr[i]
        for p in range(crow[i], crow[i + 1]):
            j = col[p]
            if j > i:
                break
            if j == i:
                out[k] = bdiag[i] * math.exp(w_diag[i])
            else:
                bij = base[k] if has_base else val[p] * isd[j]
                e = ef[p]
                eb[i] = bij * isd[i]  # b_ij in the network's dtype
                f = eb[i]
                w = v0
                for c in range(C):
                    w += v[c] * max(AB[i, c] + bias[c] + AB[j, C + c] + we[c] * e + wb[c] * f, 0 * e)
                out[k] = bij + val[p] * isd[j] * w
            k += 1


@numba.njit(cache=True)
def _lower_pointers(crow, col):
    n = crow.shape[0] - 1
    lptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        c = 0
        for p in range(crow[i], crow[i + 1]):
            if col[p] <= i:
                c += 1
        lptr[i + 1] = lptr[i] + c
    return lptr


def pack_weights(enc_w, enc_b, msg_w, msg_b, upd_w, upd_b, head_w, head_b, head_v, head_v0, diag_v, diag_v0):
    """The network's parameters (numpy, one float dtype) in the layout :func:`light_factor` reads: the pair
    layers' two node halves as one (C, 2C) matrix for one product per layer."""
    C = enc_b.shape[0]

    def pair(W):
        return (np.ascontiguousarray(np.concatenate([W[:, :C].T, W[:, C:2 * C].T], 1)),
                np.ascontiguousarray(W[:, 2 * C:]))

    layers = []
    for lv in range(msg_w.shape[0]):
        P, rest = pair(msg_w[lv])
        U = upd_w[lv]
        layers.append((P, msg_b[lv], np.ascontiguousarray(rest[:, 0]), np.ascontiguousarray(U[:, :C].T),
                       np.ascontiguousarray(U[:, C:].T), upd_b[lv]))
    P, rest = pair(head_w)
    dt = enc_w.dtype.type
    return {"enc": (np.ascontiguousarray(enc_w.T), enc_b), "layers": layers,
            "head": (P, head_b, np.ascontiguousarray(rest[:, 0]), np.ascontiguousarray(rest[:, 1]), head_v,
                     dt(head_v0), diag_v, dt(diag_v0))}


def light_factor(crow, col, val, coeff, graph, num_graphs, base, weights, out, w_diag, work=None, lptr=None):
    """See the module docstring. ``base``: the base factor's values on tril(A) (float64), or an empty array
    for the Gauss-Seidel base; ``weights``: :func:`pack_weights`; ``work``: a dict of buffers reused between
    calls; ``lptr``: the row pointers of tril(A) (computed when None)."""
    lptr = _lower_pointers(crow, col) if lptr is None else lptr
    if lptr[-1] != out.shape[0]:
        raise ValueError(f"light_factor: out holds {out.shape[0]} values, tril(A) has {lptr[-1]}")
    encT, enc_b = weights["enc"]
    n, C, nnz, dt = crow.shape[0] - 1, enc_b.shape[0], col.shape[0], encT.dtype
    zero = dt.type(0)
    work = {} if work is None else work
    if work.get("shape") != (n, nnz, C, dt):
        work.clear()
        work.update(shape=(n, nnz, C, dt), x=np.empty((n, 3), dt), ef=np.empty(nnz, dt), isd=np.empty(n),
                    eb=np.empty(n, dt),
                    bdiag=np.empty(n), H=np.empty((n, C), dt), S=np.empty((n, C), dt),
                    AB=np.empty((n, 2 * C), dt), T=np.empty((n, C), dt), T2=np.empty((n, C), dt))
    x, ef, isd, eb, bdiag, H, S, AB, T, T2 = (work[k] for k in ("x", "ef", "isd", "eb", "bdiag", "H", "S",
                                                                 "AB", "T", "T2"))
    _inputs(crow, col, val, coeff, graph, num_graphs, base, lptr, x, ef, isd, bdiag)
    np.matmul(x, encT, out=T)
    _relu_into(T, T, enc_b, H, False, zero)
    for P, bias, we, UhT, UsT, u in weights["layers"]:
        np.matmul(H, P, out=AB)
        _messages(crow, col, ef, AB, bias, we, S, zero)
        np.matmul(H, UhT, out=T)
        np.matmul(S, UsT, out=T2)
        _relu_into(T, T2, u, H, True, zero)
    P, bias, we, wb, v, v0, dv, dv0 = weights["head"]
    np.matmul(H, P, out=AB)
    _heads(crow, col, val, ef, isd, base, bdiag, lptr, AB, bias, we, wb, v, v0, H, dv, dv0, out, w_diag, eb)
