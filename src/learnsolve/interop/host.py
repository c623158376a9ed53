"""The numpy bridge to learnsolve's torch solver core, shared by the JAX and TensorFlow adapters.

A system arrives as numpy arrays: COO triplets (``rows``, ``cols``, ``values``) or a dense matrix, and a block
of right-hand sides. :func:`host_solve` runs :func:`learnsolve.linalg.solve` (every method and preconditioner,
the compiled CG path included) without autograd and returns numpy arrays plus per-system convergence numbers.
``transpose=True`` solves the adjoint system ``A^T y = g`` with the transposed preconditioner ``M^T`` (a
factorisation of A, transposed; never a factorisation of A^T), as the implicit backward needs.

COO patterns are converted to CSR once and cached by their index bytes, so repeated solves with the same
pattern (training loops, the adjoint of a forward) pay one O(nnz) gather for the values.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from learnsolve.linalg import CSRPattern, SparseMatrix, as_operator, make_preconditioner, solve

_PATTERNS: OrderedDict = OrderedDict()
_MAX_PATTERNS = 16


@dataclass
class HostResult:
    """Solution (same layout as the right-hand sides) and per-system numbers (shape: the batch shape)."""

    x: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    residual_norm: np.ndarray
    b_norm: np.ndarray
    summary: str


def _pattern(n: int, rows: np.ndarray, cols: np.ndarray) -> tuple[CSRPattern, torch.Tensor, int]:
    """(CSR pattern, map from COO entry to CSR slot, number of CSR slots), cached by the index bytes."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    h = hashlib.blake2b(digest_size=16)
    h.update(np.int64(n).tobytes())
    h.update(rows.tobytes())
    h.update(cols.tobytes())
    key = h.digest()
    hit = _PATTERNS.get(key)
    if hit is not None:
        _PATTERNS.move_to_end(key)
        return hit
    if rows.size and (rows.min() < 0 or rows.max() >= n or cols.min() < 0 or cols.max() >= n):
        raise ValueError(f"A's indices lie outside the {n} x {n} matrix (rows {rows.min()}..{rows.max()}, "
                         f"cols {cols.min()}..{cols.max()})")
    flat = rows * n + cols
    uniq, inv = np.unique(flat, return_inverse=True)  # duplicates are summed, as in BCOO / SparseTensor
    r, c = uniq // n, uniq % n
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=crow[1:])
    hit = (CSRPattern(torch.from_numpy(crow), torch.from_numpy(c), (n, n)), torch.from_numpy(inv.reshape(-1)),
           int(uniq.size))
    _PATTERNS[key] = hit
    if len(_PATTERNS) > _MAX_PATTERNS:
        _PATTERNS.popitem(last=False)
    return hit


def sparse_operator(n: int, rows, cols, values) -> SparseMatrix:
    """SparseMatrix from COO numpy arrays; ``values`` (nnz,) or (B, nnz) (a batch of matrices, one
    pattern)."""
    pattern, inv, m = _pattern(n, np.asarray(rows), np.asarray(cols))
    v = torch.from_numpy(np.array(values, order="C", copy=True))  # callers' buffers may be read-only
    csr = v.new_zeros(*v.shape[:-1], m).index_add_(v.ndim - 1, inv, v)
    return SparseMatrix(pattern, csr)


def host_solve(A, b: np.ndarray, *, method: str, precond, rtol: float | None, atol: float,
               maxiter: int | None, transpose: bool = False, options: dict | None = None) -> HostResult:
    """Solve ``A x = b`` (or ``A^T x = b``) with the torch core, no autograd.

    ``A``: a :class:`SparseMatrix` (see :func:`sparse_operator`) or a dense numpy (n, n) / (B, n, n) array.
    ``b``: (n,), (n, k), (B, n) or (B, n, k), laid out as :func:`learnsolve.linalg.solve` takes it.
    Non-convergence is reported in the result (``on_fail="ignore"``): the caller applies its own policy.
    """
    op = A if isinstance(A, SparseMatrix) else torch.from_numpy(np.array(A, order="C", copy=True))
    M = None
    if isinstance(precond, str):
        if method == "direct":
            precond = None
        else:
            M = make_preconditioner(precond, op if isinstance(op, SparseMatrix) else as_operator(op))
    elif precond is not None:
        raise TypeError(f"precond must be None or a preconditioner name, got {type(precond).__name__}")
    if transpose:
        op = op.T if isinstance(op, SparseMatrix) else op.transpose(-1, -2).contiguous()
        M = None if M is None else M.T
    bt = torch.from_numpy(np.array(b, order="C", copy=True))
    with torch.no_grad():
        x, info = solve(op, bt, method=method, precond=M, rtol=rtol, atol=atol, maxiter=maxiter,
                        on_fail="ignore", return_info=True, **(options or {}))
    label = ("adjoint " if transpose else "") + method
    return HostResult(x.numpy(), info.iterations.numpy(), info.converged.numpy(), info.residual_norm.numpy(),
                      info.b_norm.numpy(), f"{label}: {info.summary()}")


__all__ = ["HostResult", "host_solve", "sparse_operator"]
