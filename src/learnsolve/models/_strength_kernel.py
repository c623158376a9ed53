"""Compiled inference of :class:`learnsolve.models.gnn_solver.StrengthNet` (ReLU activations): the level
features, the encoder, the message-passing layers and the per-entry head fused in loops over the CSR rows,
with no (E, C) intermediate (no torch imported here).

``strength_logits(crow, col, val, graph, num_graphs, enc, convs, head, out)`` writes one logit per stored
entry into ``out`` (float64). ``graph``: the block (system) of every row; ``enc`` = (W1 (C, 2), b1, W2 (C, C),
b2); ``convs`` = (phi W1 (L, C, 2C + F), phi b1 (L, C), phi W2 (L, C, C), phi b2 (L, C), psi W1 (L, C, 2C),
psi b1, psi W2, psi b2); ``head`` = (W1 (C, 2C + F), b1 (C,), w2 (C,), b2 ()). The same arithmetic as the
torch forward (:func:`learnsolve.models.gnn_solver.level_features` with the aggregate indicator 0,
:class:`learnsolve.nn.SystemConv`), in float64.
"""

from __future__ import annotations

import math

import numba
import numpy as np

TINY = 2.2250738585072014e-308


@numba.njit(cache=True)
def _features(crow, col, val, graph, num_graphs):
    n = crow.shape[0] - 1
    d = np.zeros(n)
    rowsum = np.zeros(n)
    rmax = np.zeros(n)
    for i in range(n):
        for p in range(crow[i], crow[i + 1]):
            v = val[p]
            rowsum[i] += v
            if col[p] == i:
                d[i] = v
            elif abs(v) > rmax[i]:
                rmax[i] = abs(v)
    gs = np.zeros(num_graphs)
    gc = np.zeros(num_graphs)
    for i in range(n):
        gs[graph[i]] += d[i]
        gc[graph[i]] += 1.0
    x = np.empty((n, 2))
    for i in range(n):
        x[i, 0] = math.log(d[i] / (gs[graph[i]] / gc[graph[i]]))
        x[i, 1] = rowsum[i] / d[i]
    return d, rmax, x


@numba.njit(cache=True, inline="always")
def _edge_features(v, si, sj, rinv, diagonal):
    e0 = v / (si * sj)
    if diagonal:
        return e0, 1.0, 0.0
    return e0, 0.0, abs(v) * rinv


@numba.njit(cache=True, fastmath={"contract"})
def _layer_pass(crow, col, val, sq, rinv, A, B, Wc, out_sum):
    """out_sum[i] += relu(A[i] + B[j] + Wc e_p) over the entries p = (i, j) of row i (A holds the bias)."""
    n = crow.shape[0] - 1
    C = A.shape[1]
    acc = np.empty(C)
    for i in range(n):
        acc[:] = 0.0
        for p in range(crow[i], crow[i + 1]):
            j = col[p]
            e0, e2, e3 = _edge_features(val[p], sq[i], sq[j], rinv[i], j == i)
            for c in range(C):
                t = A[i, c] + B[j, c] + Wc[0, c] * e0 + Wc[2, c] * e2 + Wc[3, c] * e3
                acc[c] += max(0.0, t)
        for c in range(C):
            out_sum[i, c] = acc[c]


@numba.njit(cache=True, fastmath={"contract"})
def _head_pass(crow, col, val, sq, rinv, A, B, Wc, w2, b2, logits):
    """logits[p] = w2 . relu(A[i] + B[j] + Wc e_p) + b2 for every entry p = (i, j)."""
    n = crow.shape[0] - 1
    C = A.shape[1]
    for i in range(n):
        for p in range(crow[i], crow[i + 1]):
            j = col[p]
            e0, e2, e3 = _edge_features(val[p], sq[i], sq[j], rinv[i], j == i)
            acc = b2
            for c in range(C):
                t = A[i, c] + B[j, c] + Wc[0, c] * e0 + Wc[2, c] * e2 + Wc[3, c] * e3
                acc += w2[c] * max(0.0, t)
            logits[p] = acc


@numba.njit(cache=True, fastmath={"contract"})
def _mlp2(X, W1, b1, W2, b2, out, residual):
    """out[i] = (out[i] if residual else 0) + W2 relu(W1 X[i] + b1) + b2 for every row (no (n, C)
    temporaries)."""
    n, k = X.shape
    C = b1.shape[0]
    Co = b2.shape[0]
    t = np.empty(C)
    for i in range(n):
        for c in range(C):
            acc = b1[c]
            for f in range(k):
                acc += W1[c, f] * X[i, f]
            t[c] = max(0.0, acc)
        for o in range(Co):
            acc = b2[o]
            for c in range(C):
                acc += W2[o, c] * t[c]
            out[i, o] = out[i, o] + acc if residual else acc


@numba.njit(cache=True, fastmath={"contract"})
def _pair(h, W, bias, A, B):
    """A[i] = W[:, :C] h[i] + bias, B[i] = W[:, C:2C] h[i]: the node halves of a pair layer's first linear
    map."""
    n, C = h.shape
    Co = A.shape[1]
    for i in range(n):
        for o in range(Co):
            a = bias[o]
            b = 0.0
            for c in range(C):
                a += W[o, c] * h[i, c]
                b += W[o, C + c] * h[i, c]
            A[i, o] = a
            B[i, o] = b


@numba.njit(cache=True, fastmath={"contract"})
def _message(s, deg, W2, b2, hm):
    """hm[i] = [h[i], W2 s[i] + deg[i] b2] (h already in hm[:, :C])."""
    n, C = s.shape
    for i in range(n):
        for o in range(C):
            acc = deg[i] * b2[o]
            for c in range(C):
                acc += W2[o, c] * s[i, c]
            hm[i, C + o] = acc


@numba.njit(cache=True)
def strength_logits(crow, col, val, graph, num_graphs, e_w1, e_b1, e_w2, e_b2, p_w1, p_b1, p_w2, p_b2,
                    s_w1, s_b1, s_w2, s_b2, h_w1, h_b1, h_w2, h_b2, out):
    n = crow.shape[0] - 1
    C = e_b1.shape[0]
    d, rmax, x = _features(crow, col, val, graph, num_graphs)
    sq = np.sqrt(d)
    rinv = 1.0 / np.maximum(rmax, TINY)
    hm = np.zeros((n, 2 * C))  # [h, m]: h in the first C columns
    h = hm[:, :C]
    _mlp2(x, e_w1, e_b1, e_w2, e_b2, h, False)
    deg = np.empty(n)
    for i in range(n):
        deg[i] = crow[i + 1] - crow[i]
    A = np.empty((n, C))
    B = np.empty((n, C))
    for lv in range(p_w1.shape[0]):
        W = p_w1[lv]
        _pair(h, W, p_b1[lv], A, B)
        s = np.zeros((n, C))
        _layer_pass(crow, col, val, sq, rinv, A, B, np.ascontiguousarray(W[:, 2 * C:].T), s)
        _message(s, deg, p_w2[lv], p_b2[lv], hm)
        _mlp2(hm, s_w1[lv], s_b1[lv], s_w2[lv], s_b2[lv], h, True)
    _pair(h, h_w1, h_b1, A, B)
    _head_pass(crow, col, val, sq, rinv, A, B, np.ascontiguousarray(h_w1[:, 2 * C:].T), h_w2, h_b2, out)
