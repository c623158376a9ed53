"""``learnsolve.tensorflow.solve``: a differentiable sparse solve for TensorFlow (``tf.custom_gradient``).

The forward and the adjoint solves run in learnsolve's torch core through ``tf.numpy_function`` (host arrays:
every method and preconditioner, the compiled CPU kernels). The gradient is formed in TensorFlow: dL/db =
lambda with ``A^T lambda = dL/dx`` (one adjoint solve, transposed preconditioner), dL/dvalues = -lambda[row]
x[col] (O(nnz), summed over right-hand sides), dL/dA = -lambda x^T for a dense A.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from learnsolve.interop import host_solve, sparse_operator
from learnsolve.linalg import ConvergenceError, ConvergenceWarning

METHODS = ("cg", "fcg", "minres", "bicgstab", "gmres", "direct")
PRECONDS = ("jacobi", "ic0", "mic0", "ilu0", "amg", "amg_sa", "amg_rs")
ON_FAIL = ("raise", "warn", "ignore")


class SolveInfo(NamedTuple):
    """Convergence of the forward solve, per right-hand side (scalars for a vector b)."""

    iterations: tf.Tensor
    converged: tf.Tensor
    residual_norm: tf.Tensor
    b_norm: tf.Tensor


@dataclass(frozen=True)
class _Config:
    n: int
    method: str
    precond: str | None
    rtol: float | None
    atol: float
    maxiter: int | None
    on_fail: str
    options: tuple


def _policy(cfg: _Config, r, label: str, raise_here: bool) -> None:
    if cfg.on_fail == "ignore" or bool(np.all(r.converged)):
        return
    msg = (f"{label} solve did not converge: {r.summary}. Raise maxiter, loosen rtol, use a preconditioner, "
           f"or pass on_fail='warn'/'ignore'")
    if cfg.on_fail == "warn":
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    elif raise_here:
        raise ConvergenceError(msg, None)


def _host(cfg: _Config, kind: str, transpose: bool, check: bool):
    """numpy callback: (A's values / dense A, indices, b) -> (x, info rows [iterations, converged,
    res, |b|])."""

    def fn(a, indices, b):
        A = sparse_operator(cfg.n, indices[:, 0], indices[:, 1], a) if kind == "sparse" else a
        r = host_solve(A, b, method=cfg.method, precond=cfg.precond, rtol=cfg.rtol, atol=cfg.atol,
                       maxiter=cfg.maxiter, transpose=transpose, options=dict(cfg.options))
        if check:  # inside tf.function: the policy runs here (the error surfaces from the graph call)
            _policy(cfg, r, "adjoint" if transpose else "forward", raise_here=True)
        info = np.stack([r.iterations, r.converged, r.residual_norm, r.b_norm]).astype(b.dtype)
        return r.x.astype(b.dtype), info

    return fn


def _run(cfg, kind, transpose, a, indices, b):
    eager = tf.executing_eagerly()
    x, info = tf.numpy_function(_host(cfg, kind, transpose, check=not eager), [a, indices, b],
                                [b.dtype, b.dtype], stateful=True)
    x.set_shape(b.shape)
    info.set_shape([4, *b.shape[1:]])
    if eager and cfg.on_fail != "ignore":
        conv = info[1].numpy()
        if not np.all(conv > 0.5):
            _policy(cfg, _EagerReport(cfg.method, conv, info), "adjoint" if transpose else "forward",
                    raise_here=True)
    return x, info


class _EagerReport:
    """The fields :func:`_policy` reads, from the packed info rows."""

    def __init__(self, method, conv, info):
        it, _, res, bn = (info[i].numpy() for i in range(4))
        self.converged = conv > 0.5
        rel = np.max(res / np.where(bn > 0, bn, 1.0))
        self.summary = (f"{method}: {int(np.sum(~self.converged))}/{self.converged.size} systems not "
                        f"converged after <= {int(np.max(it))} iterations (worst relative residual "
                        f"{rel:.3e})")


def _solve_fn(cfg: _Config, kind: str):
    @tf.custom_gradient
    def f(a, indices, b):
        x, info = _run(cfg, kind, False, a, indices, b)

        def grad(dx, _dinfo):
            lam, _ = _run(cfg, kind, True, a, indices, dx)
            if kind == "sparse":
                lr, xc = tf.gather(lam, indices[:, 0]), tf.gather(x, indices[:, 1])
                ga = -(lr * xc if b.shape.rank == 1 else tf.reduce_sum(lr * xc, axis=1))
            else:
                ga = -(tf.tensordot(lam, x, axes=0) if b.shape.rank == 1
                       else tf.matmul(lam, x, transpose_b=True))
            return ga, None, lam

        return (x, tf.stop_gradient(info)), grad

    return f


def solve(A, b, *, method: str = "cg", precond: str | None = None, rtol: float | None = None,
          atol: float = 0.0, maxiter: int | None = None, on_fail: str = "raise", return_info: bool = False,
          **options):
    """Solve ``A x = b`` differentiably in TensorFlow (eagerly or inside ``tf.function``).

    Args:
        A: a ``tf.sparse.SparseTensor`` (n, n) (gradients w.r.t. its ``values``, O(nnz); duplicate entries are
            summed) or a dense (n, n) tensor. Static shape.
        b: (n,) or (n, k) (k right-hand sides), the same float dtype as A.
        method: "cg" (SPD), "minres" (symmetric), "bicgstab" / "gmres" (nonsymmetric), "fcg", "direct".
        precond: None or "jacobi", "ic0", "mic0", "ilu0", "amg"; the adjoint uses its transpose.
        rtol: relative tolerance, as :func:`learnsolve.linalg.solve`.
        atol: absolute tolerance.
        maxiter: iteration cap.
        on_fail: "raise" (``learnsolve.linalg.ConvergenceError``; inside ``tf.function`` the error surfaces
            from the graph call with the same message), "warn" or "ignore"; forward and adjoint.
        return_info: also return a :class:`SolveInfo`.
        **options: method options (``restart`` for gmres), as :func:`learnsolve.linalg.solve`.

    The solves run on the host (CPU) in learnsolve's torch core; tensors on a GPU are copied.

    Returns:
        x, shaped like b; ``(x, info)`` with ``return_info=True``.

    Raises:
        ValueError: an unknown method, preconditioner or ``on_fail``, or a b of the wrong rank or size.
        TypeError: a non-floating b.
        learnsolve.linalg.ConvergenceError: with ``on_fail="raise"``, a forward or adjoint solve that did not
            converge.

    Shapes:
        A: (n, n); b, x: (n,) or (n, k); gradient w.r.t. a SparseTensor's values: (nnz,).
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    if precond is not None and precond not in PRECONDS:
        raise ValueError(f"precond: unknown {precond!r}; choose None or one of {', '.join(PRECONDS)}")
    if on_fail not in ON_FAIL:
        raise ValueError(f"on_fail: must be one of {', '.join(ON_FAIL)}, got {on_fail!r}")
    b = tf.convert_to_tensor(b)
    if not b.dtype.is_floating:
        raise TypeError(f"b: a real floating-point tensor is needed, got dtype {b.dtype.name}")
    if b.shape.rank not in (1, 2):
        raise ValueError(f"b: shape (n,) or (n, k) is needed, got {b.shape}")
    if isinstance(A, tf.sparse.SparseTensor):
        kind, a, indices = "sparse", A.values, A.indices
    else:
        A = tf.convert_to_tensor(A)
        kind, a, indices = "dense", A, tf.zeros((0, 2), tf.int64)
    shape = A.shape if kind == "dense" else tf.TensorShape(tf.get_static_value(A.dense_shape))
    if shape.rank != 2 or shape[0] is None or shape[0] != shape[1]:
        raise ValueError(f"A: a square 2-D matrix with a static shape is needed, got shape {shape}")
    n = int(shape[0])
    if b.shape[0] is not None and b.shape[0] != n:
        raise ValueError(f"b: A is {n} x {n} but b has {b.shape[0]} rows")
    if a.dtype != b.dtype:
        raise TypeError(f"A and b: dtypes differ ({a.dtype.name} vs {b.dtype.name}); cast one of them")
    unknown = sorted(set(options) - ({"restart"} if method == "gmres" else set()))
    if unknown:
        raise TypeError(f"options: unknown {unknown} for method {method!r}")
    cfg = _Config(n, method, precond, rtol, float(atol), maxiter, on_fail, tuple(sorted(options.items())))
    x, info = _solve_fn(cfg, kind)(a, indices, b)
    if not return_info:
        return x
    return x, SolveInfo(tf.cast(info[0], tf.int64), info[1] > 0.5, info[2], info[3])
