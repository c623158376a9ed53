"""Linear operators for ``learnsolve.jax.solve``: ``mv(params, x)``, linear in x, differentiable in params.

- ``ell``: a BCOO whose indices are concrete (built outside ``jax.jit``, or closed over): its data are laid
  out once as an ELL array (n, K) (K = the longest row) and every product is a gather and a row sum. XLA's CPU
  scatter-add, which ``segment_sum`` lowers to, is serial and ~800x slower under ``jax.vmap`` (measured: 30 ms
  vs 37 us per product for 64 systems of 4096 unknowns), so the loops use no scatter. The transposed layout
  for the adjoint is a second gather of the same data, made once per solve. Gradients reach the BCOO data
  through a permutation whose VJP is a gather too.
- ``bcoo``: a BCOO with traced indices (the pattern itself is a jit argument): ``segment_sum`` products.
- ``dense``: an (n, n) array. ``matvec``: a user function ``A(x)`` / ``A(params, x)`` (transpose by
  ``jax.linear_transpose``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse


@dataclass(frozen=True, eq=False)
class Operator:
    """``mv(params, x)`` (differentiable in params); ``bind(params)`` -> the vector map used inside a Krylov
    loop (may precompute); ``diag(params)`` -> A's diagonal (None: unknown); ``T`` -> the transposed
    operator."""

    kind: str
    n: int
    mv: Callable
    mvT: Callable | None = None
    diag: Callable | None = None
    bind_: Callable | None = None
    bindT: Callable | None = None

    def bind(self, params):
        return self.bind_(params) if self.bind_ is not None else partial(self.mv, params)

    @property
    def T(self) -> Operator:
        mvT = self.mvT or _linear_transpose(self.mv)
        return Operator(self.kind, self.n, mvT, self.mv, self.diag, self.bindT, self.bind_)


def _linear_transpose(mv):
    def mvT(params, y):
        return jax.linear_transpose(partial(mv, params), y)(y)[0]
    return mvT


# ------------------------------------------------------------------------------------------------ ELL
_LAYOUTS: OrderedDict = OrderedDict()


def _layout(n: int, rows: np.ndarray, cols: np.ndarray):
    """(K, src (n, K): data entry of each ELL slot, nnz = padding; inv (nnz,): ELL slot of each entry;
    ecols (n, K): column of each slot, 0 for padding)."""
    nnz = rows.size
    order = np.lexsort((cols, rows))
    cnt = np.bincount(rows, minlength=n)
    K = max(int(cnt.max()) if nnz else 0, 1)
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    ro = rows[order]
    slot = ro * K + (np.arange(nnz) - start[ro])
    src = np.full(n * K, nnz, dtype=np.int64)
    src[slot] = order
    inv = np.empty(nnz, dtype=np.int64)
    inv[order] = slot
    ecols = np.zeros(n * K, dtype=np.int64)
    ecols[slot] = cols[order]
    return K, src.reshape(n, K), inv, ecols.reshape(n, K)


def _ell_structure(n: int, indices: np.ndarray):
    """Cached by the index bytes: A's ELL layout, A^T's, and the map from A's ELL slots to A^T's."""
    idx = np.ascontiguousarray(indices, dtype=np.int64)
    key = hashlib.blake2b(np.int64(n).tobytes() + idx.tobytes(), digest_size=16).digest()
    hit = _LAYOUTS.get(key)
    if hit is not None:
        _LAYOUTS.move_to_end(key)
        return hit
    rows, cols = idx[:, 0], idx[:, 1]
    if rows.size and (rows.min() < 0 or rows.max() >= n or cols.min() < 0 or cols.max() >= n):
        raise ValueError(f"A: BCOO indices lie outside the {n} x {n} matrix")
    K, src, inv, ecols = _layout(n, rows, cols)
    _KT, srcT, _, ecolsT = _layout(n, cols, rows)
    pad = n * K  # the zero appended after A's flattened ELL data
    to_T = (np.where(srcT < rows.size, inv[np.minimum(srcT, rows.size - 1)], pad) if rows.size
            else srcT * 0 + pad)
    diag_slot = np.where((ecols == np.arange(n)[:, None]) & (src < rows.size), 1.0, 0.0)
    i32 = partial(np.asarray, dtype=np.int32)
    hit = (K, i32(src), i32(inv), i32(ecols), i32(to_T), i32(ecolsT), diag_slot)
    _LAYOUTS[key] = hit
    if len(_LAYOUTS) > 16:
        _LAYOUTS.popitem(last=False)
    return hit


def _permutation(src: np.ndarray, inv: np.ndarray):
    """data (nnz,) -> ELL data (n, K), zero padding; its VJP is the gather back (no scatter)."""
    # numpy, not jax arrays: constants of whatever trace uses them (a jax array made inside one trace would be
    # a tracer leaking into the next)
    src_j, inv_j = src, inv

    @jax.custom_vjp
    def to_ell(d):
        return jnp.concatenate([d, jnp.zeros(1, d.dtype)])[src_j]

    def fwd(d):
        return to_ell(d), None

    def bwd(_, ct):
        return (ct.reshape(-1)[inv_j],)

    to_ell.defvjp(fwd, bwd)
    return to_ell


def _ell_operator(A: jsparse.BCOO, forward_mode: bool = False):
    n = A.shape[0]
    _K, src, inv, ecols, to_T, ecolsT, diag_slot = _ell_structure(n, np.asarray(A.indices))
    ec, ecT, tT, dsl = ecols, ecolsT, to_T, diag_slot  # numpy constants (see _permutation)

    def mv(P, x):
        return jnp.sum(P * x[ec], axis=1)

    def transpose_data(P):
        return jnp.concatenate([P.reshape(-1), jnp.zeros(1, P.dtype)])[tT]

    def mvT(P, y):
        return jnp.sum(transpose_data(P) * y[ecT], axis=1)

    def bindT(P):
        PT = transpose_data(P)  # once per solve, not per product
        return lambda y: jnp.sum(PT * y[ecT], axis=1)

    op = Operator("ell", n, mv, mvT, lambda P: jnp.sum(P * dsl, axis=1), None, bindT)
    if forward_mode:  # a plain gather: differentiable in both modes (its reverse is one scatter per gradient)
        return op, jnp.concatenate([A.data, jnp.zeros(1, A.data.dtype)])[src]
    return op, _permutation(src, inv)(A.data)


# ------------------------------------------------------------------------------------------------ others
def _bcoo_mv(params, x):
    data, rows, cols = params
    return jax.ops.segment_sum(data * x[cols], rows, num_segments=x.shape[0])


def _bcoo_mvT(params, y):
    data, rows, cols = params
    return jax.ops.segment_sum(data * y[rows], cols, num_segments=y.shape[0])


def _coo_diag(n, params):
    data, rows, cols = params
    return jax.ops.segment_sum(jnp.where(rows == cols, data, 0), rows, num_segments=n)


def as_operator(A, params, b, *, layout: str = "auto", forward_mode: bool = False):
    """(Operator, params pytree) for a BCOO, a dense array, or a matvec function; ``layout="coo"`` keeps a
    BCOO's COO form (the torch backend needs rows and columns)."""
    if isinstance(A, jsparse.BCOO):
        if A.ndim != 2 or A.n_batch or A.n_dense or A.shape[0] != A.shape[1]:
            raise ValueError("A: a square 2-D BCOO matrix without batch or dense dimensions is supported, "
                             f"got shape {A.shape} (n_batch={A.n_batch}, n_dense={A.n_dense}); use jax.vmap "
                             "for batches")
        n = A.shape[0]
        if layout == "auto" and not isinstance(A.indices, jax.core.Tracer):
            return _ell_operator(A, forward_mode)
        idx = A.indices.astype(jnp.int32)
        return Operator("bcoo", n, _bcoo_mv, _bcoo_mvT, partial(_coo_diag, n)), (A.data, idx[:, 0], idx[:, 1])
    if callable(A):
        # closure conversion hoists traced values the function closes over into differentiable parameters
        fn = (lambda p, x: A(x)) if params is None else A
        p0 = () if params is None else params
        conv, consts = jax.closure_convert(fn, p0, b)
        return Operator("matvec", b.shape[-1], lambda p, x: conv(p[0], x, *p[1])), (p0, tuple(consts))
    A = jnp.asarray(A)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A: a square 2-D matrix is needed, got shape {A.shape}; use jax.vmap for batches")
    return Operator("dense", A.shape[0], lambda M, x: M @ x, lambda M, y: M.T @ y, jnp.diag), A
